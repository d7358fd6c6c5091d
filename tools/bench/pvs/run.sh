#!/usr/bin/env bash
# Boot storm with reconnects against the pvs plugin (read-only also nbdkit --filter=cow and qemu-nbd): tools/bench/pvs/run.sh [BUILD_DIR] [args...]
# Args go to pvs_bootstorm (--devices 500 --concurrency 64 --ws-mib 16 --request-kib 256 --base-mib 64
# --writes-kib 1024 --drop-percent 10 --no-peers; --writes-kib 0 adds the nbdkit and qemu-nbd runs).
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
shift || true
cmake --build "$build" --target pvs pvs_bootstorm >/dev/null
exec "$build/bin/pvs_bootstorm" "$@"
