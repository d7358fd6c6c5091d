#include <atomic>
#include <set>
#include <thread>

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
  REQUIRE(order.size() == 5);
  // Timers of different executors due at one instant run in parallel, in either order.
  CHECK(std::set<std::string>(order.begin(), order.begin() + 2) == std::set<std::string>{"b10@10", "a10@10"});
  CHECK(std::vector<std::string>(order.begin() + 2, order.end()) ==
        std::vector<std::string>{"b30@30", "a35@35", "a60@60"});
}

TEST_CASE("a virtual step fires only the earliest batch due by its limit and moves time only that far") {
  Pool pool(2);
  VirtualClock clock(pool, sdk::TimePoint{});
  Strand a(pool, "a");
  std::atomic<int> fired{0};
  clock.after(10s, a, [&] { ++fired; });
  clock.after(10s, a, [&] { ++fired; });
  clock.after(20s, a, [&] { ++fired; });
  CHECK(clock.step(sdk::TimePoint{} + 5s) == 0);  // nothing due by then: time stays
  CHECK(clock.now() == sdk::TimePoint{});
  CHECK(clock.step(sdk::TimePoint{} + 60s) == 2);  // the batch at 10 s, run before step returns
  CHECK(fired == 2);
  CHECK(clock.now() == sdk::TimePoint{} + 10s);
  CHECK(clock.step(sdk::TimePoint{} + 60s) == 1);
  CHECK(clock.now() == sdk::TimePoint{} + 20s);
  CHECK(clock.step(sdk::TimePoint{} + 60s) == 0);
  CHECK(fired == 3);
}

TEST_CASE("virtual timers due at one instant run on each executor in scheduling order, before time moves on") {
  Pool pool(2);
  VirtualClock clock(pool, sdk::TimePoint{});
  constexpr int executors = 50, per_executor = 20;
  std::vector<std::unique_ptr<Strand>> strands;
  std::vector<std::vector<int>> seen(executors);  // each written only on its own strand
  std::vector<std::vector<sdk::TimePoint>> when(executors);
  for (int e = 0; e < executors; ++e) strands.push_back(std::make_unique<Strand>(pool, "s" + std::to_string(e)));
  for (int i = 0; i < per_executor; ++i) {
    for (int e = 0; e < executors; ++e) {
      clock.after(10s, *strands[e], [&, e, i] {
        seen[e].push_back(i);
        when[e].push_back(clock.now());
        // Set by a task for the same instant: a later batch, still at 10 s, after this executor's own ones.
        if (i == per_executor - 1) clock.after(0s, *strands[e], [&, e] {
          seen[e].push_back(-1);
          when[e].push_back(clock.now());
        });
      });
    }
  }
  clock.after(11s, *strands[0], [&] {
    seen[0].push_back(-2);
    when[0].push_back(clock.now());
  });
  CHECK(clock.advance(1min) == executors * per_executor + executors + 1);
  REQUIRE(pool.wait_idle(1s));
  for (int e = 0; e < executors; ++e) {
    std::vector<int> expected;
    for (int i = 0; i < per_executor; ++i) expected.push_back(i);
    expected.push_back(-1);
    if (e == 0) expected.push_back(-2);
    CHECK(seen[e] == expected);
    REQUIRE(when[e].size() == expected.size());
    for (std::size_t k = 0; k < per_executor + 1u; ++k) CHECK(when[e][k] == sdk::TimePoint(10s));
  }
  CHECK(when[0].back() == sdk::TimePoint(11s));
}

namespace {
/// Keeps posted tasks until the test runs them: a strand that is "blocked".
struct HeldExecutor final : sdk::Executor {
  std::vector<std::function<void()>> held;
  void post(std::function<void()> task) override { held.push_back(std::move(task)); }
  bool running_here() const override { return false; }
};
sdk::Duration sec(int n) { return std::chrono::seconds(n); }
}  // namespace

TEST_CASE("a periodic timer keeps at most one tick queued and skips the periods it missed") {
  TimerQueue timers;
  HeldExecutor blocked;
  int ran = 0;
  timers.add(sec(10), sec(10), blocked, [&] { ++ran; });
  auto due = timers.pop_due(sec(10));
  REQUIRE(due);
  due->post();
  CHECK(timers.next() == sec(20));
  // Still queued at 20 s and 30 s: no second tick, and the deadline moves on by whole periods.
  CHECK_FALSE(timers.pop_due(sec(20)));
  CHECK_FALSE(timers.pop_due(sec(35)));
  CHECK(timers.next() == sec(40));
  CHECK(timers.skipped() == 2);
  REQUIRE(blocked.held.size() == 1);
  blocked.held.front()();
  CHECK(ran == 1);
  // Once the tick has run, the next due period ticks again; a late pop skips whole periods, aligned.
  due = timers.pop_due(sec(71));
  REQUIRE(due);
  CHECK(timers.next() == sec(80));
  CHECK(timers.skipped() == 2 + 3);  // 50, 60, 70
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

TEST_CASE("a real-clock timer fires on time when the wall clock steps back or forward") {
  Pool pool(1);
  std::atomic<std::int64_t> step_ns{0};
  RealClock clock([&] {
    return std::chrono::time_point_cast<sdk::Duration>(std::chrono::system_clock::now()) + sdk::Duration(step_ns.load());
  });
  Strand s(pool, "s");
  for (const auto step : {-std::chrono::hours(1), std::chrono::hours(1)}) {
    std::atomic<bool> fired{false};
    const auto wall_before = clock.now();
    const auto t0 = std::chrono::steady_clock::now();
    clock.after(50ms, s, [&] { fired = true; });
    step_ns = std::chrono::duration_cast<sdk::Duration>(step).count();
    for (int i = 0; i < 2000 && !fired; ++i) std::this_thread::sleep_for(1ms);
    const auto elapsed = std::chrono::steady_clock::now() - t0;
    REQUIRE(fired);
    CHECK(elapsed >= 50ms);   // a step forward does not rush it
    CHECK(elapsed < 1500ms);  // a step back does not stall it
    // now() still reports the (stepped) wall time to the deployment.
    CHECK(std::chrono::abs(clock.now() - (wall_before + step)) < 10s);
    step_ns = 0;
  }
}

TEST_CASE("a periodic real-clock timer on a blocked strand queues one tick, not one per period") {
  Pool pool(2);
  RealClock clock;
  Strand s(pool, "s");
  std::atomic<int> ticks{0};
  std::atomic<bool> cancelled{false};
  const auto id = clock.every(5ms, s, [&] { ++ticks; });
  // Block the strand for 40 periods; cancel the timer as soon as it is free, before any queued tick runs.
  s.post([] { std::this_thread::sleep_for(200ms); });
  s.post([&] { cancelled = clock.cancel(id); });
  REQUIRE(pool.wait_idle(5s));
  std::this_thread::sleep_for(20ms);  // no tick may follow the cancel
  REQUIRE(pool.wait_idle(5s));
  CHECK(cancelled);
  CHECK(ticks == 1);  // the one tick queued while blocked
  CHECK(clock.skipped_ticks() >= 20);
}
