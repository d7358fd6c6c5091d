// hypervisor-esx: the shared adapter tests and conformance suite, and what is vSphere's own.
#include <catch2/catch.hpp>

#include <deskfarm/testing/hypervisor_plugin_tests.hpp>

namespace hv = deskfarm::interfaces::hypervisor;
namespace hp = deskfarm::testing::hypervisor_plugin;

DESKFARM_HYPERVISOR_PLUGIN_TESTS("hypervisor-esx", "esx")

TEST_CASE("hypervisor-esx: poweredOff/poweredOn/suspended, vm-N morefs, NotSupported for pause, placement spreads VMs") {
  deskfarm::testing::Harness h(hp::manifest("hypervisor-esx", "vms = [{ template = \"desktop\", count = 2 }]\n"), hp::options());
  h.start();
  const auto inv = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {});
  REQUIRE(inv->vms.size() == 2);
  CHECK(inv->vms[0].vendor_state == "poweredOff");
  CHECK(inv->vms[0].id.rfind("vm-", 0) == 0);
  auto act = [&](const std::string& a, const std::string& vm) {
    return h.request<hv::VmAction, hv::Task>("hypervisor.hv-1.vm.action", hv::VmAction{a, vm, "", "", "", {}});
  };
  auto paused = act("pause", inv->vms[0].id);
  REQUIRE(!paused);
  CHECK(paused.error().code == "NotSupported");
  REQUIRE(act("start", inv->vms[0].id));
  REQUIRE(act("start", inv->vms[1].id));
  h.advance(std::chrono::minutes(1));
  const auto after = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {});
  CHECK(after->vms[0].vendor_state == "poweredOn");
  CHECK(after->vms[0].host != after->vms[1].host);  // the emptier host takes the next VM
}
