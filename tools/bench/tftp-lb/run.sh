#!/usr/bin/env bash
# TFTP load balancer bench: tftp_load straight to a backend (tftp_serve) and through a tftp-lb virtual server in
# front of the same backend, same run, interleaved rounds (REPEAT, default 3): 1 x 32 MiB, 64 x 1 MiB and
# 256 x 64 KiB at blksize 1468. Prints min/median MiB/s, median p50/p99 per transfer, the ratios VIP/direct, and
# the balancer's CPU seconds per GiB relayed. Then holds SESSIONS (default 10000) stalled transfers open through the
# virtual server and prints the balancer's resident memory per session.
# RELAYS (default "tc-bpf io_uring epoll" as root, else "io_uring epoll") names the relay engines to compare:
# one balancer per engine (`relay` key; tc-bpf needs root and BPF, and a balancer that fell back stops the run), the
# first on 127.0.0.2 (it also holds the sessions), the next on 127.0.0.6, .7, .8, ..., all in front of the same
# backend and measured in the same rounds. ENGINE:US sets that balancer's busy_poll_us as well ("io_uring:0
# io_uring:50 epoll:50"); without it the plugin's default holds. Per balancer, `perf stat` counts its system calls and context switches over all the
# rounds, printed per datagram relayed (the balancers take turns, so each one's counts are its own traffic).
# BASELINE=DIR (a folder holding another build's tftp-lb.so, e.g. the previous commit's) adds a balancer on
# 127.0.0.5 with that plugin (its default engine, or BASELINE_RELAY, e.g. "tc-bpf") in front of the same backend,
# measured in the same rounds ("base").
# Per cell also the load generator's CPU (s/GiB, and its share of one core while it ran): a generator near one
# core would be the limit, not the balancer.
# SETUP=N adds a row of N transfers of a 1 KiB file one after another by one client ("Nx1KiB-seq"): each is a
# session's set-up and end and nothing else, so its p50/p99 is what one session costs on each path.
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
head -c 1024 /dev/urandom > "$root/f1k"
declare -A sha
for f in f32m f1m f64k f1k; do sha[$f]=$(sha256sum "$root/$f" | cut -c1-64); done
# shellcheck source=tools/lib/net.sh
source tools/lib/net.sh

"$bin/tftp_serve" --root "$root" --max-transfers 16384 > "$work/serve.port" 2> "$work/serve.log" &
pids+=($!)
for _ in $(seq 50); do [[ -s $work/serve.port ]] && break; sleep 0.1; done
backend=$(awk '{print $2}' "$work/serve.port")

# start_balancer NAME HOST PLUGIN_DIR [ENGINE]: a deployment with one tftp-lb instance in front of the backend;
# sets started_pid and started_port.
start_balancer() {
  local name=$1 host=$2 plugins=$3 engine=${4:-} busy=${5:-} port relay_line=""
  port=$(free_port udp "$host")
  [[ -n $engine ]] && relay_line="relay = \"$engine\""
  [[ -n $busy ]] && relay_line+=$'\n'"busy_poll_us = $busy"
  cat > "$work/$name.toml" <<TOML
[deployment]
name = "tftp-lb-bench-$name"
state_dir = "$work/var-$name"
admin = "127.0.0.1:0"

[instances.lb]
plugin = "tftp-lb"
vip = "$host:$port"
monitor = "none"
discover = false
max_sessions = $((sessions + 1000))
backends = [ { name = "serve", address = "127.0.0.1:$backend" } ]
$relay_line
TOML
  "$bin/deskfarm" run "$work/$name.toml" --plugin-path "$plugins" > "$work/$name.log" 2>&1 &
  started_pid=$!
  pids+=("$started_pid")
  for _ in $(seq 50); do grep -q "virtual server" "$work/$name.log" && break; sleep 0.1; done
  grep -q "virtual server" "$work/$name.log" || { cat "$work/$name.log" >&2; exit 1; }
  started_port=$port
}
default_relays="io_uring epoll"
(( EUID == 0 )) && default_relays="tc-bpf io_uring epoll"
read -r -a relays <<<"${RELAYS:-$default_relays}"
declare -A target=([direct]=127.0.0.1:$backend)
declare -A balancer=()
declare -A manifest=()
paths=(direct)
hosts=(127.0.0.2 127.0.0.6 127.0.0.7 127.0.0.8 127.0.0.9 127.0.0.10 127.0.0.11)
(( ${#relays[@]} <= ${#hosts[@]} )) || { echo "run.sh: at most ${#hosts[@]} RELAYS" >&2; exit 2; }
for k in "${!relays[@]}"; do
  path=${relays[$k]}
  engine=${path%%:*}
  busy=$([[ $path == *:* ]] && echo "${path#*:}" || true)
  name=$([[ $k == 0 ]] && echo lb || echo "lb-${path/:/-}")
  start_balancer "$name" "${hosts[$k]}" "$build/plugins" "$engine" "$busy"
  grep -q "relay $engine" "$work/$name.log" || { echo "run.sh: $name did not start the $engine relay:" >&2; cat "$work/$name.log" >&2; exit 1; }
  target[$path]=${hosts[$k]}:$started_port
  balancer[$path]=$started_pid
  manifest[$path]=$work/$name.toml
  paths+=("$path")
  [[ $k == 0 ]] && { lb_pid=$started_pid; vip_port=$started_port; }
done
if [[ -n ${BASELINE:-} ]]; then
  [[ -f $BASELINE/tftp-lb.so ]] || { echo "run.sh: BASELINE=$BASELINE holds no tftp-lb.so" >&2; exit 2; }
  start_balancer base 127.0.0.5 "$BASELINE" "${BASELINE_RELAY:-}"
  [[ -z ${BASELINE_RELAY:-} ]] || grep -q "relay ${BASELINE_RELAY%%:*}" "$work/base.log" ||
    { echo "run.sh: base did not start the $BASELINE_RELAY relay:" >&2; cat "$work/base.log" >&2; exit 1; }
  target[base]=127.0.0.5:$started_port
  balancer[base]=$started_pid
  manifest[base]=$work/base.toml
  paths+=(base)
fi
# System calls and context switches of each balancer over all the rounds.
declare -A perf_pid=()
if perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
  for path in "${!balancer[@]}"; do
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "${balancer[$path]}" -o "$work/perf-$path.csv" &
    perf_pid[$path]=$!
    pids+=("$!")
  done
else
  echo "run.sh: perf cannot count raw_syscalls:sys_enter here (perf_event_paranoid?): no system-call counts" >&2
fi
cpu_of() { [[ -z ${1:-} ]] && { echo 0; return; }; awk '{ printf "%.3f", ($14 + $15) / '"$(getconf CLK_TCK)"' }' "/proc/$1/stat"; }
# tc-bpf: its BPF program runs in the senders' context, not the balancer's; with kernel.bpf_stats_enabled (set for
# the run, restored after) its run time counts as the balancer's too. It runs for every datagram on lo, so the
# direct path's and the other balancers' lookups are in it as well while they are measured: only the tc-bpf
# path's rounds are charged.
bpf_stats_was=""
if [[ " ${relays[*]} ${BASELINE_RELAY:-} " == *" tc-bpf"* ]] && [[ -w /proc/sys/kernel/bpf_stats_enabled ]] && command -v bpftool >/dev/null; then
  bpf_stats_was=$(cat /proc/sys/kernel/bpf_stats_enabled)
  echo 1 > /proc/sys/kernel/bpf_stats_enabled
  trap 'echo "$bpf_stats_was" > /proc/sys/kernel/bpf_stats_enabled; cleanup' EXIT
fi
bpf_s() {  # seconds the tftp-lb BPF programs have run
  [[ -z $bpf_stats_was ]] && { echo 0; return; }
  bpftool -j prog show 2>/dev/null | python3 -c 'import json, sys
print("%.6f" % (sum(p.get("run_time_ns", 0) for p in json.load(sys.stdin) if p.get("name") == "tftp_lb_ingress") / 1e9))'
}
lb_rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$lb_pid/status"; }

rows=("1x32MiB|1|f32m" "64x1MiB|64|f1m" "256x64KiB|256|f64k")  # label|clients|file[|transfers, default clients]
[[ -n ${SETUP:-} ]] && rows+=("${SETUP}x1KiB-seq|1|f1k|$SETUP")
declare -A samples
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $repeat rounds; backend tftp_serve 127.0.0.1:$backend;$(for p in "${paths[@]:1}"; do printf ' %s VIP %s' "$p" "${target[$p]}"; done)"
for ((r = 1; r <= repeat; r++)); do
  for row in "${rows[@]}"; do
    IFS='|' read -r label clients file transfers <<<"$row"
    transfers=${transfers:-$clients}
    for path in "${paths[@]}"; do
      before=$(cpu_of "${balancer[$path]:-}")
      [[ $path == tc-bpf* || ($path == base && ${BASELINE_RELAY:-} == tc-bpf*) ]] && before=$(awk -v a="$before" -v b="$(bpf_s)" 'BEGIN { printf "%.6f", a + b }')
      if ! out=$("$bin/tftp_load" --server "${target[$path]}" --file "$file" --clients "$clients" --transfers "$transfers" --blksize 1468 \
            --expect-sha256 "${sha[$file]}" --deadline-s 120); then
        echo "run.sh: round $r $path $label failed: $out" >&2
        continue
      fi
      after=$(cpu_of "${balancer[$path]:-}")
      [[ $path == tc-bpf* || ($path == base && ${BASELINE_RELAY:-} == tc-bpf*) ]] && after=$(awk -v a="$after" -v b="$(bpf_s)" 'BEGIN { printf "%.6f", a + b }')
      # rate p50 p99 balancer-s/GiB generator-s/GiB generator-share-of-a-core
      line=$(awk -v out="$out" -v a="$before" -v b="$after" -v c="$transfers" -v f="$file" 'BEGIN {
        match(out, /: [0-9.]+ MiB\/s/); rate = substr(out, RSTART + 2, RLENGTH - 8) + 0
        match(out, /p50 [0-9.]+ ms/); p50 = substr(out, RSTART + 4, RLENGTH - 7) + 0
        match(out, /p99 [0-9.]+ ms/); p99 = substr(out, RSTART + 4, RLENGTH - 7) + 0
        match(out, /MiB in [0-9.]+ s/); wall = substr(out, RSTART + 7, RLENGTH - 9) + 0
        match(out, /load CPU [0-9.]+ s/); gen = substr(out, RSTART + 9, RLENGTH - 11) + 0
        size = (f == "f32m") ? 32 : (f == "f1m") ? 1 : (f == "f1k") ? 1 / 1024 : 0.0625
        gib = c * size / 1024
        printf "%.1f %.1f %.1f %.2f %.2f %.2f", rate, p50, p99, (b - a) / gib, gen / gib, (wall > 0) ? gen / wall : 0 }')
      samples[$path,$label]+="$line"$'\n'
      echo "  round $r $path $label $line" | awk '{ printf "  round %s %-8s %-10s %8s MiB/s  p50 %7s ms  p99 %7s ms  balancer %5s CPU s/GiB  generator %5s CPU s/GiB, %s of a core\n", $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
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
ratio() { awk -v a="$(stat "$1" "$3" "$4" median)" -v b="$(stat "$2" "$3" "$4" median)" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo "MiB/s min/median over $repeat rounds; p50/p99 ms per transfer (median); ratios of the medians;"
echo "generator: tftp_load's CPU s/GiB and share of one core (median)"
for path in "${paths[@]}"; do
  [[ $path == direct ]] && continue
  echo "${path}:"
  printf '%-10s %16s %15s %16s %15s %12s %10s %15s %22s\n' row "direct MiB/s" "p50/p99 ms" "$path MiB/s" "p50/p99 ms" "MiB/s ratio" "p99 ratio" "balancer s/GiB" "generator direct/$path"
  for row in "${rows[@]}"; do
    IFS='|' read -r label _ <<<"$row"
    printf '%-10s %16s %15s %16s %15s %12s %10s %15s %22s\n' "$label" \
      "$(stat direct "$label" 1 min)/$(stat direct "$label" 1 median)" "$(stat direct "$label" 2 median)/$(stat direct "$label" 3 median)" \
      "$(stat "$path" "$label" 1 min)/$(stat "$path" "$label" 1 median)" "$(stat "$path" "$label" 2 median)/$(stat "$path" "$label" 3 median)" \
      "$(ratio "$path" direct "$label" 1)" "$(ratio "$path" direct "$label" 3)" "$(stat "$path" "$label" 4 median)" \
      "$(stat direct "$label" 5 median)·$(stat direct "$label" 6 median) / $(stat "$path" "$label" 5 median)·$(stat "$path" "$label" 6 median)"
  done
done
echo "load average after the rounds: $(cut -d' ' -f1-3 /proc/loadavg)"
first=${paths[1]:-}
for other in "${paths[@]:2}"; do
  for row in "${rows[@]}"; do
    IFS='|' read -r label _ <<<"$row"
    echo "$first/$other $label: MiB/s $(ratio "$first" "$other" "$label" 1), p99 $(ratio "$first" "$other" "$label" 3), balancer CPU s/GiB $(ratio "$first" "$other" "$label" 4)"
  done
done

# Per balancer: datagrams relayed (its status), its system calls and context switches per datagram (perf).
echo
for path in "${paths[@]:1}"; do
  [[ -n ${perf_pid[$path]:-} ]] && { kill -INT "${perf_pid[$path]}" 2>/dev/null || true; wait "${perf_pid[$path]}" 2>/dev/null || true; }
  "$bin/deskfarm" status "${manifest[$path]}" 2>/dev/null | python3 -c 'import json, sys
path, perf = sys.argv[1], sys.argv[2]
i = [x for x in json.load(sys.stdin)["instances"] if x["name"].startswith("lb")][0]["fields"]
r = i["relay"]
n = r["packets_to_backend"] + r["packets_to_client"]
counts = {}
try:
    for line in open(perf):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].replace(".", "").isdigit():
            counts[f[2]] = float(f[0])
except OSError:
    pass
calls = "io_uring_enter %d (%.3f per datagram)" % (r.get("ring_enters", 0), r.get("ring_enters", 0) / max(1, n)) if r.get("ring_enters") else \
        "recvmmsg %d (%.2f datagrams each), send calls %d (%.2f each)" % (r["receive_calls"], n / max(1, r["receive_calls"]), r["send_calls"], n / max(1, r["send_calls"]))
line = "%-8s engine %s: %d datagrams relayed; %s" % (path, i.get("relay_engine", "?"), n, calls)
if "kernel_sessions" in r:  # tc-bpf: what its BPF program moved (its CPU is charged to the senders, not the balancer)
    k = r["kernel_packets_to_client"] + r["kernel_packets_to_backend"]
    line += "; in the kernel: %d datagrams (%.1f%%) of %d sessions" % (k, 100.0 * k / max(1, n), r["kernel_sessions"])
if r.get("busy_polls"):
    line += "; busy polls %d (%.2f per datagram), %.0f%% found datagrams" % (r["busy_polls"], r["busy_polls"] / max(1, n), 100.0 * r.get("busy_poll_hits", 0) / r["busy_polls"])
if "raw_syscalls:sys_enter" in counts and n:
    line += "; perf: %.3f system calls and %.3f context switches per datagram" % (counts["raw_syscalls:sys_enter"] / n, counts.get("context-switches", 0) / n)
print(line)' "$path" "$work/perf-$path.csv" || echo "$path: no status"
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
