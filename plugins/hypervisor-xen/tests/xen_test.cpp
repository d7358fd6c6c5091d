// hypervisor-xen: the shared adapter tests and conformance suite, and what is Xen's own.
#include <catch2/catch.hpp>

#include <deskfarm/testing/hypervisor_plugin_tests.hpp>

namespace hv = deskfarm::interfaces::hypervisor;
namespace hp = deskfarm::testing::hypervisor_plugin;

DESKFARM_HYPERVISOR_PLUGIN_TESTS("hypervisor-xen", "xen")

TEST_CASE("hypervisor-xen: XAPI words: Halted/Running/Paused, task success, VM_BAD_POWER_STATE names expected and actual") {
  deskfarm::testing::Harness h(hp::manifest("hypervisor-xen", "vms = [{ template = \"desktop\", count = 1 }]\n"), hp::options());
  h.start();
  const auto vm = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {})->vms.at(0);
  CHECK(vm.vendor_state == "Halted");
  CHECK(vm.id.size() == 36);  // a UUID
  auto tasks = h.probe("hypervisor.hv-1.task.*");
  auto act = [&](const std::string& a) { return h.request<hv::VmAction, hv::Task>("hypervisor.hv-1.vm.action", hv::VmAction{a, vm.id, "", "", "", {}}); };
  REQUIRE(act("start"));
  h.advance(std::chrono::minutes(1));
  REQUIRE(act("pause"));
  h.advance(std::chrono::minutes(1));
  auto inv = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {});
  CHECK(inv->vms.at(0).vendor_state == "Paused");
  CHECK(inv->vms.at(0).power_state == hv::kPaused);
  auto refused = act("suspend");
  REQUIRE(refused);
  CHECK(refused->error_code == "VM_BAD_POWER_STATE");
  CHECK(refused->error.find("expected Running, actual Paused") != std::string::npos);
  CHECK(refused->vendor_state == "failure");
  bool success = false;
  for (const auto& m : tasks.received())
    if (auto t = deskfarm::sdk::body_of<hv::Task>(m)) success = success || t->vendor_state == "success";
  CHECK(success);
}

TEST_CASE("hypervisor-xen: the conformance suite finds an adapter without throttle or HA, and hosts too big to fill") {
  auto s = hp::subject("hypervisor-xen");
  s.manifest_toml = hp::manifest("hypervisor-xen", "ha = false\n");
  s.manifest_toml.replace(s.manifest_toml.find("max_in_progress = 2"), 19, "max_in_progress = 0");
  s.manifest_toml.replace(s.manifest_toml.find("memory_mb = 8192"), 16, "memory_mb = 8192000");
  std::string all;
  for (const auto& f : deskfarm::testing::conformance::check_hypervisor(s)) all += f.check + ": " + f.problem + "\n";
  CHECK_THAT(all, Catch::Contains("reports no max_in_progress"));
  CHECK_THAT(all, Catch::Contains("runs again with reason ha_restart"));
  CHECK_THAT(all, Catch::Contains("give the subject hosts for fewer than 256"));
}
