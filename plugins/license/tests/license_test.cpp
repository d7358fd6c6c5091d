// The licence server in a real deployment (the SDK's test kit) and the controller's grace client on the virtual
// clock: one licence per user however many sessions, back with the last logoff, a full farm refuses the next user,
// the ledger survives a restart, and sessions are allowed for 30 days after the server dies, then refused.
#include <catch2/catch.hpp>

#include <deskfarm/interfaces/license/grace.hpp>
#include <deskfarm/interfaces/license/license.hpp>
#include <deskfarm/testing/conformance_catch.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include <thread>

#include "ledger.hpp"

namespace dt = deskfarm::testing;
namespace api = deskfarm::interfaces::license;
using namespace deskfarm;
using namespace std::chrono_literals;

namespace {

constexpr auto day = std::chrono::hours(24);

std::string server(std::int64_t licenses) {
  return "[instances.lic]\nplugin = \"license\"\nfarms = [{ name = \"farm-a\", licenses = " + std::to_string(licenses) +
         " }, { name = \"farm-b\", licenses = 1 }]\n";
}

std::unique_ptr<dt::Harness> deployment(const std::string& toml, const std::filesystem::path& state_dir = {},
                                        const std::string& clock = "") {
  dt::HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR, FIXTURE_PLUGIN_DIR};
  o.state_dir = state_dir;
  o.clock = clock;
  auto h = std::make_unique<dt::Harness>(toml, o);
  h->start();
  return h;
}

api::CheckoutReply checkout(dt::Harness& h, const std::string& user, const std::string& session, const std::string& farm = "farm-a") {
  auto r = h.request<api::Checkout, api::CheckoutReply>(api::subject("lic", "checkout"), api::Checkout{user, session, farm});
  if (!r) FAIL("checkout " << user << "/" << session << ": " << r.error().code << ": " << r.error().message);
  return r.value();
}

api::CheckinReply checkin(dt::Harness& h, const std::string& user, const std::string& session) {
  auto r = h.request<api::Checkin, api::CheckinReply>(api::subject("lic", "checkin"), api::Checkin{user, session, "farm-a"});
  if (!r) FAIL("checkin " << user << "/" << session << ": " << r.error().code << ": " << r.error().message);
  return r.value();
}

api::FarmLicenses farm_a(dt::Harness& h) {
  auto r = h.request<sdk::Empty, api::LicenseStatus>(api::subject("lic", "status"), {});
  if (!r) FAIL("status: " << r.error().message);
  for (const auto& f : r->farms)
    if (f.farm == "farm-a") return f;
  FAIL("no farm-a in the status");
  return {};
}

}  // namespace

TEST_CASE("two sessions of one user hold one licence, and the last logoff gives it back", "[license]") {
  auto h = deployment(server(10));
  auto first = checkout(*h, "CORP\\alice", "s1");
  CHECK(first.granted);
  CHECK(first.new_license);
  CHECK(first.in_use == 1);
  auto second = checkout(*h, "CORP\\alice", "s2");
  CHECK(second.granted);
  CHECK_FALSE(second.new_license);
  CHECK(second.in_use == 1);
  auto f = farm_a(*h);
  CHECK(f.in_use == 1);
  CHECK(f.sessions == 2);
  // The same checkout again (a retried request) changes nothing.
  CHECK(checkout(*h, "CORP\\alice", "s2").in_use == 1);
  CHECK(farm_a(*h).sessions == 2);

  auto out1 = checkin(*h, "CORP\\alice", "s1");
  CHECK(out1.known);
  CHECK_FALSE(out1.released);
  CHECK(out1.sessions_left == 1);
  CHECK(farm_a(*h).in_use == 1);
  auto out2 = checkin(*h, "CORP\\alice", "s2");
  CHECK(out2.released);
  CHECK(out2.in_use == 0);
  CHECK(farm_a(*h).in_use == 0);
  CHECK_FALSE(checkin(*h, "CORP\\alice", "s2").known);  // a second logoff of one session is no error

  const auto metrics = h->metrics_text();
  CHECK(metrics.find("deskfarm_license_in_use{instance=\"lic\",farm=\"farm-a\"} 0") != std::string::npos);
  CHECK(metrics.find("deskfarm_license_released_total{instance=\"lic\"} 1") != std::string::npos);
  const auto status = h->instance_status("lic");
  CHECK(status.find("loaded")->as_bool());
}

TEST_CASE("a full farm refuses the next user with a reason, but not a second session of a holder", "[license]") {
  auto h = deployment(server(2));
  CHECK(checkout(*h, "alice", "s1").granted);
  CHECK(checkout(*h, "bob", "s2").granted);
  auto carol = checkout(*h, "carol", "s3");
  CHECK_FALSE(carol.granted);
  CHECK(carol.code == api::kNoLicenses);
  CHECK(carol.reason.find("farm-a") != std::string::npos);
  CHECK(carol.reason.find("all 2 licences") != std::string::npos);
  CHECK(carol.in_use == 2);
  CHECK(checkout(*h, "alice", "s4").granted);  // alice holds one already
  CHECK(farm_a(*h).refused == 1);
  // Farms count apart: farm-b's one licence is free.
  CHECK(checkout(*h, "carol", "s5", "farm-b").granted);
  auto unknown = checkout(*h, "carol", "s6", "farm-z");
  CHECK(unknown.code == api::kUnknownFarm);
  CHECK(unknown.reason.find("farm-z") != std::string::npos);
  auto conflict = checkout(*h, "dave", "s1");
  CHECK(conflict.code == api::kSessionConflict);
  // bob logs off: carol gets his licence.
  CHECK(checkin(*h, "bob", "s2").released);
  CHECK(checkout(*h, "carol", "s3").granted);
  const auto metrics = h->metrics_text();
  CHECK(metrics.find("deskfarm_license_checkouts_total{instance=\"lic\",farm=\"farm-a\",result=\"no_licenses\"} 1") != std::string::npos);
  // A farm the server does not hold is counted under "unknown": label values stay bounded whatever clients send.
  CHECK(metrics.find("deskfarm_license_checkouts_total{instance=\"lic\",farm=\"unknown\",result=\"unknown_farm\"} 1") != std::string::npos);
  CHECK(metrics.find("farm-z") == std::string::npos);
}

TEST_CASE("checked-out licences survive a restart of the licence server (data store)", "[license]") {
  dt::TempDir dir("license-test");
  {
    auto h = deployment(server(5), dir.path());
    CHECK(checkout(*h, "alice", "s1").granted);
    CHECK(checkout(*h, "alice", "s2").granted);
    CHECK(checkout(*h, "bob", "s3").granted);
    h->stop();
  }
  auto h = deployment(server(5), dir.path());
  auto f = farm_a(*h);
  CHECK(f.in_use == 2);
  CHECK(f.sessions == 3);
  CHECK_FALSE(checkout(*h, "alice", "s9").new_license);  // alice still holds hers
  CHECK_FALSE(checkin(*h, "alice", "s1").released);
  CHECK_FALSE(checkin(*h, "alice", "s2").released);
  CHECK(checkin(*h, "alice", "s9").released);
  CHECK(farm_a(*h).in_use == 1);
  CHECK(h->logged("ledger loaded: 3 sessions"));
}

TEST_CASE("the licence server refuses a farm listed twice, naming it", "[license]") {
  dt::HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR};
  std::string error;
  try {
    dt::Harness h("[instances.lic]\nplugin = \"license\"\nfarms = [{ name = \"f\", licenses = 1 }, { name = \"f\", licenses = 2 }]\n", o);
    h.start();
  } catch (const std::exception& e) {
    error = e.what();
  }
  CHECK(error.find("farm 'f' is listed twice") != std::string::npos);
}

TEST_CASE("ledger: one licence per user, given back with the last session, undo restores", "[license]") {
  license::Ledger l;
  l.set_farm("f", 1);
  std::vector<license::Change> changes;
  CHECK(l.checkout({"u", "a", "f"}, 0, changes).new_license);
  CHECK(l.checkout({"u", "b", "f"}, 0, changes).granted);
  CHECK(l.checkout({"v", "c", "f"}, 0, changes).code == api::kNoLicenses);
  CHECK(changes.size() == 2);
  l.undo(changes.back());
  CHECK(l.farms()[0].sessions == 1);
  CHECK(l.checkin({"u", "a", ""}, changes).released);  // any farm when none is named
  CHECK(l.in_use("f") == 0);
}

namespace {

/// A controller stand-in: the grace client runs on the executor of a fixture instance ("ctl"), as it would in
/// plugins/ddc; the test drives it through run_on and reads answers back the same way.
class Controller {
 public:
  explicit Controller(dt::Harness& h) : h_(h) {
    h_.run_on("ctl", [c = client_](sdk::Plugin&, sdk::Context& ctx) {
      api::ClientOptions o;
      o.server = "lic";
      o.farm = "farm-a";
      *c = std::make_unique<api::LicenseClient>(ctx.bus(), ctx.clock(), o);
    });
  }
  ~Controller() {
    try {
      h_.run_on("ctl", [c = client_](sdk::Plugin&, sdk::Context&) { c->reset(); });
    } catch (...) {
    }
  }
  api::CheckoutReply checkout(const std::string& user, const std::string& session) {
    auto out = std::make_shared<std::optional<api::CheckoutReply>>();
    h_.run_on("ctl", [c = client_, out, user, session](sdk::Plugin&, sdk::Context&) {
      (*c)->checkout(user, session, [out](api::CheckoutReply r) { *out = std::move(r); });
    });
    // The answer comes from the server's executor, or at once when nobody serves the subject: bounded wait.
    for (int i = 0; i < 500; ++i) {
      auto got = std::make_shared<std::optional<api::CheckoutReply>>();
      h_.run_on("ctl", [out, got](sdk::Plugin&, sdk::Context&) { *got = *out; });
      if (*got) return **got;
      std::this_thread::sleep_for(10ms);
    }
    throw std::runtime_error("no checkout answer for " + user + " within 5 s");
  }
  api::LicenseStatus status() {
    auto st = std::make_shared<api::LicenseStatus>();
    h_.run_on("ctl", [c = client_, st](sdk::Plugin&, sdk::Context&) { *st = (*c)->status(); });
    return *st;
  }

 private:
  dt::Harness& h_;
  std::shared_ptr<std::unique_ptr<api::LicenseClient>> client_ = std::make_shared<std::unique_ptr<api::LicenseClient>>();
};

}  // namespace

TEST_CASE("grace: after the licence server dies sessions are allowed until day 30, then refused", "[license][grace]") {
  auto h = deployment(server(5) + "[instances.ctl]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\n", {}, "virtual");
  Controller ctl(*h);
  auto before = ctl.checkout("alice", "s1");
  CHECK(before.granted);
  CHECK_FALSE(before.grace);
  CHECK(ctl.status().reachable);

  // The licence server dies: its subscriptions end, so nothing answers on license.lic.*.
  h->run_on("lic", [](sdk::Plugin& p, sdk::Context&) { p.stop(); });
  const auto died = h->now();
  auto first = ctl.checkout("bob", "s2");
  CHECK(first.granted);
  CHECK(first.grace);
  CHECK(first.grace_hours_left == 720);
  auto st = ctl.status();
  CHECK_FALSE(st.reachable);
  CHECK(st.grace_active);
  CHECK(st.grace_days_left == 30);
  CHECK(st.grace_since == api::iso8601(died));

  h->advance(29 * day);
  auto day29 = ctl.checkout("carol", "s3");
  CHECK(day29.granted);
  CHECK(day29.grace);
  CHECK(day29.grace_hours_left == 24);
  st = ctl.status();
  CHECK(st.grace_active);
  CHECK(st.grace_days_left == 1);
  CHECK(st.grace_sessions == 2);

  h->advance(1 * day);
  auto day30 = ctl.checkout("dave", "s4");
  CHECK_FALSE(day30.granted);
  CHECK(day30.code == api::kGraceExpired);
  CHECK(day30.reason.find("licence server lic has not answered since " + api::iso8601(died)) != std::string::npos);
  CHECK(day30.reason.find("start the licence server") != std::string::npos);
  st = ctl.status();
  CHECK_FALSE(st.grace_active);
  CHECK(st.grace_expired);
  CHECK(st.grace_hours_left == 0);

  // The server comes back: the grace ends and it learns the sessions granted meanwhile.
  h->run_on("lic", [](sdk::Plugin& p, sdk::Context&) { p.start(); });
  auto back = ctl.checkout("dave", "s4");
  CHECK(back.granted);
  CHECK_FALSE(back.grace);
  st = ctl.status();
  CHECK(st.reachable);
  CHECK_FALSE(st.grace_active);
  CHECK_FALSE(st.grace_expired);
  CHECK(st.grace_sessions == 0);
  for (int i = 0; i < 500 && farm_a(*h).in_use < 4; ++i) std::this_thread::sleep_for(10ms);
  auto f = farm_a(*h);
  CHECK(f.in_use == 4);  // alice, dave, and bob and carol from the grace period
  CHECK(f.sessions == 4);
}

TEST_CASE("grace rule: active before the period ends, expired from its end, reset by an answer", "[license][grace]") {
  api::Grace g(std::chrono::hours(720));
  const sdk::TimePoint t0{std::chrono::hours(1000)};
  CHECK_FALSE(g.active(t0));
  g.unanswered(t0);
  g.unanswered(t0 + day);  // only the first failure counts
  CHECK(g.active(t0 + 29 * day));
  CHECK(g.hours_left(t0 + 29 * day) == 24);
  CHECK(g.expired(t0 + 30 * day));
  CHECK_FALSE(g.active(t0 + 30 * day));
  g.answered();
  CHECK_FALSE(g.failing());
  CHECK_FALSE(g.expired(t0 + 40 * day));
}

namespace {
dt::conformance::Subject conformance_subject() {
  dt::conformance::Subject s;
  s.plugin = "license";
  s.instance = "lic";
  s.manifest_toml = server(5);
  s.options.plugin_path = {PLUGIN_DIR};
  return s;
}
}  // namespace

DESKFARM_CONFORMANCE_SUITE("license", conformance_subject)
