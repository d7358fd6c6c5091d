#!/usr/bin/env bash
# README command 2: install, build, run the whole test suite (unit, interop, end-to-end, SDK out of tree).
#   scripts/test.sh          the suite as CI runs it, built into build/ (override with BUILD_DIR)
#   scripts/test.sh --asan   the same suite built into build-asan/ with AddressSanitizer and
#                            UndefinedBehaviorSanitizer; any finding fails the test that hit it
set -euo pipefail
cd "$(dirname "$0")/.."
asan=false
case "${1:-}" in
  "") ;;
  --asan) asan=true ;;
  *) echo "usage: scripts/test.sh [--asan]" >&2; exit 2 ;;
esac
./scripts/setup.sh
if $asan; then
  # Unoptimised (Debug): about half the build time of -O2 under ASan, and reports point at exact lines.
  export BUILD_DIR=${BUILD_DIR:-build-asan} SANITIZE=address,undefined BUILD_TYPE=${BUILD_TYPE:-Debug}
  # The benchmarks compile in the plain run; under the sanitizers they would only add build time.
  export BENCHMARKS=${BENCHMARKS:-OFF}
  # halt_on_error: the first finding ends the process with a non-zero code, so the test fails.
  # Plugins are dlopen()ed: fast_unwind_on_malloc=0 keeps their frames in reports. A leak outside deskfarm's
  # code that has to be tolerated goes into tests/sanitizers/lsan.supp with its reason.
  export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:fast_unwind_on_malloc=0:check_initialization_order=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  export LSAN_OPTIONS="suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0"
fi
./scripts/build.sh
build=${BUILD_DIR:-build}
repeat=()
# Sanitized code runs several times slower: a timing-bound test gets one more try there; a sanitizer finding
# fails every try, since halt_on_error ends the process.
if $asan; then repeat=(--repeat until-pass:2); fi
ctest --test-dir "$build" --output-on-failure -j"$(nproc)" --timeout 300 "${repeat[@]}"
