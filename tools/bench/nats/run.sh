#!/usr/bin/env bash
# The bus across processes: deskfarm kernel to kernel over a local nats-server (started and stopped by the bench),
# beside bare libnats publisher/subscriber and requester/responder pairs measured in the same run.
# usage: tools/bench/nats/run.sh [BUILD_DIR] [nats_bench options: --messages N --round-trips N --size BYTES --runs N]
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
shift || true
cmake --build "$build" -j2 --target nats_bench >/dev/null
exec "$build/bin/nats_bench" "$@"
