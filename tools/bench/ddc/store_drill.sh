#!/usr/bin/env bash
# The data-store restart drill: one deployment (a simulated XenServer pool, a licence server, two controllers,
# the desktop agents) on a private PostgreSQL store; `deskfarm storm` brokers users onto `assigned` desktops (each
# first brokering writes one row of ddc_assignments) while PostgreSQL is stopped a third into the arrivals and
# started again on the same port a few seconds later. Reported: decisions/s and p99 before, during and after the
# outage, the decisions made while the store was down, the peak of assignments_unsaved and that it drains to 0;
# checked in the database: every brokered user's assignment row exists exactly once (none twice, none lost).
#
# usage: tools/bench/ddc/store_drill.sh [--build DIR] [--users N] [--rate R] [--down S] [--session 3s]
# Exit 0 when every invariant holds, 1 when one does not, 77 (skip) without PostgreSQL (1 under CI=true).
# The CTest ddc-store-restart runs it small (--users 200 --rate 25); the figures in docs/benchmarks.md come from the default.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
build=$repo/build users=400 rate=25 down=4 session=3s
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --down) down=$2; shift 2 ;;
    --session) session=$2; shift 2 ;;
    *) echo "store_drill.sh: unknown option '$1' (--build DIR --users N --rate R --down SECONDS --session 3s)" >&2; exit 2 ;;
  esac
done
deskfarm=$build/bin/deskfarm
[ -x "$deskfarm" ] || { echo "store_drill.sh: no $deskfarm; build it first (cmake --build $build -j2)" >&2; exit 2; }
source "$repo/tools/lib/postgres.sh"
pg_require

work=$(mktemp -d /tmp/deskfarm-store-drill-XXXXXX)
chmod 755 "$work"  # the server runs as nobody when root: it must reach its directory
run_pid=""
cleanup() {
  if [ -n "$run_pid" ]; then
    kill -TERM "$run_pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$run_pid" 2>/dev/null || true
  fi
  pg_stop_all
  rm -rf "$work"
}
trap cleanup EXIT
pg_start_primary db "$work/db"

desktops=$((users + 20))
source "$repo/tools/bench/ddc/storm_farm.sh"
storm_farm "$work/farm.toml" store-drill "$work/var" "$desktops" assigned drill-key 1 $((users * 2)) "$db_url"
"$deskfarm" run "$work/farm.toml" --plugin-path "$build/plugins" --log-level warning 2>"$work/run.log" &
run_pid=$!

# The farm is ready when every desktop is registered (vda's per_controller counts, from /status).
status_field() {  # status_field PYTHON_EXPRESSION_OVER_instances → one line
  "$deskfarm" status "$work/farm.toml" 2>/dev/null | python3 -c "import json,sys
st=json.load(sys.stdin); inst={i['name']: i.get('fields', {}) for i in st['instances']}
print($1)" 2>/dev/null || echo ""
}
now_ms() { date +%s%3N; }  # wall clock: the storm's samples count from its started_unix_ms
registered=0
deadline=$(($(now_ms) + 180000))
for _ in $(seq 900); do
  registered=$(status_field "sum(inst.get('agents', {}).get('per_controller', {}).values())")
  [ "${registered:-0}" -ge "$desktops" ] 2>/dev/null && break
  kill -0 "$run_pid" 2>/dev/null || { echo "store_drill.sh: the deployment stopped; its log:" >&2; cat "$work/run.log" >&2; exit 1; }
  [ "$(now_ms)" -lt "$deadline" ] || break
  sleep 0.2
done
[ "${registered:-0}" -ge "$desktops" ] || { echo "store_drill.sh: ${registered:-0} of $desktops desktops registered within 180 s" >&2; tail -20 "$work/run.log" >&2; exit 1; }
echo "farm: $desktops desktops registered with ddc-1 and ddc-2; PostgreSQL $(pg_psql db -tAc 'SHOW server_version') on $db_host:$db_port"

unsaved() { status_field "inst.get('ddc-1', {}).get('assignments_unsaved', 0) + inst.get('ddc-2', {}).get('assignments_unsaved', 0)"; }
"$deskfarm" storm "$work/farm.toml" --users "$users" --rate "$rate/s" --session "$session" --away 1s \
  --disconnect-ratio 0.2 --reconnect-ratio 0.5 --json "$work/storm.json" --latencies "$work/latencies.csv" \
  >"$work/storm.out" 2>&1 &
storm_pid=$!

# Stop the store a third into the arrivals (users keep arriving after it is back), keep it down `down` seconds,
# start it again on the same port. The storm's first progress line (once a second) says its users are arriving.
for _ in $(seq 300); do [ -s "$work/storm.out" ] && break; sleep 0.1; done
sleep "$(python3 -c "print(max(0.0, $users / $rate / 3 - 1))")"
stop_ms=$(now_ms)
pg_stop db fast
peak=0
end=$(($(now_ms) + down * 1000))
while [ "$(now_ms)" -lt "$end" ]; do
  u=$(unsaved); [ -n "$u" ] && [ "$u" -gt "$peak" ] && peak=$u
  sleep 0.2
done
start_ms=$(now_ms)
pg_start db
up_ms=$(now_ms)  # accepting connections again

# assignments_unsaved drains (each controller retries every second) while the storm finishes: bounded.
drained_ms=-1
for _ in $(seq 1200); do
  u=$(unsaved); [ -n "$u" ] && [ "$u" -gt "$peak" ] && peak=$u
  if [ "$u" = 0 ] && [ "$drained_ms" -lt 0 ]; then drained_ms=$(now_ms); fi
  kill -0 "$storm_pid" 2>/dev/null || { [ "$drained_ms" -ge 0 ] && break; }
  sleep 0.1
done
storm_rc=0
wait "$storm_pid" || storm_rc=$?
final_unsaved=$(unsaved)

psql_rows() { pg_psql db -tAc "$1"; }
rows=$(psql_rows "SELECT COUNT(*) FROM ddc_assignments")
distinct_users=$(psql_rows "SELECT COUNT(DISTINCT user_name) FROM ddc_assignments")
twice=$(psql_rows "SELECT COUNT(*) FROM (SELECT user_name FROM ddc_assignments GROUP BY user_name HAVING COUNT(*) > 1) d")
strangers=$(psql_rows "SELECT COUNT(*) FROM ddc_assignments WHERE user_name NOT LIKE 'storm-user-%'")

python3 - "$work/storm.json" "$work/latencies.csv" "$stop_ms" "$up_ms" "$peak" "$final_unsaved" "$drained_ms" \
  "$rows" "$distinct_users" "$twice" "$strangers" "$storm_rc" "$down" "$start_ms" <<'PY'
import csv, json, math, sys
(summary_file, csv_file, stop_ms, up_ms, peak, final_unsaved, drained_ms, rows, distinct, twice, strangers, storm_rc,
 down, start_ms) = sys.argv[1:]
s = json.load(open(summary_file))
t0 = float(s["started_unix_ms"])
stop_ms, up_ms, start_ms = float(stop_ms) - t0, float(up_ms) - t0, float(start_ms) - t0
drained_ms = float(drained_ms) - t0 if float(drained_ms) >= 0 else -1.0
samples = [(float(r[0]), float(r[1]), r[3]) for r in csv.reader(open(csv_file)) if r and r[0][0].isdigit()]
decided = [x for x in samples if x[2] in ("connect", "starting", "refused")]

def p99(ms):
    if not ms: return 0.0
    ms = sorted(ms)
    return ms[max(0, math.ceil(0.99 * len(ms)) - 1)]

def window(name, lo, hi):
    xs = [x for x in decided if lo <= x[0] < hi]
    last = max([x[0] for x in decided] + [lo])
    span = (min(hi, last) - lo) / 1000.0
    rate = len(xs) / span if span > 0 else 0.0
    print(f"  {name:<34} {len(xs):6d} decisions  {rate:8.1f}/s  p99 {p99([x[1] for x in xs]):8.2f} ms")
    return xs

print(f"storm: {s['users']} users, {s['brokered']} brokered, {s['refused']} refused, {s['failed']} failed, "
      f"{s['unfinished']} unfinished; {s['decisions']} decisions ({s['decisions_per_s']:.0f}/s), p99 {s['broker_p99_ms']:.2f} ms")
for kind, n in s.get("errors", {}).items():
    print(f"  error {kind} x{n}: {s['error_examples'].get(kind, '')}")
print(f"PostgreSQL stopped at {stop_ms/1000:.2f} s, started again at {start_ms/1000:.2f} s (answering at {up_ms/1000:.2f} s)")
window("before the stop", 0, stop_ms)
during = window("while the store was down", stop_ms, up_ms)
window("after it came back", up_ms, 1e18)
connects_down = sum(1 for x in during if x[2] == "connect")
print(f"decisions while the store was down: {len(during)} ({connects_down} users given a desktop)")
print(f"assignments_unsaved: peak {peak}, drained to 0 at {drained_ms/1000:.2f} s "
      f"({(drained_ms - up_ms)/1000:.2f} s after the store answered), at the end {final_unsaved}")
print(f"ddc_assignments: {rows} rows, {distinct} users, {twice} users with more than one row, {strangers} rows of unknown users; "
      f"the storm brokered {s['brokered']} users")
problems = []
if int(storm_rc) != 0: problems.append(f"deskfarm storm exited {storm_rc}")
if s["failed"] or s["unfinished"]: problems.append("users failed or did not finish")
if int(peak) == 0 and len(during) > 0: problems.append("no assignment waited for the store while it was down (did the drill stop it?)")
if final_unsaved != "0" or drained_ms < 0: problems.append("assignments_unsaved did not drain to 0")
if int(twice) != 0: problems.append("a user has two rows")
if int(strangers) != 0: problems.append("rows of users the storm never had")
if int(rows) != int(s["brokered"]) or int(distinct) != int(s["brokered"]):
    problems.append(f"{rows} rows for {s['brokered']} brokered users")
print("invariants: " + ("all hold" if not problems else "FAILED: " + "; ".join(problems)))
sys.exit(1 if problems else 0)
PY
