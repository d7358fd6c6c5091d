#pragma once
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <optional>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "deskfarm/sdk/clock.hpp"
#include "deskfarm/sdk/executor.hpp"

namespace deskfarm::kernel {

class Pool;

/// Pending timers ordered by (deadline, id): ties fire in the order they were scheduled.
class TimerQueue {
 public:
  struct Due {
    sdk::Executor* executor;
    std::shared_ptr<std::function<void()>> task;
  };
  sdk::TimerId add(sdk::TimePoint deadline, sdk::Duration period, sdk::Executor& executor, std::function<void()> task);
  bool cancel(sdk::TimerId id);
  /// The earliest deadline, if any.
  std::optional<sdk::TimePoint> next() const;
  /// Removes (or re-arms, if periodic) the earliest timer due at or before `now`.
  std::optional<Due> pop_due(sdk::TimePoint now);
  std::size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    sdk::TimePoint deadline;
    sdk::Duration period;
    sdk::Executor* executor;
    std::shared_ptr<std::function<void()>> task;
  };
  std::set<std::pair<sdk::TimePoint, sdk::TimerId>> order_;
  std::unordered_map<sdk::TimerId, Entry> entries_;
  sdk::TimerId next_id_ = 1;
};

/// Wall time; one thread hands due timers to their executors.
class RealClock final : public sdk::Clock {
 public:
  RealClock();
  ~RealClock() override;
  sdk::TimePoint now() const override;
  sdk::TimerId after(sdk::Duration delay, sdk::Executor& executor, std::function<void()> task) override;
  sdk::TimerId every(sdk::Duration period, sdk::Executor& executor, std::function<void()> task) override;
  bool cancel(sdk::TimerId id) override;
  bool is_virtual() const override { return false; }

 private:
  sdk::TimerId add(sdk::Duration delay, sdk::Duration period, sdk::Executor& executor, std::function<void()> task);
  void run();
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  TimerQueue timers_;
  bool stopping_ = false;
  std::thread thread_;
};

/// Simulated time. Time moves only when advance() is called: each due timer fires in (deadline, id) order
/// after the worker pool has gone idle, so a run is deterministic and as fast as the handlers allow.
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

 private:
  Pool& pool_;
  mutable std::mutex mutex_;
  std::atomic<sdk::Duration::rep> now_;
  TimerQueue timers_;
};

}  // namespace deskfarm::kernel
