#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

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
  /// A histogram series; every series of `name` has the bounds the family was first given (others: invalid_argument).
  sdk::Histogram& histogram(const std::string& name, const std::string& help, const std::vector<double>& bounds,
                            const sdk::Labels& labels);
  void declare_histogram(const std::string& name, const std::string& help, const std::vector<double>& bounds);
  /// Every registered family with HELP and TYPE, and its samples.
  std::string render() const;

 private:
  enum class Kind { counter, gauge, histogram };
  /// The Prometheus TYPE word of `kind`.
  static const char* kind_name(Kind kind);
  struct HistogramSeries {
    sdk::Labels labels;  ///< kept to render `le` among them
    std::unique_ptr<sdk::Histogram> histogram;
  };
  struct Family {
    std::string help;
    Kind kind = Kind::counter;
    std::vector<double> bounds;  ///< histograms: every series' bucket bounds
    std::map<std::string, std::unique_ptr<sdk::Counter>> counters;  // by rendered label set
    std::map<std::string, std::unique_ptr<sdk::Gauge>> gauges;
    std::map<std::string, HistogramSeries> histograms;
  };
  Family& family(const std::string& name, const std::string& help, Kind kind);
  Family& histogram_family(const std::string& name, const std::string& help, const std::vector<double>& bounds);
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
  sdk::Histogram& histogram(const std::string& name, const std::string& help, const std::vector<double>& bounds,
                            const sdk::Labels& labels) override;
  void declare_histogram(const std::string& name, const std::string& help, const std::vector<double>& bounds) override {
    registry_.declare_histogram(name, help, bounds);
  }

 private:
  sdk::Labels with_instance(const sdk::Labels& labels) const;
  MetricsRegistry& registry_;
  std::string instance_;
};

}  // namespace deskfarm::kernel
