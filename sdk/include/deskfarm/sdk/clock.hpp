#pragma once
#include <chrono>
#include <cstdint>
#include <functional>

#include "deskfarm/sdk/api.hpp"

namespace deskfarm::sdk {

class Executor;

using Duration = std::chrono::nanoseconds;
/// Deployment time: wall time with the real clock, simulated time with the virtual clock.
using TimePoint = std::chrono::time_point<std::chrono::system_clock, Duration>;
/// Identifies a scheduled timer; 0 is never a valid id.
using TimerId = std::uint64_t;

/// The deployment's clock. Every role timer goes through it, so `clock = "virtual"` runs hours of
/// heartbeats in milliseconds. Protocol timeouts on real sockets use the real clock instead.
class DESKFARM_SDK_API Clock {
 public:
  virtual ~Clock();
  /// The current deployment time.
  virtual TimePoint now() const = 0;
  /// Runs `task` on `executor` once `delay` has elapsed.
  virtual TimerId after(Duration delay, Executor& executor, std::function<void()> task) = 0;
  /// Runs `task` on `executor` every `period`, first after one period; the schedule does not drift.
  virtual TimerId every(Duration period, Executor& executor, std::function<void()> task) = 0;
  /// Cancels a timer; false when it already fired (one-shot) or never existed.
  virtual bool cancel(TimerId id) = 0;
  /// True for a virtual (simulated) clock.
  virtual bool is_virtual() const = 0;
};

}  // namespace deskfarm::sdk
