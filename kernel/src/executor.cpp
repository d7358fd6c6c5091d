#include "executor.hpp"

namespace deskfarm::kernel {

namespace {
thread_local const Strand* current_strand = nullptr;
constexpr std::size_t max_batch = 512;  // bounds one strand's turn so others are not starved
}  // namespace

Strand::Strand(Pool& pool, std::string name) : pool_(pool), name_(std::move(name)) {}

Strand::~Strand() {
  close();
  // A turn may still be queued in the pool or running on a worker; it ends without touching the queue.
  std::unique_lock lock(mutex_);
  room_.wait(lock, [&] { return !scheduled_; });
}

void Strand::post(std::function<void()> task) {
  std::lock_guard lock(mutex_);
  if (closed_) return;
  queue_.push_back(Item{std::move(task), nullptr, nullptr, {}});
  schedule_locked();
}

bool Strand::running_here() const { return current_strand == this; }

void Strand::schedule_locked() {
  if (!scheduled_) {
    scheduled_ = true;
    pool_.schedule(this);
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
        if (it->sub == sub) {
          if (it == queue_.begin() + static_cast<std::ptrdiff_t>(head_)) {
            *it = Item{};  // the usual case, a strand with one subscription: no shifting
            ++head_;
          } else {
            queue_.erase(it);
          }
          --sub->queued;
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
  std::unique_lock lock(mutex_);
  if (!make_room_locked(lock, sub, block_timeout)) return false;
  ++sub->queued;
  queue_.push_back(Item{nullptr, sub, message, {}});
  schedule_locked();
  return true;
}

bool Strand::deliver(sdk::Message&& message, const std::shared_ptr<Subscriber>& sub,
                     std::chrono::milliseconds block_timeout) {
  std::unique_lock lock(mutex_);
  if (!make_room_locked(lock, sub, block_timeout)) return false;
  ++sub->queued;
  queue_.push_back(Item{nullptr, sub, nullptr, std::move(message)});
  schedule_locked();
  return true;
}

void Strand::close() {
  std::lock_guard lock(mutex_);
  closed_ = true;
  for (std::size_t i = head_; i < queue_.size(); ++i) {
    if (queue_[i].sub) --queue_[i].sub->queued;
  }
  queue_.clear();
  head_ = 0;
  room_.notify_all();
}

void Strand::run_batch() {
  {
    std::lock_guard lock(mutex_);
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
    for (Item& item : batch_) {
      if (item.sub) --item.sub->queued;
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
      } else if (item.sub->active.load(std::memory_order_acquire)) {
        item.sub->handler(item.delivered());
      }
    } catch (...) {
      if (item.sub && item.sub->on_drop) item.sub->on_drop(item.delivered());
    }
  }
  current_strand = outer;
  batch_.clear();  // while still scheduled: once scheduled_ is false the strand may be destroyed
  Pool& pool = pool_;
  bool more = false;
  {
    std::lock_guard lock(mutex_);
    more = queue_.size() > head_ && !closed_;
    if (!more) scheduled_ = false;
    if (waiting_for_room_ > 0 || closed_) room_.notify_all();
  }
  pool.done_with(this, more);  // uses the pointer only as a value unless rescheduled
}

Pool::Pool(unsigned threads) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { worker(); });
}

Pool::~Pool() { shutdown(); }

void Pool::shutdown() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  work_.notify_all();
  for (auto& t : workers_) t.join();
}

void Pool::schedule(Strand* strand) {
  busy_.fetch_add(1, std::memory_order_acq_rel);
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    ready_.push_back(strand);
    ready_count_.fetch_add(1, std::memory_order_release);
    wake = sleepers_ > 0;
  }
  if (wake) work_.notify_one();
}

void Pool::done_with(Strand* strand, bool rescheduled) {
  if (rescheduled) {
    std::lock_guard lock(mutex_);
    ready_.push_back(strand);
    ready_count_.fetch_add(1, std::memory_order_release);
    return;  // still busy: the same turn continues
  }
  if (busy_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    std::lock_guard lock(mutex_);
    if (idle_waiters_ > 0) idle_.notify_all();
  }
}

bool Pool::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  ++idle_waiters_;
  const bool idle = idle_.wait_for(lock, timeout, [&] { return busy_.load(std::memory_order_acquire) == 0; });
  --idle_waiters_;
  return idle;
}

void Pool::worker() {
  using clock = std::chrono::steady_clock;
  while (true) {
    // Spin a little first: a message arriving within microseconds is served without a futex wake-up.
    const auto spin_until = clock::now() + std::chrono::microseconds(50);
    while (ready_count_.load(std::memory_order_acquire) == 0 && clock::now() < spin_until) {
      std::this_thread::yield();
    }
    Strand* strand = nullptr;
    {
      std::unique_lock lock(mutex_);
      ++sleepers_;
      work_.wait(lock, [&] { return stopping_ || !ready_.empty(); });
      --sleepers_;
      if (ready_.empty()) return;  // stopping and drained
      strand = ready_.front();
      ready_.pop_front();
      ready_count_.fetch_sub(1, std::memory_order_release);
    }
    strand->run_batch();
  }
}

}  // namespace deskfarm::kernel
