#pragma once
#include <string>
#include <string_view>

#include "deskfarm/sdk/api.hpp"

namespace deskfarm::sdk {

enum class LogLevel { debug, info, warning, error };

/// One line per event. The kernel prefixes time, level and the instance name, so a message never repeats
/// them: `log().warning("backend pvs-2 DOWN (udp-ecv: no reply in 2 s)")` in instance tftp-lb is written as
/// "2026-01-05T08:00:00.000Z warn  tftp-lb: backend pvs-2 DOWN (udp-ecv: no reply in 2 s)". Control
/// characters in a message (a client-chosen name with a newline) are escaped, so one call is one line.
class DESKFARM_SDK_API Logger {
 public:
  virtual ~Logger();
  virtual void write(LogLevel level, std::string_view message) = 0;
  virtual bool enabled(LogLevel level) const = 0;
  void debug(std::string_view m) { if (enabled(LogLevel::debug)) write(LogLevel::debug, m); }
  void info(std::string_view m) { write(LogLevel::info, m); }
  void warning(std::string_view m) { write(LogLevel::warning, m); }
  void error(std::string_view m) { write(LogLevel::error, m); }
};

}  // namespace deskfarm::sdk
