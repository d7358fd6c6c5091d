#pragma once
// Reading Prometheus text (what /metrics and Harness::metrics_text() serve) in tests.
#include <string>

namespace deskfarm::testing {

/// The value of one series ("name{labels}", as the text spells it) in Prometheus text; `absent` when it is not there.
inline double metric_sample(const std::string& text, const std::string& series, double absent = -1) {
  const auto at = text.find("\n" + series + " ");
  if (at == std::string::npos) return absent;
  return std::stod(text.substr(at + series.size() + 2, text.find('\n', at + 1) - at - series.size() - 2));
}

}  // namespace deskfarm::testing
