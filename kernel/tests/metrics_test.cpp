#include <catch2/catch.hpp>

#include "metrics.hpp"

using namespace deskfarm;
using namespace deskfarm::kernel;

TEST_CASE("a declared labelled family is listed with HELP and TYPE before its first sample") {
  MetricsRegistry registry;
  registry.declare_counter("pvs_device_reads_total", "Reads, by device");
  registry.declare_gauge("pvs_device_cache_bytes", "Write cache bytes, by device");
  CHECK(registry.render() ==
        "# HELP pvs_device_cache_bytes Write cache bytes, by device\n# TYPE pvs_device_cache_bytes gauge\n"
        "# HELP pvs_device_reads_total Reads, by device\n# TYPE pvs_device_reads_total counter\n");
  registry.counter("pvs_device_reads_total", "Reads, by device", {{"device", "d1"}}).inc(3);
  CHECK(registry.render().find("# TYPE pvs_device_reads_total counter\npvs_device_reads_total{device=\"d1\"} 3\n") !=
        std::string::npos);
  CHECK_THROWS_WITH(registry.declare_gauge("pvs_device_reads_total", "x"),
                    "metrics: 'pvs_device_reads_total' is already registered as a counter");
}

TEST_CASE("an instance's declared family is listed too") {
  MetricsRegistry registry;
  InstanceMetrics metrics(registry, "pvs-1");
  metrics.declare_counter("pvs_refused_total", "Connections refused, by reason");
  CHECK(registry.render() == "# HELP pvs_refused_total Connections refused, by reason\n# TYPE pvs_refused_total counter\n");
}
