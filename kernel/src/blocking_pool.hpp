#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

namespace deskfarm::kernel {

/// Threads for plugins' blocking work (merges, file copies, slow queries), apart from the workers that run
/// executors, so one instance's long job never delays another instance's messages or `deskfarm status`.
/// Bounded: `threads` run at once and at most `queue_limit` jobs wait; a job beyond that is refused.
class BlockingPool {
 public:
  BlockingPool(unsigned threads, std::size_t queue_limit);
  ~BlockingPool();
  BlockingPool(const BlockingPool&) = delete;
  BlockingPool& operator=(const BlockingPool&) = delete;

  /// Queues `work` for `owner` (an instance). Throws std::runtime_error when the queue is full or `owner`
  /// has been cancelled.
  void submit(const std::string& owner, std::function<void(std::stop_token)> work);
  /// Drops `owner`'s queued jobs, requests stop of its running ones and waits for them up to `timeout`.
  /// True when none is running any more. Later submits for `owner` are refused.
  bool cancel(const std::string& owner, std::chrono::milliseconds timeout);
  /// Jobs waiting and running now.
  std::size_t queued() const;
  std::size_t running() const;
  unsigned threads() const { return static_cast<unsigned>(threads_.size()); }

 private:
  struct Job {
    std::string owner;
    std::function<void(std::stop_token)> work;
  };
  struct Owner {
    std::stop_source stop;
    std::size_t running = 0;
    bool cancelled = false;
  };
  void run();

  mutable std::mutex mutex_;
  std::condition_variable work_;
  std::condition_variable finished_;
  std::deque<Job> queue_;
  std::map<std::string, Owner> owners_;
  std::size_t queue_limit_;
  std::size_t running_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace deskfarm::kernel
