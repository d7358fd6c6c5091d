#!/usr/bin/env bash
# The Lilydink measurement's command line (tools/bench/farmnet/zones.sh), the start-up one's (up.sh beside it) and
# farmnet's new `up` options refuse bad input with exit code 2 and a message naming the option, before anything is
# started (no root, no namespaces). The measurements themselves take minutes and stay out of the suite.
# Usage: zones_usage.sh ZONES_SH FARMNET_SH
set -uo pipefail
zones=$1 farmnet=$2
up=$(dirname "$zones")/up.sh
failures=0
# expect CODE TEXT CMD…: CMD exits with CODE and its output holds TEXT
expect() {
  local code=$1 text=$2 out got
  shift 2
  out=$("$@" 2>&1)
  got=$?
  if [ "$got" != "$code" ] || ! grep -qF -- "$text" <<<"$out"; then
    echo "FAIL: $* exited $got (want $code) with: $out (want it to hold '$text')" >&2
    failures=$((failures + 1))
  fi
}
expect 0 "one farm per site, each design in its own" "$zones" --help
expect 2 "design 'ring': one of one, site, farm" "$zones" --designs one,ring
expect 2 "--repeat takes a whole number 1..40, not '0'" "$zones" --repeat 0
expect 2 "--changes needs a value" "$zones" --changes
expect 2 "unknown option '--zones'" "$zones" --zones one
expect 2 "--zones is one, site, both or farm, not 'ring'" "$farmnet" up /nonexistent/run --zones ring
expect 2 "--desktops takes 0 to 10000 desktops per site, not 'many'" "$farmnet" up /nonexistent/run --desktops many
expect 0 "alternating with as many of the peer" "$up" --help
expect 2 "--repeat takes 1..40, not '0'" "$up" --repeat 0
expect 2 "--zones one, site or both (farm has no replica to compare), not 'farm'" "$up" --zones farm
expect 2 "--replica-copy is local or basebackup, not 'rsync'" "$farmnet" up /nonexistent/run --replica-copy rsync
[ "$failures" = 0 ] && echo "zones_usage: every bad argument refused"
exit $((failures > 0))
