#include <atomic>
#include <thread>

#include <catch2/catch.hpp>
#include <deskfarm/testing/process.hpp>

#include "bus.hpp"
#include "clock.hpp"
#include "executor.hpp"

using namespace deskfarm;
using namespace deskfarm::kernel;
using namespace std::chrono_literals;

using deskfarm::testing::eventually;

namespace {
struct Fixture {
  explicit Fixture(std::chrono::milliseconds block_timeout = 200ms) : bus{clock, block_timeout} {}
  Pool pool{2};
  RealClock clock;
  BusCore bus;
};

// A subscriber on "q" whose handler holds the first message until released, so its queue fills up.
// `busy` turns true once the handler holds a message: from then on, every publish lands in the queue.
struct SlowSubscriber {
  SlowSubscriber(Fixture& f, sdk::SubscribeOptions options) : strand(f.pool, "slow") {
    sub = f.bus.subscribe("q", [this](const sdk::Message& m) {
      busy = true;
      // Bounded: released by the test, or given up after 30 s so a failing test cannot hang the suite.
      for (int i = 0; i < 30'000 && !release; ++i) std::this_thread::sleep_for(1ms);
      got.push_back(sdk::body_as<sdk::Text>(m)->value);
      ++handled;
    }, options, strand);
  }
  Strand strand;
  std::atomic<bool> busy{false};
  std::atomic<bool> release{false};
  std::atomic<int> handled{0};
  std::vector<std::string> got;
  std::shared_ptr<Subscriber> sub;
};

void publish_q(Fixture& f, const std::string& text) { f.bus.publish(sdk::make_message("q", sdk::Text{text})); }
}  // namespace

TEST_CASE("subjects match NATS-style wildcards") {
  CHECK(sdk::subject_matches("vm.*.state", "vm.42.state"));
  CHECK_FALSE(sdk::subject_matches("vm.*.state", "vm.42.power.state"));
  CHECK(sdk::subject_matches("ima.>", "ima.zone.east.update"));
  CHECK_FALSE(sdk::subject_matches("ima.>", "ima"));
  CHECK(sdk::subject_matches("ddc.register", "ddc.register"));
  CHECK_FALSE(sdk::subject_matches("ddc.register", "ddc.registered"));
  CHECK(sdk::subject_error("a..b", false).find("empty token") != std::string::npos);
  CHECK(sdk::subject_error("a.>.b", true).find("last token") != std::string::npos);
  CHECK(sdk::subject_error("a.*", false).find("wildcard") != std::string::npos);
  CHECK(sdk::subject_error("a.*.>", true).empty());
}

TEST_CASE("each subscriber sees one publisher's messages in publish order") {
  Fixture f;
  Strand a(f.pool, "a"), b(f.pool, "b");
  std::vector<int> seen_a, seen_b;
  std::atomic<int> total{0};
  auto sa = f.bus.subscribe("seq.*", [&](const sdk::Message& m) { seen_a.push_back(sdk::body_as<sdk::Text>(m)->value.size()); ++total; }, {}, a);
  auto sb = f.bus.subscribe("seq.>", [&](const sdk::Message& m) { seen_b.push_back(sdk::body_as<sdk::Text>(m)->value.size()); ++total; }, {}, b);
  for (int i = 1; i <= 2000; ++i) f.bus.publish(sdk::make_message("seq.x", sdk::Text{std::string(static_cast<std::size_t>(i % 500 + 1), 'x')}));
  REQUIRE(eventually([&] { return total == 4000; }));
  REQUIRE(seen_a == seen_b);
  for (int i = 1; i <= 2000; ++i) REQUIRE(seen_a[static_cast<std::size_t>(i - 1)] == i % 500 + 1);
}

TEST_CASE("a request is answered on the requester's executor") {
  Fixture f;
  Strand server(f.pool, "server"), client(f.pool, "client");
  auto s = f.bus.subscribe("echo", [&](const sdk::Message& m) {
    f.bus.reply(m, sdk::make_message("", sdk::Text{"re: " + sdk::body_as<sdk::Text>(m)->value}));
  }, {}, server);
  std::atomic<bool> done{false};
  std::string answer;
  bool on_client = false;
  f.bus.request(sdk::make_message("echo", sdk::Text{"hi"}), 1s, [&](const sdk::Message* reply, std::string_view error) {
    on_client = client.running_here();
    answer = reply ? sdk::body_as<sdk::Text>(*reply)->value : std::string(error);
    done = true;
  }, client);
  REQUIRE(eventually([&] { return done.load(); }));
  CHECK(answer == "re: hi");
  CHECK(on_client);
}

TEST_CASE("a request nobody answers times out after its deadline") {
  Fixture f;
  Strand server(f.pool, "server"), client(f.pool, "client");
  auto s = f.bus.subscribe("silent", [](const sdk::Message&) {}, {}, server);
  std::atomic<bool> done{false};
  bool got_reply = true;
  std::string error_text;
  const auto t0 = std::chrono::steady_clock::now();
  // The callback runs on a pool thread: it only records; the main thread asserts (Catch2 is not thread-safe).
  f.bus.request(sdk::make_message("silent", sdk::Text{"?"}), 50ms, [&](const sdk::Message* reply, std::string_view error) {
    got_reply = reply != nullptr;
    error_text = error;
    done = true;
  }, client);
  REQUIRE(eventually([&] { return done.load(); }));
  const auto waited = std::chrono::steady_clock::now() - t0;
  CHECK_FALSE(got_reply);
  CHECK(waited >= 50ms);
  CHECK(waited < 2s);
  CHECK(error_text.find("timeout after 50 ms") != std::string::npos);
}

TEST_CASE("a request to a subject without subscribers fails at once with 'no responders'") {
  Fixture f;
  Strand client(f.pool, "client");
  std::atomic<bool> done{false};
  std::string error_text;
  f.bus.request(sdk::make_message("nobody.home", sdk::Text{"?"}), 10s, [&](const sdk::Message*, std::string_view e) {
    error_text = e;
    done = true;
  }, client);
  REQUIRE(eventually([&] { return done.load(); }, 1s));
  CHECK(error_text == "no responders on 'nobody.home'");
}

TEST_CASE("a full queue drops the newest messages and counts them under drop_newest") {
  Fixture f;
  SlowSubscriber slow(f, {4, sdk::Overflow::drop_newest});
  publish_q(f, "0");  // taken by the handler, which blocks
  REQUIRE(eventually([&] { return slow.busy.load(); }));
  for (int i = 1; i <= 10; ++i) publish_q(f, std::to_string(i));
  slow.release = true;
  REQUIRE(eventually([&] { return slow.handled == 5; }));
  REQUIRE(f.pool.wait_idle(2s));  // nothing else was queued to arrive later
  CHECK(slow.handled == 5);
  CHECK(slow.got == std::vector<std::string>{"0", "1", "2", "3", "4"});
  CHECK(f.bus.dropped_counters()["q"] == 6);
}

TEST_CASE("drop_oldest keeps the newest messages") {
  Fixture f;
  SlowSubscriber slow(f, {3, sdk::Overflow::drop_oldest});
  publish_q(f, "0");
  REQUIRE(eventually([&] { return slow.busy.load(); }));
  for (int i = 1; i <= 10; ++i) publish_q(f, std::to_string(i));
  slow.release = true;
  REQUIRE(eventually([&] { return slow.handled == 4; }));
  REQUIRE(f.pool.wait_idle(2s));
  CHECK(slow.handled == 4);
  CHECK(slow.got == std::vector<std::string>{"0", "8", "9", "10"});
}

TEST_CASE("block makes the publisher wait for room, then drops after the block timeout") {
  // A block timeout of 1 s leaves the release below ample time to make room even on a loaded machine.
  Fixture f(1s);
  SlowSubscriber slow(f, {2, sdk::Overflow::block});
  publish_q(f, "0");
  REQUIRE(eventually([&] { return slow.busy.load(); }));
  publish_q(f, "1");
  publish_q(f, "2");
  const auto t0 = std::chrono::steady_clock::now();
  publish_q(f, "3");  // no room: waits 1 s, then dropped
  CHECK(std::chrono::steady_clock::now() - t0 >= 990ms);
  CHECK(f.bus.dropped_counters()["q"] == 1);
  std::thread unblock([&] {
    std::this_thread::sleep_for(50ms);  // lets the publisher below start waiting first
    slow.release = true;
  });
  publish_q(f, "4");  // room appears within the timeout
  unblock.join();
  REQUIRE(eventually([&] { return slow.handled == 4; }));
  CHECK(slow.got == std::vector<std::string>{"0", "1", "2", "4"});
  CHECK(f.bus.dropped_counters()["q"] == 1);
}

TEST_CASE("an ended subscription receives nothing more, not even what was queued") {
  Fixture f;
  Strand a(f.pool, "a");
  std::atomic<bool> busy{false}, release{false};
  std::atomic<int> handled{0};
  auto sub = f.bus.subscribe("x", [&](const sdk::Message&) {
    busy = true;
    for (int i = 0; i < 30'000 && !release; ++i) std::this_thread::sleep_for(1ms);  // bounded, as above
    ++handled;
  }, {}, a);
  for (int i = 0; i < 5; ++i) f.bus.publish(sdk::make_message("x", sdk::Text{"m"}));
  REQUIRE(eventually([&] { return busy.load(); }));  // one running, four queued
  f.bus.unsubscribe(sub);
  release = true;
  REQUIRE(f.pool.wait_idle(2s));
  CHECK(handled == 1);  // only the one already running
}

TEST_CASE("a reply to a requester that has stopped is counted late and never reaches it") {
  Fixture f;
  Strand server(f.pool, "server");
  std::vector<sdk::Message> held;
  std::mutex m;
  auto s = f.bus.subscribe("slow.echo", [&](const sdk::Message& msg) {
    std::lock_guard lock(m);
    held.push_back(msg);
  }, {}, server);
  std::atomic<int> called{0};
  {
    auto client = std::make_unique<Strand>(f.pool, "client");
    f.bus.request(sdk::make_message("slow.echo", sdk::Text{"?"}), 50ms, [&](const sdk::Message*, std::string_view) { ++called; },
                  *client);
    REQUIRE(eventually([&] { std::lock_guard lock(m); return held.size() == 1; }));
    f.bus.forget_requests(*client);  // what InstanceBus::close() does when the instance stops
  }  // the requester's strand is gone
  std::this_thread::sleep_for(100ms);  // let the 50 ms deadline pass: the timeout must not fire either
  REQUIRE(f.pool.wait_idle(2s));
  f.bus.reply(held.front(), sdk::make_message("", sdk::Text{"late"}));
  CHECK(f.bus.late_replies() == 1);
  CHECK(called == 0);
}

TEST_CASE("a subject reaches every pattern that matches it, one subscriber per instance, and no more after unsubscribe") {
  Fixture f;
  Strand s(f.pool, "s");
  std::vector<std::string> got;  // written on strand s only
  std::vector<std::shared_ptr<Subscriber>> subs;
  // Several subscribers share a pattern (as many instances of one plugin do); patterns interleave.
  for (const char* pattern : {"vm.*.state", "vm.>", "vm.*.state", "vm.7.state", "ima.>"}) {
    subs.push_back(f.bus.subscribe(pattern, [&got, p = std::string(pattern)](const sdk::Message&) { got.push_back(p); },
                                   {}, s));
  }
  f.bus.publish(sdk::make_message("vm.7.state", sdk::Text{"on"}));
  REQUIRE(f.pool.wait_idle(2s));
  // In subscription order, every matching subscription once.
  CHECK(got == std::vector<std::string>{"vm.*.state", "vm.>", "vm.*.state", "vm.7.state"});
  got.clear();
  f.bus.unsubscribe(subs[0]);
  f.bus.unsubscribe(subs[3]);
  f.bus.publish(sdk::make_message("vm.7.state", sdk::Text{"off"}));
  REQUIRE(f.pool.wait_idle(2s));
  CHECK(got == std::vector<std::string>{"vm.>", "vm.*.state"});
  got.clear();
  f.bus.unsubscribe(subs[1]);
  f.bus.unsubscribe(subs[2]);
  f.bus.publish(sdk::make_message("vm.7.state", sdk::Text{"gone"}));
  REQUIRE(f.pool.wait_idle(2s));
  CHECK(got.empty());
}

TEST_CASE("a subscription made while an older route of its subject is still held gets the next message from another process") {
  Fixture f;
  Strand a(f.pool, "a"), b(f.pool, "b");
  std::atomic<int> got_a{0}, got_b{0};
  auto sa = f.bus.subscribe("farm.x", [&](const sdk::Message&) { ++got_a; }, {}, a);
  BusCore::RouteCache cache;  // the transport reader's
  // A message left for later (as when earlier ones are still being finished) holds the route it was routed by.
  auto held = f.bus.deliver_remote(sdk::make_message("farm.x", sdk::Text{"1"}), false, cache);
  REQUIRE(held);
  auto sb = f.bus.subscribe("farm.x", [&](const sdk::Message&) { ++got_b; }, {}, b);
  // The next message comes after the subscription: both subscribers get it, though the cached route is alive.
  CHECK_FALSE(f.bus.deliver_remote(sdk::make_message("farm.x", sdk::Text{"2"}), true, cache));
  f.bus.finish_remote(*held);
  CHECK(eventually([&] { return got_a == 2 && got_b == 1; }));
  std::this_thread::sleep_for(50ms);
  CHECK(got_a == 2);
  CHECK(got_b == 1);
}
