#!/usr/bin/env bash
# The Lilydink comparison (docs/zone-design.md): the same three sites (tools/farmnet, --desktops) as one zone, one
# zone per site and one farm per site, each design in its own `farmnet.sh up` on this machine, one after the other.
# Per design and repetition, everything done at site b (neither the data store's nor one zone's ZDC's site):
#   change       --changes reports of site b's server (ima-b.admin.report), one after the other;
#   logon        a `deskfarm storm` of --logons users through site b's controller ddc-b onto site b's desktops (each
#                logs on, holds the desktop 300 ms, logs off; the farm's licence server is in site a, a farm per
#                site's in the site); its brokering round trip is the logon latency;
#   convergence  --converge changes, each timed until every other site that holds the farm's view shows it (its
#                collector's queryds, polled, at most 10 s): one zone: the ZDC at site c; zone per site: the ZDCs
#                of a and c; farm per site: no other site holds it (–).
# WAN bytes are linkemu's counters of what enters the hub from any site, minus the background (keep-alives, NATS
# pings, data-store polls, one zone's pool master polling the other sites' hypervisors) measured over an idle
# window of 10 s in each repetition, scaled to each window's length. Prints min and median over the repetitions
# and the ratio of the medians to one zone's. Root only.
# Usage: tools/bench/farmnet/zones.sh [--designs one,site,farm] [--repeat 3] [--changes 1000] [--logons 40]
#        [--converge 5] [--desktops 30] [--delay-ms 10] [--bin BUILD/bin] [--tsv FILE]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
farmnet=$here/../../farmnet/farmnet.sh
bin=$(cd "$here/../../.." && pwd)/build/bin
designs=one,site,farm repeat=3 changes=1000 logons=40 converge=5 desktops=30 delay=10 tsv=""
usage() { sed -n "2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}" "$0"; }
count() {  # OPTION VALUE MAX: a whole number 1..MAX, else a usage error
  [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] && [ "$2" -le "$3" ] || { echo "zones.sh: $1 takes a whole number 1..$3, not '$2'" >&2; exit 2; }
}
while [ $# -gt 0 ]; do
  [ "$1" = -h ] || [ "$1" = --help ] || [ $# -ge 2 ] || { echo "zones.sh: $1 needs a value (--help)" >&2; exit 2; }
  case "$1" in
    --designs) designs=$2; shift 2 ;;
    --repeat) count "$1" "$2" 40; repeat=$2; shift 2 ;;
    --changes) count "$1" "$2" 5000; changes=$2; shift 2 ;;
    --logons) count "$1" "$2" 10000; logons=$2; shift 2 ;;
    --converge) count "$1" "$2" 100; converge=$2; shift 2 ;;
    --desktops) count "$1" "$2" 10000; desktops=$2; shift 2 ;;
    --delay-ms) count "$1" "$2" 10000; delay=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --tsv) tsv=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "zones.sh: unknown option '$1' (--help)" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a design_list <<<"$designs"
[ ${#design_list[@]} -ge 1 ] || { echo "zones.sh: --designs is empty" >&2; exit 2; }
for d in "${design_list[@]}"; do
  case "$d" in one|site|farm) ;; *) echo "zones.sh: design '$d': one of one, site, farm" >&2; exit 2 ;; esac
done
[ "$(id -u)" = 0 ] || { echo "zones.sh: needs root (farmnet.sh makes network namespaces)" >&2; exit 1; }

work=$(mktemp -d /tmp/deskfarm-zones-XXXXXX)
chmod 755 "$work"  # PostgreSQL runs as nobody inside it
run=""
cleanup() { if [ -n "$run" ]; then "$farmnet" down "$run" >/dev/null 2>&1 || true; fi; rm -rf "$work"; }
trap cleanup EXIT
die() { echo "zones.sh: $*" >&2; exit 1; }

wan_bytes() { awk '$1 == "port" { for (i = 2; i < NF; i++) if ($i == "rx_bytes") s += $(i + 1) } END { print s + 0 }' "$run/linkemu.stats"; }
# Runs CMD… between two fresh readings of linkemu's stats file (rewritten every second); prints "BYTES SECONDS".
window() {
  local b0 b1 t0 t1
  sleep 1.2
  b0=$(wan_bytes)
  t0=$EPOCHREALTIME
  "$@"
  sleep 1.2
  t1=$EPOCHREALTIME
  b1=$(wan_bytes)
  echo "$((b1 - b0)) $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
}
# A kept-alive HTTP POST in bash alone (/dev/tcp on fd 3), run in a site's namespace: no process per request, so
# neither a burst of changes nor a poll waits for a curl to start, and the times below are the farm's.
http_lib='
export LC_ALL=C
connect() { exec 3<>"/dev/tcp/${1%:*}/${1##*:}"; }
post() {  # PATH BODY: the answer'"'"'s status line in status, its body in reply; fails unless 200 (5 s per read)
  local line len=0
  printf "POST %s HTTP/1.1\r\nHost: farmnet\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" "$1" "${#2}" "$2" >&3
  status="" reply=""
  IFS= read -r -t 5 status <&3 || return 1
  while IFS= read -r -t 5 line <&3; do
    line=${line%[[:cntrl:]]}
    [ -n "$line" ] || break
    case "${line,,}" in content-length:*) len=${line#*:}; len=${len// /} ;; esac
  done
  [ "$len" -eq 0 ] || IFS= read -r -t 5 -N "$len" reply <&3 || return 1
  [[ "$status" == "HTTP/1.1 200"* ]]
}'
# N reports of ima-b (loads 1..N) through site b's admin endpoint (what `deskfarm request` sends), one after the
# other on one connection.
reports() {
  "$farmnet" exec "$run" b bash -c "$http_lib"'
    connect "$(cat "$1")" || exit 1
    for i in $(seq "$2"); do
      post /request/ima.ima-b.admin.report "{\"sessions\": 1, \"load\": $i}" ||
        { echo "zones.sh: report $i at site b: ${status:-no answer} $reply" >&2; exit 1; }
    done' _ "$run/sites/b/var/admin.address" "$1"
}
# One report of ima-b with load $1; prints the time just before the request was written (connected already).
change_now() {
  "$farmnet" exec "$run" b bash -c "$http_lib"'
    connect "$(cat "$1")" || exit 1
    t=$EPOCHREALTIME
    post /request/ima.ima-b.admin.report "{\"sessions\": 1, \"load\": $2}" ||
      { echo "zones.sh: report at site b: ${status:-no answer} $reply" >&2; exit 1; }
    echo "$t"' _ "$run/sites/b/var/admin.address" "$1"
}
storm() {
  "$farmnet" df "$run" b storm --users "$logons" --first-user "$1" --rate 20/s --session 300ms --disconnect-ratio 0 \
    --controllers ddc-b --group pool-b --json "$work/storm.json" >/dev/null 2>"$work/storm.err" ||
    die "the storm at site b failed (design $design): $(tail -n 3 "$work/storm.err")"
}
json_number() { sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p" "$work/storm.json"; }
observers() {  # SITE:INSTANCE of each other site's collector that holds ima-b's record
  case "$1" in one) echo "c:ima-c" ;; site) echo "a:ima-a c:ima-c" ;; farm) ;; esac
}
# One change at site b with load $1; prints the milliseconds until every observer's collector shows it.
converge_once() {
  local load=$1 o s pids=() t0 seen
  for o in $(observers "$design"); do
    s=${o%%:*}
    # Polls without pause on one connection (no process per poll), at most 10 s and 50,000 polls.
    "$farmnet" exec "$run" "$s" bash -c "$http_lib"'
      connect "$(cat "$1")" || exit 1
      end=$((SECONDS + 10))
      for _ in $(seq 50000); do
        [ $SECONDS -lt $end ] || break
        post "/request/ima.$2.admin.queryds" "{}" || exit 1
        if [[ "$reply" == *"\"instance\":\"ima-b\",\"load\":$3,"* ]]; then echo "$EPOCHREALTIME"; exit 0; fi
      done
      exit 1' _ "$run/sites/$s/var/admin.address" "${o#*:}" "$load" >"$work/seen-$s" &
    pids+=("$!:$s")
  done
  sleep 0.5  # the pollers are polling
  t0=$(change_now "$load")
  for o in "${pids[@]}"; do wait "${o%%:*}" || die "site ${o#*:} did not show site b's change (load $load) within 10 s (design $design)"; done
  seen=$(cat "$work"/seen-* | sort -n | tail -n1)
  rm -f "$work"/seen-*
  awk -v a="$t0" -v b="$seen" 'BEGIN { printf "%.1f", (b - a) * 1000 }'
}

results=$work/results  # lines: DESIGN METRIC VALUE, one per repetition
: >"$results"
started_at=$(date -u +%Y-%m-%dT%H:%MZ)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for design in "${design_list[@]}"; do
  run=$work/run-$design
  "$farmnet" up "$run" --zones "$design" --desktops "$desktops" --delay-ms "$delay" --bin "$bin" >"$work/up.log" 2>&1 ||
    { cat "$work/up.log" >&2; die "farmnet.sh up --zones $design failed"; }
  echo "zones.sh: $(tail -n1 "$work/up.log")" >&2
  for rep in $(seq "$repeat"); do
    # (command substitutions, not process substitutions: a failure inside stops the script)
    w=$(window reports "$changes"); read -r change_b change_s <<<"$w"
    w=$(window sleep 10); read -r idle_b idle_s <<<"$w"  # two passes of every controller's pool service
    w=$(window storm $(((rep - 1) * logons + 1))); read -r logon_b logon_s <<<"$w"
    brokered=$(json_number brokered)
    [ "${brokered:-0}" -gt 0 ] || die "the storm at site b brokered nobody (design $design; $work/storm.json)"
    awk -v d="$design" -v cb="$change_b" -v cs="$change_s" -v ib="$idle_b" -v is="$idle_s" -v lb="$logon_b" \
      -v ls="$logon_s" -v n="$changes" -v u="$brokered" -v p50="$(json_number broker_p50_ms)" -v p99="$(json_number broker_p99_ms)" 'BEGIN {
        rate = ib / is
        printf "%s change %.1f\n%s logon %.1f\n%s p50 %.2f\n%s p99 %.2f\n%s idle %.1f\n", d, (cb - rate * cs) / n, d, (lb - rate * ls) / u, d, p50, d, p99, d, rate
      }' >>"$results"
    if [ -n "$(observers "$design")" ]; then
      # Loads above any of the change window (ima takes 0..10,000), one per change of the run.
      for k in $(seq "$converge"); do converge_once $((5000 + (rep - 1) * converge + k)); echo; done |
        sort -n | awk -v d="$design" '{ v[NR] = $1 } END { printf "%s converge %s\n", d, v[int((NR + 1) / 2)] }' >>"$results"
    fi
    echo "zones.sh: $design, repetition $rep of $repeat done" >&2
  done
  "$farmnet" down "$run" >/dev/null
  run=""
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# min and median over the repetitions, per design and metric: DESIGN METRIC MIN MEDIAN
stats=$(sort -k1,1 -k2,2 -k3,3g "$results" | awk '
  function flush() { if (n) printf "%s %s %s %s\n", key_d, key_m, v[1], (n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2) }
  $1 " " $2 != key { flush(); key = $1 " " $2; key_d = $1; key_m = $2; n = 0 }
  { v[++n] = $3 }
  END { flush() }')
peer=${design_list[0]}
for d in "${design_list[@]}"; do [ "$d" = one ] && peer=one; done
get() { awk -v d="$1" -v m="$2" -v c="$3" '$1 == d && $2 == m { print $c; f = 1 } END { if (!f) print "-" }' <<<"$stats"; }
name() { case "$1" in one) echo "one zone" ;; site) echo "zone per site" ;; farm) echo "farm per site" ;; esac; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2fx", a / b }'; }

echo "The Lilydink comparison: 3 sites, $delay ms per link ($((2 * delay)) ms one way between sites), $desktops desktops per site"
echo "$started_at; load average $load_before before, $load_after after; $repeat repetitions, min / median"
echo "command: tools/bench/farmnet/zones.sh --designs $designs --repeat $repeat --changes $changes --logons $logons --converge $converge --desktops $desktops --delay-ms $delay"
printf '%-14s %17s %17s %19s %19s %19s %12s\n' design "WAN B/change" "WAN B/logon" "logon p50 ms" "logon p99 ms" "convergence ms" "idle B/s"
for d in "${design_list[@]}"; do
  printf '%-14s' "$(name "$d")"
  for m in change logon p50 p99 converge; do printf ' %8s /%8s' "$(get "$d" "$m" 3)" "$(get "$d" "$m" 4)"; done
  printf ' %12s\n' "$(get "$d" idle 4)"
done
echo "medians against $(name "$peer") (the peer, same run):"
for d in "${design_list[@]}"; do
  [ "$d" != "$peer" ] || continue
  printf '  %-14s WAN B/change %s, WAN B/logon %s, logon p50 %s, p99 %s, convergence %s\n' "$(name "$d")" \
    "$(ratio "$(get "$d" change 4)" "$(get "$peer" change 4)")" "$(ratio "$(get "$d" logon 4)" "$(get "$peer" logon 4)")" \
    "$(ratio "$(get "$d" p50 4)" "$(get "$peer" p50 4)")" "$(ratio "$(get "$d" p99 4)" "$(get "$peer" p99 4)")" \
    "$(ratio "$(get "$d" converge 4)" "$(get "$peer" converge 4)")"
done
if [ -n "$tsv" ]; then  # the medians, for tools/bench/farmnet/plot.sh
  {
    printf '# design\tchange_bytes\tlogon_bytes\tlogon_p50_ms\tlogon_p99_ms\tconvergence_ms\n'
    for d in "${design_list[@]}"; do
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(name "$d")" "$(get "$d" change 4)" "$(get "$d" logon 4)" "$(get "$d" p50 4)" \
        "$(get "$d" p99 4)" "$(get "$d" converge 4)"
    done
  } >"$tsv"
fi
