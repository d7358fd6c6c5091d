#!/usr/bin/env bash
# Starts a private PostgreSQL server on 127.0.0.1 (its own data directory, a free port, run as an
# unprivileged user), runs the kernel's [postgres] tests against it, and stops it by its PID.
set -euo pipefail
kernel_tests=$1
deskfarm=${2:-}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
if [ -z "$bindir" ]; then
  # Same rule as tests/support/deskfarm/testing/peers.hpp: fail under CI, skip (exit 77) elsewhere.
  echo "DESKFARM-TEST-SKIPPED: the PostgreSQL server is not installed (scripts/setup.sh installs it)"
  [ "${CI:-}" = true ] && { echo "postgres_store.sh: PostgreSQL is required under CI=true" >&2; exit 1; }
  exit 77
fi
work=$(mktemp -d /tmp/deskfarm-pg-XXXXXX)
user=nobody
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; fi
  rm -rf "$work"
}
trap cleanup EXIT
chown "$user" "$work"
as_user() { if [ "$(id -u)" = 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi; }
as_user "$bindir/initdb" -D "$work/data" -A trust -U deskfarm >/dev/null
# PostgreSQL cannot listen on port 0 and report it, so a free port is picked and released first; another
# test (ctest -j) may take it in between, so a bind failure picks a new port (at most 5 tries).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=""
for _ in 1 2 3 4 5; do
  port=$(free_port)
  as_user "$bindir/postgres" -D "$work/data" -h 127.0.0.1 -p "$port" -k "$work" >"$work/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    if "$bindir/pg_isready" -h 127.0.0.1 -p "$port" >/dev/null 2>&1 || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then break; fi
  wait "$pid" || true
  pid=""
  grep -q "could not bind\|Address already in use" "$work/server.log" || break
  echo "postgres_store.sh: port $port was taken meanwhile; trying another"
done
[ -n "$pid" ] && "$bindir/pg_isready" -h 127.0.0.1 -p "$port" >/dev/null || { cat "$work/server.log"; exit 1; }
# -w NoTests: a renamed test case must fail here, not pass with nothing run.
DESKFARM_TEST_POSTGRES_URL="postgresql://deskfarm@127.0.0.1:$port/postgres" "$kernel_tests" -w NoTests "[postgres]"

[ -n "$deskfarm" ] || exit 0
# A role plugin on the same server: pvs keeps its devices and vDisks there (run twice: seeding is idempotent).
url="postgresql://deskfarm@127.0.0.1:$port/postgres"
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
devices=$("$bindir/psql" -h 127.0.0.1 -p "$port" -U deskfarm -d postgres -tAc "SELECT mac || ' ' || vdisk FROM pvs_devices")
[ "$devices" = "52:54:00:00:09:01 base" ] || { echo "pvs_devices holds: $devices"; exit 1; }
echo "pvs on PostgreSQL: ok"
