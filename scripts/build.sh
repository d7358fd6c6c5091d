#!/usr/bin/env bash
# Configures and builds deskfarm into build/ (override with BUILD_DIR). Warnings are errors when CI=true, and CI
# builds carry line tables only (DEBUG_INFO=lines: backtraces and sanitizer reports keep files and lines; the
# build is shorter); DEBUG_INFO=full gives gdb the variables too (the default outside CI).
# SANITIZE=address,undefined builds every target with those sanitizers (scripts/test.sh --asan does).
# BENCHMARKS=OFF leaves out tools/bench (no test needs it; scripts/test.sh --asan does, the plain build has them).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
werror=OFF debug_info=full
[ "${CI:-}" = true ] && werror=ON debug_info=lines
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} -DDESKFARM_WERROR=$werror \
  -DDESKFARM_SANITIZE="${SANITIZE:-}" -DDESKFARM_BENCHMARKS=${BENCHMARKS:-ON} \
  -DDESKFARM_DEBUG_INFO=${DEBUG_INFO:-$debug_info} >/dev/null
cmake --build "$build" -j"$(nproc)"
