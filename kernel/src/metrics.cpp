#include "metrics.hpp"

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

MetricsRegistry::Family& MetricsRegistry::family(const std::string& name, const std::string& help, bool is_counter) {
  if (!valid_metric_name(name)) throw std::invalid_argument("metrics: '" + name + "' is not a valid Prometheus metric name");
  auto [it, inserted] = families_.try_emplace(name);
  if (inserted) {
    it->second.help = help;
    it->second.is_counter = is_counter;
  } else if (it->second.is_counter != is_counter) {
    throw std::invalid_argument("metrics: '" + name + "' is already registered as a " +
                                (it->second.is_counter ? "counter" : "gauge"));
  }
  return it->second;
}

sdk::Counter& MetricsRegistry::counter(const std::string& name, const std::string& help, const sdk::Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, help, true).counters[render_labels(labels)];
  if (!slot) slot = std::make_unique<sdk::Counter>();
  return *slot;
}

sdk::Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help, const sdk::Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, help, false).gauges[render_labels(labels)];
  if (!slot) slot = std::make_unique<sdk::Gauge>();
  return *slot;
}

void MetricsRegistry::declare_counter(const std::string& name, const std::string& help) {
  std::lock_guard lock(mutex_);
  family(name, help, true);
}

void MetricsRegistry::declare_gauge(const std::string& name, const std::string& help) {
  std::lock_guard lock(mutex_);
  family(name, help, false);
}

std::string MetricsRegistry::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + (f.is_counter ? " counter\n" : " gauge\n");
    for (const auto& [labels, c] : f.counters) out += name + labels + " " + std::to_string(c->value()) + "\n";
    for (const auto& [labels, g] : f.gauges) out += name + labels + " " + format_number(g->value()) + "\n";
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

sdk::Gauge& InstanceMetrics::gauge(const std::string& name, const std::string& help, const sdk::Labels& labels) {
  return registry_.gauge(name, help, with_instance(labels));
}

}  // namespace deskfarm::kernel
