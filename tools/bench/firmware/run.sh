#!/usr/bin/env bash
# Boot storm of real firmware against one pvs (TFTP + NBD on loopback): tools/bench/firmware/run.sh [BUILD_DIR] [args...]
# With no args: N = 100, 500, 1000 at --concurrency 64; with args, one run of firmware_bootstorm with them
# (--devices 500 --concurrency 64 --ws-mib 4 --request-kib 256 --base-mib 16 --blksize 1408 --timeout-s 600
# --same-address).
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
shift || true
cmake --build "$build" --target pvs firmware_bootstorm >/dev/null
if [ $# -gt 0 ]; then
  exec "$build/bin/firmware_bootstorm" "$@"
fi
for n in 100 500 1000; do
  "$build/bin/firmware_bootstorm" --devices "$n" --concurrency "${CONCURRENCY:-64}"
done
# The same storm started through hypervisor-xen's typed requests (queue, throttle, firmware = true), with the
# direct firmwares as its peer in the same run.
cmake --build "$build" --target hypervisor-xen hv_bootstorm >/dev/null
for n in 100 500 1000; do
  "$build/bin/hv_bootstorm" --devices "$n" --concurrency "${CONCURRENCY:-64}"
done
