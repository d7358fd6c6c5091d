#pragma once
// What the firmware boot storms share: the live progress line, and N firmwares booted directly, C at a time, each
// on a thread of its own (firmware::boot blocks on real sockets).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <stop_token>
#include <thread>
#include <vector>

#include <deskfarm/firmware/firmware.hpp>

namespace deskfarm::bench {

using StormClock = std::chrono::steady_clock;

/// Live progress on stderr until `done()` or `give_up`; true when everything finished in time.
template <class Done, class Counts>
bool progress(const char* what, int devices, StormClock::time_point t0, StormClock::time_point give_up, Done done,
              Counts counts) {
  while (!done()) {
    if (StormClock::now() >= give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    const auto [ok, failed] = counts();
    const double elapsed = std::chrono::duration<double>(StormClock::now() - t0).count();
    std::fprintf(stderr, "\r  %-10s booted %d/%d, failed %d, %.1f s, %.1f boots/s   ", what, ok, devices, failed, elapsed,
                 ok / std::max(elapsed, 1e-9));
  }
  std::fprintf(stderr, "\n");
  return true;
}

/// What a direct storm counted; the per-boot details are the caller's (its `record`).
struct DirectStorm {
  int booted = 0, failed = 0, not_started = 0;
  double total_s = 0;
};

/// Boots devices 0..devices-1 with `concurrency` threads: `plan_of(i)` is device i's plan, `record(plan, result,
/// ms)` runs under one lock after each boot. Past `give_up` the boots still running are stopped (each returns
/// within ~100 ms, failed "stopped") and the devices not started yet are counted in not_started.
template <class PlanOf, class Record>
DirectStorm direct_firmware_storm(const char* what, int devices, int concurrency, StormClock::time_point give_up,
                                  PlanOf plan_of, Record record) {
  std::mutex m;
  std::atomic<int> next{0}, booted{0}, failed{0};
  const int worker_count = std::min(concurrency, devices);
  std::atomic<int> running{worker_count};
  std::stop_source stop;
  const auto t0 = StormClock::now();
  std::vector<std::jthread> workers;
  for (int w = 0; w < worker_count; ++w) {
    workers.emplace_back([&] {
      for (int i; !stop.stop_requested() && (i = next.fetch_add(1)) < devices;) {
        const firmware::BootPlan plan = plan_of(i);
        const auto start = StormClock::now();
        const auto result = firmware::boot(plan, stop.get_token());
        const double ms = std::chrono::duration<double, std::milli>(StormClock::now() - start).count();
        std::lock_guard lock(m);
        ++(result.ok ? booted : failed);
        record(plan, result, ms);
      }
      --running;
    });
  }
  if (!progress(what, devices, t0, give_up, [&] { return running == 0; },
                [&] { return std::pair{booted.load(), failed.load()}; })) {
    stop.request_stop();
    std::fprintf(stderr, "\n  %s: the time allowed passed; stopping the boots still running\n", what);
  }
  for (auto& w : workers) w.join();
  DirectStorm out;
  out.total_s = std::chrono::duration<double>(StormClock::now() - t0).count();
  out.booted = booted;
  out.failed = failed;
  out.not_started = devices - out.booted - out.failed;
  return out;
}

}  // namespace deskfarm::bench
