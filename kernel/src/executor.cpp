#include "executor.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace deskfarm::kernel {

namespace {
thread_local const Strand* current_strand = nullptr;
constexpr std::size_t max_batch = 512;  // bounds one strand's turn so others are not starved
// How long a worker keeps an emptied strand before giving it back to the pool. A steady publisher
// refills it within this, so the strand is not rescheduled (pool lock, maybe a wake-up) per message.
constexpr auto linger_time = std::chrono::microseconds(20);

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}
// Takes a strand lock. Its holders keep it for tens of nanoseconds, so a short spin almost always
// gets it; std::mutex alone would put the loser to sleep in the kernel (futex) and make the owner
// pay a wake-up syscall, once per message when publisher and worker meet on every item.
std::unique_lock<std::mutex> lock_briefly_held(std::mutex& m) {
  for (int backoff = 1; backoff <= 256; backoff *= 2) {
    if (m.try_lock()) return std::unique_lock<std::mutex>(m, std::adopt_lock);
    for (int i = 0; i < backoff; ++i) cpu_relax();  // fewer attempts: each one takes the line from the owner
  }
  return std::unique_lock<std::mutex>(m);
}
}  // namespace

Strand::Strand(Pool& pool, std::string name) : pool_(pool), name_(std::move(name)) {}

Strand::~Strand() {
  close();
  // A turn may still be queued in the pool or running on a worker; it ends without touching the queue.
  std::unique_lock lock(mutex_);
  room_.wait(lock, [&] { return !scheduled_; });
}

void Strand::post(std::function<void()> task) {
  auto lock = lock_briefly_held(mutex_);
  if (closed_) return;
  queue_.emplace_back(std::move(task));
  added_locked();
}

bool Strand::running_here() const { return current_strand == this; }

void Strand::added_locked() {
  if (!scheduled_) {
    // A pool that has stopped runs nothing more; the item stays queued until close() drops it.
    scheduled_ = pool_.schedule(this);
  } else if (lingering_) {
    poked_.store(true, std::memory_order_release);
  }
}

bool Strand::make_room_locked(std::unique_lock<std::mutex>& lock, const std::shared_ptr<Subscriber>& sub,
                              std::chrono::milliseconds block_timeout) {
  if (closed_) return false;
  if (sub->queued < sub->limit) return true;
  bool room = false;
  switch (sub->overflow) {
    case sdk::Overflow::drop_newest:
      break;
    case sdk::Overflow::drop_oldest:
      for (auto it = queue_.begin() + static_cast<std::ptrdiff_t>(head_); it != queue_.end(); ++it) {
        if (it->sub == sub.get()) {
          if (it == queue_.begin() + static_cast<std::ptrdiff_t>(head_)) {
            *it = Item{};  // the usual case, a strand with one subscription: no shifting
            ++head_;
          } else {
            queue_.erase(it);
          }
          --sub->queued;
          if (--sub->outstanding == 0) sub->pin.reset();  // not the last reference: the caller holds one
          if (sub->dropped) sub->dropped->fetch_add(1, std::memory_order_relaxed);  // the oldest one
          return true;
        }
      }
      break;
    case sdk::Overflow::block:
      // A strand publishing into its own full queue would wait for itself: drop instead.
      if (running_here()) break;
      ++waiting_for_room_;
      room = room_.wait_for(lock, block_timeout, [&] { return closed_ || sub->queued < sub->limit; }) && !closed_;
      --waiting_for_room_;
      break;
  }
  if (!room && sub->dropped) sub->dropped->fetch_add(1, std::memory_order_relaxed);
  return room;
}

bool Strand::deliver(const std::shared_ptr<const sdk::Message>& message, const std::shared_ptr<Subscriber>& sub,
                     std::chrono::milliseconds block_timeout) {
  auto lock = lock_briefly_held(mutex_);
  if (!make_room_locked(lock, sub, block_timeout)) return false;
  ++sub->queued;
  hold_locked(sub);
  queue_.emplace_back(sub.get(), message);
  added_locked();
  return true;
}

bool Strand::deliver(sdk::Message&& message, const std::shared_ptr<Subscriber>& sub,
                     std::chrono::milliseconds block_timeout) {
  auto lock = lock_briefly_held(mutex_);
  if (!make_room_locked(lock, sub, block_timeout)) return false;
  ++sub->queued;
  hold_locked(sub);
  queue_.emplace_back(sub.get(), std::move(message));
  added_locked();
  return true;
}

template <class M>
Strand::Offer Strand::offer_impl(M&& message, const std::shared_ptr<Subscriber>& sub) {
  auto lock = lock_briefly_held(mutex_);
  if (!closed_ && sub->overflow == sdk::Overflow::block && sub->queued >= sub->limit) return Offer::full;
  if (!make_room_locked(lock, sub, std::chrono::milliseconds(0))) return Offer::dropped;  // never waits here
  ++sub->queued;
  hold_locked(sub);
  queue_.emplace_back(sub.get(), std::forward<M>(message));
  added_locked();
  return Offer::queued;
}

Strand::Offer Strand::offer(sdk::Message&& message, const std::shared_ptr<Subscriber>& sub) {
  return offer_impl(std::move(message), sub);
}

Strand::Offer Strand::offer(const std::shared_ptr<const sdk::Message>& message, const std::shared_ptr<Subscriber>& sub) {
  return offer_impl(message, sub);
}

void Strand::hold_locked(const std::shared_ptr<Subscriber>& sub) {
  if (sub->outstanding++ == 0) sub->pin = sub;
}

void Strand::release_locked(Subscriber* sub, std::size_t n, std::vector<std::shared_ptr<Subscriber>>& released) {
  sub->outstanding -= n;
  if (sub->outstanding == 0) released.push_back(std::move(sub->pin));
}

void Strand::close() {
  std::vector<std::shared_ptr<Subscriber>> released;  // destroyed after the lock is released
  std::lock_guard lock(mutex_);
  closed_ = true;
  for (std::size_t i = head_; i < queue_.size(); ++i) {
    if (Subscriber* sub = queue_[i].sub) {
      --sub->queued;
      release_locked(sub, 1, released);
    }
  }
  queue_.clear();
  head_ = 0;
  poked_.store(true, std::memory_order_release);  // ends a linger at once
  room_.notify_all();
}

bool Strand::drain(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(mutex_);
  draining_ = true;
  room_.wait_until(lock, deadline, [&] { return !scheduled_; });
  lock.unlock();
  close();  // whatever was posted meanwhile is dropped; a running item is waited for below
  lock.lock();
  const bool idle = room_.wait_until(lock, deadline, [&] { return !scheduled_; });
  draining_ = false;
  return idle;
}

bool Strand::run_batch() {
  {
    auto lock = lock_briefly_held(mutex_);
    if (head_ == 0 && queue_.size() <= max_batch) {
      batch_.swap(queue_);
    } else {
      // Take from the front without shifting the rest: a deep queue costs O(1) per message, not O(depth).
      const auto first = queue_.begin() + static_cast<std::ptrdiff_t>(head_);
      const std::size_t n = std::min(max_batch, queue_.size() - head_);
      batch_.assign(std::make_move_iterator(first), std::make_move_iterator(first + static_cast<std::ptrdiff_t>(n)));
      head_ += n;
      if (head_ == queue_.size()) {
        queue_.clear();
        head_ = 0;
      } else if (head_ * 2 > queue_.size()) {
        queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(head_));  // amortised O(1)
        head_ = 0;
      }
    }
    // A subscriber's limit counts messages waiting, not the ones being handled now.
    batch_subs_.clear();
    for (Item& item : batch_) {
      if (!item.sub) continue;
      --item.sub->queued;
      if (batch_subs_.empty() || batch_subs_.back().first != item.sub) batch_subs_.emplace_back(item.sub, 0);
      ++batch_subs_.back().second;
    }
    if (waiting_for_room_ > 0) room_.notify_all();
  }
  const Strand* outer = current_strand;
  current_strand = this;
  for (Item& item : batch_) {
    // A throwing handler must not take the worker down; the instance keeps its other messages.
    try {
      if (item.task) {
        item.task();
      } else if (item.sub && item.sub->active.load(std::memory_order_acquire)) {
        item.sub->handler(item.delivered());
      }
    } catch (...) {
      if (item.sub && item.sub->on_drop) item.sub->on_drop(item.delivered());
    }
  }
  current_strand = outer;
  // Only a strand that is being fed faster than one item per turn is worth holding on to: a strand
  // in a request/reply exchange gets one item at a time and is best served by whichever worker is free.
  const bool streaming = batch_.size() > 1;
  batch_.clear();  // while still scheduled: once scheduled_ is false the strand may be destroyed
  std::vector<std::shared_ptr<Subscriber>> released;  // destroyed after the lock is released
  auto lock = lock_briefly_held(mutex_);
  for (const auto& [sub, n] : batch_subs_) release_locked(sub, n, released);
  if (waiting_for_room_ > 0 || closed_) room_.notify_all();
  if (queue_.size() > head_ && !closed_) return true;
  if (streaming && !closed_ && pool_.may_linger()) {
    lingering_ = true;
    poked_.store(false, std::memory_order_relaxed);
    lock.unlock();
    linger();
    lock = lock_briefly_held(mutex_);
    lingering_ = false;
    if (closed_) room_.notify_all();
    if (queue_.size() > head_ && !closed_) return true;
  }
  if (draining_) room_.notify_all();
  scheduled_ = false;  // the last touch: from here the strand may be destroyed
  return false;
}

void Strand::linger() {
  const auto until = std::chrono::steady_clock::now() + linger_time;
  for (unsigned spins = 1; !poked_.load(std::memory_order_acquire); ++spins) {
    cpu_relax();
    if (spins % 64 == 0 && (!pool_.may_linger() || std::chrono::steady_clock::now() > until)) return;
  }
}

Pool::Pool(unsigned threads) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  live_workers_ = threads;
  for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { worker(); });
}

Pool::~Pool() { shutdown(); }

void Pool::shutdown() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_.load(std::memory_order_relaxed)) return;
    stopping_.store(true, std::memory_order_relaxed);
  }
  work_.notify_all();
  for (auto& t : workers_) t.join();
}

bool Pool::schedule(Strand* strand) {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    if (live_workers_ == 0) return false;  // shut down: no worker would ever take it
    busy_.fetch_add(1, std::memory_order_relaxed);
    ready_.push_back(strand);
    ready_count_.fetch_add(1, std::memory_order_release);
    wake = sleepers_ > 0;
  }
  if (wake) work_.notify_one();
  return true;
}

bool Pool::may_linger() const {
  // Not while another strand waits for a worker, someone waits for idleness, or the pool stops.
  return ready_count_.load(std::memory_order_relaxed) == 0 && idle_waiters_.load(std::memory_order_relaxed) == 0 &&
         !stopping_.load(std::memory_order_relaxed);
}

bool Pool::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  idle_waiters_.fetch_add(1, std::memory_order_relaxed);
  const bool idle = idle_.wait_for(lock, timeout, [&] { return busy_.load(std::memory_order_acquire) == 0; });
  idle_waiters_.fetch_sub(1, std::memory_order_relaxed);
  return idle;
}

void Pool::worker() {
  using clock = std::chrono::steady_clock;
  Strand* strand = nullptr;
  while (true) {
    if (!strand) {
      // Spin a little first: a message arriving within microseconds is served without a futex wake-up.
      const auto spin_until = clock::now() + std::chrono::microseconds(50);
      while (ready_count_.load(std::memory_order_acquire) == 0 && clock::now() < spin_until) {
        std::this_thread::yield();
      }
      std::unique_lock lock(mutex_);
      ++sleepers_;
      work_.wait(lock, [&] { return stopping_.load(std::memory_order_relaxed) || !ready_.empty(); });
      --sleepers_;
      if (ready_.empty()) {  // stopping and drained
        --live_workers_;
        return;
      }
      strand = ready_.front();
      ready_.pop_front();
      ready_count_.fetch_sub(1, std::memory_order_release);
    }
    if (strand->run_batch()) {
      // More work: keep the turn unless another strand is waiting, then go to the back of the line.
      if (ready_count_.load(std::memory_order_acquire) == 0) continue;
      std::lock_guard lock(mutex_);
      ready_.push_back(strand);
      ready_count_.fetch_add(1, std::memory_order_release);
      strand = nullptr;
      continue;
    }
    strand = nullptr;  // may already be destroyed
    if (busy_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard lock(mutex_);
      if (idle_waiters_.load(std::memory_order_relaxed) > 0) idle_.notify_all();
    }
  }
}

}  // namespace deskfarm::kernel
