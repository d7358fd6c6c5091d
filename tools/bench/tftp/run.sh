#!/usr/bin/env bash
# TFTP throughput bench: our server (tftp_serve) against tftpd-hpa, atftpd and dnsmasq on loopback, same run.
# usage: tools/bench/tftp/run.sh [BUILD_DIR]     (env: REPEAT=N best of N per cell, default 1)
# Rows: 1 x 32 MiB, 64 x 1 MiB, 256 x 64 KiB at blksize 1468, and 1 x 32 MiB at windowsize 16 (peers that support it).
# Prints MiB/s per server, ratio ours/peer, and server CPU seconds per GiB served (utime+stime+cutime+cstime).
# Peers that are missing are skipped. atftpd conflicts with tftpd-hpa in apt, so it is unpacked into /tmp/atftpd:
#   cd /tmp && apt-get download atftpd && dpkg -x atftpd_*.deb /tmp/atftpd
# dnsmasq can only serve TFTP on port 69: it runs only as root and only if 127.0.0.1:69 is free.
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build-tftp}
repeat=${REPEAT:-1}
bin=$build/bin
[[ -x $bin/tftp_serve && -x $bin/tftp_load ]] || { echo "run.sh: build tftp_serve and tftp_load into $build first" >&2; exit 2; }

work=$(mktemp -d /tmp/tftp-bench.XXXXXX)
chmod 755 "$work"
root=$work/root
mkdir -p "$root"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

head -c $((32 << 20)) /dev/urandom > "$root/f32m"
head -c $((1 << 20)) /dev/urandom > "$root/f1m"
head -c $((64 << 10)) /dev/urandom > "$root/f64k"
chmod 755 "$root"; chmod 644 "$root"/*
declare -A sha
for f in f32m f1m f64k; do sha[$f]=$(sha256sum "$root/$f" | cut -c1-64); done

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15+$16+$17}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)

# row name|clients|file|extra args
rows=("1x32MiB|1|f32m|" "64x1MiB|64|f1m|" "256x64KiB|256|f64k|" "1x32MiB-w16|1|f32m|--windowsize 16")

declare -A mibs cpu
run_rows() {  # server-name port pid supports-windowsize
  local name=$1 port=$2 pid=$3 window=$4
  for row in "${rows[@]}"; do
    IFS='|' read -r label clients file extra <<<"$row"
    if [[ -n $extra && $window != yes ]]; then continue; fi
    local best=0 best_cpu=0
    for ((r = 0; r < repeat; r++)); do
      local before after out rate gib
      before=$(cpu_ticks "$pid")
      # shellcheck disable=SC2086
      if ! out=$("$bin/tftp_load" --server "127.0.0.1:$port" --file "$file" --clients "$clients" --blksize 1468 \
            --expect-sha256 "${sha[$file]}" --deadline-s 120 $extra); then
        echo "run.sh: $name $label failed: $out" >&2
        continue
      fi
      # tftpd-hpa reaps its per-transfer children only when a datagram wakes it: nudge it (a stray ACK is ignored).
      printf '\0\4\0\0' > "/dev/udp/127.0.0.1/$port" || true
      sleep 0.2
      after=$(cpu_ticks "$pid")
      rate=$(sed -n 's/.*: \([0-9.]*\) MiB\/s.*/\1/p' <<<"$out")
      gib=$(awk -v c="$clients" -v f="$file" 'BEGIN { s = (f == "f32m") ? 32 : (f == "f1m") ? 1 : 0.0625; print c * s / 1024 }')
      if awk -v a="$rate" -v b="$best" 'BEGIN { exit !(a > b) }'; then
        best=$rate
        best_cpu=$(awk -v t=$((after - before)) -v hz="$ticks_per_second" -v g="$gib" 'BEGIN { printf "%.2f", t / hz / g }')
      fi
    done
    # tftpd-hpa serves each transfer in a forked child whose CPU never shows up in the parent's
    # cutime/cstime (measured as 0 even after a wake-up), so /proc cannot account for it.
    [[ $name == hpa ]] && best_cpu=n/a
    mibs[$name,$label]=$best
    cpu[$name,$label]=$best_cpu
    printf '  %-8s %-12s %8.1f MiB/s  %6s CPU s/GiB\n' "$name" "$label" "$best" "$best_cpu"
  done
}

wait_port() { for _ in $(seq 50); do ss -lun | grep -q "127.0.0.1:$1 " && return 0; sleep 0.1; done; return 1; }
servers=()

echo "== ours (tftp_serve)"
"$bin/tftp_serve" --root "$root" --max-transfers 2048 > "$work/ours.port" 2> "$work/ours.log" &
pids+=($!); ours_pid=$!
for _ in $(seq 50); do [[ -s $work/ours.port ]] && break; sleep 0.1; done
run_rows ours "$(awk '{print $2}' "$work/ours.port")" "$ours_pid" yes
servers+=(ours)
kill "$ours_pid"; wait "$ours_pid" 2>/dev/null || true

if [[ -x /usr/sbin/in.tftpd ]]; then
  echo "== tftpd-hpa"
  port=$(free_port)
  /usr/sbin/in.tftpd -L -s "$root" -a "127.0.0.1:$port" 2> "$work/hpa.log" &
  pids+=($!); pid=$!
  wait_port "$port" && run_rows hpa "$port" "$pid" no && servers+=(hpa)
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi

if [[ -x /tmp/atftpd/usr/sbin/atftpd ]]; then
  echo "== atftpd"
  port=$(free_port)
  /tmp/atftpd/usr/sbin/atftpd --daemon --no-fork --user root --group root -m 2048 --logfile /dev/null \
    --port "$port" --bind-address 127.0.0.1 "$root" &
  pids+=($!); pid=$!
  wait_port "$port" && run_rows atftpd "$port" "$pid" yes && servers+=(atftpd)
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi

if [[ -x /usr/sbin/dnsmasq && $(id -u) == 0 ]] && ! ss -lun | grep -q ':69 '; then
  echo "== dnsmasq"
  /usr/sbin/dnsmasq --no-daemon --conf-file=/dev/null --pid-file= --port=0 --enable-tftp --tftp-root="$root" \
    --tftp-max=2048 --listen-address=127.0.0.1 --bind-interfaces --user=root 2> "$work/dnsmasq.log" &
  pids+=($!); pid=$!
  wait_port 69 && run_rows dnsmasq 69 "$pid" no && servers+=(dnsmasq)
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi

echo
printf '%-12s' row; for s in "${servers[@]}"; do printf ' %10s' "$s"; done
for s in "${servers[@]:1}"; do printf ' %13s' "ours/$s"; done
for s in "${servers[@]}"; do printf ' %12s' "cpu/GiB:$s"; done
echo
for row in "${rows[@]}"; do
  IFS='|' read -r label _ <<<"$row"
  printf '%-12s' "$label"
  for s in "${servers[@]}"; do printf ' %10s' "${mibs[$s,$label]:--}"; done
  for s in "${servers[@]:1}"; do
    printf ' %13s' "$(awk -v a="${mibs[ours,$label]:-0}" -v b="${mibs[$s,$label]:-0}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')"
  done
  for s in "${servers[@]}"; do printf ' %12s' "${cpu[$s,$label]:--}"; done
  echo
done
