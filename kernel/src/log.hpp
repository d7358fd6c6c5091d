#pragma once
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "deskfarm/sdk/clock.hpp"
#include "deskfarm/sdk/log.hpp"

namespace deskfarm::kernel {

/// Where log lines go: stderr by default; tests capture them.
class LogSink {
 public:
  explicit LogSink(sdk::LogLevel threshold = sdk::LogLevel::info) : threshold_(threshold) {}
  void set_threshold(sdk::LogLevel level) { threshold_ = level; }
  void set_clock(const sdk::Clock* clock) { clock_ = clock; }
  void capture(std::function<void(const std::string&)> to) { capture_ = std::move(to); }
  /// Values masked as "***" in every line (data-store passwords, the admin token). Set before writers run.
  void set_secrets(std::vector<std::string> secrets) { secrets_ = std::move(secrets); }
  bool enabled(sdk::LogLevel level) const { return level >= threshold_; }
  /// Writes "TIME LEVEL subject: message" as one line: control characters are escaped (see append_escaped).
  void write(sdk::LogLevel level, std::string_view subject, std::string_view message);

 private:
  sdk::LogLevel threshold_;
  const sdk::Clock* clock_ = nullptr;
  std::function<void(const std::string&)> capture_;
  std::vector<std::string> secrets_;
  std::mutex mutex_;
};

/// Appends `text` with \n, \r, \t and every other byte below 0x20 or 0x7f escaped (\xNN for the rest).
void append_escaped(std::string& line, std::string_view text);

/// Parses "debug", "info", "warning", "error".
std::optional<sdk::LogLevel> parse_log_level(std::string_view text);

class InstanceLogger final : public sdk::Logger {
 public:
  InstanceLogger(LogSink& sink, std::string subject) : sink_(sink), subject_(std::move(subject)) {}
  void write(sdk::LogLevel level, std::string_view message) override { sink_.write(level, subject_, message); }
  bool enabled(sdk::LogLevel level) const override { return sink_.enabled(level); }

 private:
  LogSink& sink_;
  std::string subject_;
};

}  // namespace deskfarm::kernel
