#pragma once
// Loopback sockets for tests: a free port to hand a peer program, and a raw UDP socket for protocol
// conversations (TFTP) that can be bound to any 127.x.y.z, so a test can tell addresses apart.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace deskfarm::testing {

/// The MAC of simulated device `i` (52:54:00:xx:xx:xx, up to 2^24 devices): storms and tests name devices by it.
inline std::string mac_of(int i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "52:54:00:%02x:%02x:%02x", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
  return buf;
}

/// A port free at this moment on `host` for `type` (SOCK_STREAM or SOCK_DGRAM), for a peer that must be told one.
inline std::uint16_t free_port(int type = SOCK_STREAM, const char* host = "127.0.0.1") {
  const int fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  ::inet_pton(AF_INET, host, &a.sin_addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error(std::string("free_port: cannot bind ") + host + ":0");
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

/// A UDP socket bound to `host` with an ephemeral port; closed with the object.
class UdpSocket {
 public:
  explicit UdpSocket(const char* host = "127.0.0.1") : fd_(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in local{};
    local.sin_family = AF_INET;
    ::inet_pton(AF_INET, host, &local.sin_addr);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) {
      if (fd_ >= 0) ::close(fd_);
      throw std::runtime_error(std::string("UdpSocket: cannot bind ") + host + ":0");
    }
  }
  ~UdpSocket() { ::close(fd_); }
  UdpSocket(const UdpSocket&) = delete;
  UdpSocket& operator=(const UdpSocket&) = delete;

  void send_to(const std::string& host, std::uint16_t port, const std::vector<std::byte>& bytes) const {
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    ::inet_pton(AF_INET, host.c_str(), &to.sin_addr);
    ::sendto(fd_, bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
  }
  struct Datagram {
    std::vector<std::byte> bytes;
    std::string host;
    std::uint16_t port = 0;
  };
  /// The next datagram within `wait`, or nullopt.
  std::optional<Datagram> receive(std::chrono::milliseconds wait) const {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return std::nullopt;
    Datagram d;
    d.bytes.resize(65536);
    sockaddr_in from{};
    socklen_t len = sizeof from;
    const ssize_t got = ::recvfrom(fd_, d.bytes.data(), d.bytes.size(), 0, reinterpret_cast<sockaddr*>(&from), &len);
    if (got < 0) return std::nullopt;
    d.bytes.resize(static_cast<std::size_t>(got));
    char host[INET_ADDRSTRLEN] = "?";
    ::inet_ntop(AF_INET, &from.sin_addr, host, sizeof host);
    d.host = host;
    d.port = ntohs(from.sin_port);
    return d;
  }
  int fd() const { return fd_; }
  /// The ephemeral port it is bound to.
  std::uint16_t port() const {
    sockaddr_in local{};
    socklen_t length = sizeof local;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&local), &length);
    return ntohs(local.sin_port);
  }

 private:
  int fd_;
};

}  // namespace deskfarm::testing
