#pragma once
// TFTP test helpers: raw UDP sockets on 127.0.0.1, packet builders, waiting on server stats. The generic
// ones (temp dirs, files, patterns, child processes) are in tests/support: <deskfarm/testing/...>.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "deskfarm/tftp/packet.hpp"
#include "deskfarm/tftp/server.hpp"

namespace tftp_test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace deskfarm::testing;

/// A UDP socket on 127.0.0.1 with an ephemeral port.
class RawSocket {
 public:
  RawSocket() : fd_(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) throw std::runtime_error("raw socket bind failed");
  }
  ~RawSocket() { ::close(fd_); }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  void send(std::uint16_t port, const std::vector<std::byte>& bytes) const {
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    to.sin_port = htons(port);
    ::sendto(fd_, bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
  }
  struct Received {
    std::vector<std::byte> bytes;
    std::uint16_t from_port = 0;
  };
  /// Next datagram within `wait`, or nullopt.
  std::optional<Received> receive(std::chrono::milliseconds wait) const {
    pollfd poll_fd{fd_, POLLIN, 0};
    if (::poll(&poll_fd, 1, static_cast<int>(wait.count())) <= 0) return std::nullopt;
    Received received;
    received.bytes.resize(65536);
    sockaddr_in from{};
    socklen_t length = sizeof from;
    const ssize_t got = ::recvfrom(fd_, received.bytes.data(), received.bytes.size(), 0, reinterpret_cast<sockaddr*>(&from), &length);
    if (got < 0) return std::nullopt;
    received.bytes.resize(static_cast<std::size_t>(got));
    received.from_port = ntohs(from.sin_port);
    return received;
  }
  /// Parsed next packet within `wait`.
  std::optional<std::pair<deskfarm::tftp::Packet, std::uint16_t>> receive_packet(std::chrono::milliseconds wait) const {
    auto received = receive(wait);
    if (!received) return std::nullopt;
    auto parsed = deskfarm::tftp::parse_packet(received->bytes);
    if (auto* packet = std::get_if<deskfarm::tftp::Packet>(&parsed)) {
      // Payload views point into `received`, which dies here: copy DATA into a stable owner.
      if (auto* data = std::get_if<deskfarm::tftp::Data>(packet)) {
        last_payload_.assign(data->payload.begin(), data->payload.end());
        data->payload = last_payload_;
      }
      return std::pair{*packet, received->from_port};
    }
    return std::nullopt;
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
  mutable std::vector<std::byte> last_payload_;
};

inline std::vector<std::byte> rrq(const std::string& file, std::vector<deskfarm::tftp::Option> options = {},
                                  const std::string& mode = "octet") {
  std::vector<std::byte> out;
  deskfarm::tftp::encode_request(out, deskfarm::tftp::Request{deskfarm::tftp::Opcode::rrq, file, mode, std::move(options)});
  return out;
}

inline std::vector<std::byte> ack(std::uint16_t block) {
  std::vector<std::byte> out;
  deskfarm::tftp::encode_ack(out, block);
  return out;
}

/// Waits (bounded) until `predicate(server.stats())` holds.
template <typename Predicate>
bool wait_for_stats(const deskfarm::tftp::Server& server, Predicate predicate, std::chrono::milliseconds limit = 5000ms) {
  return eventually([&] { return predicate(server.stats()); }, limit);
}

}  // namespace tftp_test
