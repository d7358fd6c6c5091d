#pragma once
#include <chrono>
#include <memory>

#include "bus.hpp"
#include "clock.hpp"
#include "executor.hpp"
#include "manifest.hpp"
#include "metrics.hpp"
#include "store.hpp"

namespace deskfarm::kernel {

/// Everything the instances of a deployment share while it runs: workers, clock, bus, metrics, store.
struct Runtime {
  explicit Runtime(const Manifest& m)
      : pool(m.workers),
        clock(m.clock == "virtual"
                  ? std::unique_ptr<sdk::Clock>(new VirtualClock(
                        pool, m.clock_start.value_or(std::chrono::time_point_cast<sdk::Duration>(std::chrono::system_clock::now()))))
                  : std::unique_ptr<sdk::Clock>(new RealClock)),
        bus(*clock, m.bus_block_timeout),
        store(m.data_store) {}
  Pool pool;
  std::unique_ptr<sdk::Clock> clock;
  BusCore bus;
  MetricsRegistry metrics;
  KernelStore store;
};

}  // namespace deskfarm::kernel
