// memhv's test: the SDK's conformance suite for the hypervisor role, run from the installed test kit. Everything
// the contract asks of an adapter (transitions, vendor errors, capacity, throttling, cancellation, host failure
// and HA restart, persistence) is checked by the suite; this file only says how to start the adapter.
#include <catch2/catch.hpp>

#include <deskfarm/testing/conformance_catch.hpp>

namespace {

/// Two hosts of 8 GiB hold 8 VMs of the template (the suite needs fewer than 256), a throttle of 2.
deskfarm::testing::conformance::Subject memhv() {
  deskfarm::testing::conformance::Subject s;
  s.plugin = "memhv";
  s.instance = "hv-1";
  s.roles = {"hypervisor"};
  s.manifest_toml =
      "[instances.hv-1]\nplugin = \"memhv\"\nhosts = 2\nhost_memory_mb = 8192\nvm_memory_mb = 2048\n"
      "max_in_progress = 2\naction_ms = 1500\nha_restart_s = 10\n";
  return s;  // plugin path: $DESKFARM_PLUGIN_PATH (set by the CMake test)
}

}  // namespace

DESKFARM_CONFORMANCE_SUITE("memhv", memhv)
