#!/usr/bin/env bash
# ima: election convergence and changes/s to a remote zone's ZDC, in process and across two processes via a local
# nats-server (started and stopped by the bench), beside bare libnats in the same run.
# usage: tools/bench/ima/run.sh [BUILD_DIR] [ima_bench options: --changes N --elections N --window-ms MS]
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
shift || true
cmake --build "$build" -j2 --target ima ima_bench >/dev/null
exec "$build/bin/ima_bench" --plugin-dir "$build/plugins" "$@"
