#!/usr/bin/env bash
# Configures and builds deskfarm into build/ (override with BUILD_DIR). Warnings are errors when CI=true.
# SANITIZE=address,undefined builds every target with those sanitizers (scripts/test.sh --asan does).
# BENCHMARKS=OFF leaves out tools/bench (no test needs it; scripts/test.sh --asan does, the plain build has them).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
werror=OFF; [ "${CI:-}" = true ] && werror=ON
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} -DDESKFARM_WERROR=$werror \
  -DDESKFARM_SANITIZE="${SANITIZE:-}" -DDESKFARM_BENCHMARKS=${BENCHMARKS:-ON} >/dev/null
cmake --build "$build" -j"$(nproc)"
