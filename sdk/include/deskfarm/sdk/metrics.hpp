#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "deskfarm/sdk/api.hpp"

namespace deskfarm::sdk {

/// Extra Prometheus labels; the kernel adds `instance` itself.
using Labels = std::vector<std::pair<std::string, std::string>>;

/// A monotonically increasing count. Lock-free; safe from any thread.
class Counter {
 public:
  void inc(std::uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

/// A value that goes up and down. Lock-free; safe from any thread.
class Gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void add(double d) {
    double cur = value_.load(std::memory_order_relaxed);
    while (!value_.compare_exchange_weak(cur, cur + d, std::memory_order_relaxed)) {
    }
  }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

/// The instance's metrics, served at the admin endpoint's /metrics in Prometheus text format.
/// Asking twice for the same name and labels returns the same object; references stay valid for the
/// life of the deployment.
class DESKFARM_SDK_API Metrics {
 public:
  virtual ~Metrics();
  virtual Counter& counter(const std::string& name, const std::string& help, const Labels& labels = {}) = 0;
  virtual Gauge& gauge(const std::string& name, const std::string& help, const Labels& labels = {}) = 0;
  /// Declares a labelled family before its first sample, so /metrics lists its HELP and TYPE from the start.
  virtual void declare_counter(const std::string& name, const std::string& help) = 0;
  virtual void declare_gauge(const std::string& name, const std::string& help) = 0;
};

}  // namespace deskfarm::sdk
