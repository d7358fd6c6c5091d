#!/usr/bin/env bash
# Installs the SDK from this build into a scratch prefix, builds sdk/examples/hello-plugin against the
# *installed* package with find_package(DeskfarmSDK), and loads the result into the kernel.
set -euo pipefail
build=$1
source=$2
work=$(mktemp -d /tmp/deskfarm-sdk-XXXXXX)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$source/sdk/examples/hello-plugin" -B "$work/hello" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/hello" >/dev/null
test -f "$work/hello/hello.so"
deskfarm="$work/prefix/bin/deskfarm"
# The installed kernel finds the installed SDK library through its own prefix.
export LD_LIBRARY_PATH="$work/prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The example's own test, on the installed test kit: find_package(DeskfarmSDK COMPONENTS testing) found it.
test -x "$work/hello/hello_test"
ctest --test-dir "$work/hello" --output-on-failure >"$work/hello-test.log" || { cat "$work/hello-test.log"; exit 1; }
grep -q "100% tests passed" "$work/hello-test.log"
listing=$("$deskfarm" --plugin-path "$work/hello" plugins)
echo "$listing"
grep -q "^hello 1.1.0  sdk 0.2.0" <<<"$listing"
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
grep -q "instance greeter (hello 1.1.0) running" "$work/run.log"
grep -q "deployment sdk-example stopped" "$work/run.log"
echo "out-of-tree example plugin built against the installed SDK and ran: ok"
