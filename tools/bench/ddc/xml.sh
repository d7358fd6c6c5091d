#!/usr/bin/env bash
# XML service against admin.broker: tools/bench/ddc/xml.sh [BUILD_DIR] [args...]; args go to xml_bench
# (--users 20 --rounds 20 --iterations 1000).
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
shift || true
cmake --build "$build" --target ddc vda hypervisor-xen directory xml_bench >/dev/null
exec "$build/bin/xml_bench" --plugin-dir "$build/plugins" "$@"
