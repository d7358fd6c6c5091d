#!/usr/bin/env bash
# Builds the libFuzzer targets with clang into build-fuzz/ and runs one: scripts/fuzz.sh NAME [SECONDS]
# New interesting inputs are added to fuzz/corpus/NAME/ (commit them).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/fuzz.sh NAME [SECONDS]}
seconds=${2:-60}
cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDESKFARM_FUZZ=ON -DBUILD_TESTING=OFF -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined" >/dev/null
cmake --build build-fuzz --target "fuzz-$name"
mkdir -p "fuzz/corpus/$name"
./build-fuzz/bin/"fuzz-$name" -max_total_time="$seconds" -print_final_stats=1 "fuzz/corpus/$name"
