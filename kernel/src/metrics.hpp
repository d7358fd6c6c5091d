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
  /// Registers a family without any sample yet (a labelled family whose label values come later): it
  /// is listed with HELP and TYPE from now on. Asking again for the same kind is harmless.
  void declare_counter(const std::string& name, const std::string& help);
  void declare_gauge(const std::string& name, const std::string& help);
  /// Every registered family with HELP and TYPE, and its samples.
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
  /// Declares a family this instance will fill later (see MetricsRegistry::declare_counter).
  void declare_counter(const std::string& name, const std::string& help) override { registry_.declare_counter(name, help); }
  void declare_gauge(const std::string& name, const std::string& help) override { registry_.declare_gauge(name, help); }

 private:
  sdk::Labels with_instance(const sdk::Labels& labels) const;
  MetricsRegistry& registry_;
  std::string instance_;
};

}  // namespace deskfarm::kernel
