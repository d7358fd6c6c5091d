#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "deskfarm/sdk/metrics.hpp"

namespace deskfarm::kernel {

/// All metrics of a deployment, rendered in the Prometheus text format (version 0.0.4).
class MetricsRegistry {
 public:
  sdk::Counter& counter(const std::string& name, const std::string& help, const sdk::Labels& labels);
  sdk::Gauge& gauge(const std::string& name, const std::string& help, const sdk::Labels& labels);
  /// Appends every metric; `extra` is more already-formatted exposition text (kernel counters).
  std::string render() const;

 private:
  struct Family {
    std::string help;
    bool is_counter;
    std::map<std::string, std::unique_ptr<sdk::Counter>> counters;  // by rendered label set
    std::map<std::string, std::unique_ptr<sdk::Gauge>> gauges;
  };
  Family& family(const std::string& name, const std::string& help, bool is_counter);
  mutable std::mutex mutex_;
  std::map<std::string, Family> families_;
};

/// `{a="x",b="y"}` with Prometheus escaping; empty for no labels.
std::string render_labels(const sdk::Labels& labels);

/// An instance's view: adds instance="<name>" to every metric.
class InstanceMetrics final : public sdk::Metrics {
 public:
  InstanceMetrics(MetricsRegistry& registry, std::string instance) : registry_(registry), instance_(std::move(instance)) {}
  sdk::Counter& counter(const std::string& name, const std::string& help, const sdk::Labels& labels) override;
  sdk::Gauge& gauge(const std::string& name, const std::string& help, const sdk::Labels& labels) override;

 private:
  sdk::Labels with_instance(const sdk::Labels& labels) const;
  MetricsRegistry& registry_;
  std::string instance_;
};

}  // namespace deskfarm::kernel
