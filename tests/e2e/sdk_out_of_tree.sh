#!/usr/bin/env bash
# Installs the SDK from this build into a scratch prefix, builds sdk/examples/hello-plugin against the
# *installed* package with find_package(DeskfarmSDK), and loads the result into the kernel; then builds the
# third-party hypervisor adapter sdk/examples/hypervisor-plugin the same way and runs the SDK's hypervisor
# conformance suite against it from the installed test kit.
set -euo pipefail
build=$1
source=$2
work=$(mktemp -d /tmp/deskfarm-sdk-XXXXXX)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
# A sanitizer build's libraries need the same runtime in the third party's programs (scripts/test.sh --asan).
sanitize=$(sed -n 's/^DESKFARM_SANITIZE:STRING=//p' "$build/CMakeCache.txt")
flags=()
if [ -n "$sanitize" ]; then
  flags=(-DCMAKE_CXX_FLAGS="-fsanitize=$sanitize -fno-omit-frame-pointer" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=$sanitize"
         -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=$sanitize" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=$sanitize")
fi
cmake -S "$source/sdk/examples/hello-plugin" -B "$work/hello" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" "${flags[@]}" >/dev/null
cmake --build "$work/hello" >/dev/null
test -f "$work/hello/hello.so"
deskfarm="$work/prefix/bin/deskfarm"
# The installed kernel runs as installed: it finds the SDK library through its RUNPATH ($ORIGIN/../lib)
# and the shipped plugins in lib/deskfarm/plugins, with no LD_LIBRARY_PATH and no --plugin-path.
unset LD_LIBRARY_PATH DESKFARM_PLUGIN_PATH
sdk=$("$deskfarm" --version | sed -n 's/.*(SDK \([0-9.]*\),.*/\1/p')
test -n "$sdk"
installed=$(cd "$work" && "$deskfarm" plugins)
echo "$installed"
grep -q "^pvs [0-9.]*  sdk $sdk" <<<"$installed"
grep -q "^hello [0-9.]*  sdk $sdk" <<<"$installed"
grep -q "prefix/lib/deskfarm/plugins/pvs.so" <<<"$installed"
# The example's own test, on the installed test kit: find_package(DeskfarmSDK COMPONENTS testing) found it.
test -x "$work/hello/hello_test"
ctest --test-dir "$work/hello" --output-on-failure >"$work/hello-test.log" || { cat "$work/hello-test.log"; exit 1; }
grep -q "100% tests passed" "$work/hello-test.log"
listing=$("$deskfarm" --plugin-path "$work/hello" plugins)
echo "$listing"
grep -q "^hello [0-9.]*  sdk $sdk" <<<"$listing"
grep -q "$work/hello/hello.so" <<<"$listing"
cat >"$work/lab.toml" <<TOML
[deployment]
name = "sdk-example"
state_dir = "$work/var"
clock = "virtual"
[instances.greeter]
plugin = "hello"
interval_s = 30
TOML
"$deskfarm" --plugin-path "$work/hello" check "$work/lab.toml"
"$deskfarm" --plugin-path "$work/hello" run --for 1h "$work/lab.toml" 2>"$work/run.log"
grep -q "instance greeter (hello [0-9.]*) running" "$work/run.log"
grep -q "deployment sdk-example stopped" "$work/run.log"

# The hypervisor adapter example: only the installed SDK, its hypervisor contract and test kit (no libs/hvsim).
cmake -S "$source/sdk/examples/hypervisor-plugin" -B "$work/memhv" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" "${flags[@]}" >/dev/null
cmake --build "$work/memhv" >/dev/null
test -f "$work/memhv/memhv.so"
test -x "$work/memhv/memhv_test"  # built: the installed SDK has the testing component and Catch2 was found
ctest --test-dir "$work/memhv" --output-on-failure >"$work/memhv-test.log" || { cat "$work/memhv-test.log"; exit 1; }
grep -q "100% tests passed" "$work/memhv-test.log"
listing=$("$deskfarm" --plugin-path "$work/memhv" plugins)
grep -q "^memhv [0-9.]*  sdk $sdk" <<<"$listing"
echo "out-of-tree example plugins built against the installed SDK; hello ran, memhv passed the hypervisor conformance suite: ok"
