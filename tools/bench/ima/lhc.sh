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
chmod 755 "$work"  # the server runs as nobody when root: it must reach its directory
source tools/lib/postgres.sh
trap 'pg_stop_all; rm -rf "$work"' EXIT
url=""
# Without the server the benchmark measures SQLite only (pg_require would skip the whole run).
if pg_installed; then
  pg_start_primary db "$work/pg"
  url=$db_conninfo  # libpq keywords: what Poco and psql both take
fi
"$build/bin/lhc_bench" --work "$work/files" ${url:+--postgres "$url"} "$@"
