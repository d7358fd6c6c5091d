#include "instance.hpp"

#include <algorithm>


namespace deskfarm::kernel {

sdk::TimerId InstanceClock::after(sdk::Duration delay, sdk::Executor& ex, std::function<void()> task) {
  std::lock_guard lock(mutex_);
  if (closed_) return 0;
  // A one-shot timer forgets itself when it fires, so the set holds only live timers.
  auto slot = std::make_shared<std::atomic<sdk::TimerId>>(0);
  const auto id = clock_.after(delay, ex, [this, slot, t = std::move(task)] {
    forget(slot->load());
    t();
  });
  slot->store(id);
  ids_.insert(id);
  return id;
}

sdk::TimerId InstanceClock::every(sdk::Duration period, sdk::Executor& ex, std::function<void()> task) {
  std::lock_guard lock(mutex_);
  if (closed_) return 0;
  const auto id = clock_.every(period, ex, std::move(task));
  ids_.insert(id);
  return id;
}

bool InstanceClock::cancel(sdk::TimerId id) {
  std::lock_guard lock(mutex_);
  ids_.erase(id);
  return clock_.cancel(id);
}

void InstanceClock::close() {
  std::lock_guard lock(mutex_);
  closed_ = true;
  for (auto id : ids_) clock_.cancel(id);
  ids_.clear();
}

void InstanceClock::forget(sdk::TimerId id) {
  std::lock_guard lock(mutex_);
  ids_.erase(id);
}

std::shared_ptr<StrandCall> StrandCall::post(Strand& strand, std::function<void()> fn) {
  auto call = std::make_shared<StrandCall>();
  strand.post([call, fn = std::move(fn)] {
    try {
      fn();
      call->finish(std::nullopt);
    } catch (const std::exception& e) {
      call->finish(std::string(e.what()));  // copied now: the exception's code lives in the plugin
    } catch (...) {
      call->finish(std::string("unknown exception"));
    }
  });
  return call;
}

void StrandCall::finish(std::optional<std::string> error) {
  std::lock_guard lock(mutex_);
  error_ = std::move(error);
  done_ = true;
  done_cv_.notify_all();
}

bool StrandCall::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return done_cv_.wait_for(lock, timeout, [&] { return done_; });
}

std::optional<std::string> StrandCall::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

std::optional<std::string> call_on(Strand& strand, std::function<void()> fn, std::chrono::milliseconds timeout,
                                   const std::string& what) {
  auto call = StrandCall::post(strand, std::move(fn));
  if (!call->wait(timeout)) return what + " did not return within " + std::to_string(timeout.count()) + " ms";
  return call->error();
}

std::filesystem::path Instance::state_dir() {
  auto dir = state_root / spec.name;
  if (std::filesystem::create_directories(dir)) created_state_dir = true;
  return dir;
}

void Instance::advertise(const std::string& endpoint, const std::string& address) {
  std::lock_guard lock(rt->directory_mutex);
  endpoints[endpoint] = address;
  if (auto it = rt->directory.find(spec.name); it != rt->directory.end()) it->second.endpoints = endpoints;
}

std::vector<sdk::InstanceInfo> Instance::instances(const std::string& role) {
  std::lock_guard lock(rt->directory_mutex);
  std::vector<sdk::InstanceInfo> out;
  for (const auto& [_, info] : rt->directory) {
    if (role.empty() || std::find(info.roles.begin(), info.roles.end(), role) != info.roles.end()) out.push_back(info);
  }
  return out;
}

void Instance::submit_blocking(std::function<void(std::stop_token)> work) { rt->blocking.submit(spec.name, std::move(work)); }

sdk::InstanceInfo Instance::info(const std::string& st) {
  std::lock_guard lock(rt->directory_mutex);
  return sdk::InstanceInfo{spec.name, spec.plugin, library->provides(), endpoints, st};
}

bool Instance::create(Runtime& runtime, LogSink& log, dk_error& error) {
  rt = &runtime;
  strand = std::make_unique<Strand>(runtime.pool, spec.name);
  bus_view = std::make_unique<InstanceBus>(runtime.bus, *strand);
  clock_view = std::make_unique<InstanceClock>(*runtime.clock);
  logger = std::make_unique<InstanceLogger>(log, spec.name);
  metrics_view = std::make_unique<InstanceMetrics>(runtime.metrics, spec.name);
  line = std::make_shared<sdk::Lifeline>(*strand);
  plugin = library->descriptor().create(static_cast<sdk::Context*>(this), &error);
  return plugin != nullptr;
}

bool Instance::destroy(std::chrono::milliseconds drain_timeout) {
  if (leaked) return false;
  // No new messages or timers first; then what is queued (a stop() behind a slow handler) may finish.
  if (bus_view) bus_view->close();
  if (clock_view) clock_view->close();
  if (line) line->end();  // the plugin's own threads can no longer post to the strand
  if (strand && !strand->drain(drain_timeout)) {
    leaked = true;  // the owner keeps this object, and so the plugin, its context and its library, alive
    return false;
  }
  if (plugin) {
    library->descriptor().destroy(plugin);
    plugin = nullptr;
  }
  strand.reset();
  bus_view.reset();
  clock_view.reset();
  return true;
}

}  // namespace deskfarm::kernel
