#pragma once
#include <functional>

#include "deskfarm/sdk/api.hpp"

namespace deskfarm::sdk {

/// A serial executor: tasks posted to it run one at a time, in order, never concurrently.
/// Each plugin instance has its own, so a plugin's own state needs no locks.
class DESKFARM_SDK_API Executor {
 public:
  virtual ~Executor();
  /// Queues `task`; it runs later on this executor. Safe from any thread.
  virtual void post(std::function<void()> task) = 0;
  /// True when called from a task running on this executor.
  virtual bool running_here() const = 0;
};

}  // namespace deskfarm::sdk
