#include "metrics.hpp"

#include <charconv>
#include <cstdio>
#include <stdexcept>

namespace deskfarm::kernel {

namespace {
bool valid_metric_name(const std::string& name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != ':') return false;
  }
  return true;
}
std::string format_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}
/// A bucket bound or a sum as people write it ("0.0025", "10"): the shortest text that reads back as the same double.
std::string shortest(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}
}  // namespace

std::string render_labels(const sdk::Labels& labels) {
  if (labels.empty()) return {};
  std::string out = "{";
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (i) out += ',';
    out += labels[i].first;
    out += "=\"";
    for (char c : labels[i].second) {
      if (c == '\\') out += "\\\\";
      else if (c == '"') out += "\\\"";
      else if (c == '\n') out += "\\n";
      else out += c;
    }
    out += '"';
  }
  return out + "}";
}

const char* MetricsRegistry::kind_name(Kind kind) {
  switch (kind) {
    case Kind::counter: return "counter";
    case Kind::gauge: return "gauge";
    case Kind::histogram: return "histogram";
  }
  return "histogram";  // not reached: the switch names every Kind (-Wswitch says when one is added)
}

MetricsRegistry::Family& MetricsRegistry::family(const std::string& name, const std::string& help, Kind kind) {
  if (!valid_metric_name(name)) throw std::invalid_argument("metrics: '" + name + "' is not a valid Prometheus metric name");
  auto [it, inserted] = families_.try_emplace(name);
  if (inserted) {
    it->second.help = help;
    it->second.kind = kind;
  } else if (it->second.kind != kind) {
    throw std::invalid_argument("metrics: '" + name + "' is already registered as a " + kind_name(it->second.kind));
  }
  return it->second;
}

MetricsRegistry::Family& MetricsRegistry::histogram_family(const std::string& name, const std::string& help,
                                                           const std::vector<double>& bounds) {
  const bool fresh = !families_.contains(name);
  if (fresh) (void)sdk::Histogram(bounds);  // throws for bad bounds before anything is registered
  auto& f = family(name, help, Kind::histogram);
  if (fresh) f.bounds = bounds;
  else if (f.bounds != bounds)
    throw std::invalid_argument("metrics: histogram '" + name + "' is registered with other bucket bounds; ask with the same ones");
  return f;
}

sdk::Histogram& MetricsRegistry::histogram(const std::string& name, const std::string& help, const std::vector<double>& bounds,
                                           const sdk::Labels& labels) {
  for (const auto& [key, value] : labels)
    if (key == "le") throw std::invalid_argument("metrics: histogram '" + name + "' cannot have a label 'le' (its buckets use it)");
  std::lock_guard lock(mutex_);
  auto& series = histogram_family(name, help, bounds).histograms[render_labels(labels)];
  if (!series.histogram) {
    series.labels = labels;
    series.histogram = std::make_unique<sdk::Histogram>(bounds);
  }
  return *series.histogram;
}

void MetricsRegistry::declare_histogram(const std::string& name, const std::string& help, const std::vector<double>& bounds) {
  std::lock_guard lock(mutex_);
  histogram_family(name, help, bounds);
}

sdk::Counter& MetricsRegistry::counter(const std::string& name, const std::string& help, const sdk::Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, help, Kind::counter).counters[render_labels(labels)];
  if (!slot) slot = std::make_unique<sdk::Counter>();
  return *slot;
}

sdk::Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help, const sdk::Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, help, Kind::gauge).gauges[render_labels(labels)];
  if (!slot) slot = std::make_unique<sdk::Gauge>();
  return *slot;
}

void MetricsRegistry::declare_counter(const std::string& name, const std::string& help) {
  std::lock_guard lock(mutex_);
  family(name, help, Kind::counter);
}

void MetricsRegistry::declare_gauge(const std::string& name, const std::string& help) {
  std::lock_guard lock(mutex_);
  family(name, help, Kind::gauge);
}

std::string MetricsRegistry::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + kind_name(f.kind) + "\n";
    for (const auto& [labels, c] : f.counters) out += name + labels + " " + std::to_string(c->value()) + "\n";
    for (const auto& [labels, g] : f.gauges) out += name + labels + " " + format_number(g->value()) + "\n";
    for (const auto& [labels, s] : f.histograms) {
      // Read each bucket once: the cumulative counts and _count agree even while observations go on.
      auto with_le = s.labels;
      with_le.emplace_back("le", "");
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i <= f.bounds.size(); ++i) {
        cumulative += s.histogram->bucket(i);
        with_le.back().second = i < f.bounds.size() ? shortest(f.bounds[i]) : "+Inf";
        out += name + "_bucket" + render_labels(with_le) + " " + std::to_string(cumulative) + "\n";
      }
      out += name + "_sum" + labels + " " + shortest(s.histogram->sum()) + "\n";
      out += name + "_count" + labels + " " + std::to_string(cumulative) + "\n";
    }
  }
  return out;
}

sdk::Labels InstanceMetrics::with_instance(const sdk::Labels& labels) const {
  sdk::Labels out{{"instance", instance_}};
  out.insert(out.end(), labels.begin(), labels.end());
  return out;
}

sdk::Counter& InstanceMetrics::counter(const std::string& name, const std::string& help, const sdk::Labels& labels) {
  return registry_.counter(name, help, with_instance(labels));
}

sdk::Histogram& InstanceMetrics::histogram(const std::string& name, const std::string& help, const std::vector<double>& bounds,
                                           const sdk::Labels& labels) {
  return registry_.histogram(name, help, bounds, with_instance(labels));
}

sdk::Gauge& InstanceMetrics::gauge(const std::string& name, const std::string& help, const sdk::Labels& labels) {
  return registry_.gauge(name, help, with_instance(labels));
}

}  // namespace deskfarm::kernel
