// The whole real boot chain in QEMU: a deployment of pvs, bdm and hypervisor-qemu boots one real VM from the BDM
// ISO. Debian's iPXE (from the ISO) takes a DHCP lease on QEMU's user network, asks the login servers in order
// for the device's boot script over TFTP (pvs, on the host's loopback, is 10.0.2.2 to the guest), and the script
// sanboots the first disk: the vDisk QEMU streams from pvs over NBD, whose boot sector writes a marker to COM1.
// The same from the raw boot-partition image as the first disk, with the vDisk as the second (drive 0x81).
#include <catch2/catch.hpp>

#include <chrono>

#include <deskfarm/bdm/iso.hpp>
#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/testing/boot_sector.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/net.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace dt = deskfarm::testing;
namespace hv = deskfarm::interfaces::hypervisor;

constexpr const char* mac = "52:54:00:00:0b:01";  // the first VM of mac_prefix 52:54:00:00:0b
const std::string marker = "deskfarm vDisk booted through BDM, TFTP and NBD\r\n";

bool have_tools() {
  if (!dt::require_program("qemu-system-x86_64") || !dt::require_program("qemu-img")) return false;
  if (fs::exists(deskfarm::bdm::default_ipxe_iso)) return true;
  dt::missing(std::string(deskfarm::bdm::default_ipxe_iso) + " is missing (Debian package ipxe; scripts/setup.sh)");
  return false;
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) text.replace(at, from.size(), to);
  return text;
}

/// One pvs (TFTP + NBD on free loopback ports, the marker vDisk for `mac`), the bdm image with `login_servers`
/// (STREAM stands for pvs's stream port), and one QEMU desktop. With the ISO it boots the CD-ROM first and has its
/// vDisk from pvs as its first disk; with the partition image that image is its first disk (which it boots) and the
/// vDisk its second.
struct Chain {
  dt::TempDir dir{"bdm-chain"};
  std::uint16_t tftp_port = dt::free_port(SOCK_DGRAM);
  std::uint16_t stream_port = dt::free_port();
  bool partition = false;
  std::unique_ptr<dt::Harness> h;

  Chain(const std::string& login_servers, int iso_version, const std::string& format = "iso") : partition(format == "partition") {
    fs::create_directories(dir / "vdisks");
    // At least 8 MiB, like a real disk (iPXE's SAN layer reads its geometry).
    dt::write_file(dir / "vdisks" / "marker.img", dt::marker_disk(marker, 8u << 20));
    const auto stream = "127.0.0.1:" + std::to_string(stream_port);
    const std::string manifest =
        "[instances.pvs-1]\nplugin = \"pvs\"\ntftp = \"127.0.0.1:" + std::to_string(tftp_port) + "\"\nstream = \"" +
        stream + "\"\nstore = \"" + (dir / "vdisks").string() + "\"\nbootstrap_version = 5\n" +
        "vdisks = [{ name = \"marker\", file = \"marker.img\" }]\ndevices = [{ mac = \"" + mac + "\", vdisk = \"marker\" }]\n\n" +
        "[instances.bdm]\nplugin = \"bdm\"\nlogin_servers = [" +
        replace_all(login_servers, "STREAM", std::to_string(stream_port)) + "]\nbootstrap_version = " + std::to_string(iso_version) +
        "\ntftp_port = " + std::to_string(tftp_port) +
        "\nverbose = true\nlogin_polling_timeout_ms = 3000\nlogin_general_timeout_ms = 6000\nrecovery_time_s = 3600\n"
        "source_date_epoch = 1700000000\nformat = \"" + format + "\"\nimage = \"" + image().filename().string() + "\"\n\n"
        "[instances.hv-1]\nplugin = \"hypervisor-qemu\"\naccel = \"tcg\"\nmac_prefix = \"52:54:00:00:0b\"\nshutdown_timeout_s = 1\n"
        "templates = [{ name = \"desktop\", memory_mb = 128, vcpus = 1, boot_order = " +
        (partition ? "[\"disk\"]" : "[\"cdrom\", \"disk\"]") + " }]\n"
        "images = [{ template = \"desktop\", path = \"nbd://" + stream + "\"" +
        (partition ? ", boot_partition = \"" + image().string() + "\"" : "") + " }]\n" +
        (partition ? "" : "isos = [\"" + image().string() + "\"]\n");
    dt::HarnessOptions o;
    o.plugin_path = {PLUGIN_DIR};
    o.clock = "real";  // QEMU runs in real time
    o.state_dir = dir / "state";
    h = std::make_unique<dt::Harness>(manifest, o);
    h->start();
    // QEMU's NBD client connects when the machine starts: pvs must serve the vDisk by then (its catalog loads from
    // the data store after start, slower under a sanitizer).
    h->await_status("pvs-1", "catalog", "loaded");
  }
  fs::path image() const { return dir / "state" / "bdm" / (partition ? "bdm.img" : "bdm.iso"); }
  fs::path serial(const std::string& vm) const { return dir / "state" / "hv-1" / "machines" / vm / "serial.log"; }

  hv::Task act(const std::string& action, const std::string& vm, const std::string& iso_path = "") {
    hv::VmAction a{action, vm, action == "create" ? "desktop" : "", "", iso_path, {}};
    auto r = h->request<hv::VmAction, hv::Task>("hypervisor.hv-1.vm.action", a, 10s);
    if (!r) throw std::runtime_error(action + " refused: " + r.error().code + " " + r.error().message);
    return *r;
  }
  /// Waits (real time, bounded) for the task's last event.
  static hv::Task finish(dt::Probe& tasks, const hv::Task& t, std::chrono::seconds within = 60s) {
    const auto end = std::chrono::steady_clock::now() + within;
    for (auto state = t; std::chrono::steady_clock::now() < end;) {
      if (state.state == "completed" || state.state == "failed" || state.state == "cancelled") return state;
      auto m = tasks.expect_as<hv::Task>(1s);
      if (m && m->id == t.id) state = *m;
    }
    throw std::runtime_error("task " + t.id + " (" + t.action + ") did not end within " + std::to_string(within.count()) + " s");
  }

  /// Creates the desktop, puts the ISO in its CD-ROM (the partition image is its first disk already), starts it and waits (bounded) for the marker on its serial
  /// line; returns the serial log and the seconds from start to marker.
  std::pair<std::string, double> boot() {
    auto tasks = h->probe("hypervisor.hv-1.task.*");
    const auto vm = finish(tasks, act("create", "")).vm;
    REQUIRE(!vm.empty());
    if (!partition) REQUIRE(finish(tasks, act("attach_iso", vm, image().string())).state == "completed");
    const auto t0 = std::chrono::steady_clock::now();
    const auto started = finish(tasks, act("start", vm));
    INFO(started.error);
    REQUIRE(started.state == "completed");
    std::string log;
    const bool booted = dt::eventually([&] { log = dt::read_text(serial(vm)); return log.find(marker) != std::string::npos; }, 60s);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    INFO(log);
    CHECK(booted);
    CHECK(finish(tasks, act("power_off", vm)).state == "completed");
    return {log, seconds};
  }
};

/// Positions of `needles` in `text`, each searched after the previous one; npos once one is missing.
std::vector<std::size_t> in_order(const std::string& text, const std::vector<std::string>& needles) {
  std::vector<std::size_t> at;
  std::size_t from = 0;
  for (const auto& n : needles) {
    from = from == std::string::npos ? from : text.find(n, from);
    at.push_back(from);
  }
  return at;
}

/// The serial log of a boot through the first login server, step by step: iPXE, the BDM script, its TFTP request
/// to pvs, pvs's boot script, the sanboot of `drive` and the vDisk's marker.
void check_chain(const Chain& c, const std::string& log, const std::string& drive) {
  INFO(log);
  const auto tftp = "tftp://10.0.2.2:" + std::to_string(c.tftp_port) + "/deskfarm/v5/52-54-00-00-0b-01/boot.ipxe";
  const auto server = "10.0.2.2:" + std::to_string(c.stream_port);
  const auto at = in_order(log, {"iPXE", "deskfarm BDM bootstrap version 5", "trying login server 1 " + server, tftp,
                                 "deskfarm pvs pvs-1: device 52:54:00:00:0b:01, vDisk marker",
                                 "deskfarm pvs pvs-1: login server " + server + ", sanboot drive " + drive,
                                 // The vDisk's boot sector writes to the UART without waiting for it to drain, so
                                 // iPXE's last characters before the jump can be overwritten: "0x8" suffices.
                                 "Booting from SAN device 0x8", marker});
  for (std::size_t i = 0; i < at.size(); ++i) {
    INFO("step " << i);
    CHECK(at[i] != std::string::npos);
  }
}

}  // namespace

TEST_CASE("a real VM boots the BDM ISO, fetches its boot script from pvs over TFTP and boots its vDisk over NBD",
          "[qemu][bdm][pvs]") {
  if (!have_tools()) return;
  Chain c("\"10.0.2.2:STREAM\"", 5);
  const auto [log, seconds] = c.boot();
  check_chain(c, log, "0x80");
  // pvs saw the TFTP request for this MAC and its NBD connection; the image's version is pvs's own.
  CHECK(c.h->logged("pvs: device 52:54:00:00:0b:01 at 127.0.0.1 fetched its boot script deskfarm/v5/52-54-00-00-0b-01/boot.ipxe"));
  CHECK(c.h->logged("device 52:54:00:00:0b:01 boot"));
  const auto metrics = c.h->metrics_text();
  CHECK_THAT(metrics, Catch::Contains("deskfarm_pvs_boot_scripts_served_total{instance=\"pvs-1\"} 1"));
  CHECK_THAT(metrics, Catch::Contains("deskfarm_pvs_bootstrap_version_mismatch_total{instance=\"pvs-1\"} 0"));
  CHECK_THAT(metrics, Catch::Contains("deskfarm_pvs_device_boots_total{instance=\"pvs-1\"} 1"));
  WARN("BDM chain (QEMU start to vDisk marker, TCG): " << seconds << " s");
}

TEST_CASE("the first login server down, iPXE falls over to the second, and an older BDM image is logged and still boots",
          "[qemu][bdm][pvs]") {
  if (!have_tools()) return;
  // 10.0.2.9: no host answers there on QEMU's user network (the guest's ARP goes unanswered).
  Chain c("\"10.0.2.9:6910\", \"10.0.2.2:STREAM\"", 4);
  const auto [log, seconds] = c.boot();
  INFO(log);
  const auto at = in_order(log, {"deskfarm BDM bootstrap version 4", "trying login server 1 10.0.2.9:6910",
                                 "trying login server 2 10.0.2.2:", "device 52:54:00:00:0b:01, vDisk marker",
                                 "login server 10.0.2.2:" + std::to_string(c.stream_port), marker});
  for (std::size_t i = 0; i < at.size(); ++i) {
    INFO("step " << i);
    CHECK(at[i] != std::string::npos);
  }
  CHECK(c.h->logged("pvs: device 52:54:00:00:0b:01 booted a BDM image with bootstrap version 4 but this server's "
                    "bootstrap_version is 5"));
  CHECK_THAT(c.h->metrics_text(), Catch::Contains("deskfarm_pvs_bootstrap_version_mismatch_total{instance=\"pvs-1\"} 1"));
  WARN("BDM chain with the first login server down: " << seconds << " s");
}

TEST_CASE("a real VM boots the BDM partition image from its first disk and its vDisk over NBD from the second",
          "[qemu][bdm][pvs]") {
  if (!have_tools() || !dt::require_program("mformat") || !dt::require_program("syslinux")) return;
  Chain c("\"10.0.2.2:STREAM\"", 5, "partition");
  const auto [log, seconds] = c.boot();
  // SYSLINUX on the partition starts iPXE; its script names drive 0x81 (the partition image is 0x80), and pvs's
  // boot script sanboots that drive: the vDisk, not the image that booted.
  check_chain(c, log, "0x81");
  CHECK(log.find("SYSLINUX") != std::string::npos);
  CHECK(c.h->logged("device 52:54:00:00:0b:01 boot"));
  WARN("BDM chain from the partition image (QEMU start to vDisk marker, TCG): " << seconds << " s");
}
