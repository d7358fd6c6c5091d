// hypervisor-hyperv: the shared adapter tests and conformance suite, and what is Hyper-V's own.
#include <catch2/catch.hpp>

#include <deskfarm/testing/hypervisor_plugin_tests.hpp>

namespace hv = deskfarm::interfaces::hypervisor;
namespace hp = deskfarm::testing::hypervisor_plugin;

DESKFARM_HYPERVISOR_PLUGIN_TESTS("hypervisor-hyperv", "hyperv")

TEST_CASE("hypervisor-hyperv: Starting and Saved are visible, jobs say Running (4) and Completed (7), 32775 for a bad state") {
  deskfarm::testing::Harness h(hp::manifest("hypervisor-hyperv", "vms = [{ template = \"desktop\", count = 1 }]\n"), hp::options());
  h.start();
  const auto vm = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {})->vms.at(0);
  CHECK(vm.vendor_state == "Off");
  auto power = h.probe("hypervisor.hv-1.vm.*.power");
  auto act = [&](const std::string& a) { return h.request<hv::VmAction, hv::Task>("hypervisor.hv-1.vm.action", hv::VmAction{a, vm.id, "", "", "", {}}); };
  auto started = act("start");
  REQUIRE(started);
  CHECK(started->vendor_state == "Running (4)");
  auto first = power.expect_as<hv::PowerStateEvent>(std::chrono::seconds(1));
  REQUIRE(first);
  CHECK(first->vendor_state == "Starting");
  first.reset();
  h.advance(std::chrono::minutes(1));
  REQUIRE(act("suspend"));
  h.advance(std::chrono::minutes(1));
  CHECK(h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {})->vms.at(0).vendor_state == "Saved");
  auto refused = act("shutdown");
  REQUIRE(refused);
  CHECK(refused->error_code == "32775");
  CHECK(refused->error.find("Invalid state for this operation") != std::string::npos);
  CHECK(refused->vendor_state == "Exception (10)");
}
