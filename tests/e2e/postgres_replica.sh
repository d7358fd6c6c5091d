#!/usr/bin/env bash
# Read replicas against real servers: a private PostgreSQL primary and a streaming replica of it on loopback
# (tools/lib/postgres.sh), the kernel's [postgres-replica] tests with both up, then [postgres-replica-down] with the
# replica stopped. Every server is stopped by its PID.
set -euo pipefail
kernel_tests=$1
source "$(dirname "$0")/../../tools/lib/postgres.sh"
pg_require
work=$(mktemp -d /tmp/deskfarm-pg-replica-XXXXXX)
chmod 755 "$work"  # the servers run as nobody when root: they must reach their directories
trap 'pg_stop_all; rm -rf "$work"' EXIT
pg_start_primary db "$work/db"
pg_start_replica rep db "$work/rep"
export DESKFARM_TEST_POSTGRES_URL=$db_url DESKFARM_TEST_POSTGRES_REPLICA_URL=$rep_url
# -w NoTests: a renamed test case must fail here, not pass with nothing run.
"$kernel_tests" -w NoTests "[postgres-replica]"
pg_stop rep
"$kernel_tests" -w NoTests "[postgres-replica-down]"
