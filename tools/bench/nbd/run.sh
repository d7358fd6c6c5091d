#!/usr/bin/env bash
# NBD read/write benchmark: deskfarm nbd_serve against nbdkit (file, --filter=cow file) and qemu-nbd, same run,
# same tmpfs image, same load generator (nbd_load, raw protocol).
#   tools/bench/nbd/run.sh [BUILD_DIR]      env: SIZE_MIB=256 SECS=5 CONNS=4 SEQ_QD=4 RAND_QD=16
# Prints MiB/s (sequential 256 KiB reads), IOPS (random 4 KiB reads / writes) and the ratio ours/best peer.
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build-nbd}
SIZE_MIB=${SIZE_MIB:-256} SECS=${SECS:-5} CONNS=${CONNS:-4} SEQ_QD=${SEQ_QD:-4} RAND_QD=${RAND_QD:-16}
bin=$build/bin
if ! cmake --build "$build" --target nbd_serve nbd_load >"${TMPDIR:-/tmp}/nbd-bench-build.log" 2>&1; then
  # Other folders being edited can break the configure step; a previous build of the tools is still good.
  [[ -x $bin/nbd_serve && -x $bin/nbd_load ]] || { cat "${TMPDIR:-/tmp}/nbd-bench-build.log" >&2; exit 1; }
  echo "run.sh: rebuild failed (see ${TMPDIR:-/tmp}/nbd-bench-build.log); using the existing $bin/nbd_serve and nbd_load" >&2
fi
for tool in nbdkit qemu-nbd python3; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found (apt-get install nbdkit qemu-utils)" >&2; exit 1; }
done

work=$(mktemp -d /dev/shm/deskfarm-nbd-bench.XXXXXX)
# shellcheck source=tools/bench/nbd/server.sh
source tools/bench/nbd/server.sh  # the working directory is the repository's root (cd above)
trap 'stop_server; rm -rf "$work"' EXIT
img=$work/disk.img
head -c $((SIZE_MIB << 20)) /dev/urandom >"$img"

declare -A result
# run_case LABEL MODES -- SERVER COMMAND (with @PORT@)
run_case() {
  local label=$1 modes=$2
  shift 2
  start_server "$label" "$@"
  local port=$server_port
  for mode in $modes; do
    local qd=$RAND_QD
    [[ $mode == seq ]] && qd=$SEQ_QD
    local line
    line=$("$bin/nbd_load" 127.0.0.1 "$port" bench --mode "$mode" --conns "$CONNS" --qd "$qd" --seconds "$SECS")
    echo "  $label: $line"
    if [[ $mode == seq ]]; then
      result[$label.$mode]=$(sed -n 's/.*MiB\/s=\([0-9.]*\).*/\1/p' <<<"$line")
    else
      result[$label.$mode]=$(sed -n 's/.*IOPS=\([0-9]*\).*/\1/p' <<<"$line")
    fi
  done
  stop_server
}

echo "image: ${SIZE_MIB} MiB on /dev/shm; ${CONNS} connections; ${SECS} s per case; nproc=$(nproc)"
run_case ours "seq rand" -- "$bin/nbd_serve" "$img" --port @PORT@
run_case nbdkit "seq rand" -- nbdkit -f -i 127.0.0.1 -p @PORT@ file "$img"
run_case qemu-nbd "seq rand" -- qemu-nbd -f raw -x bench -b 127.0.0.1 -p @PORT@ -t -e 64 "$img"
run_case ours-cow "seq rand randwrite" -- "$bin/nbd_serve" "$img" --port @PORT@ --cow --ram-mib 1024
run_case nbdkit-cow "seq rand randwrite" -- nbdkit -f -i 127.0.0.1 -p @PORT@ --filter=cow file "$img"

ratio() { python3 -c "print(f'{$1/max($2,1e-9):.2f}x')"; }
best() { python3 -c "print(max($1, $2))"; }
echo
printf '%-34s %12s %12s %12s %8s\n' "case" "ours" "best peer" "peer" "ratio"
b=$(best "${result[nbdkit.seq]}" "${result[qemu-nbd.seq]}")
printf '%-34s %12s %12s %12s %8s\n' "seq read 256K MiB/s" "${result[ours.seq]}" "$b" "nbdkit ${result[nbdkit.seq]} / qemu-nbd ${result[qemu-nbd.seq]}" "$(ratio "${result[ours.seq]}" "$b")"
b=$(best "${result[nbdkit.rand]}" "${result[qemu-nbd.rand]}")
printf '%-34s %12s %12s %12s %8s\n' "rand read 4K IOPS" "${result[ours.rand]}" "$b" "nbdkit ${result[nbdkit.rand]} / qemu-nbd ${result[qemu-nbd.rand]}" "$(ratio "${result[ours.rand]}" "$b")"
for m in seq rand randwrite; do
  unit=IOPS
  [[ $m == seq ]] && unit=MiB/s
  printf '%-34s %12s %12s %12s %8s\n' "cow $m ($unit)" "${result[ours-cow.$m]}" "${result[nbdkit-cow.$m]}" "nbdkit-cow" "$(ratio "${result[ours-cow.$m]}" "${result[nbdkit-cow.$m]}")"
done
