#include "log.hpp"

#include "redact.hpp"

#include <cstdio>
#include <ctime>
#include <optional>

namespace deskfarm::kernel {

namespace {
const char* level_name(sdk::LogLevel level) {
  switch (level) {
    case sdk::LogLevel::debug: return "debug";
    case sdk::LogLevel::info: return "info ";
    case sdk::LogLevel::warning: return "warn ";
    case sdk::LogLevel::error: return "error";
  }
  return "?";
}
}  // namespace

void append_escaped(std::string& line, std::string_view text) {
  static constexpr char hex[] = "0123456789abcdef";
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u != 0x7f) {
      line += c;
    } else if (c == '\n') {
      line += "\\n";
    } else if (c == '\r') {
      line += "\\r";
    } else if (c == '\t') {
      line += "\\t";
    } else {
      line += "\\x";
      line += hex[u >> 4];
      line += hex[u & 0xf];
    }
  }
}

std::optional<sdk::LogLevel> parse_log_level(std::string_view text) {
  if (text == "debug") return sdk::LogLevel::debug;
  if (text == "info") return sdk::LogLevel::info;
  if (text == "warning" || text == "warn") return sdk::LogLevel::warning;
  if (text == "error") return sdk::LogLevel::error;
  return std::nullopt;
}

void LogSink::write(sdk::LogLevel level, std::string_view subject, std::string_view message) {
  if (!enabled(level)) return;
  const auto now = clock_ ? clock_->now()
                          : std::chrono::time_point_cast<sdk::Duration>(std::chrono::system_clock::now());
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[64];
  std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
  std::string line;
  line.reserve(64 + subject.size() + message.size());
  // One event, one line: a newline in a protocol string (an NBD export name) must not forge another.
  line.append(stamp).append(" ").append(level_name(level)).append(" ");
  append_escaped(line, subject);
  line.append(": ");
  if (secrets_.empty()) append_escaped(line, message);
  else append_escaped(line, redact_secrets(std::string(message), secrets_));
  std::lock_guard lock(mutex_);
  if (capture_) {
    capture_(line);
  } else {
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stderr);
  }
}

}  // namespace deskfarm::kernel
