#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "deskfarm/sdk/bus.hpp"
#include "deskfarm/sdk/executor.hpp"

namespace deskfarm::kernel {

class Pool;
struct Subscriber;

/// A serial executor (actor mailbox) scheduled onto the shared worker pool. Plain tasks and bus
/// deliveries share one FIFO queue, so a plugin sees events in the order they were posted.
class Strand final : public sdk::Executor {
 public:
  Strand(Pool& pool, std::string name);
  ~Strand() override;
  void post(std::function<void()> task) override;
  bool running_here() const override;

  /// Queues a bus message for `sub`; applies the subscriber's overflow policy. False when dropped.
  bool deliver(const std::shared_ptr<const sdk::Message>& message, const std::shared_ptr<Subscriber>& sub,
               std::chrono::milliseconds block_timeout);
  /// As above, for a message with this one receiver: it is queued by value, with no shared copy.
  bool deliver(sdk::Message&& message, const std::shared_ptr<Subscriber>& sub, std::chrono::milliseconds block_timeout);
  /// What offer() did with a message.
  enum class Offer { queued, dropped, full };
  /// As deliver(), for a thread that must never wait (a transport's reader): when `sub` waits for room (its
  /// overflow policy is block) and its queue is full, the message is left as it was, nothing is counted, and
  /// `full` says to deliver it from a thread that may wait. The other policies drop as deliver() does.
  Offer offer(sdk::Message&& message, const std::shared_ptr<Subscriber>& sub);
  Offer offer(const std::shared_ptr<const sdk::Message>& message, const std::shared_ptr<Subscriber>& sub);
  /// Refuses further work and drops what is queued (the instance stopped).
  void close();
  /// Lets what is queued run, then closes: waits until nothing is queued or running, or `timeout`.
  /// False when an item is still running then (a plugin call that does not return).
  bool drain(std::chrono::milliseconds timeout);
  const std::string& name() const { return name_; }
  Pool& pool() const { return pool_; }

 private:
  friend class Pool;
  struct Item {
    Item() = default;
    explicit Item(std::function<void()>&& t) : task(std::move(t)) {}
    Item(Subscriber* s, const std::shared_ptr<const sdk::Message>& m) : sub(s), shared(m) {}
    Item(Subscriber* s, sdk::Message&& m) : sub(s), message(std::move(m)) {}
    std::function<void()> task;                  // a posted task; empty for a delivery
    Subscriber* sub = nullptr;                   // set for a delivery; kept alive by Subscriber::pin
    std::shared_ptr<const sdk::Message> shared;  // a message with several receivers
    sdk::Message message;                        // the message itself when it has one receiver
    const sdk::Message& delivered() const { return shared ? *shared : message; }
  };
  template <class M>
  Offer offer_impl(M&& message, const std::shared_ptr<Subscriber>& sub);
  /// Counts a new item for `sub`, pinning it while it has any.
  static void hold_locked(const std::shared_ptr<Subscriber>& sub);
  /// Uncounts `n` items of `sub`; the pin, if that was the last, goes to `released` (freed unlocked).
  static void release_locked(Subscriber* sub, std::size_t n, std::vector<std::shared_ptr<Subscriber>>& released);
  /// Applies `sub`'s overflow policy; false when the new message is to be dropped.
  bool make_room_locked(std::unique_lock<std::mutex>& lock, const std::shared_ptr<Subscriber>& sub,
                        std::chrono::milliseconds block_timeout);
  /// Called with an item queued: schedules the strand, or ends a linger.
  void added_locked();
  /// Runs up to max_batch items; true when the strand has more and is still scheduled.
  bool run_batch();
  /// Waits briefly for new work on an emptied strand (see linger_time).
  void linger();

  Pool& pool_;
  std::string name_;
  std::mutex mutex_;
  std::condition_variable room_;
  std::vector<Item> queue_;  // waiting items are [head_, size)
  std::size_t head_ = 0;
  std::vector<Item> batch_;
  std::vector<std::pair<Subscriber*, std::size_t>> batch_subs_;  // items per subscriber in batch_
  std::size_t waiting_for_room_ = 0;
  bool scheduled_ = false;
  bool closed_ = false;
  bool draining_ = false;            // drain() waits on room_ for scheduled_ to become false
  bool lingering_ = false;           // a worker holds the emptied strand, waiting for poked_
  std::atomic<bool> poked_{false};  // work arrived or the strand closed while lingering
};

/// A fixed set of worker threads running strands that have work. Workers spin briefly before they
/// sleep, which keeps request/reply latency low without burning a core when idle.
class Pool {
 public:
  explicit Pool(unsigned threads);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  /// Blocks until no strand has queued or running work, or `timeout` passes. True when idle.
  bool wait_idle(std::chrono::milliseconds timeout);
  void shutdown();
  unsigned threads() const { return static_cast<unsigned>(workers_.size()); }

 private:
  friend class Strand;
  /// Queues a strand's turn; false once the pool has shut down.
  bool schedule(Strand* strand);
  /// True when a worker may hold an emptied strand a little longer.
  bool may_linger() const;
  void worker();

  std::mutex mutex_;
  std::condition_variable work_;
  std::condition_variable idle_;
  std::deque<Strand*> ready_;
  std::atomic<std::size_t> ready_count_{0};
  std::atomic<std::int64_t> busy_{0};  // strands scheduled or running (or lingering)
  std::size_t sleepers_ = 0;
  std::size_t live_workers_ = 0;
  std::atomic<std::size_t> idle_waiters_{0};  // written under mutex_, read by lingering workers
  std::atomic<bool> stopping_{false};         // written under mutex_
  std::vector<std::thread> workers_;
};

/// One subscription's state; lives as long as a queued delivery refers to it.
struct Subscriber {
  std::string pattern;
  sdk::Handler handler;
  Strand* strand = nullptr;
  std::size_t limit = 65536;
  sdk::Overflow overflow = sdk::Overflow::block;
  std::size_t queued = 0;  // waiting in the strand queue; guarded by the strand mutex
  // Queued or being handled. While non-zero the subscriber pins itself, so a queued item holds a
  // plain pointer instead of copying a shared_ptr (two atomic operations) per message.
  std::size_t outstanding = 0;        // guarded by the strand mutex
  std::shared_ptr<Subscriber> pin;  // guarded by the strand mutex
  std::atomic<bool> active{true};
  std::atomic<std::uint64_t>* dropped = nullptr;  // the subject's drop counter, set by the bus
  std::function<void(const sdk::Message&)> on_drop;
};

}  // namespace deskfarm::kernel
