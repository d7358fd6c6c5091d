#!/usr/bin/env bash
# How long `farmnet.sh up` takes (issue 12: three sites with a NATS cluster and a PostgreSQL replica in under 6 s):
# --repeat runs of `up --zones ZONES` with the replica seeded from a local copy of the primary's initdb (the default),
# alternating with as many of the peer, `--replica-copy basebackup` (cloned through the WAN link once the primary
# runs), on this machine in the same run. Each `up` returns only once every piece answers (NATS routes, primary,
# replica streaming, every site's ZDC); each is taken down before the next. Prints min / median / max per way, the
# median of each step (from up's last line) and the ratio of the medians, with the load average before and after.
# Root only.
# Usage: tools/bench/farmnet/up.sh [--repeat 5] [--zones both] [--rate 100mbit] [--bin BUILD/bin]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
farmnet=$here/../../farmnet/farmnet.sh
bin=$(cd "$here/../../.." && pwd)/build/bin
repeat=5 zones=both rate=100mbit
usage() { sed -n "2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}" "$0"; }
while [ $# -gt 0 ]; do
  [ "$1" = -h ] || [ "$1" = --help ] || [ $# -ge 2 ] || { echo "up.sh: $1 needs a value (--help)" >&2; exit 2; }
  case "$1" in
    --repeat) [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] && [ "$2" -le 40 ] || { echo "up.sh: --repeat takes 1..40, not '$2'" >&2; exit 2; }
              repeat=$2; shift 2 ;;
    --zones) zones=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "up.sh: unknown option '$1' (--help)" >&2; exit 2 ;;
  esac
done
case "$zones" in one|site|both) ;; *) echo "up.sh: --zones one, site or both (farm has no replica to compare), not '$zones'" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "up.sh: needs root (farmnet.sh makes network namespaces)" >&2; exit 1; }

work=$(mktemp -d /tmp/deskfarm-farmup-XXXXXX)
chmod 755 "$work"  # PostgreSQL runs as nobody inside it
run=""
cleanup() { if [ -n "$run" ]; then "$farmnet" down "$run" >/dev/null 2>&1 || true; fi; rm -rf "$work"; }
trap cleanup EXIT

results=$work/results  # lines: WAY SECONDS STEPS…
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$repeat"); do
  for way in local basebackup; do
    run=$work/run-$way-$rep
    "$farmnet" up "$run" --zones "$zones" --rate "$rate" --replica-copy "$way" --bin "$bin" >"$work/up.log" 2>&1 ||
      { cat "$work/up.log" >&2; echo "up.sh: farmnet.sh up --replica-copy $way failed" >&2; exit 1; }
    last=$(tail -n1 "$work/up.log")
    echo "up.sh: $way: $last" >&2
    "$farmnet" down "$run" >/dev/null
    run=""
    awk -v w="$way" '{ printf "%s %s", w, $4 } /steps \(s\):/ { sub(/.*steps \(s\): /, ""); gsub(/,/, ""); printf " %s", $0 } END { print "" }' <<<"$last" >>"$results"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "farmnet.sh up --zones $zones --rate $rate: $repeat runs each, alternating; load average $load_before before, $load_after after"
awk '
  function median(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                     return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  { w = $1; n[w]++; total[w, n[w]] = $2
    for (i = 3; i < NF; i += 2) { if (!((w, $i) in seen)) { seen[w, $i] = 1; order[w] = order[w] " " $i }; step[w, $i, n[w]] = $(i + 1) } }
  END {
    for (w in n) {
      for (i = 1; i <= n[w]; i++) v[i] = total[w, i]
      med[w] = median(v, n[w]); lo = v[1]; hi = v[n[w]]
      printf "%-11s up in min %.2f / median %.2f / max %.2f s; median per step:", w, lo, med[w], hi
      k = split(order[w], names, " ")
      for (j = 1; j <= k; j++) { for (i = 1; i <= n[w]; i++) v[i] = step[w, names[j], i] + 0; printf " %s %.2f", names[j], median(v, n[w]) }
      print ""
    }
    printf "local copy against pg_basebackup through the link (the peer, same run): %.2fx the time\n", med["local"] / med["basebackup"]
  }' "$results"
