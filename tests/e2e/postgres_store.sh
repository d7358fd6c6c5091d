#!/usr/bin/env bash
# Starts a private PostgreSQL server on 127.0.0.1 (its own data directory, a free port, run as an
# unprivileged user), runs the kernel's [postgres] tests against it, and stops it by its PID.
set -euo pipefail
kernel_tests=$1
deskfarm=${2:-}
source "$(dirname "$0")/../../tools/lib/postgres.sh"
pg_require
work=$(mktemp -d /tmp/deskfarm-pg-XXXXXX)
chmod 755 "$work"  # the server runs as nobody when root: it must reach its directory
trap 'pg_stop_all; rm -rf "$work"' EXIT
pg_start_primary db "$work/db"
# -w NoTests: a renamed test case must fail here, not pass with nothing run.
DESKFARM_TEST_POSTGRES_URL="$db_url" "$kernel_tests" -w NoTests "[postgres]"

[ -n "$deskfarm" ] || exit 0
# A role plugin on the same server: pvs keeps its devices and vDisks there (run twice: seeding is idempotent).
url=$db_url
cat >"$work/pg.toml" <<TOML
[deployment]
name = "pg"
state_dir = "$work/var"
data_store = "$url"
admin = "127.0.0.1:0"
[instances.pvs-1]
plugin = "pvs"
tftp = "127.0.0.1:0"
stream = "127.0.0.1:0"
store = "$work/vdisks"
vdisks = [ { name = "base", size_mb = 4 } ]
devices = [ { mac = "52:54:00:00:09:01", vdisk = "base" } ]
TOML
for round in 1 2; do
  "$deskfarm" run --for 1s "$work/pg.toml" 2>"$work/run.log" || { cat "$work/run.log"; exit 1; }
  grep -q "instance pvs-1 (pvs .*) running" "$work/run.log" || { cat "$work/run.log"; exit 1; }
done
devices=$(pg_psql db -tAc "SELECT mac || ' ' || vdisk FROM pvs_devices")
[ "$devices" = "52:54:00:00:09:01 base" ] || { echo "pvs_devices holds: $devices"; exit 1; }
echo "pvs on PostgreSQL: ok"
