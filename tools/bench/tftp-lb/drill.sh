#!/usr/bin/env bash
# TFTP load balancer failover drill (issue: "300 clients fetching in a loop; stop one backend mid-storm"):
# two backends (tftp_serve; KILLED=hpa makes the killed one Debian's in.tftpd, which forks a child per transfer)
# behind a tftp-lb virtual server with the udp-ecv monitor, CLIENTS (default 300) tftp_load clients fetching
# FILE_KIB (default 64) KiB in a loop, TRANSFERS_PER_CLIENT (default 10) each, each failed transfer started again
# (ATTEMPTS, default 4). KILL_AFTER_S (default 3) into the storm the second backend's process group is killed.
# Checks, each printed as PASS/FAIL (exit 1 if any failed):
#   - the load alone does not mark b2 DOWN before the kill;
#   - every transfer completes (retries allowed) with the right SHA-256;
#   - the dead backend is DOWN within interval x retries + response timeout (+ SLACK_MS, default 500);
#   - no new session goes to it once it is DOWN;
#   - no session is stuck: idle_timeout_s after the storm the session table is empty;
#   - restarted on the same port, it is UP again within downtime + interval x success_retries + timeout and gets
#     new sessions.
# Every process started here is stopped by its PID (a backend by its process group, children included).
# usage: tools/bench/tftp-lb/drill.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
clients=${CLIENTS:-300}
transfers=$((clients * ${TRANSFERS_PER_CLIENT:-10}))
file_kib=${FILE_KIB:-64}
attempts=${ATTEMPTS:-4}
kill_after=${KILL_AFTER_S:-3}
slack_ms=${SLACK_MS:-500}
killed_kind=${KILLED:-serve}
interval_ms=1000 timeout_ms=800 retries=3 downtime_ms=2000 success_retries=1 idle_s=5
bin=$build/bin
for b in tftp_serve tftp_load deskfarm; do
  [[ -x $bin/$b ]] || { echo "drill.sh: build $b into $build first" >&2; exit 2; }
done
[[ -f $build/plugins/tftp-lb.so ]] || { echo "drill.sh: build the tftp-lb plugin into $build/plugins first" >&2; exit 2; }
if [[ $killed_kind == hpa && ! -x /usr/sbin/in.tftpd ]]; then
  echo "drill.sh: KILLED=hpa needs /usr/sbin/in.tftpd (Debian package tftpd-hpa)" >&2; exit 2
fi

work=$(mktemp -d /tmp/tftp-lb-drill.XXXXXX)
chmod 755 "$work"
root=$work/root
mkdir -p "$root"
groups=()   # process groups of the backends (each started with setsid: its PID is its group)
pids=()     # other processes
cleanup() {
  for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; wait "$g" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

head -c $((file_kib << 10)) /dev/urandom > "$root/boot.bin"
sha=$(sha256sum "$root/boot.bin" | cut -c1-64)
# shellcheck source=tools/lib/net.sh
source tools/lib/net.sh

# start_backend NAME PORT KIND: a backend in its own process group; sets started_group.
start_backend() {
  local name=$1 port=$2 kind=$3
  if [[ $kind == hpa ]]; then
    setsid /usr/sbin/in.tftpd -L -u root -s "$root" -a "127.0.0.1:$port" > "$work/$name.log" 2>&1 &
  else
    setsid "$bin/tftp_serve" --root "$root" --port "$port" --max-transfers 4096 > "$work/$name.port" 2> "$work/$name.log" &
  fi
  started_group=$!
  groups+=("$started_group")
}
stop_group() {  # kills a process group, children included, and reaps its leader
  kill -KILL -- "-$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

port1=$(free_port udp)
port2=$(free_port udp)
start_backend b1 "$port1" serve
start_backend b2 "$port2" "$killed_kind"
b2_group=$started_group
vip_port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.2",0)); print(s.getsockname()[1])')
cat > "$work/lb.toml" <<TOML
[deployment]
name = "tftp-lb-drill"
state_dir = "$work/var"
admin = "127.0.0.1:0"

[instances.lb]
plugin = "tftp-lb"
vip = "127.0.0.2:$vip_port"
boot_file = "boot.bin"
method = "round_robin"
monitor = "udp-ecv"
interval_ms = $interval_ms
response_timeout_ms = $timeout_ms
retries = $retries
downtime_ms = $downtime_ms
success_retries = $success_retries
idle_timeout_s = $idle_s
discover = false
max_sessions = $((clients * 4))
backends = [ { name = "b1", address = "127.0.0.1:$port1" }, { name = "b2", address = "127.0.0.1:$port2" } ]
TOML
"$bin/deskfarm" run "$work/lb.toml" --plugin-path "$build/plugins" > "$work/lb.log" 2>&1 &
pids+=($!)
backends() { "$bin/deskfarm" request tftp-lb.lb.admin.backend.list '{}' "$work/lb.toml" 2>/dev/null; }
field() {  # field BACKEND KEY: one backend's field from the backend list
  backends | python3 -c 'import json,sys; d=json.load(sys.stdin); print([b for b in d["backends"] if b["name"]==sys.argv[1]][0][sys.argv[2]])' "$1" "$2" 2>/dev/null || echo "?"
}
relay() {  # relay KEY: the relay's counter from the status
  "$bin/deskfarm" status "$work/lb.toml" 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); i=[x for x in d["instances"] if x["name"]=="lb"][0]; print(i["fields"]["relay"][sys.argv[1]])' "$1" 2>/dev/null || echo "?"
}
ms_now() { date +%s%3N; }
fails=0
check() {  # check OK|FAIL TEXT
  if [[ $1 == ok ]]; then echo "PASS: $2"; else echo "FAIL: $2"; fails=$((fails + 1)); fi
}

for _ in $(seq 100); do [[ $(field b1 state) == UP && $(field b2 state) == UP ]] && break; sleep 0.2; done
[[ $(field b1 state) == UP && $(field b2 state) == UP ]] || { echo "drill.sh: backends not UP" >&2; cat "$work/lb.log" >&2; exit 1; }
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); backends b1 tftp_serve 127.0.0.1:$port1," \
  "b2 $killed_kind 127.0.0.1:$port2; VIP 127.0.0.2:$vip_port; $clients clients, $transfers transfers of $file_kib KiB;" \
  "udp-ecv every $interval_ms ms, timeout $timeout_ms ms, retries $retries"

"$bin/tftp_load" --server "127.0.0.2:$vip_port" --file boot.bin --clients "$clients" --transfers "$transfers" \
  --timeout-ms 500 --attempts "$attempts" --expect-sha256 "$sha" --deadline-s 600 > "$work/load.out" 2>&1 &
load_pid=$!
pids+=("$load_pid")
sleep "$kill_after"
b2_before=$(field b2 sessions_total)
if grep -q "backend b2 127.0.0.1:$port2: UP -> DOWN" "$work/lb.log"; then
  check fail "b2 went DOWN under the storm's load alone, before the kill"
fi
killed_at=$(ms_now)
stop_group "$b2_group"
echo "killed b2 (process group $b2_group) after ${kill_after} s of the storm; it had $b2_before sessions"
down_ms=
for _ in $(seq 400); do  # at most 20 s
  if grep -q "backend b2 127.0.0.1:$port2: UP -> DOWN" "$work/lb.log"; then down_ms=$(($(ms_now) - killed_at)); break; fi
  sleep 0.05
done
bound=$((interval_ms * retries + timeout_ms))
if [[ -n $down_ms ]]; then
  grep -m1 "backend b2 127.0.0.1:$port2: UP -> DOWN" "$work/lb.log" | sed 's/^/  log: /'
  check "$([[ $down_ms -le $((bound + slack_ms)) ]] && echo ok || echo fail)" \
    "b2 DOWN ${down_ms} ms after the kill (bound interval x retries + timeout = $bound ms, + $slack_ms ms slack)"
else
  check fail "b2 not marked DOWN within 20 s of the kill"
fi
sleep 0.3  # the relay applies the new state, its counters are published every 20 ms
b2_frozen=$(field b2 sessions_total)

load_ok=1
wait "$load_pid" || load_ok=0
cat "$work/load.out" | sed 's/^/  /'
check "$([[ $load_ok == 1 ]] && echo ok || echo fail)" "every transfer completed with the right SHA-256 (retries allowed)"
b2_after=$(field b2 sessions_total)
check "$([[ $b2_after == "$b2_frozen" ]] && echo ok || echo fail)" \
  "no new session went to b2 once DOWN (sessions_total $b2_frozen at DOWN, $b2_after after the storm)"

sleep $((idle_s + 1))
active=$(relay sessions_active)
echo "  relay: started $(relay sessions_started), finished $(relay sessions_finished), idle-closed $(relay sessions_idle_closed), evicted $(relay sessions_evicted), socket errors $(relay socket_errors), no backend $(relay no_backend)"
check "$([[ $active == 0 ]] && echo ok || echo fail)" "no session stuck: $active in the table ${idle_s}+1 s after the storm (idle_timeout_s = $idle_s)"

restarted_at=$(ms_now)
start_backend b2 "$port2" "$killed_kind"
up_ms=
for _ in $(seq 400); do
  if grep -q "backend b2 127.0.0.1:$port2: DOWN -> UP" "$work/lb.log"; then up_ms=$(($(ms_now) - restarted_at)); break; fi
  sleep 0.05
done
up_bound=$((downtime_ms + interval_ms * success_retries + timeout_ms))
check "$([[ -n $up_ms && $up_ms -le $((up_bound + slack_ms)) ]] && echo ok || echo fail)" \
  "b2 UP again ${up_ms:-never} ms after the restart (bound downtime + interval x success_retries + timeout = $up_bound ms)"
sleep 0.3
"$bin/tftp_load" --server "127.0.0.2:$vip_port" --file boot.bin --clients 16 --transfers 32 --timeout-ms 500 \
  --attempts "$attempts" --expect-sha256 "$sha" --deadline-s 60 > "$work/load2.out" 2>&1 || true
sleep 0.1
b2_new=$(field b2 sessions_total)
check "$([[ $b2_new != "?" && $b2_new -gt $b2_after ]] && echo ok || echo fail)" \
  "b2 gets new sessions after it is UP (sessions_total $b2_after -> $b2_new)"
echo "drill: $fails check(s) failed"
[[ $fails == 0 ]]
