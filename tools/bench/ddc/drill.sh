#!/usr/bin/env bash
# The controller-kill drill: tools/bench/ddc/drill.sh [BUILD_DIR] [args...]; args go to storm_drill
# (--desktops 10000 --users 2000 --rate 200 --session 6s --heartbeat 5). Needs nats-server (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
shift || true
cmake --build "$build" --target deskfarm ddc vda hypervisor-xen license storm_drill >/dev/null
exec "$build/bin/storm_drill" --deskfarm "$build/bin/deskfarm" --plugin-dir "$build/plugins" "$@"
