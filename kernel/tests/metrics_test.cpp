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
  CHECK_THROWS_WITH(registry.counter("pvs_device_cache_bytes", "x", {}),
                    "metrics: 'pvs_device_cache_bytes' is already registered as a gauge");
}

TEST_CASE("an instance's declared family is listed too") {
  MetricsRegistry registry;
  InstanceMetrics metrics(registry, "pvs-1");
  metrics.declare_counter("pvs_refused_total", "Connections refused, by reason");
  CHECK(registry.render() == "# HELP pvs_refused_total Connections refused, by reason\n# TYPE pvs_refused_total counter\n");
}

TEST_CASE("a histogram renders cumulative _bucket series with le, then _sum and _count, with its labels") {
  MetricsRegistry registry;
  InstanceMetrics metrics(registry, "ddc-1");
  auto& h = metrics.histogram("ddc_broker_seconds", "Seconds to a brokering decision", {0.001, 0.0025, 0.1, 1}, {{"outcome", "connect"}});
  for (double v : {0.0005, 0.001, 0.002, 0.05, 0.5, 3.0}) h.observe(v);  // 0.001 falls in le="0.001": bounds include
  CHECK(h.count() == 6);
  CHECK(registry.render() ==
        "# HELP ddc_broker_seconds Seconds to a brokering decision\n# TYPE ddc_broker_seconds histogram\n"
        "ddc_broker_seconds_bucket{instance=\"ddc-1\",outcome=\"connect\",le=\"0.001\"} 2\n"
        "ddc_broker_seconds_bucket{instance=\"ddc-1\",outcome=\"connect\",le=\"0.0025\"} 3\n"
        "ddc_broker_seconds_bucket{instance=\"ddc-1\",outcome=\"connect\",le=\"0.1\"} 4\n"
        "ddc_broker_seconds_bucket{instance=\"ddc-1\",outcome=\"connect\",le=\"1\"} 5\n"
        "ddc_broker_seconds_bucket{instance=\"ddc-1\",outcome=\"connect\",le=\"+Inf\"} 6\n"
        "ddc_broker_seconds_sum{instance=\"ddc-1\",outcome=\"connect\"} 3.5535\n"
        "ddc_broker_seconds_count{instance=\"ddc-1\",outcome=\"connect\"} 6\n");
  // The same name and labels give the same series; another label set is another series of the family.
  CHECK(&metrics.histogram("ddc_broker_seconds", "", {0.001, 0.0025, 0.1, 1}, {{"outcome", "connect"}}) == &h);
  metrics.histogram("ddc_broker_seconds", "", {0.001, 0.0025, 0.1, 1}, {{"outcome", "refused"}});
  CHECK(registry.render().find("ddc_broker_seconds_count{instance=\"ddc-1\",outcome=\"refused\"} 0\n") != std::string::npos);
}

TEST_CASE("a histogram without labels, declared before its first sample, and bad bounds and clashes refused by name") {
  MetricsRegistry registry;
  registry.declare_histogram("admin_request_seconds", "Seconds to an answer", {0.5, 10});
  CHECK(registry.render() == "# HELP admin_request_seconds Seconds to an answer\n# TYPE admin_request_seconds histogram\n");
  registry.histogram("admin_request_seconds", "Seconds to an answer", {0.5, 10}, {}).observe(0.25);
  CHECK(registry.render().find("admin_request_seconds_bucket{le=\"0.5\"} 1\nadmin_request_seconds_bucket{le=\"10\"} 1\n"
                               "admin_request_seconds_bucket{le=\"+Inf\"} 1\nadmin_request_seconds_sum 0.25\nadmin_request_seconds_count 1\n") !=
        std::string::npos);
  CHECK_THROWS_WITH(registry.histogram("admin_request_seconds", "", {1, 10}, {}),
                    "metrics: histogram 'admin_request_seconds' is registered with other bucket bounds; ask with the same ones");
  CHECK_THROWS_WITH(registry.counter("admin_request_seconds", "", {}), "metrics: 'admin_request_seconds' is already registered as a histogram");
  CHECK_THROWS_WITH(registry.histogram("other_seconds", "", {1, 1}, {}), Catch::Contains("strictly ascending"));
  CHECK_THROWS_WITH(registry.histogram("other_seconds", "", {}, {}), Catch::Contains("at least one bucket bound"));
  CHECK_THROWS_WITH(registry.histogram("other_seconds", "", {1}, {{"le", "x"}}), Catch::Contains("cannot have a label 'le'"));
  CHECK(registry.render().find("other_seconds") == std::string::npos);  // nothing half-registered
}
