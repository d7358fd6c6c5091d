#!/usr/bin/env bash
# The admin endpoint under a logon storm: tools/bench/admin/run.sh [BUILD_DIR]
# One `deskfarm run` farm (simulated XenServer pool, two controllers, the agents, a licence server; every desktop
# started and registered before the storms), then through its admin endpoint:
#   1. `deskfarm storm` (--users, --rate, --concurrency below): decisions/s and brokering p50/p99;
#   2. the peer: curl brokering as many other users with the same requests (POST /request/ddc.*.admin.broker),
#      --parallel on kept-alive connections, the same concurrency: requests/s and p50/p99 from curl's own timings.
# DESKFARM=path/to/deskfarm PLUGINS=dir measure another build (e.g. an older one) against the same peer.
# Knobs: DESKTOPS (4500) USERS (2000) RATE (2000/s) CONCURRENCY (16) SESSION (5s). Nobody disconnects, so every
# decision falls within the arrivals and decisions/s measures the endpoint (the rate asks more than it serves).
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
if [[ -z "${DESKFARM:-}" ]]; then
  cmake --build "$build" --target deskfarm ddc vda hypervisor-xen license >/dev/null
fi
deskfarm=${DESKFARM:-$build/bin/deskfarm}
plugins=${PLUGINS:-$build/plugins}
desktops=${DESKTOPS:-4500} users=${USERS:-2000} rate=${RATE:-2000/s} concurrency=${CONCURRENCY:-16} session=${SESSION:-5s}
command -v curl >/dev/null || { echo "run.sh: curl is needed for the peer (apt-get install curl)" >&2; exit 1; }

dir=$(mktemp -d /tmp/deskfarm-admin-bench.XXXXXX)
pid=
cleanup() { if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$dir"; }
trap cleanup EXIT

source tools/bench/ddc/storm_farm.sh
storm_farm "$dir/farm.toml" farm "$dir/var" "$desktops" pooled-random bench-key 10 $((desktops * 2))

"$deskfarm" run "$dir/farm.toml" --plugin-path "$(realpath "$plugins")" --log-level warning >"$dir/run.log" 2>&1 &
pid=$!
# Ready when every desktop is started and registered (bounded: 300 s).
for _ in $(seq 1 300); do
  if ! kill -0 "$pid" 2>/dev/null; then cat "$dir/run.log" >&2; echo "run.sh: the farm stopped" >&2; exit 1; fi
  idle=$("$deskfarm" request ddc.ddc-1.admin.groups '{}' "$dir/farm.toml" 2>/dev/null | grep -o '"idle":[0-9]*' | head -1 | cut -d: -f2 || true)
  [[ "${idle:-0}" -ge "$desktops" ]] && break
  sleep 1
done
[[ "${idle:-0}" -ge "$desktops" ]] || { echo "run.sh: only ${idle:-0} of $desktops desktops idle after 300 s" >&2; exit 1; }
admin=$(cat "$dir/var/admin.address")
echo "farm: $desktops desktops registered; admin endpoint $admin; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. deskfarm storm
"$deskfarm" storm "$dir/farm.toml" --users "$users" --rate "$rate" --session "$session" --disconnect-ratio 0 --concurrency "$concurrency" \
  --json "$dir/storm.json" >"$dir/storm.txt" 2>/dev/null || true
cat "$dir/storm.txt"
field() { grep -o "\"$1\":[0-9.e+-]*" "$dir/storm.json" | head -1 | cut -d: -f2; }
storm_rate=$(field decisions_per_s) storm_p50=$(field broker_p50_ms) storm_p99=$(field broker_p99_ms)

# 2. the peer: curl, the same broker requests for other users, kept-alive connections, the same concurrency.
# One section per request, "next" between them (without it curl joins every body into one) but not after the last:
# a trailing "next" opens an empty section, and curl's "no URL specified!" for it is a critical error that aborts
# the transfers still running or not yet begun (status 000, "Transfer aborted due to critical error in another
# transfer" / "Failed initialization"): the 32-41 answers curl lost in every earlier run, the endpoint not at fault.
mkdir -p "$dir/bodies"
for i in $(seq 1 "$users"); do
  printf '{"user": "curl-user-%d", "endpoint": "curl-%d"}' "$i" "$i" >"$dir/bodies/$i.json"
  printf 'url = "http://%s/request/ddc.ddc-%d.admin.broker"\ndata-binary = "@%s"\n' "$admin" "$((i % 2 + 1))" "$dir/bodies/$i.json"
  printf 'header = "Content-Type: application/json"\nheader = "X-Timeout-Ms: 10000"\noutput = "/dev/null"\n'
  printf 'write-out = "%%{http_code} %%{time_total} %%{errormsg}\\n"\n'
  if [[ "$i" -lt "$users" ]]; then printf 'next\n'; fi
done >"$dir/curl.cfg"
start=$(date +%s.%N)
curl --silent --show-error --no-progress-meter --parallel --parallel-max "$concurrency" --config "$dir/curl.cfg" >"$dir/curl.txt" 2>"$dir/curl.err" || true
end=$(date +%s.%N)
answered=$(grep -c '^200 ' "$dir/curl.txt" || true)
if [[ "$answered" -eq 0 ]]; then echo "run.sh: curl got no 200; its status codes:" >&2; cut -d" " -f1 "$dir/curl.txt" | sort | uniq -c >&2; exit 1; fi
curl_rate=$(echo "$answered / ($end - $start)" | bc -l)
sorted=$(grep '^200 ' "$dir/curl.txt" | cut -d' ' -f2 | sort -g)
rank() { echo "$sorted" | sed -n "$(( (answered * $1 + 99) / 100 ))p"; }
curl_p50=$(echo "$(rank 50) * 1000" | bc -l) curl_p99=$(echo "$(rank 99) * 1000" | bc -l)
printf 'curl (peer): %d of %d broker requests answered 200 in %.2f s (status codes: %s)\n' "$answered" "$users" \
  "$(echo "$end - $start" | bc -l)" "$(cut -d' ' -f1 "$dir/curl.txt" | sort | uniq -c | xargs)"
# Anything but 200 is shown with curl's own reason, and curl's complaints, so a lost answer is never silent.
grep -v '^200 ' "$dir/curl.txt" | cut -d' ' -f1,3- | sort | uniq -c | head -5 || true
if [[ -s "$dir/curl.err" ]]; then echo "curl said:"; head -5 "$dir/curl.err"; fi
printf '\n| measurement | deskfarm storm | curl --parallel %d | ratio |\n|---|---|---|---|\n' "$concurrency"
printf '| brokering decisions per second | %.0f | %.0f | %.2fx |\n' "$storm_rate" "$curl_rate" "$(echo "$storm_rate / $curl_rate" | bc -l)"
printf '| p50 (ms) | %.2f | %.2f | %.2fx |\n' "$storm_p50" "$curl_p50" "$(echo "$storm_p50 / $curl_p50" | bc -l)"
printf '| p99 (ms) | %.2f | %.2f | %.2fx |\n' "$storm_p99" "$curl_p99" "$(echo "$storm_p99 / $curl_p99" | bc -l)"
