#!/usr/bin/env bash
# TFTP load balancer bench: tftp_load straight to a backend (tftp_serve) and through a tftp-lb virtual server in
# front of the same backend, same run, interleaved rounds (REPEAT, default 3): 1 x 32 MiB, 64 x 1 MiB and
# 256 x 64 KiB at blksize 1468. Prints min/median MiB/s, median p50/p99 per transfer, the ratios VIP/direct, and
# the balancer's CPU seconds per GiB relayed. Then holds SESSIONS (default 10000) stalled transfers open through the
# virtual server and prints the balancer's resident memory per session.
# usage: tools/bench/tftp-lb/run.sh [BUILD_DIR]     (reuses tools/bench/tftp's tftp_serve and tftp_load)
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
repeat=${REPEAT:-3}
sessions=${SESSIONS:-10000}
bin=$build/bin
for b in tftp_serve tftp_load deskfarm; do
  [[ -x $bin/$b ]] || { echo "run.sh: build $b into $build first" >&2; exit 2; }
done
[[ -f $build/plugins/tftp-lb.so ]] || { echo "run.sh: build the tftp-lb plugin into $build/plugins first" >&2; exit 2; }

work=$(mktemp -d /tmp/tftp-lb-bench.XXXXXX)
chmod 755 "$work"
root=$work/root
mkdir -p "$root"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

head -c $((32 << 20)) /dev/urandom > "$root/f32m"
head -c $((1 << 20)) /dev/urandom > "$root/f1m"
head -c $((64 << 10)) /dev/urandom > "$root/f64k"
declare -A sha
for f in f32m f1m f64k; do sha[$f]=$(sha256sum "$root/$f" | cut -c1-64); done
free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }

"$bin/tftp_serve" --root "$root" --max-transfers 16384 > "$work/serve.port" 2> "$work/serve.log" &
pids+=($!)
for _ in $(seq 50); do [[ -s $work/serve.port ]] && break; sleep 0.1; done
backend=$(awk '{print $2}' "$work/serve.port")

vip_port=$(free_port 127.0.0.2)
cat > "$work/lb.toml" <<TOML
[deployment]
name = "tftp-lb-bench"
state_dir = "$work/var"
admin = "127.0.0.1:0"

[instances.lb]
plugin = "tftp-lb"
vip = "127.0.0.2:$vip_port"
monitor = "none"
discover = false
max_sessions = $((sessions + 1000))
backends = [ { name = "serve", address = "127.0.0.1:$backend" } ]
TOML
"$bin/deskfarm" run "$work/lb.toml" --plugin-path "$build/plugins" > "$work/lb.log" 2>&1 &
lb_pid=$!
pids+=("$lb_pid")
for _ in $(seq 50); do grep -q "virtual server" "$work/lb.log" && break; sleep 0.1; done
grep -q "virtual server" "$work/lb.log" || { cat "$work/lb.log" >&2; exit 1; }
lb_cpu() { awk '{ printf "%.3f", ($14 + $15) / '"$(getconf CLK_TCK)"' }' "/proc/$lb_pid/stat"; }
lb_rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$lb_pid/status"; }

rows=("1x32MiB|1|f32m" "64x1MiB|64|f1m" "256x64KiB|256|f64k")
declare -A samples
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $repeat rounds; backend tftp_serve 127.0.0.1:$backend, VIP 127.0.0.2:$vip_port"
for ((r = 1; r <= repeat; r++)); do
  for row in "${rows[@]}"; do
    IFS='|' read -r label clients file <<<"$row"
    for path in direct vip; do
      target=127.0.0.1:$backend
      [[ $path == vip ]] && target=127.0.0.2:$vip_port
      before=$(lb_cpu)
      if ! out=$("$bin/tftp_load" --server "$target" --file "$file" --clients "$clients" --blksize 1468 \
            --expect-sha256 "${sha[$file]}" --deadline-s 120); then
        echo "run.sh: round $r $path $label failed: $out" >&2
        continue
      fi
      after=$(lb_cpu)
      line=$(awk -v out="$out" -v a="$before" -v b="$after" -v c="$clients" -v f="$file" 'BEGIN {
        match(out, /: [0-9.]+ MiB\/s/); rate = substr(out, RSTART + 2, RLENGTH - 8) + 0
        match(out, /p50 [0-9.]+ ms/); p50 = substr(out, RSTART + 4, RLENGTH - 7) + 0
        match(out, /p99 [0-9.]+ ms/); p99 = substr(out, RSTART + 4, RLENGTH - 7) + 0
        size = (f == "f32m") ? 32 : (f == "f1m") ? 1 : 0.0625
        printf "%.1f %.1f %.1f %.2f", rate, p50, p99, (b - a) / (c * size / 1024) }')
      samples[$path,$label]+="$line"$'\n'
      echo "  round $r $path $label $line" | awk '{ printf "  round %s %-6s %-10s %8s MiB/s  p50 %7s ms  p99 %7s ms  balancer %s CPU s/GiB\n", $2, $3, $4, $5, $6, $7, $8 }'
    done
  done
done

stat() {  # path label column min|median
  local values
  values=$(printf '%s' "${samples[$1,$2]:-}" | awk -v k="$3" 'NF { print $k }' | sort -g)
  [[ -z $values ]] && { echo -; return; }
  if [[ $4 == min ]]; then head -1 <<<"$values"; else awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }' <<<"$values"; fi
}
echo
echo "MiB/s min/median over $repeat rounds; p50/p99 ms per transfer (median); VIP/direct of the medians"
printf '%-10s %16s %15s %16s %15s %12s %14s %16s\n' row "direct MiB/s" "p50/p99 ms" "VIP MiB/s" "p50/p99 ms" "MiB/s ratio" "p99 ratio" "balancer s/GiB"
for row in "${rows[@]}"; do
  IFS='|' read -r label _ <<<"$row"
  printf '%-10s %16s %15s %16s %15s %12s %14s %16s\n' "$label" \
    "$(stat direct "$label" 1 min)/$(stat direct "$label" 1 median)" "$(stat direct "$label" 2 median)/$(stat direct "$label" 3 median)" \
    "$(stat vip "$label" 1 min)/$(stat vip "$label" 1 median)" "$(stat vip "$label" 2 median)/$(stat vip "$label" 3 median)" \
    "$(awk -v a="$(stat vip "$label" 1 median)" -v b="$(stat direct "$label" 1 median)" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')" \
    "$(awk -v a="$(stat vip "$label" 3 median)" -v b="$(stat direct "$label" 3 median)" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')" \
    "$(stat vip "$label" 4 median)"
done

# Sessions held: every client sends one RRQ (resent while unanswered) and never ACKs; each session stays until
# the idle timeout (60 s).
echo
rss_before=$(lb_rss_kib)
python3 - "$vip_port" "$sessions" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
rrq = b"\0\1f64k\0octet\0"
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.3", 0))
    s.setblocking(False)
    s.sendto(rrq, ("127.0.0.2", port))
    socks.append(s)
# A burst overflows the virtual server's receive queue as it would any server's: resend, as a client would,
# to the ones that heard nothing yet (a resent RRQ of a live session goes to the same backend).
waiting = list(socks)
for _ in range(5):
    time.sleep(1)
    left = []
    for s in waiting:
        try:
            s.recv(2048)
        except BlockingIOError:
            s.sendto(rrq, ("127.0.0.2", port))
            left.append(s)
    waiting = left
print("clients without a reply after 5 resends:", len(waiting))
time.sleep(1)
PY
held=$("$bin/deskfarm" status "$work/lb.toml" | python3 -c 'import json,sys; d=json.load(sys.stdin); i=[x for x in d["instances"] if x["name"]=="lb"][0]; print(i["fields"]["relay"]["sessions_peak"])' 2>/dev/null || echo "?")
rss_after=$(lb_rss_kib)
echo "sessions held: peak $held of $sessions asked; balancer RSS $rss_before KiB -> $rss_after KiB:" \
  "$(awk -v a="$rss_before" -v b="$rss_after" -v n="$held" 'BEGIN { if (n > 0) printf "%.0f bytes per session (user space; each also holds one UDP socket in the kernel)", (b - a) * 1024 / n; else print "n/a" }')"
