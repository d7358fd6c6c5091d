// The simulation engine on its own, driven by a hand-moved clock: transitions and vendor errors, capacity,
// throttling, cancellation, host failure with HA restart, the firmware hook, the inventory file.
#include <catch2/catch.hpp>

#include <deskfarm/hvsim/engine.hpp>
#include <deskfarm/testing/temp_dir.hpp>
#include <fstream>
#include <set>

using namespace deskfarm::hvsim;
using namespace std::chrono_literals;

namespace {

/// A clock moved by the test; run_due() runs at every time the engine asked for.
struct Sim {
  TimePoint now{std::chrono::seconds(1'000'000)};
  std::multiset<TimePoint> wakes;
  std::vector<hv::PowerStateEvent> power;
  std::vector<hv::Task> tasks;
  std::vector<BootTicket> boots;
  std::vector<WorkTicket> works;
  std::unique_ptr<Engine> engine;

  explicit Sim(const Personality& p, EngineConfig c = config(), bool firmware = false, bool backend = false) {
    Callbacks cb;
    cb.now = [this] { return now; };
    cb.wake_at = [this](TimePoint t) { wakes.insert(t); };
    cb.on_power = [this](const hv::PowerStateEvent& e) { power.push_back(e); };
    cb.on_task = [this](const hv::Task& t) { tasks.push_back(t); };
    if (firmware) cb.on_boot = [this](const BootTicket& b) { boots.push_back(b); };
    if (backend) cb.on_work = [this](const WorkTicket& w) { works.push_back(w); };
    engine = std::make_unique<Engine>(p, std::move(c), std::move(cb));
  }
  static EngineConfig config() {
    EngineConfig c;
    c.instance = "hv-1";
    c.hosts = {{"host-a", "pool-1", 4096, 8}, {"host-b", "pool-1", 4096, 8}};
    c.templates = {{"desktop", 1024, 2, "", {"network", "disk"}, true}, {"small", 512, 1, "", {"disk"}, false}};
    c.networks = {{"lan", "127.0.0.1:6969", "ARDBP32.BIN"}};
    c.isos = {"bdm.iso"};
    for (std::size_t i = 0; i + 1 < action_count; ++i) c.latencies[static_cast<Action>(i)] = {Latency::Kind::constant, 1000, 0};
    c.latencies[Action::ha_restart] = {Latency::Kind::constant, 2000, 0};
    return c;
  }
  /// Moves time by `d`, running every wake-up due on the way (bounded by the number of wake-ups).
  void advance(std::chrono::nanoseconds d) {
    const auto end = now + d;
    for (int i = 0; i < 1'000'000 && !wakes.empty() && *wakes.begin() <= end; ++i) {
      now = std::max(now, *wakes.begin());
      wakes.erase(wakes.begin());
      engine->run_due();
    }
    now = end;
  }
  hv::Task act(const std::string& action, const std::string& vm, const std::string& extra = "") {
    hv::VmAction a;
    a.action = action;
    a.vm = vm;
    if (action == "create") a.template_name = extra.empty() ? "desktop" : extra;
    if (action == "attach_iso") a.iso = extra;
    return engine->submit(a);
  }
  std::string state(const std::string& vm) { return engine->vm(vm)->power_state; }
};

}  // namespace

TEST_CASE("a started VM goes off, starting, running with its MAC on each event, and its task completes") {
  Sim s(xen());
  const auto vm = s.engine->seed("desktop", 1, "d")[0];
  const auto t = s.act("start", vm);
  CHECK(t.state == "started");  // the queue was empty
  CHECK(s.state(vm) == "starting");
  s.advance(999ms);
  CHECK(s.state(vm) == "starting");
  s.advance(1ms);
  CHECK(s.state(vm) == "running");
  REQUIRE(s.power.size() == 2);
  CHECK(s.power[0].previous == "off");
  CHECK(s.power[0].state == "starting");
  CHECK(s.power[0].is_boot());
  CHECK(s.power[1].state == "running");
  CHECK(s.power[1].vendor_state == "Running");
  CHECK(s.power[0].mac == s.engine->vm(vm)->mac);
  CHECK(s.power[1].host != "");
  CHECK(s.tasks.back().state == "completed");
  CHECK(s.tasks.back().vendor_state == "success");
  CHECK(s.tasks.back().progress == 1.0);
}

TEST_CASE("an illegal transition fails with the vendor's error and changes nothing") {
  for (const auto* p : {&xen(), &hyperv(), &esx()}) {
    Sim s(*p);
    const auto vm = s.engine->seed("desktop", 1, "d")[0];
    const auto t = s.act("shutdown", vm);
    INFO(p->vendor);
    CHECK(t.state == "failed");
    const std::string expected = p == &xen() ? "VM_BAD_POWER_STATE" : p == &hyperv() ? "32775" : "InvalidPowerState";
    CHECK(t.error_code == expected);
    CHECK(t.error.find(vm) != std::string::npos);
    CHECK(s.state(vm) == "off");
    CHECK(s.power.empty());
    CHECK(s.engine->stats().pending == 0);
  }
  Sim esx_sim(esx());
  const auto vm = esx_sim.engine->seed("desktop", 1, "d")[0];
  CHECK_THROWS_WITH(esx_sim.act("pause", vm), Catch::Contains("NotSupported") || Catch::Contains("not supported"));
}

TEST_CASE("unknown VM, template, ISO, host and task ids are refused with the vendor's code") {
  Sim x(xen());
  const auto vm = x.engine->seed("desktop", 1, "d")[0];
  try {
    x.act("start", "00000000-0000-4000-8000-000000000000");
    FAIL("accepted");
  } catch (const Refused& e) {
    CHECK(e.code() == "UUID_INVALID");
  }
  CHECK_THROWS_AS(x.act("create", "", "no-such-template"), Refused);
  CHECK_THROWS_AS(x.act("attach_iso", vm, "missing.iso"), Refused);
  CHECK_THROWS_AS(x.engine->crash_host("host-z"), Refused);
  CHECK_THROWS_AS(x.engine->cancel("OpaqueRef:task-999"), Refused);
  CHECK_THROWS_AS(x.act("explode", vm), Refused);
  Sim e(esx());
  try {
    e.act("start", "vm-999999");
    FAIL("accepted");
  } catch (const Refused& r) {
    CHECK(r.code() == "ManagedObjectNotFound");
  }
  Sim h(hyperv());
  try {
    h.act("start", "not-a-guid");
    FAIL("accepted");
  } catch (const Refused& r) {
    CHECK(r.code() == "32779");
  }
}

TEST_CASE("MACs are deterministic, unique and locally administered unicast") {
  Sim a(xen()), b(xen());
  const auto ids = a.engine->seed("desktop", 300, "d");
  (void)b.engine->seed("desktop", 300, "d");
  std::set<std::string> macs;
  for (const auto& id : ids) {
    const auto mac = a.engine->vm(id)->mac;
    CHECK(mac == b.engine->vm(id)->mac);
    macs.insert(mac);
    const auto first = std::stoi(mac.substr(0, 2), nullptr, 16);
    CHECK((first & 0x02) == 0x02);
    CHECK((first & 0x01) == 0);
  }
  CHECK(macs.size() == ids.size());
  // Swapping the vendor keeps the MACs (pvs knows devices by MAC); a configured prefix replaces the derived one.
  Sim e(esx());
  CHECK(e.engine->vm(e.engine->seed("desktop", 1, "d")[0])->mac == a.engine->vm(ids[0])->mac);
  auto c = Sim::config();
  c.mac_prefix = "52:54:00";
  Sim p(hyperv(), c);
  CHECK(p.engine->vm(p.engine->seed("desktop", 2, "d")[1])->mac == "52:54:00:00:00:02");
  c.mac_prefix = "52:54:00:00:01";  // five octets: the VM's number in the last one, 254 VMs at most
  Sim five(hyperv(), c);
  CHECK(five.engine->vm(five.engine->seed("desktop", 2, "d")[1])->mac == "52:54:00:00:01:02");
  CHECK_THROWS_WITH(five.engine->seed("desktop", 253, "e"), Catch::Contains("mac_prefix leaves room for 254"));
  c.mac_prefix = "53:54:00";  // multicast
  CHECK_THROWS_WITH(Sim(xen(), c), Catch::Contains("mac_prefix"));
}

TEST_CASE("a start that no host has room for fails with the vendor's capacity error and frees nothing else") {
  Sim s(esx());
  const auto ids = s.engine->seed("desktop", 9, "d");  // 8 fit: two hosts of 4096 MB
  for (const auto& id : ids) s.act("start", id);
  s.advance(2s);
  std::size_t running = 0;
  for (const auto& id : ids) running += s.state(id) == "running";
  CHECK(running == 8);
  const auto failed = std::count_if(s.tasks.begin(), s.tasks.end(), [](auto& t) { return t.state == "failed"; });
  CHECK(failed == 1);
  auto it = std::find_if(s.tasks.begin(), s.tasks.end(), [](auto& t) { return t.state == "failed"; });
  CHECK(it->error_code == "InsufficientResourcesFault");
  for (const auto& h : s.engine->hosts()) CHECK(h.free_memory_mb == 0);
}

TEST_CASE("the queue starts at most max_in_progress at once and max_per_minute per minute") {
  auto c = Sim::config();
  c.max_in_progress = 2;
  c.max_per_minute = 3;
  Sim s(hyperv(), c);
  const auto ids = s.engine->seed("small", 5, "d");
  std::vector<hv::Task> replies;
  for (const auto& id : ids) replies.push_back(s.act("start", id));
  CHECK(s.engine->stats().in_progress == 2);
  CHECK(s.engine->stats().pending == 3);
  CHECK(replies[4].state == "pending");
  CHECK(replies[4].vendor_state == "New (2)");
  s.advance(1s);  // two done, the third starts; the per-minute budget (3) is now spent
  CHECK(s.engine->stats().in_progress == 1);
  CHECK(s.engine->stats().pending == 2);
  s.advance(30s);
  CHECK(s.engine->stats().pending == 2);
  s.advance(30s);  // a minute after the first starts: two more may start
  CHECK(s.engine->stats().pending == 0);
  s.advance(2s);
  for (const auto& id : ids) CHECK(s.state(id) == "running");
}

TEST_CASE("cancelling a pending task drops it, and cancelling a started one returns the VM to where it was") {
  auto c = Sim::config();
  c.max_in_progress = 1;
  Sim s(xen(), c);
  const auto ids = s.engine->seed("desktop", 2, "d");
  const auto first = s.act("start", ids[0]);
  const auto second = s.act("start", ids[1]);
  CHECK(second.state == "pending");
  CHECK(s.engine->cancel(second.id).state == "cancelled");
  CHECK(s.state(ids[0]) == "starting");
  const auto c1 = s.engine->cancel(first.id);
  CHECK(c1.state == "cancelled");
  CHECK(c1.error_code == "TASK_CANCELLED");
  CHECK(s.state(ids[0]) == "off");
  CHECK(s.power.back().state == "off");
  for (const auto& h : s.engine->hosts()) CHECK(h.free_memory_mb == h.memory_mb);
  s.advance(10s);
  CHECK(s.state(ids[1]) == "off");
  try {
    s.engine->cancel(first.id);
    FAIL("cancelled twice");
  } catch (const Refused& e) {
    CHECK(e.code() == "OPERATION_NOT_ALLOWED");
  }
}

TEST_CASE("a crashed host's VMs go off and HA-protected ones restart on the remaining host within seconds") {
  Sim s(xen());
  const auto ha = s.engine->seed("desktop", 2, "ha");
  const auto plain = s.engine->seed("small", 1, "p");
  for (const auto& id : ha) s.act("start", id);
  s.act("start", plain[0]);
  s.advance(2s);
  const auto host = s.engine->vm(ha[0])->host;
  s.power.clear();
  s.engine->crash_host(host);
  CHECK(s.engine->vm(ha[0])->host.empty());
  std::vector<std::string> lost;
  for (const auto& e : s.power) {
    CHECK(e.reason == "host_failure");
    CHECK(e.state == "off");
    lost.push_back(e.vm);
  }
  REQUIRE(!lost.empty());
  s.advance(5s);
  for (const auto& id : lost) {
    const auto v = *s.engine->vm(id);
    if (id == plain[0]) {
      CHECK(v.power_state == "off");
    } else {
      CHECK(v.power_state == "running");
      CHECK(v.host != host);
    }
  }
  CHECK(std::any_of(s.power.begin(), s.power.end(), [](auto& e) { return e.reason == "ha_restart" && e.state == "running"; }));
  for (const auto& h : s.engine->hosts())
    if (h.id == host) CHECK(!h.up);
  s.engine->recover_host(host);
  for (const auto& h : s.engine->hosts()) CHECK(h.up);
}

TEST_CASE("a network boot with options 66/67 waits for the firmware: handover means running, failure the vendor's error") {
  Sim s(hyperv(), Sim::config(), true);
  const auto ids = s.engine->seed("desktop", 2, "d");
  const auto t = s.act("start", ids[0]);
  s.act("start", ids[1]);
  s.advance(5s);
  REQUIRE(s.boots.size() == 2);
  CHECK(s.boots[0].tftp_server == "127.0.0.1:6969");
  CHECK(s.boots[0].boot_file == "ARDBP32.BIN");
  CHECK(s.boots[0].mac == s.engine->vm(ids[0])->mac);
  CHECK(s.state(ids[0]) == "starting");
  s.engine->boot_finished(s.boots[0].task, true, "");
  CHECK(s.state(ids[0]) == "running");
  s.engine->boot_finished(s.boots[1].task, false, "tftp: no answer from 127.0.0.1:6969 after 3 tries");
  CHECK(s.state(ids[1]) == "off");
  CHECK(s.tasks.back().state == "failed");
  CHECK(s.tasks.back().error_code == "32768");
  CHECK(s.tasks.back().error.find("no answer from 127.0.0.1:6969") != std::string::npos);
  s.engine->boot_finished(s.boots[1].task, true, "");  // late or repeated: ignored
  CHECK(s.state(ids[1]) == "off");
}

TEST_CASE("the injected task failure rate and slow storage change outcomes and latencies") {
  auto c = Sim::config();
  c.task_failure_rate = 1;
  Sim s(esx(), c);
  const auto vm = s.engine->seed("small", 1, "d")[0];
  s.act("start", vm);
  s.advance(2s);
  CHECK(s.state(vm) == "off");
  CHECK(s.tasks.back().error_code == "SystemError");
  s.engine->set_task_failure_rate(0);
  s.engine->set_storage_factor(4);
  s.act("start", vm);
  s.advance(3s);
  CHECK(s.state(vm) == "starting");
  s.advance(1s);
  CHECK(s.state(vm) == "running");
  CHECK_THROWS_AS(s.engine->set_storage_factor(0.5), Refused);
  CHECK_THROWS_AS(s.engine->set_task_failure_rate(2), Refused);
}

TEST_CASE("the inventory file survives a restart, and a corrupt one is a clear error naming the line") {
  deskfarm::testing::TempDir dir;
  const auto file = dir.path() / "inventory";
  std::string running_id, iso_id;
  {
    Sim s(xen());
    const auto ids = s.engine->seed("desktop", 3, "d");
    s.act("start", ids[0]);
    s.act("attach_iso", ids[1], "bdm.iso");
    s.act("destroy", ids[2]);
    s.advance(2s);
    running_id = ids[0];
    iso_id = ids[1];
    s.engine->save(file);
  }
  Sim t(xen());
  t.engine->load(file);
  CHECK(t.engine->vm_count() == 2);
  CHECK(t.state(running_id) == "running");
  CHECK(t.engine->vm(iso_id)->iso == "bdm.iso");
  CHECK(t.engine->vm(iso_id)->name == "d2");
  const auto hosts = t.engine->hosts();
  CHECK(std::any_of(hosts.begin(), hosts.end(), [](auto& h) { return h.free_memory_mb == 3072; }));
  {
    std::ofstream out(file, std::ios::app);
    out << "7\trunning\thost-a\tdesktop\tlots\n";
  }
  Sim u(xen());
  CHECK_THROWS_WITH(u.engine->load(file), Catch::Contains("inventory:4:") && Catch::Contains("12 tab-separated fields"));
  Sim v(esx());
  std::ofstream(dir.path() / "x") << "deskfarm-hvsim-inventory\t1\txen\t3\n";
  CHECK_THROWS_WITH(v.engine->load(dir.path() / "x"), Catch::Contains("belongs to a 'xen' adapter"));
}

TEST_CASE("a network's subnet leases its VMs addresses in order, a destroyed VM's goes to the next, and a full one refuses") {
  auto c = Sim::config();
  c.networks[0].subnet = "10.1.0.0/29";  // host numbers 1..6
  Sim s(xen(), c);
  const auto ids = s.engine->seed("desktop", 3, "d");
  CHECK(s.engine->vm(ids[0])->address == "10.1.0.1");
  CHECK(s.engine->vm(ids[1])->address == "10.1.0.2");
  CHECK(s.engine->vm(ids[2])->address == "10.1.0.3");
  const auto inv = s.engine->inventory();
  REQUIRE(inv.vms.size() == 3);
  CHECK(inv.vms[2].address == "10.1.0.3");
  CHECK(inv.networks[0].subnet == "10.1.0.0/29");

  s.act("destroy", ids[1]);
  s.advance(2s);
  REQUIRE(s.act("create", "").state != "failed");
  s.advance(2s);
  REQUIRE(!s.tasks.empty());
  const auto created = s.tasks.back().vm;
  REQUIRE(s.tasks.back().state == "completed");
  CHECK(s.engine->vm(created)->address == "10.1.0.2");  // the lowest free lease, not the next new one

  CHECK(s.engine->seed("desktop", 3, "e").size() == 3);  // .4 .5 .6: the subnet is full now
  CHECK(s.engine->vm(s.engine->inventory().vms.back().id)->address == "10.1.0.6");
  CHECK_THROWS_WITH(s.act("create", ""), Catch::Contains("10.1.0.0/29 is fully leased"));
  CHECK_THROWS_WITH(s.engine->seed("desktop", 1, "f"), Catch::Contains("subnet 10.1.0.0/29 has 0 free"));

  // A network without a subnet: no address, and nothing invented.
  Sim plain(xen());
  CHECK(plain.engine->vm(plain.engine->seed("desktop", 1, "d")[0])->address.empty());

  for (const auto* bad : {"10.1.0.0", "10.1.0.1/24", "10.1.0.0/31", "10.1.0.0/x", "lan/24"}) {
    auto b = Sim::config();
    b.networks[0].subnet = bad;
    CHECK_THROWS_WITH(Sim(xen(), b), Catch::StartsWith("networks: 'lan' has subnet '" + std::string(bad) + "'"));
  }
}

TEST_CASE("queued creates hold their network's addresses: one more is refused, a cancelled one gives its address back") {
  auto c = Sim::config();
  c.networks[0].subnet = "10.1.0.0/29";  // host numbers 1..6
  Sim s(xen(), c);
  std::vector<std::string> queued;
  for (int i = 0; i < 6; ++i) queued.push_back(s.act("create", "").id);  // none has completed: no lease taken yet
  CHECK_THROWS_WITH(s.act("create", ""), Catch::Contains("10.1.0.0/29 is fully leased"));
  CHECK_THROWS_WITH(s.engine->seed("desktop", 1, "f"), Catch::Contains("subnet 10.1.0.0/29 has 6 free"));
  CHECK(s.engine->cancel(queued.back()).state == "cancelled");
  queued.back() = s.act("create", "").id;  // the cancelled create's address is free again
  s.advance(10s);
  std::set<std::string> addresses;
  for (const auto& t : s.tasks)
    if (t.state == "completed") addresses.insert(s.engine->vm(t.vm)->address);
  CHECK(addresses == std::set<std::string>{"10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"});
  CHECK_THROWS_WITH(s.act("create", ""), Catch::Contains("10.1.0.0/29 is fully leased"));
}

TEST_CASE("leases survive the inventory file, and a file written without addresses leases in VM order") {
  deskfarm::testing::TempDir dir;
  const auto file = dir.path() / "inventory";
  auto c = Sim::config();
  c.networks[0].subnet = "192.168.10.0/24";
  std::vector<std::string> ids;
  {
    Sim s(xen(), c);
    ids = s.engine->seed("desktop", 3, "d");
    s.act("destroy", ids[0]);
    s.advance(2s);
    s.engine->save(file);
  }
  {
    Sim t(xen(), c);
    t.engine->load(file);
    CHECK(t.engine->vm(ids[1])->address == "192.168.10.2");
    CHECK(t.engine->vm(ids[2])->address == "192.168.10.3");
    CHECK(t.engine->vm(t.engine->seed("desktop", 1, "e")[0])->address == "192.168.10.1");  // the hole left by d1
  }
  // The file as an older engine wrote it: 11 fields, no address.
  std::ifstream in(file);
  std::string text, line;
  while (std::getline(in, line)) text += (line.starts_with("deskfarm") ? line : line.substr(0, line.rfind('\t'))) + "\n";
  in.close();
  std::ofstream(file, std::ios::trunc) << text;
  Sim u(xen(), c);
  u.engine->load(file);
  CHECK(u.engine->vm(ids[1])->address == "192.168.10.1");
  CHECK(u.engine->vm(ids[2])->address == "192.168.10.2");
}

TEST_CASE("a config no host can satisfy is refused by name") {
  auto c = Sim::config();
  c.templates.push_back({"huge", 1 << 20, 2, "", {}, true});
  CHECK_THROWS_WITH(Sim(xen(), c), Catch::Contains("'huge'") && Catch::Contains("more than any host has"));
  auto d = Sim::config();
  d.hosts.push_back(d.hosts[0]);
  CHECK_THROWS_WITH(Sim(xen(), d), Catch::Contains("'host-a' is given twice"));
}

TEST_CASE("a real backend does each started task's work: its end completes or fails the task without a latency timer") {
  Sim s(qemu(), Sim::config(), false, true);
  const auto vm = s.engine->seed("desktop", 1, "d")[0];
  const auto t = s.act("start", vm);
  REQUIRE(s.works.size() == 1);
  CHECK(s.works[0].action == Action::start);
  CHECK(s.works[0].vm == vm);
  CHECK(s.works[0].mac == s.engine->vm(vm)->mac);
  CHECK(s.works[0].memory_mb == 1024);
  CHECK(s.works[0].boot_order == std::vector<std::string>{"network", "disk"});
  s.advance(1h);  // no timer ends a task the backend holds
  CHECK(s.state(vm) == "starting");
  s.engine->work_finished(s.works[0].task, true, "");
  CHECK(s.state(vm) == "running");
  CHECK(s.engine->task(t.id)->state == "completed");
  s.engine->work_finished(s.works[0].task, false, "late");  // a finished task ignores a second end
  CHECK(s.engine->task(t.id)->state == "completed");

  // A failed work: the vendor's internal error with the backend's reason; the VM back where it was.
  const auto r = s.act("reboot", vm);
  REQUIRE(s.works.size() == 2);
  s.engine->work_finished(s.works[1].task, false, "QEMU did not answer system_reset");
  const auto failed = *s.engine->task(r.id);
  CHECK(failed.state == "failed");
  CHECK(failed.error_code == "VIR_ERR_INTERNAL_ERROR");
  CHECK_THAT(failed.error, Catch::Contains("QEMU did not answer system_reset"));
  CHECK(s.state(vm) == "running");
  CHECK(s.engine->inventory().vendor == "qemu");
  CHECK(s.engine->vm(vm)->vendor_state == "running");
}

TEST_CASE("a machine that changes by itself (observed) fails the task in flight and reports the new state with its reason") {
  Sim s(qemu(), Sim::config(), false, true);
  const auto vm = s.engine->seed("desktop", 1, "d")[0];
  s.act("start", vm);
  s.engine->work_finished(s.works.at(0).task, true, "");
  const auto shutdown = s.act("shutdown", vm);
  CHECK(s.state(vm) == "stopping");
  s.engine->observed(vm, State::off, "host_failure", "QEMU (pid 42) killed by signal 9");
  CHECK(s.state(vm) == "off");
  CHECK(s.engine->vm(vm)->vendor_state == "shutoff");
  const auto t = *s.engine->task(shutdown.id);
  CHECK(t.state == "failed");
  CHECK_THAT(t.error, Catch::Contains("killed by signal 9"));
  REQUIRE(!s.power.empty());
  CHECK(s.power.back().reason == "host_failure");
  CHECK(s.power.back().state == "off");
  CHECK(s.power.back().mac == s.engine->vm(vm)->mac);
  std::int64_t free = 0;
  for (const auto& h : s.engine->hosts()) free += h.free_memory_mb;
  CHECK(free == 8192);  // the host's memory is given back
  // The late end of the failed task changes nothing; an unknown VM is ignored.
  s.engine->work_finished(s.works.back().task, true, "");
  CHECK(s.state(vm) == "off");
  s.engine->observed("no-such-vm", State::off, "guest", "");
  const auto size = s.power.size();
  s.engine->observed(vm, State::off, "guest", "");  // no change, no event
  CHECK(s.power.size() == size);
}
