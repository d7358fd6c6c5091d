#!/usr/bin/env bash
# Connected devices per server: deskfarm nbd_serve holding 10,000 devices, and nbd_serve against nbdkit at 1,000
# (same run, same tmpfs image, same load generator). Each device connects, shakes hands, reads its working set
# (16 x 4 KiB, the same blocks for every device) and stays connected; then the server's threads and resident memory
# are read from /proc. Prints boots/s, p50/p99 boot time, threads and KiB per idle device, and the ratios.
#   tools/bench/nbd/devices.sh [BUILD_DIR]      env: MANY=10000 PEER=1000 CONCURRENCY=1000 READS=16
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
MANY=${MANY:-10000} PEER=${PEER:-1000} CONCURRENCY=${CONCURRENCY:-1000} READS=${READS:-16}
bin=$build/bin
cmake --build "$build" --target nbd_serve nbd_devices >"${TMPDIR:-/tmp}/nbd-devices-build.log" 2>&1 ||
  { cat "${TMPDIR:-/tmp}/nbd-devices-build.log" >&2; exit 1; }
for tool in nbdkit python3; do
  command -v "$tool" >/dev/null || { echo "devices.sh: $tool not found (apt-get install nbdkit)" >&2; exit 1; }
done
# Each side holds a descriptor per device: both processes inherit this limit (root may raise the hard one).
ulimit -Hn $((2 * MANY + 1024)) 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < MANY + 256)); then
  echo "devices.sh: $MANY devices need more than $(ulimit -n) descriptors (raise ulimit -Hn, or lower MANY)" >&2
  exit 1
fi

work=$(mktemp -d /dev/shm/deskfarm-nbd-devices.XXXXXX)
# shellcheck source=tools/bench/nbd/server.sh
source tools/bench/nbd/server.sh  # the working directory is the repository's root (cd above)
trap 'stop_server; rm -rf "$work"' EXIT
img=$work/disk.img
head -c $((64 << 20)) /dev/urandom >"$img"

declare -A line
# run_case LABEL DEVICES -- SERVER COMMAND (with @PORT@)
run_case() {
  local label=$1 devices=$2
  shift 2
  start_server "$label" "$@"
  local port=$server_port
  sleep 0.5  # the port answers before every server thread is up; measure from a settled server
  line[$label]=$("$bin/nbd_devices" 127.0.0.1 "$port" bench --devices "$devices" --concurrency "$CONCURRENCY" \
    --reads "$READS" --server-pid "$server_pid" --verify "$img")
  echo "  $label: ${line[$label]}"
  stop_server
}
field() { sed -n "s|.*$2=\([0-9.>-]*\).*|\1|p" <<<"${line[$1]}"; }

echo "image: 64 MiB on /dev/shm; $READS x 4 KiB reads per device; $CONCURRENCY devices booting at once; nproc=$(nproc)"
run_case "ours-$PEER" "$PEER" -- "$bin/nbd_serve" "$img" --port @PORT@ --max-connections "$MANY"
run_case "nbdkit-$PEER" "$PEER" -- nbdkit -f -i 127.0.0.1 -p @PORT@ file "$img"
run_case "ours-$MANY" "$MANY" -- "$bin/nbd_serve" "$img" --port @PORT@ --max-connections "$MANY"

ratio() { python3 -c "print(f'{$1/max($2,1e-9):.2f}x')"; }
echo
printf '%-28s %14s %14s %8s\n' "at $PEER devices" "ours" "nbdkit" "ratio"
for f in boots/s p99_ms kib_per_device; do
  a=$(field "ours-$PEER" "$f") b=$(field "nbdkit-$PEER" "$f")
  printf '%-28s %14s %14s %8s\n' "$f" "$a" "$b" "$(ratio "$a" "$b")"
done
printf '%-28s %14s %14s\n' "server threads" "$(field "ours-$PEER" server_threads)" "$(field "nbdkit-$PEER" server_threads)"
echo "at $MANY devices, ours: boots/s=$(field "ours-$MANY" boots/s) p99_ms=$(field "ours-$MANY" p99_ms)" \
  "threads=$(field "ours-$MANY" server_threads) KiB/device=$(field "ours-$MANY" kib_per_device)"
