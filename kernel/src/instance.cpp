#include "instance.hpp"

#include <future>

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

std::optional<std::string> call_on(Strand& strand, const std::function<void()>& fn, std::chrono::milliseconds timeout,
                                   const std::string& what) {
  auto done = std::make_shared<std::promise<std::optional<std::string>>>();
  auto result = done->get_future();
  strand.post([fn, done] {
    try {
      fn();
      done->set_value(std::nullopt);
    } catch (const std::exception& e) {
      done->set_value(std::string(e.what()));  // copied now: the exception's code lives in the plugin
    } catch (...) {
      done->set_value(std::string("unknown exception"));
    }
  });
  if (result.wait_for(timeout) != std::future_status::ready) {
    return what + " did not return within " + std::to_string(timeout.count()) + " ms";
  }
  return result.get();
}

std::filesystem::path Instance::state_dir() {
  auto dir = state_root / spec.name;
  std::filesystem::create_directories(dir);
  return dir;
}

bool Instance::create(Runtime& runtime, LogSink& log, dk_error& error) {
  rt = &runtime;
  strand = std::make_unique<Strand>(runtime.pool, spec.name);
  bus_view = std::make_unique<InstanceBus>(runtime.bus, *strand);
  clock_view = std::make_unique<InstanceClock>(*runtime.clock);
  logger = std::make_unique<InstanceLogger>(log, spec.name);
  metrics_view = std::make_unique<InstanceMetrics>(runtime.metrics, spec.name);
  plugin = library->descriptor().create(static_cast<sdk::Context*>(this), &error);
  return plugin != nullptr;
}

void Instance::destroy() {
  if (plugin) {
    library->descriptor().destroy(plugin);
    plugin = nullptr;
  }
  if (bus_view) bus_view->close();
  if (clock_view) clock_view->close();
  if (strand) strand->close();
  strand.reset();
  bus_view.reset();
  clock_view.reset();
}

}  // namespace deskfarm::kernel
