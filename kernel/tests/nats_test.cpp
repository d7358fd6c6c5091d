// The bus across processes: two kernels in this process, each with its own NATS connection, through a real
// nats-server started on a loopback port and stopped by its PID.
#include <nats/nats.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <deskfarm/testing/certs.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/metrics_text.hpp>
#include <deskfarm/testing/nats.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "service_messages.hpp"

namespace {

using namespace std::chrono_literals;
namespace sdk = deskfarm::sdk;
using deskfarm::testing::Harness;
using deskfarm::testing::HarnessOptions;
using deskfarm::testing::NatsServer;
using deskfarm::testing::TempDir;

constexpr const char* adder = "[instances.adder]\nplugin = \"fixture_service\"\nslow_ms = 1500\n";

/// A Sum as a newer build would send it: same type name, version 2.
struct SumV2 {
  static constexpr std::string_view type_name = "deskfarm.fixture.Sum";
  static constexpr std::uint32_t type_version = 2;
  std::vector<std::int64_t> terms;
  static constexpr auto fields() { return std::tuple{sdk::field("terms", &SumV2::terms)}; }
};

HarnessOptions options() {
  HarnessOptions o;
  o.plugin_path = {FIXTURE_PLUGIN_DIR};
  return o;
}

/// A kernel of the farm: its [deployment] on the NATS bus at `url`, then `rest` (keys, then instances).
std::string kernel(const std::string& name, const std::string& url, const std::string& keys = "", const std::string& instances = "") {
  return "[deployment]\nname = \"" + name + "\"\nbus = \"" + url + "\"\n" + keys + instances;
}

/// A nats-server with `extra` arguments, or nullopt when there is none (then the test fails under CI).
std::optional<NatsServer> nats_server(const TempDir& dir, std::vector<std::string> extra = {}) {
  const auto program = deskfarm::testing::nats_server_program();
  if (program.empty()) {
    deskfarm::testing::missing("nats-server is not installed (scripts/setup.sh installs it; or set DESKFARM_NATS_SERVER)");
    return std::nullopt;
  }
  std::optional<NatsServer> s;
  s.emplace(program, dir / "nats-server.log", std::move(extra));
  return s;
}

/// The value of one series ("name{labels}") in Prometheus text; -1 when absent.
double sample(const std::string& text, const std::string& series) { return deskfarm::testing::metric_sample(text, series); }

bool bus_connected(Harness& h) {
  const auto s = h.status();
  const auto* bus = s.find("bus");
  return bus != nullptr && bus->find("connected") != nullptr && bus->find("connected")->as_bool();
}

std::string text_of(const sdk::Message& m) { return sdk::body_of<sdk::Text>(m)->value; }

/// Two started kernels on one nats-server: "site-a" runs `a_instances`, "site-b" none. Without a server (the test
/// then fails under CI) `up` is false and neither kernel exists.
struct TwoSites {
  TempDir dir;
  std::optional<NatsServer> server = nats_server(dir);
  std::optional<Harness> a, b;
  bool up = server.has_value();
  explicit TwoSites(const std::string& a_instances = "") {
    if (!up) return;
    a.emplace(kernel("site-a", server->url(), "", a_instances), options());
    b.emplace(kernel("site-b", server->url()), options());
    a->start();
    b->start();
  }
};

}  // namespace

TEST_CASE("two kernels share subjects and wildcards through nats-server: each subscriber once, in publish order") {
  TwoSites sites;
  if (!sites.up) return;
  auto& a = *sites.a;
  auto& b = *sites.b;
  auto one_token = b.probe("farm.*.state");
  auto all = b.probe("farm.>");
  auto exact = b.probe("farm.vm1.state");
  auto own = a.probe("farm.>");  // the publisher's own subscriber: in process, by pointer, never echoed back
  a.publish("farm.vm1.state", sdk::Text{"on"});
  a.publish("farm.vm1.disk.io", sdk::Text{"42"});
  const auto state = one_token.await(5s);
  REQUIRE(state);
  CHECK(state->subject == "farm.vm1.state");
  CHECK(text_of(*state) == "on");
  CHECK(state->type == "deskfarm.text");  // the type name and version crossed in the headers
  REQUIRE(exact.await(5s));
  REQUIRE(all.await(5s));
  const auto io = all.await(5s);
  REQUIRE(io);
  CHECK(io->subject == "farm.vm1.disk.io");
  CHECK(!io->body);  // another process's subscriber gets the encoding...
  CHECK(text_of(*io) == "42");  // ...and decodes it
  std::this_thread::sleep_for(300ms);  // time for a wrong second copy to arrive
  CHECK(one_token.count() == 1);
  CHECK(exact.count() == 1);
  CHECK(all.count() == 2);
  CHECK(own.count() == 2);
  CHECK(own.received().front().body);  // the local subscriber got the object itself

  // Per-subscriber order across processes: 500 messages from one publisher arrive in publish order.
  auto seq = b.probe("farm.seq");
  for (int i = 0; i < 500; ++i) a.publish("farm.seq", sdk::Text{std::to_string(i)});
  int in_order = 0;
  for (int i = 0; i < 500; ++i) {
    const auto m = seq.await(5s);
    if (!m) break;
    if (text_of(*m) == std::to_string(i)) ++in_order;
  }
  CHECK(in_order == 500);
  CHECK(sample(a.metrics_text(), "deskfarm_bus_nats_connected") == 1);
  // Once per message, though "farm.vm1.state" matches three of b's patterns: they are one queue group at the server.
  CHECK(sample(b.metrics_text(), "deskfarm_bus_nats_messages_total{direction=\"received\"}") >= 502);
}

TEST_CASE("100,000 buffered publications on one subject from one publisher reach a subscriber of another kernel, all in order") {
  TwoSites sites;
  if (!sites.up) return;
  auto& a = *sites.a;
  auto& b = *sites.b;
  constexpr int total = 100000;
  // Counted on b's strand (no assertions off the main thread), read here once everything arrived.
  std::atomic<int> received{0}, in_order{0};
  std::atomic<bool> subscribed{false}, unsubscribed{false};
  auto sub = std::make_shared<sdk::Subscription>();
  b.with_bus([&, sub](sdk::Bus& bus) {
    *sub = bus.subscribe("farm.burst", [&](const sdk::Message& m) {
      if (text_of(m) == std::to_string(received.load())) in_order.fetch_add(1);
      received.fetch_add(1);
    }, sdk::SubscribeOptions{total, sdk::Overflow::block});
    subscribed = true;
  });
  REQUIRE(deskfarm::testing::eventually([&] { return subscribed.load(); }, 10s));
  // One task on a's strand publishes them all: a burst far faster than one write each could carry.
  a.with_bus([](sdk::Bus& bus) {
    for (int i = 0; i < total; ++i) sdk::publish(bus, "farm.burst", sdk::Text{std::to_string(i)});
  });
  CHECK(deskfarm::testing::eventually([&] { return received.load() == total; }, 60s));
  std::this_thread::sleep_for(200ms);  // time for a wrong extra copy to arrive
  CHECK(received.load() == total);
  CHECK(in_order.load() == total);
  CHECK(sample(b.metrics_text(), "deskfarm_bus_nats_errors_total") == 0);  // no slow-consumer drop in libnats
  b.with_bus([&, sub](sdk::Bus&) {
    sub->reset();
    unsubscribed = true;
  });
  REQUIRE(deskfarm::testing::eventually([&] { return unsubscribed.load(); }, 10s));
}

TEST_CASE("a subscriber whose small queue fills waits for room: no message from NATS is lost or reordered, for it or for a subscriber of an overlapping pattern") {
  TwoSites sites;
  if (!sites.up) return;
  auto& a = *sites.a;
  auto& b = *sites.b;
  constexpr int total = 5000;
  // A slow subscriber with a queue of 8 that waits for room, and a fast one on an overlapping pattern: the reader
  // thread never waits, so what the slow one cannot take yet goes the overflow way, and everything after it too.
  std::atomic<int> slow_n{0}, slow_in_order{0}, fast_n{0}, fast_in_order{0};
  std::atomic<bool> subscribed{false}, unsubscribed{false};
  auto subs = std::make_shared<std::vector<sdk::Subscription>>();
  b.with_bus([&, subs](sdk::Bus& bus) {
    subs->push_back(bus.subscribe("farm.slow", [&](const sdk::Message& m) {
      if (text_of(m) == std::to_string(slow_n.load())) slow_in_order.fetch_add(1);
      if (slow_n.fetch_add(1) % 500 == 0) std::this_thread::sleep_for(20ms);
    }, sdk::SubscribeOptions{8, sdk::Overflow::block}));
    subs->push_back(bus.subscribe("farm.*", [&](const sdk::Message& m) {
      if (text_of(m) == std::to_string(fast_n.load())) fast_in_order.fetch_add(1);
      fast_n.fetch_add(1);
    }, sdk::SubscribeOptions{total, sdk::Overflow::block}));
    subscribed = true;
  });
  REQUIRE(deskfarm::testing::eventually([&] { return subscribed.load(); }, 10s));
  a.with_bus([](sdk::Bus& bus) {
    for (int i = 0; i < total; ++i) sdk::publish(bus, "farm.slow", sdk::Text{std::to_string(i)});
  });
  CHECK(deskfarm::testing::eventually([&] { return slow_n.load() == total && fast_n.load() == total; }, 60s));
  std::this_thread::sleep_for(200ms);  // time for a wrong extra copy to arrive
  CHECK(slow_n.load() == total);
  CHECK(slow_in_order.load() == total);
  CHECK(fast_n.load() == total);
  CHECK(fast_in_order.load() == total);
  CHECK(sample(b.metrics_text(), "deskfarm_bus_nats_errors_total") == 0);
  CHECK(sample(b.metrics_text(), "deskfarm_bus_dropped_total{pattern=\"farm.slow\"}") == 0);
  b.with_bus([&, subs](sdk::Bus&) {
    subs->clear();
    unsubscribed = true;
  });
  REQUIRE(deskfarm::testing::eventually([&] { return unsubscribed.load(); }, 10s));
}

TEST_CASE("a request crosses to the kernel that serves it and back, within its deadline, or fails as no_responders") {
  TwoSites sites(adder);  // site-a serves, site-b asks
  if (!sites.up) return;
  auto& b = *sites.b;
  const auto sum = b.request<Sum, Total>("adder.adder.sum", Sum{{1, 2, 39}});
  REQUIRE(sum.ok());
  CHECK(sum->total == 42);
  CHECK(sum->by == "adder");
  const auto refused = b.request<Sum, Total>("adder.adder.sum", Sum{});
  REQUIRE(!refused.ok());
  CHECK(refused.error().code == "empty");  // the service's own error envelope crossed too
  // No process serves it: the server says so at once instead of a timeout.
  const auto t0 = std::chrono::steady_clock::now();
  const auto nobody = b.request<Sum, Total>("adder.nobody.sum", Sum{{1}}, 5000ms);
  CHECK(nobody.error().code == "no_responders");
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  // The deadline holds across processes: the slow service answers after 1.5 s, the request gave it 300 ms.
  const auto t1 = std::chrono::steady_clock::now();
  const auto slow = b.request<Sum, Total>("adder.adder.slow", Sum{{1}}, 300ms);
  const auto waited = std::chrono::steady_clock::now() - t1;
  CHECK(slow.error().code == "timeout");
  CHECK(waited >= 300ms);
  CHECK(waited < 1400ms);
  // Its answer comes later and is counted as late, not delivered.
  CHECK(deskfarm::testing::eventually([&] { return sample(b.metrics_text(), "deskfarm_bus_late_replies_total") == 1; }, 5s));
  // An operator's JSON request through the other kernel's admin path reaches the service too.
  const auto json = b.json_request("adder.adder.sum", R"({"terms": [20, 22]})");
  CHECK(json.ok);
  CHECK(json.body.find("\"total\":42") != std::string::npos);
}

TEST_CASE("a receiver with another version of a type refuses it clearly and counts it, and foreign messages are counted") {
  TwoSites sites(adder);
  if (!sites.up) return;
  auto& a = *sites.a;
  auto& b = *sites.b;
  const auto reply = b.request<SumV2, Total>("adder.adder.sum", SumV2{{1, 2}});
  REQUIRE(!reply.ok());
  CHECK(reply.error().code == "version_mismatch");
  CHECK(reply.error().message.find("deskfarm.fixture.Sum version 2") != std::string::npos);
  CHECK(reply.error().message.find("understands version 1") != std::string::npos);
  CHECK(sample(a.metrics_text(),
               "deskfarm_bus_version_refused_total{type=\"deskfarm.fixture.Sum\",sent=\"2\",understood=\"1\"}") >= 1);

  // A subscriber of another process refuses a typed message of another version the same way (logged, counted).
  auto seen = a.probe("farm.sum");
  b.publish("farm.sum", SumV2{{5}});
  const auto m = seen.await(5s);
  REQUIRE(m);
  CHECK(m->version == 2);
  CHECK_THROWS_WITH(sdk::body_of<Sum>(*m), Catch::Contains("understands version 1"));

  // A bare NATS client's message (no deskfarm headers) is ignored, counted and logged, and hurts nothing.
  natsConnection* nc = nullptr;
  REQUIRE(natsConnection_ConnectTo(&nc, sites.server->url().c_str()) == NATS_OK);
  CHECK(natsConnection_PublishString(nc, "farm.sum", "{garbage") == NATS_OK);
  CHECK(natsConnection_FlushTimeout(nc, 2000) == NATS_OK);
  natsConnection_Destroy(nc);
  CHECK(deskfarm::testing::eventually(
      [&] { return sample(a.metrics_text(), "deskfarm_bus_nats_dropped_total{reason=\"foreign\"}") == 1; }, 5s));
  CHECK(a.logged("does not begin with a '<type>@<version>' line"));
  CHECK(b.request<Sum, Total>("adder.adder.sum", Sum{{2, 3}})->total == 5);
}

TEST_CASE("an envelope line another NATS client writes is read like ours, garbled ones refused") {
  TwoSites sites;
  if (!sites.up) return;
  auto& a = *sites.a;
  auto seen = a.probe("farm.envelope");
  natsConnection* nc = nullptr;
  REQUIRE(natsConnection_ConnectTo(&nc, sites.server->url().c_str()) == NATS_OK);
  const auto send = [&](const char* payload) { REQUIRE(natsConnection_PublishString(nc, "farm.envelope", payload) == NATS_OK); };
  send("deskfarm.text@1\nfirst");
  send("deskfarm.text@7\nsecond");
  send("deskfarm.text@seven\ngarbled");
  // The type in a NATS header, as a client might put it: deskfarm reads the payload alone.
  natsMsg* m = nullptr;
  REQUIRE(natsMsg_Create(&m, "farm.envelope", nullptr, "in a header", 11) == NATS_OK);
  REQUIRE(natsMsgHeader_Set(m, "Deskfarm-Type", "deskfarm.text@1") == NATS_OK);
  REQUIRE(natsConnection_PublishMsg(nc, m) == NATS_OK);
  natsMsg_Destroy(m);
  send("deskfarm.text@1\nlast");
  CHECK(natsConnection_FlushTimeout(nc, 2000) == NATS_OK);
  natsConnection_Destroy(nc);
  const auto first = seen.await(5s);
  REQUIRE(first);
  CHECK(first->type == "deskfarm.text");
  CHECK(first->version == 1);
  CHECK(text_of(*first) == "first");
  const auto second = seen.await(5s);
  REQUIRE(second);
  CHECK(second->version == 7);
  CHECK_THROWS_WITH(sdk::body_of<sdk::Text>(*second), Catch::Contains("understands version 1"));
  const auto last = seen.await(5s);
  REQUIRE(last);
  CHECK(text_of(*last) == "last");  // the two in between were refused, and in order
  CHECK(sample(a.metrics_text(), "deskfarm_bus_nats_dropped_total{reason=\"foreign\"}") == 2);
  CHECK(a.logged("does not begin with a '<type>@<version>' line ('deskfarm.text@seven')"));
  CHECK(a.logged("does not begin with a '<type>@<version>' line ('in a header')"));
}

TEST_CASE("a nats-server restart is survived: publishes are buffered within the bound, dropped and counted beyond it") {
  TempDir dir;
  auto server = nats_server(dir);
  if (!server) return;
  // a reconnects quickly, b slowly: b's buffered publish leaves only after a has resubscribed.
  Harness a(kernel("site-a", server->url(), "nats_reconnect_wait_ms = 50\n", adder), options());
  Harness b(kernel("site-b", server->url(), "nats_reconnect_wait_ms = 1500\n"), options());
  Harness c(kernel("site-c", server->url(), "nats_reconnect_buffer_kb = 1\nnats_reconnect_wait_ms = 50\n"), options());
  a.start();
  b.start();
  c.start();
  auto during = a.probe("farm.during");
  server->stop();
  REQUIRE(deskfarm::testing::eventually([&] { return !bus_connected(a) && !bus_connected(b) && !bus_connected(c); }, 10s));
  CHECK(sample(b.metrics_text(), "deskfarm_bus_nats_connected") == 0);
  b.publish("farm.during", sdk::Text{"kept while the server was away"});
  // c's buffer holds 1 KiB: 40 messages of 200 bytes do not fit.
  for (int i = 0; i < 40; ++i) c.publish("farm.flood", sdk::Text{std::string(200, 'x')});
  CHECK(deskfarm::testing::eventually(
      [&] { return sample(c.metrics_text(), "deskfarm_bus_nats_dropped_total{reason=\"not_sent\"}") > 0; }, 5s));
  // The warning is logged after the count moves: wait for it too (bounded).
  CHECK(deskfarm::testing::eventually([&] { return c.logged("dropping messages for other processes"); }, 5s));
  server->start();
  REQUIRE(deskfarm::testing::eventually([&] { return bus_connected(a) && bus_connected(b) && bus_connected(c); }, 15s));
  const auto kept = during.await(10s);
  REQUIRE(kept);
  CHECK(text_of(*kept) == "kept while the server was away");
  // a's service subscription came back with the connection.
  const auto sum = b.request<Sum, Total>("adder.adder.sum", Sum{{40, 2}});
  REQUIRE(sum.ok());
  CHECK(sum->total == 42);
  const auto metrics = b.metrics_text();
  CHECK(sample(metrics, "deskfarm_bus_nats_disconnects_total") == 1);
  CHECK(sample(metrics, "deskfarm_bus_nats_reconnects_total") == 1);
  CHECK(b.status().find("bus")->find("reconnects")->as_integer() == 1);
  CHECK(b.logged("reconnected to NATS at"));
}

TEST_CASE("NATS over TLS with an openssl-made certificate: the kernels trust its CA, a kernel without it is refused") {
  TempDir dir;
  if (!deskfarm::testing::require_program("openssl")) return;
  const auto error = deskfarm::testing::make_test_certificates(dir.path(), dir / "ca-cert.pem");
  INFO(error);
  REQUIRE(error.empty());
  const auto https = deskfarm::testing::free_port();
  auto server = nats_server(dir, {"--tls", "--tlscert", (dir / "server-cert.pem").string(), "--tlskey",
                                  (dir / "server-key.pem").string(), "-ms", std::to_string(https)});
  if (!server) return;
  // The certificate the server presents (on its HTTPS monitoring port, same TLS settings; the NATS port
  // speaks a plain INFO line before its handshake) checks out against the CA with openssl s_client.
  REQUIRE(deskfarm::testing::eventually([&] { return deskfarm::testing::port_accepts(https); }, 5s));
  const auto check = deskfarm::testing::run_child({"openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(https),
                                                   "-CAfile", (dir / "ca-cert.pem").string(), "-verify_return_error",
                                                   "-verify_ip", "127.0.0.1"},
                                                  std::chrono::seconds(20));
  INFO(check.out << check.err);
  CHECK(check.out.find("Verify return code: 0 (ok)") != std::string::npos);
  CHECK(check.out.find("CN = 127.0.0.1") != std::string::npos);

  const std::string ca = "nats_ca = \"" + (dir / "ca-cert.pem").string() + "\"\n";
  Harness a(kernel("site-a", server->url("tls"), ca, adder), options());
  Harness b(kernel("site-b", server->url("tls"), ca), options());
  a.start();
  b.start();
  CHECK(b.status().find("bus")->find("tls")->as_bool());
  const auto sum = b.request<Sum, Total>("adder.adder.sum", Sum{{1, 41}});
  REQUIRE(sum.ok());
  CHECK(sum->total == 42);
  // Trusting nobody's CA (the system's store has not this test CA), the handshake fails and start() says why.
  Harness stranger(kernel("site-c", server->url("tls")), options());
  try {
    stranger.start();
    FAIL("a kernel that does not trust the server's CA connected");
  } catch (const std::runtime_error& e) {
    CHECK_THAT(e.what(), Catch::Contains("cannot connect to tls://127.0.0.1:" + std::to_string(server->port())));
  }
}

TEST_CASE("NATS credentials are secrets: a user and password or a token connect, and neither shows in status, logs or errors") {
  TempDir dir;
  const std::string password = "pw-Zq81-farm";
  auto server = nats_server(dir, {"--user", "farm", "--pass", password});
  if (!server) return;
  ::setenv("DESKFARM_TEST_NATS_PASSWORD", password.c_str(), 1);
  Harness a(kernel("site-a", server->url(), "nats_user = \"farm\"\nnats_password = \"${DESKFARM_TEST_NATS_PASSWORD}\"\n", adder),
            options());
  Harness b(kernel("site-b", server->url(), "nats_user = \"farm\"\nnats_password = \"" + password + "\"\n"), options());
  a.start();
  b.start();
  CHECK(b.request<Sum, Total>("adder.adder.sum", Sum{{1, 1}})->total == 2);
  CHECK(a.status().to_json().find(password) == std::string::npos);
  CHECK(a.metrics_text().find(password) == std::string::npos);
  for (const auto& line : a.logs()) CHECK(line.find(password) == std::string::npos);
  // The password in the URL is masked the same way, in the refusal of a wrong one too.
  Harness wrong(kernel("site-c", "nats://farm:" + password + "-not@127.0.0.1:" + std::to_string(server->port())), options());
  try {
    wrong.start();
    FAIL("a wrong password connected");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find(password) == std::string::npos);
    CHECK_THAT(e.what(), Catch::Contains("cannot connect to nats://farm:***@127.0.0.1"));
  }
  ::unsetenv("DESKFARM_TEST_NATS_PASSWORD");

  TempDir dir2;
  auto tokened = nats_server(dir2, {"--auth", "tok-77-farm"});
  REQUIRE(tokened);
  Harness t(kernel("site-t", tokened->url(), "nats_token = \"tok-77-farm\"\n", adder), options());
  Harness u(kernel("site-u", tokened->url(), "nats_token = \"tok-77-farm\"\n"), options());
  t.start();
  u.start();
  CHECK(u.request<Sum, Total>("adder.adder.sum", Sum{{3, 4}})->total == 7);
  CHECK(t.status().to_json().find("tok-77-farm") == std::string::npos);
}

TEST_CASE("without nats-server the NATS tests fail under CI=true and are reported skipped elsewhere") {
  const auto self = std::filesystem::read_symlink("/proc/self/exe").string();
  // Catch reads a comma in a test name as a list of names: escape it.
  const std::string test = "two kernels share subjects and wildcards through nats-server: each subscriber once\\, in publish order";
  const auto ci = deskfarm::testing::run_child({"env", "CI=true", "DESKFARM_NATS_SERVER=/nonexistent/nats-server", self, test},
                                               std::chrono::seconds(60));
  CHECK(ci.exit_code != 0);
  CHECK(ci.out.find("nats-server is not installed") != std::string::npos);
  CHECK(ci.out.find("required under CI=true") != std::string::npos);
  const auto dev = deskfarm::testing::run_child({"env", "CI=false", "DESKFARM_NATS_SERVER=/nonexistent/nats-server", self, test},
                                                std::chrono::seconds(60));
  CHECK(dev.exit_code == 0);
  CHECK(dev.out.find(std::string(deskfarm::testing::skip_marker)) != std::string::npos);
}
