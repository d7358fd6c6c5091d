#include <atomic>

#include <catch2/catch.hpp>

#include "clock.hpp"
#include "executor.hpp"

using namespace deskfarm;
using namespace deskfarm::kernel;
using namespace std::chrono_literals;

TEST_CASE("an hour of 30-second heartbeats runs in milliseconds on the virtual clock") {
  Pool pool(2);
  VirtualClock clock(pool, sdk::TimePoint{});
  Strand desktop(pool, "desktop");
  std::vector<sdk::TimePoint> beats;
  clock.every(30s, desktop, [&] { beats.push_back(clock.now()); });
  const auto t0 = std::chrono::steady_clock::now();
  clock.advance(1h);
  REQUIRE(pool.wait_idle(1s));
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  REQUIRE(beats.size() == 120);
  for (std::size_t i = 0; i < beats.size(); ++i) CHECK(beats[i] == sdk::TimePoint(30s * (i + 1)));
  CHECK(clock.now() == sdk::TimePoint(1h));
}

TEST_CASE("virtual timers fire in deadline order, ties in scheduling order, across executors") {
  Pool pool(2);
  VirtualClock clock(pool, sdk::TimePoint{});
  Strand a(pool, "a"), b(pool, "b");
  std::vector<std::string> order;
  std::mutex m;
  auto note = [&](std::string s) {
    std::lock_guard lock(m);
    order.push_back(std::move(s) + "@" + std::to_string(std::chrono::duration_cast<std::chrono::seconds>(clock.now().time_since_epoch()).count()));
  };
  clock.after(60s, a, [&] { note("a60"); });
  clock.after(10s, b, [&] { note("b10"); });
  clock.after(10s, a, [&] { note("a10"); });
  clock.after(30s, b, [&] {
    note("b30");
    clock.after(5s, a, [&] { note("a35"); });  // scheduled by a handler: still in order
  });
  clock.advance(2min);
  CHECK(order == std::vector<std::string>{"b10@10", "a10@10", "b30@30", "a35@35", "a60@60"});
}

TEST_CASE("a cancelled timer never fires and a periodic one stops") {
  Pool pool(1);
  VirtualClock clock(pool, sdk::TimePoint{});
  Strand s(pool, "s");
  int once = 0, periodic = 0;
  const auto id1 = clock.after(10s, s, [&] { ++once; });
  const auto id2 = clock.every(10s, s, [&] { ++periodic; });
  clock.advance(25s);
  CHECK(periodic == 2);
  CHECK(once == 1);
  CHECK_FALSE(clock.cancel(id1));  // already fired
  CHECK(clock.cancel(id2));
  clock.advance(1h);
  CHECK(periodic == 2);
}

TEST_CASE("the real clock fires a timer after its delay on the given executor") {
  Pool pool(1);
  RealClock clock;
  Strand s(pool, "s");
  std::atomic<bool> fired{false};
  bool on_strand = false;
  const auto t0 = std::chrono::steady_clock::now();
  clock.after(30ms, s, [&] {
    on_strand = s.running_here();
    fired = true;
  });
  for (int i = 0; i < 2000 && !fired; ++i) std::this_thread::sleep_for(1ms);
  REQUIRE(fired);
  CHECK(on_strand);
  CHECK(std::chrono::steady_clock::now() - t0 >= 30ms);
}
