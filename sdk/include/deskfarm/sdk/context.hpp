#pragma once
#include <filesystem>
#include <functional>
#include <string>

#include "deskfarm/sdk/api.hpp"
#include "deskfarm/sdk/bus.hpp"
#include "deskfarm/sdk/clock.hpp"
#include "deskfarm/sdk/config.hpp"
#include "deskfarm/sdk/executor.hpp"
#include "deskfarm/sdk/log.hpp"
#include "deskfarm/sdk/metrics.hpp"
#include "deskfarm/sdk/store.hpp"

namespace deskfarm::sdk {

/// Everything the kernel gives one plugin instance. Valid from the plugin's constructor until its
/// destructor returns. Bus handlers, timers and the Plugin lifecycle calls all run on executor().
class DESKFARM_SDK_API Context {
 public:
  virtual ~Context();
  /// The instance name from the manifest ("pvs-1").
  virtual const std::string& name() const = 0;
  /// The deployment name.
  virtual const std::string& deployment() const = 0;
  virtual const Config& config() const = 0;
  virtual Bus& bus() = 0;
  virtual Clock& clock() = 0;
  virtual Executor& executor() = 0;
  virtual Logger& log() = 0;
  virtual Metrics& metrics() = 0;
  virtual Store& store() = 0;
  /// A directory this instance owns for its files (created on first call).
  virtual std::filesystem::path state_dir() = 0;

  /// Runs `task` on this instance's executor after `delay` (deployment time); cancelled at stop.
  TimerId after(Duration delay, std::function<void()> task) { return clock().after(delay, executor(), std::move(task)); }
  /// Runs `task` on this instance's executor every `period`; cancelled at stop.
  TimerId every(Duration period, std::function<void()> task) { return clock().every(period, executor(), std::move(task)); }
};

}  // namespace deskfarm::sdk
