#pragma once
// TFTP test helpers: raw UDP sockets on 127.0.0.1, packet builders, waiting on server stats. The generic ones
// (temp dirs, files, patterns, child processes, UDP sockets) are in tests/support: <deskfarm/testing/...>.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <poll.h>

#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/net.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "deskfarm/tftp/packet.hpp"
#include "deskfarm/tftp/server.hpp"

namespace tftp_test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace deskfarm::testing;

/// A UDP socket on 127.0.0.1 with an ephemeral port, talking to a server on 127.0.0.1.
class RawSocket : public UdpSocket {
 public:
  void send(std::uint16_t port, const std::vector<std::byte>& bytes) const { send_to("127.0.0.1", port, bytes); }
  struct Received {
    std::vector<std::byte> bytes;
    std::uint16_t from_port = 0;
  };
  /// Next datagram within `wait`, or nullopt.
  std::optional<Received> receive(std::chrono::milliseconds wait) const {
    auto d = UdpSocket::receive(wait);
    if (!d) return std::nullopt;
    return Received{std::move(d->bytes), d->port};
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

 private:
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
