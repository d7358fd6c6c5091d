// Simulated desktops boot through the TFTP virtual server: tftp-lb sets options 66/67 of a simulated XenServer
// network to its virtual server, and each desktop's firmware (hypervisor-xen, firmware = true) fetches its
// bootstrap through it from one of two pvs servers, then streams its vDisk over NBD.
#include <catch2/catch.hpp>
#include <algorithm>
#include <map>

#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/interfaces/tftp/tftp.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/net.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

namespace {

using namespace std::chrono_literals;
namespace dt = deskfarm::testing;
namespace hv = deskfarm::interfaces::hypervisor;
namespace api = deskfarm::interfaces::tftp;
constexpr int desktops = 6;
// The adapter's firmware sends from 127.X.Y.Z of the MAC's last octets: the pool's first VM (…:00:01) would share
// 127.0.0.1 with the balancer's monitor, whose bootstrap requests end the session of the device seen there (a pvs
// rule for real networks). The pool has one VM more, and that first one stays off.
constexpr int first_desktop = 2;

std::string pvs(const std::string& name, const dt::TempDir& dir) {
  std::string devices;
  for (int i = first_desktop; i < first_desktop + desktops; ++i) devices += std::string(devices.empty() ? "" : ", ") + "{ mac = \"" + dt::mac_of(i) + "\", vdisk = \"gold\" }";
  return "[instances." + name + "]\nplugin = \"pvs\"\ntftp = \"127.0.0.1:0\"\nstream = \"127.0.0.1:0\"\nstore = \"" +
         (dir.path() / "vdisks").string() + "\"\nvdisks = [{ name = \"gold\", file = \"gold.img\" }]\ndevices = [" + devices + "]\n\n";
}

}  // namespace

TEST_CASE("simulated desktops boot through the TFTP virtual server that tftp-lb set as their network's options 66/67") {
  dt::TempDir dir("netboot-lb");
  std::filesystem::create_directories(dir.path() / "vdisks");
  dt::write_file(dir.path() / "vdisks" / "gold.img", dt::pattern(1 << 20, 3));
  // The network names no TFTP server: without tftp-lb its desktops would not boot from the network at all.
  const std::string manifest =
      "[deployment]\nname = \"netboot-lb\"\nstate_dir = \"" + (dir.path() / "var").string() + "\"\ndata_store = \"sqlite:" +
      (dir.path() / "ds.db").string() + "\"\n\n" + pvs("pvs-1", dir) + pvs("pvs-2", dir) +
      "[instances.lb]\nplugin = \"tftp-lb\"\nvip = \"127.0.0.100:0\"\nboot_file = \"ARDBP32.BIN\"\nmethod = \"round_robin\"\n"
      "interval_ms = 200\nresponse_timeout_ms = 150\nhypervisor_networks = [\"farm-hv/desktops\"]\n\n"
      "[instances.farm-hv]\nplugin = \"hypervisor-xen\"\nfirmware = true\nmac_prefix = \"52:54:00\"\n"
      "networks = [{ name = \"desktops\" }]\ntemplates = [{ name = \"win10\", memory_mb = 1024, vcpus = 1 }]\n"
      "vms = [{ template = \"win10\", count = " + std::to_string(desktops + 1) + " }]\n"
      "latencies = [{ action = \"start\", distribution = \"constant\", ms = 20 }]\n";
  dt::HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR};
  o.source_name = "netboot-lb.toml";
  dt::Harness h(manifest, o);
  h.start();
  for (const char* name : {"pvs-1", "pvs-2"}) h.await_status(name, "catalog", "loaded");
  const auto backends = [&] {
    auto r = h.request<deskfarm::sdk::Empty, api::BackendList>(api::admin_subject("lb", "backend.list"), {});
    REQUIRE(r);
    return r->backends;
  };
  REQUIRE(dt::eventually([&] {
    const auto list = backends();
    return list.size() == 2 && std::all_of(list.begin(), list.end(), [](const api::BackendView& b) { return b.state == api::kUp; });
  }, 20s));

  // The network's options now name the virtual server and the balancer's boot file.
  const auto vip = h.instance_status("lb").find("vip")->as_string();
  const auto inventory = [&] { return *h.request<deskfarm::sdk::Empty, hv::Inventory>(hv::request_subject("farm-hv", "inventory"), {}); };
  REQUIRE(dt::eventually([&] { return inventory().networks.at(0).tftp_server == vip; }, 10s));
  CHECK(inventory().networks.at(0).boot_file == "ARDBP32.BIN");
  CHECK(h.logged("hypervisor network farm-hv/desktops boots through " + vip));

  auto steps = h.probe("hypervisor.farm-hv.vm.*.boot");
  for (const auto& vm : inventory().vms)
    if (vm.mac != dt::mac_of(1)) REQUIRE(h.request<hv::VmAction, hv::Task>(hv::request_subject("farm-hv", "vm.action"), hv::VmAction{"start", vm.id, "", "", "", {}}));
  REQUIRE(dt::eventually([&] {
    const auto now = inventory();
    return std::count_if(now.vms.begin(), now.vms.end(), [](const hv::Vm& vm) { return vm.power_state == hv::kRunning; }) == desktops;
  }, 60s));
  std::map<std::string, std::string> trail;  // MAC -> the steps that succeeded
  for (const auto& m : steps.received())
    if (auto s = deskfarm::sdk::body_of<hv::BootProgress>(m); s && s->state == "ok" && s->step != "dhcp")
      trail[s->mac] += (trail[s->mac].empty() ? "" : " ") + s->step;
  REQUIRE(trail.size() == desktops);
  for (const auto& [mac, t] : trail) {
    INFO(mac);
    CHECK(t == "tftp bootstrap login stream handover");
  }
  // Every bootstrap went through the virtual server, shared by round robin between the two pvs servers.
  const auto through = [&] {
    std::int64_t n = 0;
    for (const auto& b : backends()) n += b.sessions_total;
    return n;
  };
  CHECK(dt::eventually([&] { return through() == desktops; }, 5s));  // the relay publishes its counters every 20 ms
  for (const auto& b : backends()) {
    INFO(b.name);
    CHECK(b.sessions_total == desktops / 2);
  }
  // And each desktop streams its vDisk from a pvs server.
  std::size_t streaming = 0;
  for (const char* name : {"pvs-1", "pvs-2"}) streaming += h.instance_status(name).find("sessions")->as_array().size();
  CHECK(streaming == desktops);
  // The monitors' bootstrap fetches come from an address with no device: the session ledger looks them up cleanly.
  for (const auto& line : h.logs()) {
    INFO(line);
    CHECK_FALSE((line.find("session ledger") != std::string::npos && line.find("failed") != std::string::npos));
  }
}
