#pragma once
#include <functional>
#include <memory>
#include <mutex>

#include "deskfarm/sdk/api.hpp"

namespace deskfarm::sdk {

class Executor;

/// A plugin's own threads hold the instance's Lifeline to hand work back to its executor: post() runs the
/// task there while the instance lives and silently drops it once the instance has stopped, so a thread that
/// outlives stop() by a moment never touches a destroyed executor. Replaces hand-made `alive` flags.
class DESKFARM_SDK_API Lifeline {
 public:
  explicit Lifeline(Executor& executor) : executor_(&executor) {}
  /// Queues `task` on the instance's executor; false (and dropped) once the instance stopped.
  bool post(std::function<void()> task);
  bool alive() const;
  /// Called by the kernel when the instance stops; waits for a post() in progress.
  void end();

 private:
  mutable std::mutex mutex_;
  Executor* executor_;
};

}  // namespace deskfarm::sdk
