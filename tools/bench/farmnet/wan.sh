#!/usr/bin/env bash
# WAN bytes per change: one zone across three sites against one zone per site, in the same farmnet run
# (tools/farmnet, --zones both: both farms side by side in the same processes). linkemu counts every byte that
# crosses a site's link; the background (keep-alives, NATS pings, data-store polls) is measured over an idle window
# of the same length and subtracted. Root only. Usage: tools/bench/farmnet/wan.sh [--changes N] [--bin BUILD/bin]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
farmnet=$here/../../farmnet/farmnet.sh
bin=$(cd "$here/../../.." && pwd)/build/bin
changes=300
while [ $# -gt 0 ]; do
  case "$1" in
    --changes) changes=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    -h|--help) sed -n 2,5p "$0"; exit 0 ;;
    *) echo "wan.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
work=$(mktemp -d /tmp/deskfarm-wan-XXXXXX)
chmod 755 "$work"
started=false
cleanup() { if $started; then "$farmnet" down "$work/run" >/dev/null || true; fi; rm -rf "$work"; }
trap cleanup EXIT
started=true
"$farmnet" up "$work/run" --bin "$bin" --zones both 2>/dev/null

wan_bytes() { awk '$1 == "port" { for (i = 2; i < NF; i++) if ($i == "rx_bytes") s += $(i + 1) } END { print s + 0 }' "$work/run/linkemu.stats"; }
# Runs `changes` reports on instance $1 of site a, one after the other; prints the WAN bytes counted meanwhile
# and the seconds it took (with no instance: an idle window of $2 seconds).
measure() {
  local instance=$1 b0 b1 t0 t1
  sleep 1.2  # the stats file is rewritten every second: start from a fresh one
  b0=$(wan_bytes)
  t0=$EPOCHREALTIME
  if [ -n "$instance" ]; then
    # POST /request/SUBJECT on site a's admin endpoint, what `deskfarm request` sends, from one shell in its namespace
    "$farmnet" exec "$work/run" a bash -c 'for i in $(seq "$1"); do
        curl -fsS -o /dev/null -H "Content-Type: application/json" --data "{\"sessions\": $i, \"load\": $i}" \
          "http://$(cat "$2")/request/ima.$3.admin.report" || exit 1
      done' _ "$changes" "$work/run/sites/a/var/admin.address" "$instance"
  else
    sleep "$2"
  fi
  sleep 1.2
  t1=$EPOCHREALTIME
  b1=$(wan_bytes)
  echo "$((b1 - b0)) $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
}

read -r one one_s < <(measure ima-a)     # member of zone "farm" (its ZDC ima-c is at site c): a → c, then nothing
read -r zoned zoned_s < <(measure zone-a) # ZDC of zone a: forwarded to zone b's and zone c's ZDCs
read -r idle idle_s < <(measure "" "$one_s")
per() { awk -v b="$1" -v s="$2" -v i="$idle" -v is="$idle_s" -v n="$changes" 'BEGIN { printf "%.0f", (b - i * s / is) / n }'; }
one_per=$(per "$one" "$one_s")
zoned_per=$(per "$zoned" "$zoned_s")
printf '%-44s %12s %10s %14s\n' "farm shape (3 sites, $changes changes at site a)" "WAN bytes" "seconds" "bytes/change"
printf '%-44s %12s %10.1f %14s\n' "idle (background)" "$idle" "$idle_s" "-"
printf '%-44s %12s %10.1f %14s\n' "one zone (member at a, ZDC at c)" "$one" "$one_s" "$one_per"
printf '%-44s %12s %10.1f %14s\n' "zone per site (ZDC at a, forwards to b, c)" "$zoned" "$zoned_s" "$zoned_per"
awk -v a="$zoned_per" -v b="$one_per" 'BEGIN { if (b > 0) printf "zone per site / one zone: %.2fx WAN bytes per change\n", a / b }'
