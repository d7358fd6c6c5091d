#pragma once
// A QMP client: QEMU's machine protocol, one JSON object per line over a Unix socket (Poco for the socket and the
// JSON). Commands are answered in order; events arrive in between and are kept for events().
#include <chrono>
#include <deque>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <Poco/JSON/Object.h>
#include <Poco/Net/StreamSocket.h>

namespace deskfarm::qemu {

/// QEMU refused a command (its error class and description), or the connection failed.
class QmpError : public std::runtime_error {
 public:
  QmpError(std::string error_class, const std::string& message)
      : std::runtime_error(message), class_(std::move(error_class)) {}
  /// QEMU's error class ("GenericError", "DeviceNotFound"), or "connection" for a socket failure.
  const std::string& error_class() const { return class_; }

 private:
  std::string class_;
};

struct QmpEvent {
  std::string name;  ///< "SHUTDOWN", "RESET", "STOP", "RESUME", "POWERDOWN", ...
  Poco::JSON::Object::Ptr data;  ///< may be null
};

class Qmp {
 public:
  /// Connects to the socket QEMU listens on at `path` and leaves the capabilities negotiation; throws QmpError
  /// naming the path when it does not answer within `timeout`.
  Qmp(const std::filesystem::path& path, std::chrono::milliseconds timeout);
  /// Runs `command` (with `arguments`, or none) and returns its "return" value; throws QmpError with QEMU's
  /// class and description, or "connection" when no answer came within `timeout`.
  Poco::Dynamic::Var execute(const std::string& command, Poco::JSON::Object::Ptr arguments, std::chrono::milliseconds timeout);
  /// The events received so far and those arriving within `wait`; throws QmpError("connection") once QEMU closed
  /// the socket.
  std::vector<QmpEvent> events(std::chrono::milliseconds wait);

 private:
  /// The next message, or null when none arrived before `deadline`.
  Poco::JSON::Object::Ptr read(std::chrono::steady_clock::time_point deadline);
  void send(const Poco::JSON::Object& message);

  std::string path_;
  Poco::Net::StreamSocket socket_;
  std::string buffer_;
  std::deque<QmpEvent> events_;
};

}  // namespace deskfarm::qemu
