// ddc and vda on the virtual clock: registration and heartbeats, failover between two controllers, the pool
// service across a time-of-day change, brokering (reconnect, maintenance, assignments that survive a restart)
// and forged or replayed registrations.
#include <catch2/catch.hpp>

#include <deskfarm/interfaces/ddc/ddc.hpp>
#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/interfaces/ima/ima.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include <map>

#include <Poco/Data/Session.h>

#include "farm_key.hpp"
#include "schedule.hpp"

namespace {

using namespace std::chrono_literals;
namespace ddc = deskfarm::interfaces::ddc;
namespace hv = deskfarm::interfaces::hypervisor;
using deskfarm::sdk::Empty;
using deskfarm::testing::Harness;

constexpr const char* kKey = "farm-secret";

struct Farm {
  std::string start = "2026-01-05T09:00:00Z";  // a Monday, in peak hours
  int vms = 4;
  std::string group = "name = \"pool\", kind = \"pooled-random\", desktops = [\"desktop-*\"], hypervisor = \"hv-1\"";
  std::string ddc_extra;
  std::string vda_extra;
  int controllers = 2;
  std::string more;  ///< further instances, appended as written
  std::string hv_extra;  ///< further keys of hv-1

  std::string manifest() const {
    std::string m = "[deployment]\nname = \"farm\"\nclock = \"virtual\"\nclock_start = " + start + "\n\n"
                    "[instances.hv-1]\nplugin = \"hypervisor-xen\"\nmax_in_progress = 0\n"
                    "latencies = [{ action = \"start\", distribution = \"constant\", ms = 2000 }, "
                    "{ action = \"shutdown\", distribution = \"constant\", ms = 1000 }, "
                    "{ action = \"reboot\", distribution = \"constant\", ms = 3000 }]\n"
                    "vms = [{ template = \"desktop\", count = " + std::to_string(vms) + ", prefix = \"desktop-\" }]\n" + hv_extra + "\n";
    std::string list;
    for (int i = 1; i <= controllers; ++i) {
      const std::string name = "ddc-" + std::to_string(i);
      list += (i > 1 ? ", \"" : "\"") + name + "\"";
      m += "[instances." + name + "]\nplugin = \"ddc\"\nfarm_key = \"" + kKey + "\"\ngroups = [{ " + group + " }]\n" + ddc_extra + "\n";
    }
    m += "[instances.vda-1]\nplugin = \"vda\"\ncontrollers = [" + list + "]\nfarm_key = \"" + kKey + "\"\n" + vda_extra;
    return m + "\n" + more;
  }
};

/// Three desktops of a pooled group whose idle targets are 0: nothing starts until a user asks.
Farm no_idle_targets() {
  Farm f;
  f.vms = 3;
  f.group += ", idle_peak = 0, idle_business = 0, idle_off_hours = 0";
  return f;
}

deskfarm::testing::HarnessOptions options(const std::filesystem::path& state = {}) {
  deskfarm::testing::HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR};
  o.state_dir = state;
  return o;
}

std::vector<hv::Vm> vms(Harness& h) { return h.request<Empty, hv::Inventory>("hypervisor.hv-1.inventory", {})->vms; }

void power(Harness& h, const std::string& vm, const std::string& action) {
  auto t = h.request<hv::VmAction, hv::Task>("hypervisor.hv-1.vm.action", hv::VmAction{action, vm, "", "", "", {}});
  REQUIRE(t);
  REQUIRE(t->state != "failed");
}

std::vector<ddc::DesktopStatus> desktops(Harness& h, const std::string& controller = "ddc-1") {
  auto r = h.request<ddc::DesktopQuery, ddc::DesktopList>("ddc." + controller + ".admin.desktops", {});
  REQUIRE(r);
  return r->desktops;
}

std::size_t registered(Harness& h, const std::string& controller = "ddc-1") {
  std::size_t n = 0;
  for (const auto& d : desktops(h, controller)) n += d.registration == ddc::kRegistered;
  return n;
}

/// Starts every VM and lets them boot and register.
void boot_all(Harness& h) {
  for (const auto& vm : vms(h)) power(h, vm.id, "start");
  h.advance(10s);
}

ddc::BrokerDecision broker(Harness& h, const std::string& user, const std::string& endpoint, const std::string& via = "ddc-1") {
  auto r = h.request<ddc::BrokerRequest, ddc::BrokerDecision>("ddc." + via + ".admin.broker", ddc::BrokerRequest{user, endpoint, ""});
  REQUIRE(r);
  return *r;
}

ddc::Register signed_registration(const std::string& desktop, std::int64_t time_ms, const std::string& nonce,
                                  const std::string& controller = "ddc-1") {
  ddc::Register r;
  r.desktop = desktop;
  r.vm = "vm-of-" + desktop;
  r.mac = "02:00:00:00:00:99";
  r.hypervisor = "hv-1";
  r.agent = "rogue";
  r.nonce = nonce;
  r.time_ms = time_ms;
  r.signature = deskfarm::farm_key::sign(kKey, r.signing_text(controller));
  return r;
}

std::int64_t ms(deskfarm::sdk::TimePoint t) { return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count(); }

}  // namespace

TEST_CASE("agents register when their VMs run, with controllers in random order, and leave when the VM stops") {
  Farm f;
  f.vms = 8;
  Harness h(f.manifest(), options());
  h.start();
  boot_all(h);
  CHECK(registered(h, "ddc-1") == 8);
  CHECK(registered(h, "ddc-2") == 8);  // both controllers see every registration
  std::size_t on_first = 0;
  for (const auto& d : desktops(h)) on_first += d.controller == "ddc-1";
  CHECK(on_first > 0);  // random order spreads 8 agents over both controllers
  CHECK(on_first < 8);
  power(h, vms(h).at(0).id, "shutdown");
  h.advance(5s);
  CHECK(registered(h, "ddc-2") == 7);
}

TEST_CASE("an agent silent for 60 s is deregistered at 60 s, not before") {
  Farm f;
  Harness h(f.manifest(), options());
  h.start();
  auto updates = h.probe("ddc.ddc-1.desktops");
  const auto t0 = h.now();
  // A registration that never heartbeats: an agent whose desktop hung.
  auto r = h.request<ddc::Register, ddc::Registered>("ddc.ddc-1.register", signed_registration("desktop-3", ms(t0), "n1"));
  REQUIRE(r);
  REQUIRE(r->accepted);
  auto first = updates.expect_as<ddc::DesktopStatus>(1s);
  REQUIRE(first);
  CHECK(first->registration == ddc::kRegistered);
  auto gone = updates.expect_as<ddc::DesktopStatus>(2min);
  REQUIRE(gone);
  CHECK(gone->registration == ddc::kUnregistered);
  const auto silent = h.now() - t0;
  CHECK(silent >= 60s);
  CHECK(silent <= 61s);
  CHECK(h.instance_status("ddc-1")["deregistered_silent"].as_integer() == 1);
}

TEST_CASE("when a controller dies its agents register with the other within one heartbeat, sessions kept") {
  Farm f;
  f.vms = 6;
  Harness h(f.manifest(), options());
  h.start();
  boot_all(h);
  REQUIRE(registered(h, "ddc-2") == 6);
  // alice gets a desktop owned by ddc-1, if one is: broker through ddc-1 until she does
  auto d = broker(h, "alice", "client-1");
  REQUIRE(d.outcome == "connect");
  std::string victim = d.controller, survivor = victim == "ddc-1" ? "ddc-2" : "ddc-1";
  std::size_t on_victim = 0;
  for (const auto& x : desktops(h, survivor)) on_victim += x.controller == victim;
  REQUIRE(on_victim > 0);
  h.run_on(victim, [](deskfarm::sdk::Plugin& p, deskfarm::sdk::Context&) { p.stop(); });
  h.advance(31s);  // one heartbeat period
  std::size_t moved = 0;
  for (const auto& x : desktops(h, survivor)) moved += x.registration == ddc::kRegistered && x.controller == survivor;
  CHECK(moved == 6);
  bool kept = false;
  for (const auto& x : desktops(h, survivor))
    kept = kept || (x.desktop == d.desktop && x.user == "alice" && x.session_state == ddc::kActive);
  CHECK(kept);
  // and brokering goes on: alice roams back to her session through the survivor
  auto again = broker(h, "alice", "client-2", survivor);
  CHECK(again.outcome == "connect");
  CHECK(again.desktop == d.desktop);
  CHECK(again.kind == ddc::kReconnect);
}

TEST_CASE("the pool service keeps each period's idle target through the hypervisor across a time-of-day change") {
  Farm f;
  f.start = "2026-01-05T09:50:00Z";  // peak until 10:00, then business hours
  f.vms = 8;
  f.group += ", idle_peak = 2, idle_business = 5, idle_off_hours = 0";
  Harness h(f.manifest(), options());
  h.start();
  h.advance(2min);  // 09:52: peak
  auto g = h.request<Empty, ddc::GroupList>("ddc.ddc-2.admin.groups", {});
  REQUIRE(g);
  CHECK(g->groups.at(0).period == "peak");
  CHECK(g->groups.at(0).idle == 2);
  h.advance(10min);  // 10:02: business hours
  g = h.request<Empty, ddc::GroupList>("ddc.ddc-2.admin.groups", {});
  CHECK(g->groups.at(0).period == "business");
  CHECK(g->groups.at(0).idle_target == 5);
  CHECK(g->groups.at(0).idle == 5);
  // a user takes an idle desktop: another starts to restore the count
  REQUIRE(broker(h, "carol", "c1").outcome == "connect");
  h.advance(1min);
  g = h.request<Empty, ddc::GroupList>("ddc.ddc-1.admin.groups", {});
  CHECK(g->groups.at(0).idle == 5);
  CHECK(g->groups.at(0).in_use == 1);
  CHECK(h.logged("pool pool (business)"));
}

TEST_CASE("a user returns to the disconnected session first, and same_endpoint_only holds it for the same client") {
  Farm f;
  f.group = "name = \"pool\", kind = \"pooled-random\", desktops = [\"desktop-*\"], hypervisor = \"hv-1\", reconnect = \"same_endpoint_only\"";
  Harness h(f.manifest(), options());
  h.start();
  boot_all(h);
  auto first = broker(h, "alice", "laptop");
  REQUIRE(first.outcome == "connect");
  CHECK(first.kind == ddc::kLogon);
  CHECK_THAT(first.why, Catch::Contains("idle in group pool"));
  auto ack = h.request<ddc::SessionAction, ddc::Ack>("vda.vda-1.admin.session", ddc::SessionAction{first.desktop, "disconnect", ""});
  REQUIRE(ack);
  REQUIRE(ack->ok);
  h.advance(1s);
  auto elsewhere = broker(h, "alice", "kiosk", "ddc-2");
  CHECK(elsewhere.desktop != first.desktop);  // the rule keeps the session for the laptop: a new desktop
  CHECK(elsewhere.kind == ddc::kLogon);
  REQUIRE(h.request<ddc::SessionAction, ddc::Ack>("vda.vda-1.admin.session", ddc::SessionAction{elsewhere.desktop, "logoff", ""})->ok);
  h.advance(1s);  // the owner's update reaches the other controller
  auto back = broker(h, "alice", "laptop", "ddc-2");
  CHECK(back.outcome == "connect");
  CHECK(back.desktop == first.desktop);
  CHECK(back.kind == ddc::kReconnect);
  CHECK_THAT(back.why, Catch::Contains("disconnected session"));
}

TEST_CASE("maintenance mode takes a group out of brokering on every controller, and back") {
  Farm f;
  f.vms = 2;
  Harness h(f.manifest(), options());
  h.start();
  boot_all(h);
  auto on = h.request<ddc::Maintenance, ddc::Ack>("ddc.ddc-2.admin.maintenance", ddc::Maintenance{"", "pool", true});
  REQUIRE(on);
  REQUIRE(on->ok);
  h.advance(1s);
  auto refused = broker(h, "dave", "pc");
  CHECK(refused.outcome == "refused");
  CHECK(refused.reason == ddc::kMaintenance);
  CHECK_FALSE(refused.why.empty());
  REQUIRE(h.request<ddc::Maintenance, ddc::Ack>("ddc.ddc-1.admin.maintenance", ddc::Maintenance{"", "pool", false})->ok);
  h.advance(1s);
  CHECK(broker(h, "dave", "pc", "ddc-2").outcome == "connect");
  // with every desktop in use and nothing left to start: no desktop
  CHECK(broker(h, "erin", "pc").outcome == "connect");
  auto none = broker(h, "frank", "pc");
  CHECK(none.reason == ddc::kNoDesktop);
}

TEST_CASE("forged and replayed registrations and unknown heartbeats are refused and counted") {
  Farm f;
  f.controllers = 1;
  Harness h(f.manifest(), options());
  h.start();
  const auto t = ms(h.now());
  auto forged = signed_registration("desktop-1", t, "a");
  forged.signature = deskfarm::farm_key::sign("guessed-key", forged.signing_text("ddc-1"));
  auto r = h.request<ddc::Register, ddc::Registered>("ddc.ddc-1.register", forged);
  REQUIRE(r);
  CHECK_FALSE(r->accepted);
  CHECK(r->reason == ddc::kBadSignature);
  auto good = signed_registration("desktop-1", t, "b");
  r = h.request<ddc::Register, ddc::Registered>("ddc.ddc-1.register", good);
  REQUIRE(r->accepted);
  CHECK(deskfarm::farm_key::verify(kKey, ddc::Registered::proof_text("ddc-1", "b"), r->proof));  // the controller proves itself
  r = h.request<ddc::Register, ddc::Registered>("ddc.ddc-1.register", good);  // the same message again
  CHECK(r->reason == ddc::kReplayed);
  h.advance(5min);
  r = h.request<ddc::Register, ddc::Registered>("ddc.ddc-1.register", signed_registration("desktop-1", t, "c"));  // old time, new nonce
  CHECK(r->reason == ddc::kReplayed);
  r = h.request<ddc::Register, ddc::Registered>("ddc.ddc-1.register", signed_registration("laptop-9", ms(h.now()), "d"));
  CHECK(r->reason == ddc::kNotProvisioned);
  auto hb = h.request<ddc::Heartbeat, ddc::Ack>("ddc.ddc-1.heartbeat", ddc::Heartbeat{"desktop-2", "made-up-token", ddc::kNoSession});
  REQUIRE(hb);
  CHECK_FALSE(hb->ok);
  CHECK(hb->reason == ddc::kUnknownAgent);
  auto st = h.instance_status("ddc-1");
  CHECK(st["registrations_refused"].as_integer() == 4);
  CHECK(st["heartbeats_refused"].as_integer() == 1);
  CHECK_THAT(h.metrics_text(), Catch::Contains("deskfarm_ddc_registrations_refused_total"));
}

TEST_CASE("an agent registers its VM's lease with the ICA port, brokering answers it, and the signature covers it") {
  Farm f;
  f.controllers = 1;
  f.hv_extra = "networks = [{ name = \"lan\", subnet = \"10.20.0.0/24\" }]\n";
  Harness h(f.manifest(), options());
  h.start();
  boot_all(h);
  std::map<std::string, std::string> lease;  // VM name → the hypervisor's address for it
  for (const auto& vm : vms(h)) lease[vm.name] = vm.address;
  REQUIRE(lease.size() == 4);
  for (const auto& d : desktops(h)) {
    INFO(d.desktop);
    REQUIRE(d.registration == ddc::kRegistered);
    CHECK(d.address == lease.at(d.desktop) + ":1494");
    CHECK(d.address.starts_with("10.20.0."));
  }
  const auto decision = broker(h, "alice", "alice-laptop");
  REQUIRE(decision.outcome == "connect");
  CHECK(decision.address == lease.at(decision.desktop) + ":1494");
  CHECK_FALSE(h.logged("is handed out by name"));

  // Rewriting the address of a signed registration breaks its signature: nobody redirects a desktop's clients.
  auto moved = signed_registration("desktop-4", ms(h.now()), "e");
  moved.address = "10.20.0.4:1494";
  moved.signature = deskfarm::farm_key::sign(kKey, moved.signing_text("ddc-1"));
  auto tampered = moved;
  tampered.address = "198.51.100.7:1494";
  auto r = h.request<ddc::Register, ddc::Registered>("ddc.ddc-1.register", tampered);
  REQUIRE(r);
  CHECK(r->reason == ddc::kBadSignature);
  // An address that would break an ICA file's line is not kept: the name is handed out instead.
  auto odd = signed_registration("desktop-4", ms(h.now()), "f");
  odd.address = "10.20.0.4:1494\r\nAddress=evil";
  odd.signature = deskfarm::farm_key::sign(kKey, odd.signing_text("ddc-1"));
  r = h.request<ddc::Register, ddc::Registered>("ddc.ddc-1.register", odd);
  REQUIRE(r);
  CHECK(r->accepted);
  for (const auto& d : desktops(h))
    if (d.desktop == "desktop-4") CHECK(d.address.empty());
  CHECK(h.logged("registration of desktop-4: address '10.20.0.4:1494"));
}

TEST_CASE("a desktop whose agent registered no address is handed out by name, logged once") {
  Farm f;
  f.controllers = 1;  // the default network has no subnet: the VMs have no address, and the agents invent none
  Harness h(f.manifest(), options());
  h.start();
  boot_all(h);
  for (const auto& vm : vms(h)) CHECK(vm.address.empty());
  for (const auto& d : desktops(h)) CHECK(d.address.empty());
  const auto a = broker(h, "alice", "a");
  const auto b = broker(h, "bob", "b");
  REQUIRE(a.outcome == "connect");
  REQUIRE(b.outcome == "connect");
  CHECK(a.address == a.desktop);
  CHECK(b.address == b.desktop);
  std::size_t said = 0;
  for (const auto& line : h.logs()) said += line.find("is handed out by name") != std::string::npos;
  CHECK(said == 1);
}

TEST_CASE("a desktop that keeps failing registration is quarantined: refused and not started") {
  Farm f;
  f.controllers = 1;
  f.ddc_extra = "quarantine_failures = 3\nquarantine_window_s = 60\n";
  Harness h(f.manifest(), options());
  h.start();
  for (int i = 0; i < 3; ++i) {
    auto bad = signed_registration("desktop-2", ms(h.now()), "q" + std::to_string(i));
    bad.signature = "00";
    h.request<ddc::Register, ddc::Registered>("ddc.ddc-1.register", bad);
  }
  auto r = h.request<ddc::Register, ddc::Registered>("ddc.ddc-1.register", signed_registration("desktop-2", ms(h.now()), "ok"));
  CHECK(r->reason == ddc::kQuarantined);
  CHECK(h.logged("desktop-2 quarantined"));
}

TEST_CASE("an assigned desktop keeps its owner across a restart of the controllers (the data store holds it)") {
  deskfarm::testing::TempDir state("ddc-assign");
  Farm f;
  f.group = "name = \"own\", kind = \"assigned\", desktops = [\"desktop-*\"], hypervisor = \"hv-1\"";
  std::string desktop;
  {
    Harness h(f.manifest(), options(state.path()));
    h.start();
    boot_all(h);
    auto d = broker(h, "bob", "pc");
    REQUIRE(d.outcome == "connect");
    CHECK_THAT(d.why, Catch::Contains("now assigned to bob"));
    desktop = d.desktop;
    REQUIRE(h.request<ddc::SessionAction, ddc::Ack>("vda.vda-1.admin.session", ddc::SessionAction{desktop, "logoff", ""})->ok);
    h.advance(2s);
    h.stop();
  }
  Harness h(f.manifest(), options(state.path()));
  h.start();
  h.advance(10s);  // the VMs still run: their agents register again
  auto d = broker(h, "bob", "pc", "ddc-2");
  REQUIRE(d.outcome == "connect");
  CHECK(d.desktop == desktop);
  CHECK_THAT(d.why, Catch::Contains("is assigned to bob"));
  auto other = broker(h, "zoe", "pc");
  CHECK(other.desktop != desktop);
}

TEST_CASE("agents accept only trusted controllers (ListOfSIDs): they register elsewhere and refuse sessions from others") {
  Farm f;
  f.vda_extra = "trusted = [\"ddc-2\"]\n";
  Harness h(f.manifest(), options());
  h.start();
  boot_all(h);
  for (const auto& d : desktops(h, "ddc-2")) {
    CHECK(d.registration == ddc::kRegistered);
    CHECK(d.controller == "ddc-2");
  }
  auto refused = h.request<ddc::PrepareSession, ddc::Ack>("vda.vda-1.prepare",
                                                          ddc::PrepareSession{"desktop-1", "ddc-1", ddc::kLogon, "mallory", "pc"});
  REQUIRE(refused);
  CHECK_FALSE(refused->ok);
  CHECK(refused->reason == ddc::kAgentRefused);
  CHECK(broker(h, "mallory", "pc", "ddc-1").outcome == "connect");  // brokered by ddc-1, decided by the trusted owner
  CHECK_THAT(h.metrics_text(), Catch::Contains("deskfarm_vda_untrusted_total"));
}

TEST_CASE("the pool's periods: peak and business hours on business days in local time, off-hours otherwise") {
  namespace dd = deskfarm::ddc;
  dd::Schedule s;
  s.business_days = {0, 1, 2, 3, 4};
  s.business_hours = *dd::parse_range("08:00-18:00");
  s.peak_hours = {*dd::parse_range("08:00-10:00")};
  using namespace std::chrono;
  const auto monday = sys_days(year(2026) / January / 5);
  CHECK(s.at(monday + 7h + 59min) == dd::Period::off_hours);
  CHECK(s.at(monday + 8h) == dd::Period::peak);
  CHECK(s.at(monday + 9h + 59min) == dd::Period::peak);
  CHECK(s.at(monday + 10h) == dd::Period::business);
  CHECK(s.at(monday + 18h) == dd::Period::off_hours);
  CHECK(s.at(monday - days(1) + 9h) == dd::Period::off_hours);  // Sunday
  s.utc_offset_min = -300;                                       // UTC-5: 13:00 UTC is 08:00 local
  CHECK(s.at(monday + 13h) == dd::Period::peak);
  CHECK_FALSE(dd::parse_range("8:00-10:00"));
  CHECK_FALSE(dd::parse_range("10:00-08:00"));
  CHECK_FALSE(dd::parse_day("monday"));
}

TEST_CASE("a manifest with a bad period or a group without desktops is refused at the key, before anything starts") {
  Farm f;
  f.ddc_extra = "business_hours = \"8-18\"\n";
  CHECK_THROWS_WITH(Harness(f.manifest(), options()), Catch::Contains("business_hours") && Catch::Contains("HH:MM-HH:MM"));
  Farm g;
  g.group = "name = \"empty\", desktops = []";
  CHECK_THROWS_WITH(Harness(g.manifest(), options()), Catch::Contains("lists no desktops"));
}

TEST_CASE("brokering checks a licence out of the licence server per user and back at logoff, and a full farm refuses") {
  Farm f;
  f.ddc_extra = "license = \"lic\"\nlicense_farm = \"farm\"\n";
  f.more = "[instances.lic]\nplugin = \"license\"\nfarms = [{ name = \"farm\", licenses = 1 }]\n";
  Harness h(f.manifest(), options());
  h.start();
  boot_all(h);
  auto alice = broker(h, "alice", "laptop");
  REQUIRE(alice.outcome == "connect");
  CHECK(alice.licensed);
  // One licence in the farm, held by alice: bob is refused through either controller, with the server's reason.
  auto bob = broker(h, "bob", "kiosk", "ddc-2");
  CHECK(bob.outcome == "refused");
  CHECK(bob.reason == ddc::kNoLicense);
  CHECK_THAT(bob.why, Catch::Contains("licences are in use"));
  // alice logs off: her last session gives the licence back, and bob gets it.
  REQUIRE(h.request<ddc::SessionAction, ddc::Ack>("vda.vda-1.admin.session", ddc::SessionAction{alice.desktop, "logoff", ""})->ok);
  h.advance(1s);
  auto again = broker(h, "bob", "kiosk", "ddc-2");
  CHECK(again.outcome == "connect");
  CHECK(again.licensed);
}

TEST_CASE("a user who asks again while the desktop started for them boots is told it is starting, and nothing more starts") {
  Harness h(no_idle_targets().manifest(), options());
  h.start();
  h.advance(30s);  // the pool service has read the inventory; with targets of 0 it starts nothing
  const auto first = broker(h, "alice", "a1", "ddc-2");
  REQUIRE(first.outcome == "starting");
  // alice's client asks again and again while her desktop boots (2 s): the same desktop, no second start.
  for (int i = 0; i < 3; ++i) {
    const auto again = broker(h, "alice", "a1", i % 2 == 0 ? "ddc-1" : "ddc-2");
    INFO(again.why);
    CHECK(again.outcome == "starting");
    CHECK(again.desktop == first.desktop);
  }
  CHECK(h.metrics_text().find("deskfarm_ddc_power_starts_total{instance=\"ddc-1\"} 1") != std::string::npos);
  // Another user still gets a start of their own.
  const auto bob = broker(h, "bob", "b1", "ddc-1");
  CHECK(bob.outcome == "starting");
  CHECK(bob.desktop != first.desktop);
  h.advance(10s);  // both boot and register: alice connects to an idle one, and the third machine stays off
  CHECK(broker(h, "alice", "a1", "ddc-2").outcome == "connect");
  CHECK(registered(h) == 2);
  CHECK(h.metrics_text().find("deskfarm_ddc_power_starts_total{instance=\"ddc-1\"} 2") != std::string::npos);
}

TEST_CASE("only the pool master starts machines: a desktop asked for through either controller starts once") {
  Harness h(no_idle_targets().manifest(), options());
  h.start();
  h.advance(30s);  // the pool service has read the inventory; with targets of 0 it starts nothing
  REQUIRE(registered(h) == 0);
  // Nothing idle: the first ask through the other controller and the next through the master each start one,
  // and never the same machine (both starts come from the master).
  const auto a = broker(h, "alice", "a1", "ddc-2");
  const auto b = broker(h, "bob", "b1", "ddc-1");
  const auto c = broker(h, "carol", "c1", "ddc-2");
  for (const auto* d : {&a, &b, &c}) {
    INFO(d->why);
    CHECK(d->outcome == "starting");
  }
  CHECK(a.desktop != b.desktop);
  CHECK(b.desktop != c.desktop);
  CHECK(a.desktop != c.desktop);
  CHECK(a.broker == "ddc-2");
  const auto metrics = h.metrics_text();
  CHECK(metrics.find("deskfarm_ddc_power_starts_total{instance=\"ddc-1\"} 3") != std::string::npos);
  CHECK(metrics.find("deskfarm_ddc_power_starts_total{instance=\"ddc-2\"} 0") != std::string::npos);
  // A fourth user finds nothing left to start; the master says so.
  const auto d = broker(h, "dave", "d1", "ddc-2");
  CHECK(d.reason == ddc::kNoDesktop);
  CHECK_THAT(d.why, Catch::Contains("nothing left to start"));
  h.advance(10s);  // they boot and register; the users who asked get them
  CHECK(registered(h) == 3);
  CHECK_FALSE(h.logged("start failed"));
  CHECK(broker(h, "alice", "a1", "ddc-2").outcome == "connect");
}

TEST_CASE("a data store that refuses writes does not stop brokering: the assignment is kept and written once it answers") {
  deskfarm::testing::TempDir state("ddc-store-down");
  Farm f;
  f.controllers = 1;
  f.group = "name = \"own\", kind = \"assigned\", desktops = [\"desktop-*\"], hypervisor = \"hv-1\"";
  Harness h(f.manifest(), options(state.path()));
  h.start();
  boot_all(h);
  // Another connection holds the SQLite store's write lock: the controller's writes wait its busy timeout, then fail.
  using Poco::Data::Keywords::now;
  Poco::Data::Session lock("sqlite", (state / "datastore.db").string());
  lock << "BEGIN EXCLUSIVE", now;
  const auto d = broker(h, "bob", "pc");
  INFO(d.why);
  REQUIRE(d.outcome == "connect");
  CHECK_THAT(d.why, Catch::Contains("not stored yet"));
  CHECK(h.instance_status("ddc-1")["assignments_unsaved"].as_integer() == 1);
  CHECK(broker(h, "zoe", "pc2").outcome == "connect");  // brokering goes on meanwhile (zoe's write fails too)
  lock << "COMMIT", now;  // the store answers again
  REQUIRE(deskfarm::testing::eventually([&] {
    h.advance(1s);  // the next sweep writes what is waiting
    return h.instance_status("ddc-1")["assignments_unsaved"].as_integer() == 0;
  }, 30s));
  CHECK(h.logged("assignment(s) written to the data store now that it answers again"));
  int rows = 0;
  std::string desktop = d.desktop;
  lock << "SELECT COUNT(*) FROM ddc_assignments WHERE desktop = ? AND user_name = 'bob'", Poco::Data::Keywords::use(desktop),
      Poco::Data::Keywords::into(rows), now;
  CHECK(rows == 1);
  lock << "SELECT COUNT(*) FROM ddc_assignments", Poco::Data::Keywords::into(rows), now;
  CHECK(rows == 2);
}

TEST_CASE("with ima the pool master is the controller beside the ZDC: with none there a start is done here and counted, "
          "the ZDC dies and this controller is master, sessions go to its ima server and on to the ZDC") {
  namespace ima = deskfarm::interfaces::ima;
  auto f = no_idle_targets();
  f.controllers = 1;
  f.ddc_extra = "ima = \"ima-b\"\n";
  // ima-a wins the election on its host ID; no controller runs beside it.
  f.more = "[instances.ima-a]\nplugin = \"ima\"\nhost_id = 2\nkeepalive_s = 10\n\n[instances.ima-b]\nplugin = \"ima\"\nhost_id = 1\nkeepalive_s = 10\n";
  Harness h(f.manifest(), options());
  h.start();
  h.advance(30s);
  REQUIRE(h.instance_status("ddc-1")["zdc"].as_string() == "ima-a");
  CHECK_FALSE(h.instance_status("ddc-1")["master"].as_bool());
  const auto a = broker(h, "alice", "a1");
  INFO(a.why);
  CHECK(a.outcome == "starting");
  CHECK(h.logged("pool master the controller beside ima-a did not answer a start for alice"));
  auto metrics = h.metrics_text();
  CHECK(metrics.find("deskfarm_ddc_master_fallbacks_total{instance=\"ddc-1\"} 1") != std::string::npos);
  CHECK(metrics.find("deskfarm_ddc_power_starts_total{instance=\"ddc-1\"} 1") != std::string::npos);

  // The desktop registers; alice's logon goes to ima-b and on to the ZDC ima-a; her logoff takes it away.
  h.advance(10s);
  const auto c = broker(h, "alice", "a1");
  REQUIRE(c.outcome == "connect");
  h.advance(1s);
  const auto sessions_at_zdc = [&] {
    auto d = h.request<Empty, ima::DynamicData>(ima::subject("ima-a", "admin.queryds"), {});
    REQUIRE(d);
    for (const auto& r : d->records)
      if (r.instance == "ima-b") return r.session_list;
    return std::vector<ima::Session>{};
  };
  auto held = sessions_at_zdc();
  REQUIRE(held.size() == 1);
  CHECK(held[0].desktop == c.desktop);
  CHECK(held[0].user == "alice");
  CHECK(held[0].controller == "ddc-1");
  CHECK(held[0].state == ima::kSessionActive);
  CHECK(held[0].endpoint == "a1");
  REQUIRE(h.request<ddc::SessionAction, ddc::Ack>("vda.vda-1.admin.session", ddc::SessionAction{c.desktop, "disconnect", ""})->ok);
  h.advance(1s);
  held = sessions_at_zdc();
  REQUIRE(held.size() == 1);
  CHECK(held[0].state == ima::kSessionDisconnected);
  REQUIRE(h.request<ddc::SessionAction, ddc::Ack>("vda.vda-1.admin.session", ddc::SessionAction{c.desktop, "logoff", ""})->ok);
  h.advance(1s);
  CHECK(sessions_at_zdc().empty());

  // ima-a crashes: ima-b is elected and ddc-1 is the master; its next start is its own, not a fallback.
  REQUIRE(h.request<ima::Fault, Empty>(ima::subject("ima-a", "admin.fault"), ima::Fault{"crash"}));
  for (int i = 0; i < 60 && !h.instance_status("ddc-1")["master"].as_bool(); ++i) h.advance(1s);
  REQUIRE(h.instance_status("ddc-1")["master"].as_bool());
  CHECK(h.instance_status("ddc-1")["zdc"].as_string() == "ima-b");
  CHECK(h.logged("zone data collector ima-b: this controller is the pool master"));
  broker(h, "alice", "a1");  // takes the idle desktop alice left
  const auto b = broker(h, "bob", "b1");
  INFO(b.why);
  CHECK(b.outcome == "starting");
  metrics = h.metrics_text();
  CHECK(metrics.find("deskfarm_ddc_master_fallbacks_total{instance=\"ddc-1\"} 1") != std::string::npos);
  CHECK(metrics.find("deskfarm_ddc_power_starts_total{instance=\"ddc-1\"} 2") != std::string::npos);
}
