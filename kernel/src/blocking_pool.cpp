#include "blocking_pool.hpp"

#include <algorithm>
#include <stdexcept>

namespace deskfarm::kernel {

BlockingPool::BlockingPool(unsigned threads, std::size_t queue_limit) : queue_limit_(queue_limit) {
  threads_.reserve(threads);
  for (unsigned i = 0; i < std::max(1u, threads); ++i) threads_.emplace_back([this] { run(); });
}

BlockingPool::~BlockingPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    queue_.clear();
    for (auto& [_, o] : owners_) o.stop.request_stop();
  }
  work_.notify_all();
  for (auto& t : threads_) t.join();
}

void BlockingPool::submit(const std::string& owner, std::function<void(std::stop_token)> work) {
  {
    std::lock_guard lock(mutex_);
    auto& o = owners_[owner];
    if (o.cancelled || stopping_) throw std::runtime_error("blocking work refused: instance " + owner + " is stopping");
    if (queue_.size() >= queue_limit_)
      throw std::runtime_error("blocking work refused: " + std::to_string(queue_.size()) +
                               " jobs already wait (raise [deployment] blocking_queue)");
    queue_.push_back(Job{owner, std::move(work)});
  }
  work_.notify_one();
}

bool BlockingPool::cancel(const std::string& owner, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  auto& o = owners_[owner];
  o.cancelled = true;
  o.stop.request_stop();
  std::erase_if(queue_, [&](const Job& j) { return j.owner == owner; });
  return finished_.wait_for(lock, timeout, [&] { return owners_[owner].running == 0; });
}

std::size_t BlockingPool::queued() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

std::size_t BlockingPool::running() const {
  std::lock_guard lock(mutex_);
  return running_;
}

void BlockingPool::run() {
  std::unique_lock lock(mutex_);
  while (true) {
    work_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    auto& o = owners_[job.owner];
    const std::stop_token token = o.stop.get_token();
    ++o.running;
    ++running_;
    lock.unlock();
    // The SDK's run_blocking wrapper catches everything the plugin throws; this guards the thread anyway.
    try {
      job.work(token);
    } catch (...) {
    }
    job.work = nullptr;  // release captures (the plugin's objects) before saying the job is done
    lock.lock();
    --owners_[job.owner].running;
    --running_;
    finished_.notify_all();
  }
}

}  // namespace deskfarm::kernel
