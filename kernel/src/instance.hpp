#pragma once
// The per-instance implementation of sdk::Context: what one plugin instance sees of the kernel.
#include <filesystem>
#include <map>
#include <vector>
#include <memory>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "bus.hpp"
#include "deskfarm/sdk/context.hpp"
#include "deskfarm/sdk/plugin.hpp"
#include "executor.hpp"
#include "log.hpp"
#include "manifest.hpp"
#include "metrics.hpp"
#include "plugin_loader.hpp"
#include "runtime.hpp"

namespace deskfarm::kernel {

/// Wraps the deployment clock so every timer an instance sets is cancelled when it stops.
class InstanceClock final : public sdk::Clock {
 public:
  explicit InstanceClock(sdk::Clock& clock) : clock_(clock) {}
  sdk::TimePoint now() const override { return clock_.now(); }
  sdk::TimerId after(sdk::Duration delay, sdk::Executor& ex, std::function<void()> task) override;
  sdk::TimerId every(sdk::Duration period, sdk::Executor& ex, std::function<void()> task) override;
  bool cancel(sdk::TimerId id) override;
  bool is_virtual() const override { return clock_.is_virtual(); }
  /// Cancels every live timer and refuses new ones.
  void close();

 private:
  void forget(sdk::TimerId id);
  sdk::Clock& clock_;
  std::mutex mutex_;
  std::set<sdk::TimerId> ids_;
  bool closed_ = false;
};

/// One call posted onto a strand. The caller and the task share it: a caller that stops waiting
/// leaves behind nothing the task touches, because the task owns its function and writes only here.
class StrandCall {
 public:
  /// Posts `fn` to `strand`; the task owns `fn` and everything it captured.
  static std::shared_ptr<StrandCall> post(Strand& strand, std::function<void()> fn);
  /// Waits until the task has run, or `timeout`; true when it has run.
  bool wait(std::chrono::milliseconds timeout);
  /// After wait() returned true: empty when `fn` returned, else the exception's text.
  std::optional<std::string> error() const;

 private:
  void finish(std::optional<std::string> error);
  mutable std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::optional<std::string> error_;
};

/// Runs `fn` on `strand` and waits up to `timeout`; returns the exception text, if any, or a timeout
/// message naming `what`. After a timeout the task may still run: `fn` must own what it touches.
std::optional<std::string> call_on(Strand& strand, std::function<void()> fn, std::chrono::milliseconds timeout,
                                   const std::string& what);

/// One instance: its spec, its plugin library, its context and (once created) its plugin object.
struct Instance final : sdk::Context {
  InstanceSpec spec;
  std::shared_ptr<PluginLibrary> library;
  std::unique_ptr<sdk::Config> cfg;
  std::filesystem::path state_root;
  std::string deployment_name;
  std::string state = "validated";
  // Set while the deployment runs:
  Runtime* rt = nullptr;
  std::unique_ptr<Strand> strand;
  std::unique_ptr<InstanceBus> bus_view;
  std::unique_ptr<InstanceClock> clock_view;
  std::unique_ptr<InstanceLogger> logger;
  std::unique_ptr<InstanceMetrics> metrics_view;
  std::shared_ptr<sdk::Lifeline> line;
  std::map<std::string, std::string> endpoints;  ///< advertised while starting; guarded by rt->directory_mutex
  void* plugin = nullptr;
  /// state_dir() created the directory (so a failed creation removes it again).
  bool created_state_dir = false;
  /// A plugin call never returned, so the plugin, this context and its library stay alive for good.
  bool leaked = false;

  const std::string& name() const override { return spec.name; }
  const std::string& deployment() const override { return deployment_name; }
  const sdk::Config& config() const override { return *cfg; }
  sdk::Bus& bus() override { return *bus_view; }
  sdk::Clock& clock() override { return *clock_view; }
  sdk::Executor& executor() override { return *strand; }
  sdk::Logger& log() override { return *logger; }
  sdk::Metrics& metrics() override { return *metrics_view; }
  sdk::Store& store() override { return rt->store; }
  std::filesystem::path state_dir() override;
  std::shared_ptr<sdk::Lifeline> lifeline() override { return line; }
  void advertise(const std::string& endpoint, const std::string& address) override;
  std::vector<sdk::InstanceInfo> instances(const std::string& role) override;
  void submit_blocking(std::function<void(std::stop_token)> work) override;
  /// This instance as discovery shows it.
  sdk::InstanceInfo info(const std::string& state);

  /// Builds the context pieces on `runtime` and constructs the plugin; false (and `error` filled) when
  /// the plugin's create() refused.
  bool create(Runtime& runtime, LogSink& log, dk_error& error);
  sdk::Plugin& object() { return *static_cast<sdk::Plugin*>(plugin); }
  /// Ends the instance's subscriptions and timers, lets its strand finish what is queued or running
  /// (at most `drain_timeout`), then destroys the plugin (inside its own module) and the context
  /// pieces. A plugin whose call is still running then is not destroyed: `leaked` is set, false is
  /// returned, and the owner must never delete this object (nor the Runtime it uses), since deleting
  /// them under the plugin's running code would crash the process.
  bool destroy(std::chrono::milliseconds drain_timeout);
};

}  // namespace deskfarm::kernel
