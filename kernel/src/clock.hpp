#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "deskfarm/sdk/clock.hpp"
#include "deskfarm/sdk/executor.hpp"

namespace deskfarm::kernel {

class Pool;

/// The task of a timer, shared by the queue and its queued ticks.
struct TimerTask {
  explicit TimerTask(std::function<void()> f) : run(std::move(f)) {}
  std::function<void()> run;
  // A tick is queued or running (periodic timers only). A tick dropped by a closed strand leaves it set, so
  // the timer stays silent until cancelled — which the kernel does when it stops the instance.
  std::atomic<bool> in_flight{false};
};

/// Pending timers ordered by (deadline, id): ties fire in the order they were scheduled. A deadline is
/// time since the owning clock's epoch: the steady clock's for RealClock (immune to wall-clock steps),
/// deployment time for VirtualClock.
///
/// A periodic timer has at most one tick queued or running: a tick that falls due while the previous
/// one has not finished (its strand is blocked or busy) is skipped and counted, and the schedule stays
/// aligned to start + k * period, so a stalled strand does not come back to a flood of stale ticks.
class TimerQueue {
 public:
  using Deadline = sdk::Duration;
  /// A timer fell due: post() queues its tick on its executor.
  struct Due {
    sdk::Executor* executor;
    std::shared_ptr<TimerTask> task;
    void post() const;
  };
  sdk::TimerId add(Deadline deadline, sdk::Duration period, sdk::Executor& executor, std::function<void()> task);
  bool cancel(sdk::TimerId id);
  /// The earliest deadline, if any.
  std::optional<Deadline> next();
  /// Removes (or re-arms, if periodic) the earliest timer due at or before `now`. A periodic timer whose
  /// previous tick is still queued or running is re-armed without a tick: the loop goes on to the next one.
  std::optional<Due> pop_due(Deadline now);
  std::size_t size() const { return entries_.size(); }
  /// Ticks of periodic timers skipped because the previous one had not finished or the clock was late.
  std::uint64_t skipped() const { return skipped_; }

 private:
  struct Entry {
    Deadline deadline;
    sdk::Duration period;
    sdk::Executor* executor;
    std::shared_ptr<TimerTask> task;
  };
  struct Slot {
    Deadline deadline;
    sdk::TimerId id;
    bool operator>(const Slot& o) const { return deadline != o.deadline ? deadline > o.deadline : id > o.id; }
  };
  using Entries = std::unordered_map<sdk::TimerId, Entry>;
  /// Drops heap slots of cancelled timers from the top; returns the entry of the earliest live timer (or end()).
  Entries::iterator prune();
  // A binary heap of (deadline, id) with lazy deletion: cancel() only erases the entry, and a slot whose
  // entry is gone or has moved on is discarded when it surfaces. Pushing and popping allocate nothing.
  std::vector<Slot> heap_;
  Entries entries_;
  sdk::TimerId next_id_ = 1;
  std::uint64_t skipped_ = 0;
};

/// Wall time for now(); deadlines on the steady clock, so stepping the wall clock (NTP, an operator)
/// neither stalls nor rushes timers. One thread hands due timers to their executors.
class RealClock final : public sdk::Clock {
 public:
  /// `wall` reports deployment time (system_clock by default; tests inject a clock that steps).
  explicit RealClock(std::function<sdk::TimePoint()> wall = {});
  ~RealClock() override;
  sdk::TimePoint now() const override;
  sdk::TimerId after(sdk::Duration delay, sdk::Executor& executor, std::function<void()> task) override;
  sdk::TimerId every(sdk::Duration period, sdk::Executor& executor, std::function<void()> task) override;
  bool cancel(sdk::TimerId id) override;
  bool is_virtual() const override { return false; }
  /// Periodic ticks skipped (see TimerQueue).
  std::uint64_t skipped_ticks() const;

 private:
  sdk::TimerId add(sdk::Duration delay, sdk::Duration period, sdk::Executor& executor, std::function<void()> task);
  void run();
  std::function<sdk::TimePoint()> wall_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  TimerQueue timers_;
  bool stopping_ = false;
  std::thread thread_;
};

/// Simulated time. Time moves only when advance() is called. It moves to the earliest pending deadline,
/// posts every timer due at that instant as one batch, waits once for the worker pool to go idle, and
/// repeats; so a run is deterministic (see run_until_quiet) and as fast as the handlers allow.
class VirtualClock final : public sdk::Clock {
 public:
  VirtualClock(Pool& pool, sdk::TimePoint start);
  sdk::TimePoint now() const override;
  sdk::TimerId after(sdk::Duration delay, sdk::Executor& executor, std::function<void()> task) override;
  sdk::TimerId every(sdk::Duration period, sdk::Executor& executor, std::function<void()> task) override;
  bool cancel(sdk::TimerId id) override;
  bool is_virtual() const override { return true; }

  /// Fires every timer due within `span`, then sets the time to now + span. Returns timers fired.
  std::size_t advance(sdk::Duration span);
  /// Fires timers until none is left or `limit` is reached; returns how many fired.
  std::size_t run_until_quiet(sdk::TimePoint limit);
  /// Fires only the earliest batch of timers due at or before `limit` (moving the time to it) and waits for
  /// the pool to go idle; returns how many fired, 0 when none is due by then (the time is left as it was).
  /// Lets a caller stop at the first event it waits for (the test kit's Probe::expect).
  std::size_t step(sdk::TimePoint limit);
  /// Periodic ticks skipped (see TimerQueue).
  std::uint64_t skipped_ticks() const;

 private:
  /// Fires batches of due timers up to `limit`, at most `max_batches` of them.
  std::size_t run(sdk::TimePoint limit, std::size_t max_batches);
  Pool& pool_;
  mutable std::mutex mutex_;
  std::atomic<sdk::Duration::rep> now_;
  TimerQueue timers_;
  std::vector<TimerQueue::Due> batch_;  // only run_until_quiet's caller touches it
};

}  // namespace deskfarm::kernel
