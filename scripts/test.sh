#!/usr/bin/env bash
# README command 2: install, build, run the whole test suite (unit, interop, end-to-end, SDK out of tree).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
build=${BUILD_DIR:-build}
ctest --test-dir "$build" --output-on-failure -j"$(nproc)" --timeout 300
