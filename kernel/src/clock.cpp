#include "clock.hpp"

#include <algorithm>
#include <stdexcept>

#include "executor.hpp"

namespace deskfarm::kernel {

void TimerQueue::Due::post() const {
  executor->post([task = task] {
    // Cleared after the run, also when it throws (the strand catches), so the timer ticks again.
    struct Done {
      TimerTask& t;
      ~Done() { t.in_flight.store(false, std::memory_order_release); }
    } done{*task};
    task->run();
  });
}

sdk::TimerId TimerQueue::add(Deadline deadline, sdk::Duration period, sdk::Executor& executor,
                             std::function<void()> task) {
  const sdk::TimerId id = next_id_++;
  entries_.emplace(id, Entry{deadline, period, &executor, std::make_shared<TimerTask>(std::move(task))});
  heap_.push_back({deadline, id});
  std::push_heap(heap_.begin(), heap_.end(), std::greater<>{});
  return id;
}

bool TimerQueue::cancel(sdk::TimerId id) {
  if (entries_.erase(id) == 0) return false;
  // Its heap slot goes when it surfaces; rebuild once dead slots dominate, so a stream of cancelled
  // timeouts (bus requests answered in time) cannot grow the heap without bound.
  if (heap_.size() > 64 && heap_.size() > 2 * entries_.size()) {
    heap_.clear();
    for (const auto& [live, entry] : entries_) heap_.push_back({entry.deadline, live});
    std::make_heap(heap_.begin(), heap_.end(), std::greater<>{});
  }
  return true;
}

TimerQueue::Entries::iterator TimerQueue::prune() {
  while (!heap_.empty()) {
    const Slot& top = heap_.front();
    const auto it = entries_.find(top.id);
    if (it != entries_.end() && it->second.deadline == top.deadline) return it;
    std::pop_heap(heap_.begin(), heap_.end(), std::greater<>{});
    heap_.pop_back();
  }
  return entries_.end();
}

std::optional<TimerQueue::Deadline> TimerQueue::next() {
  if (prune() == entries_.end()) return std::nullopt;
  return heap_.front().deadline;
}

std::optional<TimerQueue::Due> TimerQueue::pop_due(Deadline now) {
  while (true) {
    const auto it = prune();
    if (it == entries_.end() || heap_.front().deadline > now) return std::nullopt;
    const Slot slot = heap_.front();
    std::pop_heap(heap_.begin(), heap_.end(), std::greater<>{});
    heap_.pop_back();
    Entry& entry = it->second;
    if (entry.period.count() <= 0) {
      Due due{entry.executor, std::move(entry.task)};
      entries_.erase(it);
      return due;
    }
    // Re-armed from the schedule, not from "now", so it does not drift; periods the clock was too late
    // for are skipped rather than fired back to back.
    Deadline next = slot.deadline + entry.period;
    if (next <= now) {
      const auto late = (now - next) / entry.period + 1;
      next += late * entry.period;
      skipped_ += static_cast<std::uint64_t>(late);
    }
    entry.deadline = next;
    heap_.push_back({next, slot.id});
    std::push_heap(heap_.begin(), heap_.end(), std::greater<>{});
    if (entry.task->in_flight.exchange(true, std::memory_order_acq_rel)) {
      ++skipped_;  // the previous tick is still queued or running: coalesce
      continue;
    }
    return Due{entry.executor, entry.task};
  }
}

namespace {
sdk::TimePoint system_now() { return std::chrono::time_point_cast<sdk::Duration>(std::chrono::system_clock::now()); }
TimerQueue::Deadline steady_now() {
  return std::chrono::duration_cast<sdk::Duration>(std::chrono::steady_clock::now().time_since_epoch());
}
}  // namespace

RealClock::RealClock(std::function<sdk::TimePoint()> wall)
    : wall_(wall ? std::move(wall) : std::function<sdk::TimePoint()>(system_now)), thread_([this] { run(); }) {}

RealClock::~RealClock() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

sdk::TimePoint RealClock::now() const { return wall_(); }

sdk::TimerId RealClock::add(sdk::Duration delay, sdk::Duration period, sdk::Executor& executor,
                            std::function<void()> task) {
  std::lock_guard lock(mutex_);
  const auto deadline = steady_now() + delay;
  const auto previous = timers_.next();
  const auto id = timers_.add(deadline, period, executor, std::move(task));
  if (!previous || deadline < *previous) changed_.notify_one();
  return id;
}

sdk::TimerId RealClock::after(sdk::Duration delay, sdk::Executor& executor, std::function<void()> task) {
  return add(delay, sdk::Duration::zero(), executor, std::move(task));
}

sdk::TimerId RealClock::every(sdk::Duration period, sdk::Executor& executor, std::function<void()> task) {
  if (period <= sdk::Duration::zero()) throw std::invalid_argument("timer period must be positive");
  return add(period, period, executor, std::move(task));
}

bool RealClock::cancel(sdk::TimerId id) {
  std::lock_guard lock(mutex_);
  return timers_.cancel(id);
}

std::uint64_t RealClock::skipped_ticks() const {
  std::lock_guard lock(mutex_);
  return timers_.skipped();
}

void RealClock::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    const auto now = steady_now();
    while (auto due = timers_.pop_due(now)) due->post();
    if (auto next = timers_.next()) {
      // Deadlines are steady time, so the wait is too (libstdc++ waits on CLOCK_MONOTONIC).
      changed_.wait_until(lock, std::chrono::steady_clock::time_point(
                                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(*next)));
    } else {
      changed_.wait(lock);
    }
  }
}

VirtualClock::VirtualClock(Pool& pool, sdk::TimePoint start) : pool_(pool), now_(start.time_since_epoch().count()) {}

sdk::TimePoint VirtualClock::now() const { return sdk::TimePoint(sdk::Duration(now_.load(std::memory_order_acquire))); }

sdk::TimerId VirtualClock::after(sdk::Duration delay, sdk::Executor& executor, std::function<void()> task) {
  std::lock_guard lock(mutex_);
  return timers_.add((now() + delay).time_since_epoch(), sdk::Duration::zero(), executor, std::move(task));
}

sdk::TimerId VirtualClock::every(sdk::Duration period, sdk::Executor& executor, std::function<void()> task) {
  if (period <= sdk::Duration::zero()) throw std::invalid_argument("timer period must be positive");
  std::lock_guard lock(mutex_);
  return timers_.add((now() + period).time_since_epoch(), period, executor, std::move(task));
}

bool VirtualClock::cancel(sdk::TimerId id) {
  std::lock_guard lock(mutex_);
  return timers_.cancel(id);
}

std::uint64_t VirtualClock::skipped_ticks() const {
  std::lock_guard lock(mutex_);
  return timers_.skipped();
}

// Determinism: time moves to the earliest pending deadline only once the pool is idle, so everything
// caused by earlier instants has finished. Every timer due at that instant is then posted as one batch in
// (deadline, id) order, and each strand runs its own in that order; tasks of different instances at one
// instant may interleave, as they would in real time. A timer a task sets while the batch runs is due
// later (or, with no delay, at this instant) and goes into a following batch, so virtual time never passes
// a pending timer. One idle wait per instant instead of per timer is what makes a farm's worth of
// heartbeats cheap: 10,000 instances on a 30 s period cost one thread round trip per 10,000 ticks.
std::size_t VirtualClock::run_until_quiet(sdk::TimePoint limit) { return run(limit, SIZE_MAX); }

std::size_t VirtualClock::step(sdk::TimePoint limit) { return run(limit, 1); }

std::size_t VirtualClock::run(sdk::TimePoint limit, std::size_t max_batches) {
  std::size_t fired = 0;
  for (std::size_t batches = 0;; ++batches) {
    while (!pool_.wait_idle(std::chrono::milliseconds(100))) {
    }
    if (batches == max_batches) break;
    {
      std::lock_guard lock(mutex_);
      const auto next = timers_.next();
      if (!next || *next > limit.time_since_epoch()) break;
      if (*next > now().time_since_epoch()) now_.store(next->count(), std::memory_order_release);
      while (auto due = timers_.pop_due(*next)) batch_.push_back(std::move(*due));
    }
    // Posted unlocked: a task that runs at once may set or cancel timers.
    for (const auto& due : batch_) due.post();
    fired += batch_.size();
    batch_.clear();
  }
  return fired;
}

std::size_t VirtualClock::advance(sdk::Duration span) {
  const auto target = now() + span;
  const std::size_t fired = run_until_quiet(target);
  std::lock_guard lock(mutex_);
  if (target > now()) now_.store(target.time_since_epoch().count(), std::memory_order_release);
  return fired;
}

}  // namespace deskfarm::kernel
