#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
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

/// Observations counted into buckets by upper bound (`le`), with their count and sum: a latency's or a size's
/// distribution. The bounds are fixed at construction (ascending, finite; +Inf is implied). Lock-free; safe from
/// any thread.
class Histogram {
 public:
  /// Throws std::invalid_argument for bounds that are empty, not strictly ascending, or not finite.
  explicit Histogram(std::vector<double> bounds)
      : bounds_(std::move(bounds)), buckets_(std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1)) {
    if (bounds_.empty()) throw std::invalid_argument("histogram: give at least one bucket bound");
    for (std::size_t i = 0; i < bounds_.size(); ++i)
      if (!std::isfinite(bounds_[i]) || (i && !(bounds_[i] > bounds_[i - 1])))
        throw std::invalid_argument("histogram: bucket bounds must be finite and strictly ascending");
  }
  /// Counts `v` in the first bucket whose bound is >= v (Prometheus' `le`), and adds it to the sum.
  void observe(double v) {
    const auto i = static_cast<std::size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    double cur = sum_.load(std::memory_order_relaxed);
    while (!sum_.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
    }
  }
  const std::vector<double>& bounds() const { return bounds_; }
  /// Observations in bucket `i` alone (not cumulative); i == bounds().size() is the one above every bound.
  std::uint64_t bucket(std::size_t i) const { return buckets_[i].load(std::memory_order_relaxed); }
  std::uint64_t count() const {
    std::uint64_t n = 0;
    for (std::size_t i = 0; i <= bounds_.size(); ++i) n += bucket(i);
    return n;
  }
  double sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;
  std::atomic<double> sum_{0};
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
  /// A histogram series (rendered as NAME_bucket{le=...}, NAME_sum, NAME_count). Every series of one name has the
  /// bounds it was first declared or asked with; other bounds throw std::invalid_argument naming the metric.
  virtual Histogram& histogram(const std::string& name, const std::string& help, const std::vector<double>& bounds,
                               const Labels& labels = {}) = 0;
  virtual void declare_histogram(const std::string& name, const std::string& help, const std::vector<double>& bounds) = 0;
};

}  // namespace deskfarm::sdk
