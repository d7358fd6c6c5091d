#pragma once
#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>

#include "deskfarm/sdk/clock.hpp"

namespace deskfarm::sdk {

/// A deployment time as ISO 8601 in UTC: "2026-11-30T12:00:00Z", or with `millis` "2026-11-30T12:00:00.123Z".
inline std::string iso8601(TimePoint t, bool millis = false) {
  const auto since_epoch = std::chrono::floor<std::chrono::milliseconds>(t.time_since_epoch());
  const auto secs = std::chrono::floor<std::chrono::seconds>(since_epoch);
  const std::time_t s = secs.count();
  std::tm tm{};
  gmtime_r(&s, &tm);
  char buf[40];
  const int n = std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                              tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
  if (millis) std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), ".%03dZ", static_cast<int>((since_epoch - secs).count()));
  else std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), "Z");
  return buf;
}

}  // namespace deskfarm::sdk
