#!/usr/bin/env bash
# Local host cache refresh: 1,000 server records from SQLite and from PostgreSQL (a private server on a loopback
# port, started here and stopped by its PID), beside sqlite3 / psql copying the same rows in the same run.
# usage: tools/bench/ima/lhc.sh [BUILD_DIR] [lhc_bench options: --rows N --repeat R]
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
shift || true
cmake --build "$build" -j2 --target lhc_bench >/dev/null
work=$(mktemp -d /tmp/deskfarm-lhc-bench-XXXXXX)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; fi
  rm -rf "$work"
}
trap cleanup EXIT
url=""
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$bindir" ]; then
  as_user() { if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }
  [ "$(id -u)" = 0 ] && chown nobody "$work"  # the server runs as nobody: it must reach its directory
  as_user "$bindir/initdb" -D "$work/pg/data" -A trust -U deskfarm >/dev/null
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  as_user "$bindir/postgres" -D "$work/pg/data" -h 127.0.0.1 -p "$port" -k "$work/pg" >"$work/pg/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do "$bindir/pg_isready" -h 127.0.0.1 -p "$port" >/dev/null 2>&1 && break; sleep 0.1; done
  url="host=127.0.0.1 port=$port user=deskfarm dbname=postgres"  # libpq keywords: what Poco and psql both take
fi
"$build/bin/lhc_bench" --work "$work/files" ${url:+--postgres "$url"} "$@"
