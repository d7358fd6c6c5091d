// Swapping the hypervisor backend is one manifest line: the same deployment text with plugin =
// hypervisor-xen, -hyperv and -esx gives the same outcome — the same desktops (names, MACs) run, and each boots
// from pvs through TFTP (the bootstrap named by its network's options 66/67) and NBD (its vDisk, export = MAC).
// The TFTP read and NBD login of the swap test stand in for the VM's firmware; the last test lets the adapter's
// `firmware = true` do it from inside the VM, with libs/firmware.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <map>
#include <memory>
#include <set>

#include <deskfarm/bdm/iso.hpp>
#include <deskfarm/bootstrap/bootstrap.hpp>
#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/interfaces/pvs/pvs.hpp>
#include <deskfarm/nbd/client.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>
#include <deskfarm/tftp/client.hpp>

namespace {

using namespace std::chrono_literals;
namespace dt = deskfarm::testing;
namespace hv = deskfarm::interfaces::hypervisor;
constexpr std::size_t base_size = 1 << 20;
constexpr int desktops = 4;

/// A UDP port on 127.0.0.1 that was free a moment ago (option 66 must name it before pvs starts).
std::uint16_t free_udp_port() {
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

/// The deployment: pvs with one vDisk and a device per desktop MAC, and a hypervisor with that many desktops.
std::string deployment(const dt::TempDir& dir, std::uint16_t tftp_port, const std::string& plugin,
                       const std::string& latencies = "{ action = \"start\", distribution = \"uniform\", ms = 20, max_ms = 60 }") {
  std::string devices;
  for (int i = 1; i <= desktops; ++i)
    devices += std::string(devices.empty() ? "" : ", ") + "{ mac = \"52:54:00:00:00:0" + std::to_string(i) + "\", vdisk = \"gold\" }";
  return "[deployment]\nname = \"swap\"\nstate_dir = \"" + (dir.path() / "var").string() + "\"\ndata_store = \"sqlite:" +
         (dir.path() / "ds.db").string() + "\"\n\n"
         "[instances.pvs-1]\nplugin = \"pvs\"\ntftp = \"127.0.0.1:" + std::to_string(tftp_port) + "\"\nstream = \"127.0.0.1:0\"\n"
         "store = \"" + (dir.path() / "vdisks").string() + "\"\nvdisks = [{ name = \"gold\", file = \"gold.img\" }]\n"
         "devices = [" + devices + "]\n\n"
         "[instances.farm-hv]\nplugin = \"" + plugin + "\"\nmac_prefix = \"52:54:00\"\n"
         "networks = [{ name = \"desktops\", tftp_server = \"127.0.0.1:" + std::to_string(tftp_port) + "\", boot_file = \"ARDBP32.BIN\" }]\n"
         "templates = [{ name = \"win7\", memory_mb = 1024, vcpus = 1 }]\n"
         "vms = [{ template = \"win7\", count = " + std::to_string(desktops) + ", prefix = \"desktop-\" }]\n"
         "latencies = [" + latencies + "]\n";
}

struct Outcome {
  std::map<std::string, std::string> running;  ///< VM name -> MAC, of the VMs that run
  std::map<std::string, bool> booted;          ///< MAC -> its vDisk's first MiB read through NBD equals the image
  std::size_t boot_events = 0;                 ///< power events that are boots (what pvs ends sessions on)
  bool operator==(const Outcome&) const = default;
};

/// The gold image in `dir`'s vDisk store, then `manifest` started (as file `source`) with pvs's catalog loaded.
std::unique_ptr<dt::Harness> start_farm(const dt::TempDir& dir, const std::string& source, const std::string& manifest) {
  std::filesystem::create_directories(dir.path() / "vdisks");
  dt::write_file(dir.path() / "vdisks" / "gold.img", dt::pattern(base_size, 3));
  dt::HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR};
  o.source_name = source;
  auto h = std::make_unique<dt::Harness>(manifest, o);
  h->start();
  h->await_status("pvs-1", "catalog", "loaded");
  return h;
}

Outcome run(const std::string& plugin) {
  dt::TempDir dir("hv-swap");
  const auto image = dt::pattern(base_size, 3);  // what start_farm writes as the gold image
  auto farm = start_farm(dir, "swap.toml", deployment(dir, free_udp_port(), plugin));
  auto& h = *farm;
  auto power = h.probe(hv::all_power_events);
  auto inv = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.farm-hv.inventory", {});
  REQUIRE(inv);
  REQUIRE(inv->vms.size() == desktops);
  for (const auto& vm : inv->vms) REQUIRE(h.request<hv::VmAction, hv::Task>("hypervisor.farm-hv.vm.action", hv::VmAction{"start", vm.id, "", "", "", {}}));
  Outcome out;
  REQUIRE(dt::eventually([&] {
    out.running.clear();
    const auto now = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.farm-hv.inventory", {});
    for (const auto& vm : now->vms)
      if (vm.power_state == hv::kRunning) out.running[vm.name] = vm.mac;
    return out.running.size() == desktops;
  }, 30s));
  for (const auto& m : power.received())
    if (auto e = deskfarm::sdk::body_of<hv::PowerStateEvent>(m); e && e->is_boot()) ++out.boot_events;
  // Each running desktop boots as its firmware would: options 66/67 of its network, the bootstrap, its vDisk.
  const auto& net = inv->networks.at(0);
  const auto colon = net.tftp_server.rfind(':');
  for (const auto& [name, mac] : out.running) {
    const auto file = deskfarm::tftp::Client().get(net.tftp_server.substr(0, colon),
                                                   static_cast<std::uint16_t>(std::stoi(net.tftp_server.substr(colon + 1))), net.boot_file);
    const auto b = deskfarm::bootstrap::parse(std::string_view(reinterpret_cast<const char*>(file.data.data()), file.data.size()));
    REQUIRE(!b.login_servers.empty());
    deskfarm::nbd::Client disk(b.login_servers[0].host, b.login_servers[0].port, mac);
    std::vector<std::byte> got(base_size);
    bool ok = disk.size() == base_size;
    for (std::size_t off = 0; ok && off < base_size; off += 256 << 10)
      ok = disk.read(off, std::span(got).subspan(off, 256 << 10)) == 0;
    out.booted[mac] = ok && got == image;
  }
  return out;
}

}  // namespace

TEST_CASE("the same deployment with hypervisor-xen, -hyperv and -esx boots the same desktops from pvs over TFTP and NBD") {
  const auto xen = run("hypervisor-xen");
  CHECK(xen.running.size() == desktops);
  CHECK(xen.boot_events == desktops);
  for (const auto& [mac, ok] : xen.booted) {
    INFO(mac);
    CHECK(ok);
  }
  CHECK(xen.booted.size() == desktops);
  CHECK(run("hypervisor-hyperv") == xen);
  CHECK(run("hypervisor-esx") == xen);
}

TEST_CASE("with firmware = true a started desktop boots through real firmware: TFTP, bootstrap, NBD login, handover") {
  dt::TempDir dir("hv-firmware");
  auto farm = start_farm(dir, "firmware.toml", deployment(dir, free_udp_port(), "hypervisor-xen") + "firmware = true\n");
  auto& h = *farm;
  auto steps = h.probe("hypervisor.farm-hv.vm.*.boot");
  const auto inv = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.farm-hv.inventory", {});
  REQUIRE(inv);
  for (const auto& vm : inv->vms)
    REQUIRE(h.request<hv::VmAction, hv::Task>("hypervisor.farm-hv.vm.action", hv::VmAction{"start", vm.id, "", "", "", {}}));
  REQUIRE(dt::eventually([&] {
    const auto now = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.farm-hv.inventory", {});
    return std::all_of(now->vms.begin(), now->vms.end(), [](const hv::Vm& vm) { return vm.power_state == hv::kRunning; });
  }, 60s));
  // Every desktop went through each step of a network boot, in order, and each step succeeded.
  std::map<std::string, std::string> trail;  // MAC -> "tftp bootstrap login stream handover"
  for (const auto& m : steps.received())
    if (auto s = deskfarm::sdk::body_of<hv::BootProgress>(m); s && s->state == "ok" && s->step != "dhcp")
      trail[s->mac] += (trail[s->mac].empty() ? "" : " ") + s->step;
  REQUIRE(trail.size() == desktops);
  for (const auto& [mac, t] : trail) {
    INFO(mac);
    CHECK(t == "tftp bootstrap login stream handover");
  }
  // pvs saw each device stream its vDisk, each from an address of its own (the firmware's 127.X.Y.Z).
  const auto pvs = h.instance_status("pvs-1");
  std::set<std::string> peers;
  for (const auto& s : pvs.find("sessions")->as_array()) peers.insert(s.find("peer")->as_string());
  CHECK(peers.size() == desktops);
  CHECK(pvs.find("tftp")->find("rrq")->as_integer() >= desktops);
}

TEST_CASE("with firmware = true a desktop that pool HA restarts on another host boots through its firmware again") {
  dt::TempDir dir("hv-ha-firmware");
  // Two hosts (the default), HA on, the restart within a second.
  auto farm = start_farm(dir, "ha.toml",
                         deployment(dir, free_udp_port(), "hypervisor-xen",
                                    "{ action = \"start\", distribution = \"constant\", ms = 20 }, "
                                    "{ action = \"ha_restart\", distribution = \"constant\", ms = 300 }") +
                             "firmware = true\n");
  auto& h = *farm;
  auto devices = h.probe("pvs.pvs-1.device.*");
  auto steps = h.probe("hypervisor.farm-hv.vm.*.boot");
  auto power = h.probe(hv::all_power_events);
  const auto inventory = [&] { return *h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.farm-hv.inventory", {}); };
  const auto vm = inventory().vms.at(0);
  REQUIRE(h.request<hv::VmAction, hv::Task>("hypervisor.farm-hv.vm.action", hv::VmAction{"start", vm.id, "", "", "", {}}));
  const auto running_on = [&](const std::string& not_on) {
    for (const auto& v : inventory().vms)
      if (v.id == vm.id && v.power_state == hv::kRunning && v.host != not_on) return v.host;
    return std::string();
  };
  REQUIRE(dt::eventually([&] { return !running_on("").empty(); }, 60s));
  const auto first_host = running_on("");
  const auto boots_of_vm = [&](const std::string& kind) {
    std::size_t n = 0;
    for (const auto& m : devices.received())
      if (auto e = deskfarm::sdk::body_of<deskfarm::interfaces::pvs::DeviceEvent>(m); e && e->mac == vm.mac && e->kind == kind) ++n;
    return n;
  };
  REQUIRE(dt::eventually([&] { return boots_of_vm("boot") == 1; }, 10s));
  const auto handovers = [&] {
    std::size_t n = 0;
    for (const auto& m : steps.received())
      if (auto s = deskfarm::sdk::body_of<hv::BootProgress>(m); s && s->vm == vm.id && s->step == "handover" && s->state == "ok") ++n;
    return n;
  };
  CHECK(handovers() == 1);

  REQUIRE(h.request<hv::Fault, hv::Hosts>("hypervisor.farm-hv.fault", hv::Fault{"host_crash", first_host, 0}));
  REQUIRE(dt::eventually([&] { return !running_on(first_host).empty(); }, 60s));
  // The restart went through TFTP and NBD again: the firmware's second handover, and pvs saw a second boot of the
  // device (its first session ended on the power event that started the restart).
  CHECK(handovers() == 2);
  CHECK(dt::eventually([&] { return boots_of_vm("boot") == 2; }, 10s));
  CHECK(dt::eventually([&] { return boots_of_vm("end") >= 1; }, 10s));
  // The VM was reported running only after its firmware handed over: the last power event is the HA restart's.
  std::vector<hv::PowerStateEvent> events;
  for (const auto& m : power.received())
    if (auto e = deskfarm::sdk::body_of<hv::PowerStateEvent>(m); e && e->vm == vm.id) events.push_back(*e);
  REQUIRE(events.size() >= 4);  // off -> starting -> running, host failure -> off, ha -> starting -> running
  CHECK(events.back().state == hv::kRunning);
  CHECK(events.back().reason == "ha_restart");
  CHECK(events[events.size() - 2].state == hv::kStarting);
}

TEST_CASE("with firmware = true a desktop with the BDM ISO in its CD-ROM boots from the ISO's login servers, not TFTP") {
  REQUIRE(std::filesystem::exists(deskfarm::bdm::default_ipxe_iso));  // Debian's ipxe (scripts/setup.sh)
  dt::TempDir dir("hv-cdrom");
  const auto iso = dir.path() / "bdm.iso";
  auto farm = start_farm(dir, "cdrom.toml",
                         deployment(dir, free_udp_port(), "hypervisor-xen") + "firmware = true\nisos = [\"" + iso.string() + "\"]\n");
  auto& h = *farm;
  // The ISO an operator would write with `deskfarm bdm build`: pvs's streaming port as the one login server.
  deskfarm::bdm::IsoOptions options;
  options.source_date_epoch = 0;
  options.bootstrap.version = 7;
  const auto stream = h.instance_status("pvs-1").find("stream_port")->as_integer();
  options.bootstrap.login_servers = {{"127.0.0.1", static_cast<std::uint16_t>(stream)}};
  deskfarm::bdm::build_iso(options, iso);

  auto steps = h.probe("hypervisor.farm-hv.vm.*.boot");
  const auto inv = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.farm-hv.inventory", {});
  REQUIRE(inv);
  const auto vm = inv->vms.at(0);
  auto act = [&](hv::VmAction a) {
    auto t = h.request<hv::VmAction, hv::Task>("hypervisor.farm-hv.vm.action", a);
    REQUIRE(t);
    REQUIRE(t->state != "failed");
  };
  act(hv::VmAction{"attach_iso", vm.id, "", "", iso.string(), {}});
  act(hv::VmAction{"set_boot_order", vm.id, "", "", "", {"cdrom", "network"}});
  REQUIRE(dt::eventually([&] {
    const auto now = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.farm-hv.inventory", {});
    const auto& v = now->vms.at(0);
    return v.iso == iso.string() && !v.boot_order.empty() && v.boot_order[0] == "cdrom";
  }, 30s));
  act(hv::VmAction{"start", vm.id, "", "", "", {}});
  REQUIRE(dt::eventually([&] {
    const auto now = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.farm-hv.inventory", {});
    return now->vms.at(0).power_state == hv::kRunning;
  }, 60s));
  std::string trail;
  for (const auto& m : steps.received())
    if (auto s = deskfarm::sdk::body_of<hv::BootProgress>(m); s && s->mac == vm.mac && s->state == "ok")
      trail += (trail.empty() ? "" : " ") + s->step;
  CHECK(trail == "cdrom bootstrap login stream handover");
  const auto pvs = h.instance_status("pvs-1");
  CHECK(pvs.find("tftp")->find("rrq")->as_integer() == 0);  // the boot record came from the disc
  CHECK(pvs.find("sessions")->as_array().size() == 1);
}
