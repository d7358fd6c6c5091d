#include "clock.hpp"

#include <optional>

#include "executor.hpp"

namespace deskfarm::kernel {

sdk::TimerId TimerQueue::add(sdk::TimePoint deadline, sdk::Duration period, sdk::Executor& executor,
                             std::function<void()> task) {
  const sdk::TimerId id = next_id_++;
  entries_.emplace(id, Entry{deadline, period, &executor, std::make_shared<std::function<void()>>(std::move(task))});
  order_.emplace(deadline, id);
  return id;
}

bool TimerQueue::cancel(sdk::TimerId id) {
  const auto it = entries_.find(id);
  if (it == entries_.end()) return false;
  order_.erase({it->second.deadline, id});
  entries_.erase(it);
  return true;
}

std::optional<sdk::TimePoint> TimerQueue::next() const {
  if (order_.empty()) return std::nullopt;
  return order_.begin()->first;
}

std::optional<TimerQueue::Due> TimerQueue::pop_due(sdk::TimePoint now) {
  if (order_.empty() || order_.begin()->first > now) return std::nullopt;
  const auto [deadline, id] = *order_.begin();
  order_.erase(order_.begin());
  auto it = entries_.find(id);
  Due due{it->second.executor, it->second.task};
  if (it->second.period.count() > 0) {
    it->second.deadline = deadline + it->second.period;  // from the schedule, not from "now": no drift
    order_.emplace(it->second.deadline, id);
  } else {
    entries_.erase(it);
  }
  return due;
}

namespace {
sdk::TimePoint wall_now() {
  return std::chrono::time_point_cast<sdk::Duration>(std::chrono::system_clock::now());
}
void post(const TimerQueue::Due& due) {
  due.executor->post([task = due.task] { (*task)(); });
}
}  // namespace

RealClock::RealClock() : thread_([this] { run(); }) {}

RealClock::~RealClock() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

sdk::TimePoint RealClock::now() const { return wall_now(); }

sdk::TimerId RealClock::add(sdk::Duration delay, sdk::Duration period, sdk::Executor& executor,
                            std::function<void()> task) {
  std::lock_guard lock(mutex_);
  const auto deadline = wall_now() + delay;
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

void RealClock::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    while (auto due = timers_.pop_due(wall_now())) post(*due);
    if (auto next = timers_.next()) {
      // system_clock deadline, waited on with the steady clock so a wall-clock step cannot stall timers.
      const auto wait = *next - wall_now();
      changed_.wait_for(lock, wait);
    } else {
      changed_.wait(lock);
    }
  }
}

VirtualClock::VirtualClock(Pool& pool, sdk::TimePoint start) : pool_(pool), now_(start.time_since_epoch().count()) {}

sdk::TimePoint VirtualClock::now() const { return sdk::TimePoint(sdk::Duration(now_.load(std::memory_order_acquire))); }

sdk::TimerId VirtualClock::after(sdk::Duration delay, sdk::Executor& executor, std::function<void()> task) {
  std::lock_guard lock(mutex_);
  return timers_.add(now() + delay, sdk::Duration::zero(), executor, std::move(task));
}

sdk::TimerId VirtualClock::every(sdk::Duration period, sdk::Executor& executor, std::function<void()> task) {
  if (period <= sdk::Duration::zero()) throw std::invalid_argument("timer period must be positive");
  std::lock_guard lock(mutex_);
  return timers_.add(now() + period, period, executor, std::move(task));
}

bool VirtualClock::cancel(sdk::TimerId id) {
  std::lock_guard lock(mutex_);
  return timers_.cancel(id);
}

std::size_t VirtualClock::run_until_quiet(sdk::TimePoint limit) {
  std::size_t fired = 0;
  while (true) {
    // Let everything caused by the previous timer finish before time moves on.
    while (!pool_.wait_idle(std::chrono::milliseconds(100))) {
    }
    std::optional<TimerQueue::Due> due;
    {
      std::lock_guard lock(mutex_);
      const auto next = timers_.next();
      if (!next || *next > limit) break;
      if (*next > now()) now_.store(next->time_since_epoch().count(), std::memory_order_release);
      due = timers_.pop_due(*next);
    }
    if (due) {
      post(*due);
      ++fired;
    }
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
