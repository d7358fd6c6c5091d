// hypervisor-qemu against real qemu-system-x86_64 processes (TCG here; KVM where /dev/kvm opens and the CPU has
// vmx or svm): the conformance suite where it applies to a real machine, the BDM ISO booted from the CD-ROM into
// iPXE, reboot, eject, power off, a killed QEMU reported off, and a QEMU that cannot start reported with its own
// message.
#include <signal.h>

#include <catch2/catch.hpp>

#include <deskfarm/bdm/iso.hpp>
#include <deskfarm/testing/boot_sector.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/hypervisor_plugin_tests.hpp>
#include <deskfarm/testing/net.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

namespace fs = std::filesystem;
namespace hv = deskfarm::interfaces::hypervisor;
namespace hp = deskfarm::testing::hypervisor_plugin;
using deskfarm::testing::Harness;
using namespace std::chrono_literals;

namespace {

bool have_qemu() { return deskfarm::testing::require_program("qemu-system-x86_64") && deskfarm::testing::require_program("qemu-img"); }

deskfarm::testing::HarnessOptions real_clock() {
  auto o = hp::options();
  o.clock = "real";
  return o;
}

/// Small machines (32 MB, diskless, booting an empty CD-ROM: SeaBIOS idles) so the suite's starts stay cheap:
/// two hosts of 96 MB hold six, two actions at once, a one-second ACPI grace (SeaBIOS has no ACPI handler).
std::string small_pool(const std::string& extra = "") {
  return "[instances.hv-1]\nplugin = \"hypervisor-qemu\"\n"
         "max_in_progress = 2\nshutdown_timeout_s = 1\n"
         "hosts = [{ id = \"host-a\", memory_mb = 96, vcpus = 16 }, { id = \"host-b\", memory_mb = 96, vcpus = 16 }]\n"
         "templates = [{ name = \"desktop\", memory_mb = 32, vcpus = 1, boot_order = [\"cdrom\"] }]\n" +
         extra;
}

hv::Task act(Harness& h, const std::string& action, const std::string& vm, const std::string& iso = "") {
  hv::VmAction a{action, vm, action == "create" ? "desktop" : "", "", iso, {}};
  auto r = h.request<hv::VmAction, hv::Task>("hypervisor.hv-1.vm.action", a, 10s);
  if (!r) throw std::runtime_error(action + " refused: " + r.error().code + " " + r.error().message);
  return *r;
}

/// Waits (real time, bounded) for the task's last event.
hv::Task finish(deskfarm::testing::Probe& tasks, const hv::Task& t, std::chrono::seconds within = 60s) {
  if (t.state == "completed" || t.state == "failed" || t.state == "cancelled") return t;
  const auto end = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < end) {
    auto m = tasks.expect_as<hv::Task>(1s);
    if (m && m->id == t.id && (m->state == "completed" || m->state == "failed" || m->state == "cancelled")) return *m;
  }
  throw std::runtime_error("task " + t.id + " (" + t.action + ") did not end within " + std::to_string(within.count()) + " s");
}

std::int64_t pid_of(Harness& h, const std::string& vm) {
  const auto st = h.instance_status("hv-1");
  for (const auto& m : st.find("machines")->as_array())
    if (m.find("vm")->as_string() == vm) return m.find("pid")->as_integer();
  return 0;
}

std::string serial_of(Harness& h, const std::string& vm) {
  return (fs::path(h.state_dir()) / "hv-1" / "machines" / vm / "serial.log").string();
}

bool process_exists(std::int64_t pid) { return pid > 0 && ::kill(static_cast<pid_t>(pid), 0) == 0; }

std::size_t count(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("hypervisor-qemu: the conformance suite passes where it applies to a real machine", "[qemu]") {
  if (!have_qemu()) return;
  deskfarm::testing::conformance::Subject s;
  s.plugin = "hypervisor-qemu";
  s.instance = "hv-1";
  s.manifest_toml = small_pool();
  s.options = real_clock();  // QEMU works in real time: the virtual clock would stop before any machine answered
  const auto findings = deskfarm::testing::conformance::run(s);
  // Two checks do not apply, and the suite must say so, not pass them by accident:
  // - host crash and HA restart: every machine runs on this one host; a simulated crash would report VMs off while
  //   their QEMU processes run on, so the adapter refuses simulated faults (a killed QEMU is tested below);
  // - power states across a restart: a VM's QEMU is the deployment's child and ends with it; VMs and MACs survive,
  //   a running VM comes back off.
  bool ha = false, restart = false;
  for (const auto& f : findings) {
    INFO(f.check << ": " << f.problem);
    const bool is_ha = f.check.find("HA-protected") != std::string::npos;
    const bool is_restart = f.check.find("survive a restart") != std::string::npos && f.problem.find("came back off, not running") != std::string::npos;
    ha = ha || is_ha;
    restart = restart || is_restart;
    CHECK((is_ha || is_restart));
  }
  CHECK(ha);
  CHECK(restart);
}

TEST_CASE("hypervisor-qemu: a manifest for hypervisor-xen runs on QEMU with its plugin line changed", "[qemu]") {
  Harness h(hp::manifest("hypervisor-qemu", "vms = [{ template = \"desktop\", count = 2 }]\n"), real_clock());
  h.start();
  auto inv = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {});
  REQUIRE(inv);
  CHECK(inv->vendor == "qemu");
  CHECK(inv->vms.size() == 2);
  CHECK(inv->vms.at(0).vendor_state == "shutoff");
  CHECK(inv->max_in_progress == 2);
  CHECK_THROWS_WITH(Harness(hp::manifest("hypervisor-qemu", "faults = [{ kind = \"task_failure_rate\", value = 0.5 }]\n"), real_clock()),
                    Catch::Contains("faults") && Catch::Contains("no simulated faults"));
  CHECK_THROWS_WITH(Harness(hp::manifest("hypervisor-qemu", "images = [{ template = \"desktop\", path = \"/no/such/base.qcow2\" }]\n"), real_clock()),
                    Catch::Contains("/no/such/base.qcow2"));
}

TEST_CASE("hypervisor-qemu: a VM boots the BDM ISO from its CD-ROM into iPXE and the login servers and then reboots and ejects and powers off",
          "[qemu][bdm]") {
  if (!have_qemu() || !fs::exists(deskfarm::bdm::default_ipxe_iso)) return;
  deskfarm::testing::TempDir dir("qemu-test");
  const auto iso = dir / "bdm.iso";
  deskfarm::bdm::IsoOptions o;
  o.bootstrap.version = 11;
  o.bootstrap.verbose = true;  // the script names each login server it tries
  // 10.0.2.2 is the host under QEMU user networking (nothing listens there on 6910: refused at once).
  o.bootstrap.login_servers = {{"10.0.2.2", 6910}, {"10.0.2.3", 6911}};
  o.bootstrap.login_polling_timeout_ms = 1000;
  o.bootstrap.login_general_timeout_ms = 1000;
  o.bootstrap.recovery_time_s = 3600;  // after one round the script sleeps: the machine stays up for the test
  o.source_date_epoch = 1700000000;
  deskfarm::bdm::build_iso(o, iso);

  Harness h("[instances.hv-1]\nplugin = \"hypervisor-qemu\"\nshutdown_timeout_s = 2\n"
            "templates = [{ name = \"desktop\", memory_mb = 128, vcpus = 1, boot_order = [\"cdrom\", \"network\"] }]\n"
            "isos = [\"" + iso.string() + "\"]\n",
            real_clock());
  h.start();
  auto tasks = h.probe("hypervisor.hv-1.task.*");
  auto power = h.probe("hypervisor.hv-1.vm.*.power");
  const auto vm = finish(tasks, act(h, "create", "")).vm;
  REQUIRE(!vm.empty());
  REQUIRE(finish(tasks, act(h, "attach_iso", vm, iso.string())).state == "completed");
  const auto started = finish(tasks, act(h, "start", vm));
  INFO(started.error);
  REQUIRE(started.state == "completed");
  const auto pid = pid_of(h, vm);
  CHECK(process_exists(pid));

  // The serial console, captured to the VM's file: iPXE's banner, the BDM stamp, then each login server in order.
  std::string serial;
  const auto log = serial_of(h, vm);
  deskfarm::testing::eventually([&] { serial = deskfarm::testing::read_text(log); return serial.find("retrying in 3600 s") != std::string::npos; }, 90s);
  INFO(serial);
  const auto banner = serial.find("iPXE");
  const auto stamp = serial.find("deskfarm BDM bootstrap version 11");
  const auto first = serial.find("trying login server 1 10.0.2.2:6910");
  const auto second = serial.find("trying login server 2 10.0.2.3:6911");
  REQUIRE(banner != std::string::npos);
  REQUIRE(stamp != std::string::npos);
  REQUIRE(first != std::string::npos);
  REQUIRE(second != std::string::npos);
  CHECK(banner < stamp);
  CHECK(stamp < first);
  CHECK(first < second);

  // Reboot by QMP (system_reset): the same process boots the ISO again.
  REQUIRE(finish(tasks, act(h, "reboot", vm)).state == "completed");
  CHECK(pid_of(h, vm) == pid);
  CHECK(deskfarm::testing::eventually([&] { return count(deskfarm::testing::read_text(log), "deskfarm BDM bootstrap version 11") >= 2; }, 90s));

  // Eject: QEMU's eject on the CD-ROM (a wrong device would fail the task with QEMU's DeviceNotFound).
  const auto ejected = finish(tasks, act(h, "eject_iso", vm));
  INFO(ejected.error);
  CHECK(ejected.state == "completed");
  CHECK(h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {})->vms.at(0).iso.empty());

  // Power off: the process is gone, the VM is off, and the events carry the MAC.
  REQUIRE(finish(tasks, act(h, "power_off", vm)).state == "completed");
  CHECK_FALSE(process_exists(pid));
  const auto inv = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {});
  CHECK(inv->vms.at(0).power_state == hv::kOff);
  std::vector<std::string> states;
  for (const auto& m : power.received())
    if (auto e = deskfarm::sdk::body_of<hv::PowerStateEvent>(m)) {
      CHECK(e->mac == inv->vms.at(0).mac);
      // A reset by the guest itself (firmware under a loaded TCG has been seen to do one) is reported as it should
      // be, with reason "guest"; the sequence below is the adapter's own actions.
      if (e->reason != "guest") states.push_back(e->previous + ">" + e->state);
    }
  CHECK(states == std::vector<std::string>{"off>starting", "starting>running", "running>starting", "starting>running", "running>off"});
}

TEST_CASE("hypervisor-qemu: a killed QEMU is a VM that went off (an event) and not a hung adapter", "[qemu]") {
  if (!have_qemu()) return;
  Harness h(small_pool(), real_clock());
  h.start();
  auto tasks = h.probe("hypervisor.hv-1.task.*");
  auto power = h.probe("hypervisor.hv-1.vm.*.power");
  const auto vm = finish(tasks, act(h, "create", "")).vm;
  REQUIRE(finish(tasks, act(h, "start", vm)).state == "completed");
  const auto pid = pid_of(h, vm);
  REQUIRE(process_exists(pid));
  ::kill(static_cast<pid_t>(pid), SIGKILL);
  std::optional<hv::PowerStateEvent> off;
  for (int i = 0; i < 20 && !off; ++i)  // bounded: 20 s
    if (auto e = power.expect_as<hv::PowerStateEvent>(1s); e && e->state == hv::kOff) off = *e;
  REQUIRE(off);
  CHECK(off->reason == "host_failure");
  CHECK(off->vm == vm);
  CHECK(h.logged("killed by signal 9"));
  CHECK(pid_of(h, vm) == 0);
  // The adapter goes on: the VM starts again in a new process.
  const auto again = finish(tasks, act(h, "start", vm));
  INFO(again.error);
  REQUIRE(again.state == "completed");
  CHECK(pid_of(h, vm) != pid);
}

TEST_CASE("hypervisor-qemu: a QEMU that cannot start or never answers QMP fails the task with its own message and leaves no process",
          "[qemu]") {
  if (!have_qemu()) return;
  deskfarm::testing::TempDir dir("qemu-test");
  // A "QEMU" that never opens its QMP socket: it notes its PID and sleeps.
  const auto mute = dir / "mute-qemu.sh";
  deskfarm::testing::write_text(mute, "#!/bin/sh\necho $$ > " + (dir / "mute.pid").string() + "\nexec sleep 60\n");
  fs::permissions(mute, fs::perms::owner_all);
  const std::vector<std::pair<std::string, std::string>> cases{
      {"extra_args = [\"-no-such-option\"]\n", "-no-such-option: invalid option"},
      {"qemu = \"deskfarm-no-such-qemu\"\n", "cannot run deskfarm-no-such-qemu"},
      {"qemu = \"" + mute.string() + "\"\nqmp_timeout_ms = 1500\n", "created no QMP socket within 1500 ms"}};
  for (const auto& [extra, message] : cases) {
    INFO(extra);
    Harness h(small_pool(extra), real_clock());
    h.start();
    auto tasks = h.probe("hypervisor.hv-1.task.*");
    const auto vm = finish(tasks, act(h, "create", "")).vm;
    const auto t = finish(tasks, act(h, "start", vm));
    INFO(t.error);
    CHECK(t.state == "failed");
    CHECK(t.error_code == "VIR_ERR_INTERNAL_ERROR");
    CHECK_THAT(t.error, Catch::Contains(message));
    CHECK(h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {})->vms.at(0).power_state == hv::kOff);
    CHECK(pid_of(h, vm) == 0);
  }
  REQUIRE(fs::exists(dir / "mute.pid"));
  const auto mute_pid = std::stoll(deskfarm::testing::read_text(dir / "mute.pid"));
  CHECK_FALSE(process_exists(mute_pid));  // killed by its PID when QMP did not come
}

TEST_CASE("hypervisor-qemu: a template's image gives each VM a qcow2 overlay of its own that goes with the VM", "[qemu]") {
  if (!have_qemu()) return;
  deskfarm::testing::TempDir dir("qemu-test");
  const auto base = dir / "base.qcow2";
  REQUIRE(deskfarm::testing::run_child({"qemu-img", "create", "-q", "-f", "qcow2", base.string(), "16M"}).exit_code == 0);
  Harness h(small_pool("images = [{ template = \"desktop\", path = \"" + base.string() + "\" }]\n"), real_clock());
  h.start();
  auto tasks = h.probe("hypervisor.hv-1.task.*");
  const auto vm = finish(tasks, act(h, "create", "")).vm;
  REQUIRE(finish(tasks, act(h, "start", vm)).state == "completed");
  const auto disk = fs::path(serial_of(h, vm)).parent_path() / "disk.qcow2";
  REQUIRE(fs::exists(disk));
  const auto info = deskfarm::testing::run_child({"qemu-img", "info", "-U", disk.string()});
  CHECK_THAT(info.out, Catch::Contains("backing file: " + base.string()));
  REQUIRE(finish(tasks, act(h, "power_off", vm)).state == "completed");
  const auto destroyed = finish(tasks, act(h, "destroy", vm));
  INFO(destroyed.error_code << " " << destroyed.error);
  REQUIRE(destroyed.state == "completed");
  CHECK_FALSE(fs::exists(disk.parent_path()));
}

TEST_CASE("hypervisor-qemu: a real VM boots its vDisk streamed by pvs over NBD (export = its MAC)", "[qemu][pvs]") {
  if (!have_qemu()) return;
  deskfarm::testing::TempDir dir("qemu-test");
  // The vDisk: a boot sector that writes a marker to COM1 and halts.
  const std::string marker = "deskfarm vDisk boot sector from pvs\r\n";
  deskfarm::testing::write_file(dir / "marker.img", deskfarm::testing::marker_disk(marker));

  const auto port = std::to_string(deskfarm::testing::free_port());
  const std::string mac = "52:54:00:00:07:01";  // the first VM of mac_prefix 52:54:00:00:07, as pvs knows it
  Harness h("[instances.pvs-1]\nplugin = \"pvs\"\ntftp = \"off\"\nstream = \"127.0.0.1:" + port + "\"\nstore = \"" + dir.path().string() +
                "\"\nvdisks = [ { name = \"marker\", file = \"marker.img\" } ]\ndevices = [ { mac = \"" + mac + "\", vdisk = \"marker\" } ]\n"
                "[instances.hv-1]\nplugin = \"hypervisor-qemu\"\nmac_prefix = \"52:54:00:00:07\"\nshutdown_timeout_s = 1\n"
                "templates = [{ name = \"desktop\", memory_mb = 32, vcpus = 1, boot_order = [\"disk\"] }]\n"
                "images = [{ template = \"desktop\", path = \"nbd://127.0.0.1:" + port + "\" }]\n",
            real_clock());
  h.start();
  // QEMU's NBD client connects when the machine starts: pvs must serve the vDisk by then (its catalog loads from the
  // data store after start, slower under a sanitizer).
  h.await_status("pvs-1", "catalog", "loaded");
  auto tasks = h.probe("hypervisor.hv-1.task.*");
  const auto vm = finish(tasks, act(h, "create", "")).vm;
  const auto started = finish(tasks, act(h, "start", vm));
  INFO(started.error);
  REQUIRE(started.state == "completed");
  std::string serial;
  CHECK(deskfarm::testing::eventually([&] { serial = deskfarm::testing::read_text(serial_of(h, vm)); return serial.find(marker) != std::string::npos; }, 60s));
  INFO(serial);
  CHECK(serial.find("Booting from Hard Disk") != std::string::npos);
  CHECK(h.logged(mac));  // pvs saw the device's session
  REQUIRE(finish(tasks, act(h, "power_off", vm)).state == "completed");
}
