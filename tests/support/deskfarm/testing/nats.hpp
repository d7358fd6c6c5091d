#pragma once
// A real nats-server for tests of the bus across processes (and its benchmark): started on a free loopback
// port, restarted on the same port, stopped by its PID.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <deskfarm/testing/net.hpp>
#include <deskfarm/testing/process.hpp>

namespace deskfarm::testing {

/// The nats-server program: $DESKFARM_NATS_SERVER when set, else nats-server on PATH, else Debian's
/// /usr/sbin/nats-server (off a non-root user's PATH); empty when there is none.
inline std::string nats_server_program() {
  if (const char* p = std::getenv("DESKFARM_NATS_SERVER"); p != nullptr && *p != '\0') {
    return std::filesystem::exists(p) ? std::string(p) : std::string();
  }
  if (have_program("nats-server")) return "nats-server";
  return std::filesystem::exists("/usr/sbin/nats-server") ? "/usr/sbin/nats-server" : "";
}

/// True when something accepts TCP connections on 127.0.0.1:`port` now.
inline bool port_accepts(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

/// A nats-server on 127.0.0.1 and a free port, with `extra` arguments (TLS, auth); its output goes to `log`.
class NatsServer {
 public:
  NatsServer(std::string program, std::filesystem::path log, std::vector<std::string> extra = {})
      : program_(std::move(program)), log_(std::move(log)), extra_(std::move(extra)), port_(free_port()) {
    start();
  }
  /// Starts it again on the same port (after stop()); waits until it accepts connections (at most 10 s).
  void start() {
    std::vector<std::string> argv{program_, "-a", "127.0.0.1", "-p", std::to_string(port_)};
    argv.insert(argv.end(), extra_.begin(), extra_.end());
    child_ = std::make_unique<ChildProcess>(argv, log_);
    const bool up = eventually([&] { return port_accepts(port_) || !child_->running(); }, std::chrono::seconds(10));
    if (!up || !child_->running())
      throw std::runtime_error("nats-server on 127.0.0.1:" + std::to_string(port_) + " did not start; see " + log_.string());
  }
  /// Stops it by its PID (SIGTERM, then SIGKILL after 5 s) and waits until the port is closed.
  void stop() {
    if (!child_) return;
    child_->terminate(std::chrono::seconds(5));
    child_.reset();
    eventually([&] { return !port_accepts(port_); }, std::chrono::seconds(5));
  }
  std::uint16_t port() const { return port_; }
  /// nats://127.0.0.1:PORT
  std::string url(const std::string& scheme = "nats") const { return scheme + "://127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return child_ ? child_->pid() : -1; }

 private:
  std::string program_;
  std::filesystem::path log_;
  std::vector<std::string> extra_;
  std::uint16_t port_;
  std::unique_ptr<ChildProcess> child_;
};

}  // namespace deskfarm::testing
