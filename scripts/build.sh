#!/usr/bin/env bash
# Configures and builds deskfarm into build/ (override with BUILD_DIR). Warnings are errors when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
werror=OFF; [ "${CI:-}" = true ] && werror=ON
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} -DDESKFARM_WERROR=$werror >/dev/null
cmake --build "$build" -j"$(nproc)"
