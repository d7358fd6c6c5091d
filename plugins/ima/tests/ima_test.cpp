// ima on the virtual clock: the election order, a three-server zone that elects one ZDC and elects again when it
// crashes (within one keep-alive, with the members' full state) or shuts down (at once), two zones whose ZDCs
// forward each change, manual elections and zone changes, an unreachable zone retried after
// gateway_validation_s, and bad input on the ima subjects (counted, state unchanged).
#include <catch2/catch.hpp>

#include <future>

#include <deskfarm/interfaces/ima/ima.hpp>
#include <deskfarm/testing/conformance_catch.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/metrics_text.hpp>

namespace {

using namespace std::chrono_literals;
namespace api = deskfarm::interfaces::ima;
using deskfarm::sdk::Empty;
using deskfarm::testing::Harness;

std::string server(const std::string& name, const std::string& zone, const std::string& extra = "") {
  return "[instances." + name + "]\nplugin = \"ima\"\nfarm = \"corp\"\nzone = \"" + zone + "\"\n" + extra + "\n";
}

std::unique_ptr<Harness> farm(const std::string& toml) {
  deskfarm::testing::HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR};
  o.clock = "virtual";
  auto h = std::make_unique<Harness>(toml, o);
  h->start();
  h->advance(1s);  // the start election's window (500 ms)
  return h;
}

api::Collectors collectors(Harness& h, const std::string& instance) {
  auto r = h.request<Empty, api::Collectors>(api::subject(instance, "admin.querydc"), {});
  if (!r) FAIL("querydc on " << instance << ": " << r.error().message);
  return *r;
}

/// The ZDC `instance` takes for its own zone's, "" while it knows none.
std::string zdc_of(Harness& h, const std::string& instance) {
  auto c = collectors(h, instance).collectors;
  return c.empty() ? "" : c.front().instance;
}

api::DynamicData data(Harness& h, const std::string& instance) {
  auto r = h.request<Empty, api::DynamicData>(api::subject(instance, "admin.queryds"), {});
  if (!r) FAIL("queryds on " << instance << ": " << r.error().message);
  return *r;
}

const api::Change* record(const api::DynamicData& d, const std::string& instance) {
  for (const auto& c : d.records)
    if (c.instance == instance) return &c;
  return nullptr;
}

void report(Harness& h, const std::string& instance, std::int64_t sessions, double load) {
  auto r = h.request<api::Report, api::Change>(api::subject(instance, "admin.report"), api::Report{sessions, load});
  if (!r) FAIL("report on " << instance << ": " << r.error().message);
}

void crash(Harness& h, const std::string& instance) {
  REQUIRE(h.request<api::Fault, Empty>(api::subject(instance, "admin.fault"), api::Fault{"crash"}));
}

/// Moves virtual time a second at a time (at most `limit`) until `done`; the time it took.
deskfarm::sdk::Duration until(Harness& h, const std::function<bool()>& done, deskfarm::sdk::Duration limit = 600s,
                              deskfarm::sdk::Duration step = 1s) {
  const auto t0 = h.now();
  while (!done() && h.now() - t0 < limit) h.advance(step);
  return h.now() - t0;
}

double sample(const std::string& text, const std::string& series) { return deskfarm::testing::metric_sample(text, series, 0); }

double rejected(Harness& h, const std::string& instance, const std::string& reason) {
  return sample(h.metrics_text(), "deskfarm_ima_rejected_total{instance=\"" + instance + "\",reason=\"" + reason + "\"}");
}

/// Sends a request from the harness's client without waiting for it (it is answered later in virtual time).
template <class Req, class Rep>
std::future<deskfarm::sdk::Reply<Rep>> send(Harness& h, const std::string& subject, Req req) {
  auto p = std::make_shared<std::promise<deskfarm::sdk::Reply<Rep>>>();
  auto f = p->get_future();
  h.with_bus([=](deskfarm::sdk::Bus& bus) {
    deskfarm::sdk::request<Req, Rep>(bus, subject, req, 60s, [p](deskfarm::sdk::Reply<Rep> r) { p->set_value(std::move(r)); });
  });
  return f;
}

const std::string three = server("s1", "a", "host_id = 10") + server("s2", "a", "host_id = 30") + server("s3", "a", "host_id = 20");

}  // namespace

TEST_CASE("the election order: newest version, then preference, then highest host ID") {
  using api::outranks;
  using api::Rank;
  CHECK(api::compare_versions("1.10.0", "1.9.7") > 0);
  CHECK(api::compare_versions("2", "2.0.0") == 0);
  CHECK(api::compare_versions("1.2.0-rc1", "1.2.1") < 0);
  // a newer version wins over every preference and host ID
  CHECK(outranks(Rank{"2.0.0", api::kNotPreferred, 1, "a"}, Rank{"1.9.9", api::kMostPreferred, 65000, "b"}));
  // same version: preference
  CHECK(outranks(Rank{"1.0.0", api::kMostPreferred, 1, "a"}, Rank{"1.0.0", api::kPreferred, 9, "b"}));
  CHECK(outranks(Rank{"1.0.0", api::kPreferred, 1, "a"}, Rank{"1.0.0", api::kDefault, 9, "b"}));
  CHECK(outranks(Rank{"1.0.0", api::kDefault, 1, "a"}, Rank{"1.0.0", api::kNotPreferred, 9, "b"}));
  // same version and preference: the highest host ID
  CHECK(outranks(Rank{"1.0.0", api::kDefault, 9, "a"}, Rank{"1.0.0", api::kDefault, 1, "b"}));
  CHECK_FALSE(outranks(Rank{"1.0.0", api::kDefault, 1, "a"}, Rank{"1.0.0", api::kDefault, 9, "b"}));
  // a total order: of two, exactly one wins
  Rank x{"1.0.0", api::kDefault, 5, "x"}, y{"1.0.0", api::kDefault, 5, "y"};
  CHECK(outranks(x, y) != outranks(y, x));
}

TEST_CASE("three servers of a zone elect one ZDC, and a newer version wins over preference and host ID") {
  auto h = farm(three);
  for (const auto* s : {"s1", "s2", "s3"}) CHECK(zdc_of(*h, s) == "s2");  // host ID 30
  CHECK(h->instance_status("s2")["is_zdc"].as_bool());
  CHECK_FALSE(h->instance_status("s1")["is_zdc"].as_bool());

  auto n = farm(three + server("s4", "a", "host_id = 1\npreference = \"not_preferred\"\nversion = \"1.1.0\"") +
                server("s5", "a", "host_id = 2\npreference = \"most_preferred\""));
  for (const auto* s : {"s1", "s2", "s3", "s4", "s5"}) CHECK(zdc_of(*n, s) == "s4");
  auto m = farm(three + server("s5", "a", "host_id = 2\npreference = \"most_preferred\""));
  for (const auto* s : {"s1", "s2", "s3", "s5"}) CHECK(zdc_of(*m, s) == "s5");
}

TEST_CASE("the ZDC crashes: a new ZDC within one keep-alive, holding every member's full state") {
  auto h = farm(three);
  REQUIRE(zdc_of(*h, "s1") == "s2");
  report(*h, "s1", 4, 120);
  report(*h, "s3", 7, 350);
  report(*h, "s3", 8, 360);
  REQUIRE(record(data(*h, "s2"), "s3") != nullptr);
  CHECK(record(data(*h, "s2"), "s3")->sessions == 8);
  const auto reported = h->now();
  h->advance(20s);
  crash(*h, "s2");
  const auto took = until(*h, [&] { return zdc_of(*h, "s1") == "s3" && zdc_of(*h, "s3") == "s3"; }, 120s, 500ms);
  INFO("new ZDC after " << std::chrono::duration<double>(took).count() << " s");
  CHECK(took <= 60s);
  CHECK(h->now() - reported >= 30s);  // not before the ZDC was silent for half a keep-alive
  h->advance(2s);      // the full-state answers
  auto d = data(*h, "s3");
  CHECK(d.zdc);
  REQUIRE(record(d, "s1") != nullptr);
  CHECK(record(d, "s1")->sessions == 4);
  CHECK(record(d, "s1")->load == 120);
  REQUIRE(record(d, "s3") != nullptr);
  CHECK(record(d, "s3")->sessions == 8);
  CHECK(record(d, "s2") == nullptr);
  CHECK(h->logged("ZDC s2 of zone a lost"));
  CHECK(sample(h->metrics_text(), "deskfarm_ima_elections_total{instance=\"s1\",trigger=\"lost\"}") +
            sample(h->metrics_text(), "deskfarm_ima_elections_total{instance=\"s3\",trigger=\"lost\"}") >= 1);
}

TEST_CASE("the ZDC shuts down gracefully: its resignation starts the election at once") {
  auto h = farm(three);
  REQUIRE(zdc_of(*h, "s3") == "s2");
  h->advance(10s);
  h->run_on("s2", [](deskfarm::sdk::Plugin& p, deskfarm::sdk::Context&) { p.stop(); });
  const auto took = until(*h, [&] { return zdc_of(*h, "s1") == "s3" && zdc_of(*h, "s3") == "s3"; }, 120s, 100ms);
  CHECK(took <= 1s);  // one election window, no keep-alive wait
  CHECK(h->logged("ZDC s2 resigned (shutdown): electing"));
}

TEST_CASE("two zones: a change in zone a reaches zone b's ZDC, and a new ZDC in zone b gets zone a's data") {
  auto h = farm(server("a1", "a", "host_id = 2") + server("a2", "a", "host_id = 1") + server("b1", "b", "host_id = 2") +
                server("b2", "b", "host_id = 1"));
  REQUIRE(zdc_of(*h, "a2") == "a1");
  REQUIRE(zdc_of(*h, "b2") == "b1");
  auto c = collectors(*h, "b2").collectors;
  REQUIRE(c.size() == 2);
  CHECK(c[1].zone == "a");
  CHECK(c[1].instance == "a1");
  report(*h, "a2", 12, 900);  // a member of zone a → its ZDC a1 → zone b's ZDC b1
  h->advance(100ms);
  auto d = data(*h, "b1");
  REQUIRE(record(d, "a2") != nullptr);
  CHECK(record(d, "a2")->sessions == 12);
  CHECK(record(d, "a2")->zone == "a");
  report(*h, "b2", 3, 50);
  h->advance(100ms);
  REQUIRE(record(data(*h, "a1"), "b2") != nullptr);
  // zone b's ZDC crashes: its successor gets zone a's data from a1 as soon as it announces itself
  crash(*h, "b1");
  until(*h, [&] { return zdc_of(*h, "b2") == "b2"; }, 120s);
  h->advance(1s);
  d = data(*h, "b2");
  REQUIRE(record(d, "a2") != nullptr);
  CHECK(record(d, "a2")->sessions == 12);
  report(*h, "a2", 13, 910);
  h->advance(100ms);
  CHECK(record(data(*h, "b2"), "a2")->sessions == 13);
}

TEST_CASE("a one-server zone restarted comes back at the same epoch: the other ZDCs tell it by its incarnation and send it their zone's state") {
  auto h = farm(server("a1", "a") + server("b1", "b"));
  auto known = collectors(*h, "a1").collectors;
  REQUIRE(known.size() == 2);
  auto b1 = known[1];
  REQUIRE(b1.instance == "b1");
  REQUIRE(b1.incarnation != 0);
  CHECK(collectors(*h, "a1").collectors[0].incarnation != 0);  // a1 announces its own
  const auto forwarded = [&] { return sample(h->metrics_text(), "deskfarm_ima_changes_total{instance=\"a1\",direction=\"forwarded\"}"); };
  const auto before = forwarded();
  REQUIRE(before >= 1);  // a1's record went to b1 when the two ZDCs learnt of each other
  h->publish(api::collectors_subject("corp"), b1);  // the same announcement again: a repeat, nothing to send
  h->advance(100ms);
  CHECK(forwarded() == before);
  // b1's process restarted: the same epoch (its zone has no other server to learn a later one from), a new incarnation
  auto again = b1;
  again.incarnation = b1.incarnation + 1;
  h->publish(api::collectors_subject("corp"), again);
  h->advance(100ms);
  CHECK(forwarded() == before + 1);  // a1's record, sent to the newcomer
  CHECK(collectors(*h, "a1").collectors[1].incarnation == again.incarnation);
  CHECK(sample(h->metrics_text(), "deskfarm_ima_rejected_total{instance=\"a1\",reason=\"stale_epoch\"}") == 0);
}

TEST_CASE("another zone's ZDC that does not answer is retried after gateway_validation_s, with the latest changes") {
  auto h = farm(server("a1", "a", "gateway_validation_s = 300") + server("b1", "b") + server("b2", "b", "keepalive_s = 900\nhost_id = 1"));
  const std::string bz = zdc_of(*h, "b2");
  REQUIRE(bz == "b1");
  crash(*h, "b1");
  report(*h, "a1", 1, 10);
  report(*h, "a1", 2, 20);  // queued for zone b: only the latest per server is kept
  h->advance(1s);
  CHECK(sample(h->metrics_text(), "deskfarm_ima_forward_failures_total{instance=\"a1\"}") == 1);
  CHECK(h->instance_status("a1")["other_zones"]["b"].as_string() == "b1 (unreachable)");
  CHECK(h->logged("ZDC b1 of zone b is unreachable"));
  // b2 notices its ZDC is gone only after 450 s (keepalive_s = 900); meanwhile a1 retries b1 at 300 s
  h->advance(298s);
  CHECK(h->instance_status("a1")["other_zones"]["b"].as_string() == "b1 (unreachable)");
  h->advance(2s);
  h->advance(1s);
  CHECK(sample(h->metrics_text(), "deskfarm_ima_forward_failures_total{instance=\"a1\"}") == 2);  // the retry, failed again
  until(*h, [&] { return zdc_of(*h, "b2") == "b2"; }, 900s);
  h->advance(1s);
  CHECK(h->instance_status("a1")["other_zones"]["b"].as_string() == "b2");
  REQUIRE(record(data(*h, "b2"), "a1") != nullptr);
  CHECK(record(data(*h, "b2"), "a1")->sessions == 2);
}

TEST_CASE("manual election and a zone change: the order decides again, each zone keeps one ZDC") {
  auto h = farm(three + server("b1", "b", "host_id = 5"));
  auto f = send<Empty, api::Collectors>(*h, api::subject("s1", "admin.elect"), Empty{});
  h->advance(1s);
  REQUIRE(f.wait_for(5s) == std::future_status::ready);
  auto r = f.get();
  REQUIRE(r);
  REQUIRE(!r->collectors.empty());
  CHECK(r->collectors[0].instance == "s2");
  CHECK(r->collectors[0].epoch >= 2);
  CHECK(sample(h->metrics_text(), "deskfarm_ima_elections_total{instance=\"s1\",trigger=\"manual\"}") == 1);
  // s2 (the ZDC of a) moves to zone b, where its host ID 30 beats b1's 5
  REQUIRE(h->request<api::ZoneMove, Empty>(api::subject("s2", "admin.zone"), api::ZoneMove{"b"}));
  h->advance(2s);
  CHECK(zdc_of(*h, "s1") == "s3");
  CHECK(zdc_of(*h, "b1") == "s2");
  CHECK(zdc_of(*h, "s2") == "s2");
  auto c = collectors(*h, "s1").collectors;
  REQUIRE(c.size() == 2);
  CHECK(c[1].zone == "b");
  CHECK(c[1].instance == "s2");
  CHECK(h->request<api::ZoneMove, Empty>(api::subject("s2", "admin.zone"), api::ZoneMove{"no.such"}).error().code == "bad_request");
}

TEST_CASE("a candidacy that arrives after its round closed and outranks the new collector starts a new round") {
  auto h = farm(three);
  REQUIRE(zdc_of(*h, "s1") == "s2");
  const auto epoch = collectors(*h, "s1").collectors[0].epoch;
  // A server that started during the round (host ID 99 outranks s2's 30) answered it too late for its window.
  h->publish(api::election_subject("corp", "a"),
             api::Election{api::kCandidate, "corp", "a", epoch, 1, 1, "late", 99, "1.0.0", "default", ""});
  h->advance(2s);
  // s2 called a round above: "late" is no real server and does not answer it, so s2 wins again, a round later.
  CHECK(collectors(*h, "s1").collectors[0].epoch == epoch + 1);
  CHECK(zdc_of(*h, "s1") == "s2");
  // A late candidacy that does not outrank the collector changes nothing.
  h->publish(api::election_subject("corp", "a"),
             api::Election{api::kCandidate, "corp", "a", epoch + 1, 1, 1, "low", 1, "1.0.0", "default", ""});
  h->advance(2s);
  CHECK(collectors(*h, "s1").collectors[0].epoch == epoch + 1);
}

TEST_CASE("bad input on the ima subjects: foreign, garbled, replayed and version-inflating messages are counted, nothing changes") {
  auto h = farm(three);
  REQUIRE(zdc_of(*h, "s1") == "s2");
  const auto epoch = collectors(*h, "s1").collectors[0].epoch;
  const auto subject = api::election_subject("corp", "a");
  h->publish(subject, deskfarm::sdk::Text{"hello"});
  h->publish(subject, api::Election{"bogus", "corp", "a", 9, 1, 1, "ghost", 1, "1.0.0", "default", ""});
  h->publish(subject, api::Election{api::kCall, "corp", "a", 9, 1, 1, "ghost", 1, "1.0.0", "sideways", ""});
  h->advance(10ms);
  CHECK(rejected(*h, "s1", "foreign") == 1);
  CHECK(rejected(*h, "s1", "garbled") == 2);
  // a ghost server advertises 1.0.0 with a low rank (a real candidate, it loses) …
  const api::Election ghost{api::kCandidate, "corp", "a", epoch, 1, 1, "ghost", 1, "1.0.0", "not_preferred", ""};
  h->publish(subject, ghost);
  h->advance(10ms);
  // … then its candidate is replayed, and it claims 9.0.0 in the same incarnation to win a round
  h->publish(subject, ghost);
  auto inflated = ghost;
  inflated.kind = api::kCall;
  inflated.seq = 2;
  inflated.epoch = epoch + 1;
  inflated.version = "9.0.0";
  h->publish(subject, inflated);
  // an old ZDC's election for an epoch long past
  h->publish(subject, api::Election{api::kElected, "corp", "a", epoch - 1 > 0 ? epoch - 1 : 0, 5, 2, "ghost", 1, "1.0.0", "default", ""});
  h->advance(2s);
  for (const auto* s : {"s1", "s3"}) {
    CHECK(rejected(*h, s, "replay") == 1);
    CHECK(rejected(*h, s, "version_claim") == 1);
    CHECK(zdc_of(*h, s) == "s2");
    CHECK(collectors(*h, s).collectors[0].epoch == epoch);
  }
  CHECK(h->logged("ghost claims version 9.0.0 after advertising 1.0.0"));
  // garbled collectors and changes
  h->publish(api::collectors_subject("corp"), api::Collector{"corp", "b.c", "x", 1, "1", "default", 1, true});
  auto wrong = h->request<api::Change, api::Ack>(api::subject("s2", "change"), api::Change{"corp", "zz", "s1", 1, 1, 99, 5, 1, false, ""});
  CHECK(wrong.error().code == "bad_request");
  h->advance(10ms);
  CHECK(rejected(*h, "s2", "garbled") >= 2);
  CHECK(collectors(*h, "s1").collectors.size() == 1);
  // and the zone still works
  report(*h, "s1", 3, 1);
  CHECK(record(data(*h, "s2"), "s1")->sessions == 3);
}

namespace {
deskfarm::testing::conformance::Subject conformance_subject() {
  deskfarm::testing::conformance::Subject s;
  s.plugin = "ima";
  s.instance = "s1";
  s.manifest_toml = server("s1", "a");
  s.options.plugin_path = {PLUGIN_DIR};
  return s;
}
}  // namespace

DESKFARM_CONFORMANCE_SUITE("ima", conformance_subject)

TEST_CASE("sessions reported by a controller reach the ZDC of another zone, and ima.<instance>.zdc and its updates name the ZDC") {
  auto h = farm(server("a1", "a", "host_id = 2") + server("a2", "a", "host_id = 1") + server("b1", "b"));
  REQUIRE(zdc_of(*h, "a2") == "a1");
  auto zdc = h->request<Empty, api::Collector>(api::subject("a2", "zdc"), {});
  REQUIRE(zdc);
  CHECK(zdc->instance == "a1");
  CHECK(zdc->zone == "a");
  const auto session = [&](const std::string& kind, const std::string& desktop, const std::string& user) {
    auto r = h->request<api::SessionChange, api::Change>(api::subject("a2", "session"), api::SessionChange{kind, desktop, user, "ddc-2", "laptop"});
    if (!r) FAIL(kind << " on a2: " << r.error().message);
    h->advance(100ms);
    return *r;
  };
  session("logon", "desktop-1", "alice");
  auto c = session("logon", "desktop-2", "bob");
  CHECK(c.sessions == 2);
  session("disconnect", "desktop-1", "alice");
  // zone a's ZDC forwarded a2's record to zone b's ZDC, sessions and all
  auto d = data(*h, "b1");
  REQUIRE(record(d, "a2") != nullptr);
  auto list = record(d, "a2")->session_list;
  REQUIRE(list.size() == 2);
  CHECK(list[0].desktop == "desktop-1");
  CHECK(list[0].user == "alice");
  CHECK(list[0].state == api::kSessionDisconnected);
  CHECK(list[0].controller == "ddc-2");
  CHECK(list[1].state == api::kSessionActive);
  session("reconnect", "desktop-1", "alice");
  c = session("logoff", "desktop-2", "bob");
  CHECK(c.sessions == 1);
  d = data(*h, "b1");
  REQUIRE(record(d, "a2") != nullptr);
  REQUIRE(record(d, "a2")->session_list.size() == 1);
  CHECK(record(d, "a2")->session_list[0].state == api::kSessionActive);
  CHECK(record(d, "a2")->sessions == 1);
  auto bad = h->request<api::SessionChange, api::Change>(api::subject("a2", "session"), api::SessionChange{"nap", "desktop-1", "alice", "ddc-2", ""});
  REQUIRE(!bad);
  CHECK(bad.error().code == "bad_request");

  // The ZDC crashes: a2's updates say first that the zone has none, then that a2 itself is the collector.
  auto updates = h->probe(api::zdc_updates_subject("a2"));
  crash(*h, "a1");
  until(*h, [&] { return zdc_of(*h, "a2") == "a2"; }, 120s, 500ms);
  std::vector<std::string> said;
  for (const auto& m : updates.received())
    if (auto body = deskfarm::sdk::body_of<api::Collector>(m)) said.push_back(body->instance);
  CHECK(said == std::vector<std::string>{"", "a2"});
  zdc = h->request<Empty, api::Collector>(api::subject("a2", "zdc"), {});
  REQUIRE(zdc);
  CHECK(zdc->instance == "a2");
}

namespace {
/// Cuts each server of `side` off from every server of `other`, and the other way round (a fault on each).
void partition(Harness& h, const std::vector<std::string>& side, const std::vector<std::string>& other) {
  for (const auto& [from, to] : {std::pair{side, other}, std::pair{other, side}})
    for (const auto& s : from) REQUIRE(h.request<api::Fault, Empty>(api::subject(s, "admin.fault"), api::Fault{"partition", to}));
}
void heal(Harness& h, const std::vector<std::string>& servers) {
  for (const auto& s : servers) REQUIRE(h.request<api::Fault, Empty>(api::subject(s, "admin.fault"), api::Fault{"heal", {}}));
}
/// The servers among `servers` that say they are their zone's ZDC.
std::vector<std::string> zdcs(Harness& h, const std::vector<std::string>& servers) {
  std::vector<std::string> out;
  for (const auto& s : servers)
    if (h.instance_status(s)["is_zdc"].as_bool()) out.push_back(s);
  return out;
}
}  // namespace

TEST_CASE("a zone split by a partition elects a ZDC on each side, and once healed ends with one ZDC holding every member's last change once") {
  // p1, p2 on one side of the cut; q1, q2 on the other. q2 (host ID 40) is the ZDC before, p2 (30) the best of its side.
  const std::vector<std::string> p{"p1", "p2"}, q{"q1", "q2"}, all{"p1", "p2", "q1", "q2"};
  auto h = farm(server("p1", "a", "host_id = 10") + server("p2", "a", "host_id = 30") + server("q1", "a", "host_id = 20") +
                server("q2", "a", "host_id = 40"));
  for (const auto& s : all) REQUIRE(zdc_of(*h, s) == "q2");
  for (const auto& s : all) report(*h, s, 1, 10);
  h->advance(1s);
  const auto epoch_before = collectors(*h, "p1").collectors[0].epoch;

  partition(*h, p, q);
  // The cut side keeps working: p1 and p2 lose their ZDC and elect p2; q2 keeps office and drops p1 and p2.
  until(*h, [&] { return zdc_of(*h, "p1") == "p2" && zdc_of(*h, "p2") == "p2"; }, 120s, 500ms);
  REQUIRE(zdc_of(*h, "p1") == "p2");
  CHECK(zdc_of(*h, "q1") == "q2");
  CHECK(zdcs(*h, all) == std::vector<std::string>{"p2", "q2"});
  h->advance(60s);  // q2's keep-alive pings of p1 and p2 fail: their records go
  // Changes on both sides during the partition: each reaches its own side's ZDC only.
  report(*h, "p1", 5, 50);
  report(*h, "p1", 7, 70);
  report(*h, "p2", 8, 80);
  report(*h, "q1", 6, 60);
  report(*h, "q2", 9, 90);
  h->advance(1s);
  REQUIRE(record(data(*h, "p2"), "p1") != nullptr);
  CHECK(record(data(*h, "p2"), "p1")->sessions == 7);
  CHECK(record(data(*h, "q2"), "p1") == nullptr);
  CHECK(record(data(*h, "q2"), "q1")->sessions == 6);
  CHECK(record(data(*h, "p2"), "q1") == nullptr);

  heal(*h, all);
  const auto took = until(*h, [&] {
    if (zdcs(*h, all).size() != 1) return false;
    for (const auto& s : all)
      if (zdc_of(*h, s) != "q2") return false;
    return true;
  }, 600s, 500ms);
  INFO("one ZDC " << std::chrono::duration<double>(took).count() << " s after the heal");
  CHECK(zdcs(*h, all) == std::vector<std::string>{"q2"});  // the election order: the highest host ID, not the newest round
  CHECK(took <= 60s + 1s);                                   // within one keep-alive and an election window
  CHECK(collectors(*h, "p1").collectors[0].epoch > epoch_before + 1);  // a round above both sides' rounds
  CHECK(h->logged("has two collectors"));
  double merges = 0;
  for (const auto& s : all)
    merges += sample(h->metrics_text(), "deskfarm_ima_elections_total{instance=\"" + s + "\",trigger=\"merge\"}");
  CHECK(merges >= 1);

  h->advance(2s);  // the full-state answers
  const auto d = data(*h, "q2");
  REQUIRE(d.zdc);
  for (const auto& s : all) {
    INFO("server " << s);
    CHECK(std::count_if(d.records.begin(), d.records.end(), [&](const api::Change& c) { return c.instance == s; }) == 1);
    const auto own = data(*h, s);  // a member's own record; the ZDC's all of them
    const auto* mine = record(own, s);
    REQUIRE(mine != nullptr);
    REQUIRE(record(d, s) != nullptr);
    CHECK(record(d, s)->seq == mine->seq);  // its last change, exactly as the server holds it
    CHECK(record(d, s)->sessions == mine->sessions);
  }
  CHECK(record(d, "p1")->sessions == 7);
  CHECK(record(d, "p2")->sessions == 8);
  CHECK(record(d, "q1")->sessions == 6);
  CHECK(record(d, "q2")->sessions == 9);

  // The zone stays settled: the ZDC's periodic announcements start no election, and an old collector's `elected`
  // (a round long past) is counted as stale and changes nothing.
  const auto epoch = collectors(*h, "p1").collectors[0].epoch;
  h->publish(api::election_subject("corp", "a"), api::Election{api::kElected, "corp", "a", epoch - 1, 1, 1, "old-zdc", 99, "9.0.0", "most_preferred", ""});
  h->advance(120s);
  CHECK(zdcs(*h, all) == std::vector<std::string>{"q2"});
  CHECK(collectors(*h, "p1").collectors[0].epoch == epoch);
  for (const auto& s : all) CHECK(rejected(*h, s, "stale_epoch") >= 1);
  report(*h, "p1", 11, 110);
  h->advance(100ms);
  CHECK(record(data(*h, "q2"), "p1")->sessions == 11);
}

TEST_CASE("a collector that hears an older round's collector asks it, and merges when it still holds office") {
  // q1 (host ID 20) is the ZDC; cut off, p1 (10) elects itself a round later. The link comes back one direction
  // first: p1 hears q1's announcements of the older round, q1 hears nothing of p1 yet.
  auto h = farm(server("p1", "a", "host_id = 10") + server("q1", "a", "host_id = 20"));
  REQUIRE(zdc_of(*h, "p1") == "q1");
  partition(*h, {"p1"}, {"q1"});
  until(*h, [&] { return zdc_of(*h, "p1") == "p1"; }, 120s, 500ms);
  REQUIRE(zdcs(*h, {"p1", "q1"}) == std::vector<std::string>{"p1", "q1"});
  const auto p1_epoch = collectors(*h, "p1").collectors[0].epoch;
  REQUIRE(p1_epoch > collectors(*h, "q1").collectors[0].epoch);
  heal(*h, {"p1"});
  const auto merges = [&](const std::string& s) {
    return sample(h->metrics_text(), "deskfarm_ima_elections_total{instance=\"" + s + "\",trigger=\"merge\"}");
  };
  const auto took = until(*h, [&] { return merges("p1") >= 1; }, 120s, 500ms);
  INFO("p1 merged " << std::chrono::duration<double>(took).count() << " s after its side healed");
  CHECK(merges("p1") >= 1);  // it asked q1, which still holds office: two collectors
  CHECK(took <= 60s);        // q1's next announcement (half a keep-alive) and the question's answer
  CHECK(rejected(*h, "p1", "stale_epoch") >= 1);
  CHECK(h->logged("zone a has two collectors"));  // only p1 hears the other yet
  // Once q1 hears p1 again, the election order settles it: q1, the highest host ID.
  heal(*h, {"q1"});
  until(*h, [&] { return zdcs(*h, {"p1", "q1"}).size() == 1 && zdc_of(*h, "p1") == "q1"; }, 120s, 500ms);
  CHECK(zdcs(*h, {"p1", "q1"}) == std::vector<std::string>{"q1"});
  CHECK(zdc_of(*h, "p1") == "q1");
}

TEST_CASE("a member that outranks its collector was no candidate of the round it won: the collector elects again, once") {
  auto h = farm(three);
  REQUIRE(zdc_of(*h, "s1") == "s2");
  auto f = send<Empty, api::Collectors>(*h, api::subject("s1", "admin.elect"), Empty{});
  h->advance(1s);
  REQUIRE(f.wait_for(5s) == std::future_status::ready);
  const auto epoch = collectors(*h, "s1").collectors[0].epoch;
  REQUIRE(epoch >= 2);
  // "x" (host ID 99) follows s2 (it reports its record) and is heard in a round long past: it missed s2's round.
  REQUIRE(h->request<api::Change, api::Ack>(api::subject("s2", "change"), api::Change{"corp", "a", "x", 99, 1, 1, 2, 5, false, ""}));
  h->publish(api::election_subject("corp", "a"), api::Election{api::kCandidate, "corp", "a", epoch - 1, 1, 1, "x", 99, "1.0.0", "default", ""});
  h->advance(10s);  // the collector's next keep-alive tick (an eighth of keepalive_s) and the election window
  CHECK(h->logged("member x outranks this collector"));
  // x is no real server and does not stand: s2 wins again, a round later, and elects no more for that one message.
  CHECK(collectors(*h, "s1").collectors[0].epoch == epoch + 1);
  CHECK(zdc_of(*h, "s1") == "s2");
  h->advance(30s);
  CHECK(collectors(*h, "s1").collectors[0].epoch == epoch + 1);
  // A member that does not outrank it changes nothing.
  REQUIRE(h->request<api::Change, api::Ack>(api::subject("s2", "change"), api::Change{"corp", "a", "y", 1, 1, 1, 2, 5, false, ""}));
  h->publish(api::election_subject("corp", "a"), api::Election{api::kCandidate, "corp", "a", epoch - 1, 1, 1, "y", 1, "1.0.0", "default", ""});
  h->advance(10s);
  CHECK(collectors(*h, "s1").collectors[0].epoch == epoch + 1);
}

TEST_CASE("the partition fault: unknown faults and a partition naming nobody are refused") {
  auto h = farm(server("s1", "a"));
  CHECK(h->request<api::Fault, Empty>(api::subject("s1", "admin.fault"), api::Fault{"partition", {}}).error().code == "bad_request");
  CHECK(h->request<api::Fault, Empty>(api::subject("s1", "admin.fault"), api::Fault{"melt", {}}).error().code == "bad_request");
  CHECK(h->request<api::Fault, Empty>(api::subject("s1", "admin.fault"), api::Fault{"heal", {}}));
}
