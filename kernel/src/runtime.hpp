#pragma once
#include <chrono>
#include <memory>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "blocking_pool.hpp"
#include "bus.hpp"
#include "deskfarm/sdk/discovery.hpp"
#include "clock.hpp"
#include "executor.hpp"
#include "manifest.hpp"
#include "metrics.hpp"
#include "nats_transport.hpp"
#include "store.hpp"

namespace deskfarm::kernel {

/// A bus endpoint that is no plugin instance (the test kit, tools): handlers and replies run on its own strand.
struct BusClient {
  BusClient(Pool& pool, BusCore& core, std::string name) : strand(pool, std::move(name)), bus(core, strand) {}
  Strand strand;
  InstanceBus bus;
  /// Ends its subscriptions and pending requests and refuses further work (the deployment stops).
  void close() {
    bus.close();
    strand.close();
  }
};

/// Everything the instances of a deployment share while it runs: workers, clock, bus, metrics, store.
struct Runtime {
  explicit Runtime(const Manifest& m)
      : pool(m.workers),
        clock(m.clock == "virtual"
                  ? std::unique_ptr<sdk::Clock>(new VirtualClock(
                        pool, m.clock_start.value_or(std::chrono::time_point_cast<sdk::Duration>(std::chrono::system_clock::now()))))
                  : std::unique_ptr<sdk::Clock>(new RealClock)),
        bus(*clock, m.bus_block_timeout),
        store(m.data_store, m.data_store_replica),
        blocking(m.blocking_workers, m.blocking_queue) {}
  Pool pool;
  std::unique_ptr<sdk::Clock> clock;
  BusCore bus;
  /// The bus across processes (bus = "nats://…"), attached to `bus`; destroyed before it.
  std::unique_ptr<NatsTransport> nats;
  MetricsRegistry metrics;
  KernelStore store;
  BlockingPool blocking;
  /// Where operator requests (`deskfarm request`) enter the bus; their replies run here.
  BusClient admin{pool, bus, "admin"};
  /// Bus clients opened by Deployment::open_client; closed at teardown, destroyed with the runtime.
  std::mutex clients_mutex;
  std::vector<std::unique_ptr<BusClient>> clients;
  /// Discovery: what every running instance advertised; read from any executor.
  std::mutex directory_mutex;
  std::map<std::string, sdk::InstanceInfo> directory;
};

}  // namespace deskfarm::kernel
