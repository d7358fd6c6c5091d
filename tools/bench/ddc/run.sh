#!/usr/bin/env bash
# Controller scale: tools/bench/ddc/run.sh [BUILD_DIR] [args...]; args go to ddc_bench (--desktops 20000 --decisions 10000).
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
shift || true
cmake --build "$build" --target ddc vda hypervisor-xen ddc_bench >/dev/null
exec "$build/bin/ddc_bench" --plugin-dir "$build/plugins" "$@"
