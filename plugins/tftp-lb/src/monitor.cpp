#include "monitor.hpp"

#include <netinet/ip.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>
#include <variant>

#include <Poco/SHA2Engine.h>

#include <deskfarm/tftp/client.hpp>
#include <deskfarm/tftp/packet.hpp>

#include "balancing.hpp"

namespace deskfarm::tftp_lb {

namespace {
using Clock = std::chrono::steady_clock;

struct Socket {
  int fd = -1;
  ~Socket() {
    if (fd >= 0) ::close(fd);
  }
};

std::string ms_since(Clock::time_point start) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count()) + " ms";
}
}  // namespace

ProbeResult probe_udp_ecv(const EcvProbe& probe, std::stop_token stop) {
  Socket s;
  s.fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s.fd < 0) return {false, std::string("cannot open a probe socket: ") + std::strerror(errno)};
  // The answer comes from a new port, so the socket cannot be connect()ed to the backend; IP_RECVERR makes
  // Linux report an ICMP port-unreachable on this unconnected socket too (recvfrom fails with ECONNREFUSED).
  const int on = 1;
  ::setsockopt(s.fd, IPPROTO_IP, IP_RECVERR, &on, sizeof on);
  const auto start = Clock::now();
  if (::sendto(s.fd, probe.payload.data(), probe.payload.size(), 0, reinterpret_cast<const sockaddr*>(&probe.backend),
               sizeof probe.backend) < 0)
    return {false, std::string("send failed: ") + std::strerror(errno)};
  const auto deadline = start + probe.timeout;
  std::vector<std::byte> buffer(65536);
  for (int round = 0; round < 10000 && !stop.stop_requested(); ++round) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) break;
    pollfd p{s.fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<long>(left, 100))) <= 0) continue;
    sockaddr_in from{};
    socklen_t len = sizeof from;
    const ssize_t n = ::recvfrom(s.fd, buffer.data(), buffer.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &len);
    if (n < 0) {
      if (errno == ECONNREFUSED) return {false, "ICMP port unreachable from " + to_string(probe.backend)};
      if (errno == EAGAIN || errno == EINTR) continue;
      // Other ICMP errors (host or net unreachable) also arrive here through IP_RECVERR.
      return {false, std::string("probe failed: ") + std::strerror(errno)};
    }
    if (from.sin_addr.s_addr != probe.backend.sin_addr.s_addr) continue;  // not the backend: keep waiting
    const std::span<const std::byte> reply(buffer.data(), static_cast<std::size_t>(n));
    const auto parsed = tftp::parse_packet(reply);
    const auto* packet = std::get_if<tftp::Packet>(&parsed);
    const bool transfer = packet && (std::holds_alternative<tftp::Data>(*packet) || std::holds_alternative<tftp::Oack>(*packet));
    if (transfer) {
      // The backend started a transfer for us: end it, or it retransmits until its own timeout.
      std::vector<std::byte> error;
      tftp::encode_error(error, tftp::ErrorCode::not_defined, "health check done");
      ::sendto(s.fd, error.data(), error.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
    }
    const std::string what = !packet ? std::to_string(n) + "-byte reply"
                                     : tftp::opcode_name(static_cast<std::uint16_t>(
                                           (std::to_integer<unsigned>(reply[0]) << 8) | std::to_integer<unsigned>(reply[1])));
    const std::string where = what + " from port " + std::to_string(ntohs(from.sin_port)) + " in " + ms_since(start);
    if (!probe.receive.empty()) {
      const std::string_view text(reinterpret_cast<const char*>(reply.data()), reply.size());
      if (text.find(probe.receive) != std::string_view::npos) return {true, where + " matched the receive string"};
      return {false, where + " lacks the receive string"};
    }
    if (!probe.tftp_reply) return {true, where};
    if (transfer) return {true, where};
    if (packet)
      if (const auto* e = std::get_if<tftp::Error>(packet))
        return {false, "ERROR " + std::to_string(static_cast<int>(e->code)) + " \"" + e->message + "\" from port " +
                           std::to_string(ntohs(from.sin_port))};
    return {false, where + " is neither DATA nor OACK"};
  }
  if (stop.stop_requested()) return {false, "stopped"};
  // NetScaler: without a receive string only an ICMP error fails a custom probe; silence is success.
  if (probe.receive.empty() && !probe.tftp_reply) return {true, "no ICMP error in " + std::to_string(probe.timeout.count()) + " ms"};
  return {false, "no reply in " + std::to_string(probe.timeout.count()) + " ms"};
}

std::string sha256_hex(const std::vector<std::byte>& bytes) {
  Poco::SHA2Engine sha(Poco::SHA2Engine::SHA_256);
  sha.update(bytes.data(), static_cast<unsigned>(bytes.size()));
  return Poco::DigestEngine::digestToHex(sha.digest());
}

ProbeResult probe_tftp(const TftpProbe& probe) {
  tftp::ClientOptions options;
  options.deadline = probe.timeout;
  options.retransmit = std::min(probe.timeout / 4, std::chrono::milliseconds(500));
  options.blksize = 1468;
  const auto start = Clock::now();
  try {
    const auto r = tftp::Client(options).get(host_of(probe.backend), ntohs(probe.backend.sin_port), probe.file);
    if (probe.size && r.data.size() != *probe.size)
      return {false, probe.file + ": size " + std::to_string(r.data.size()) + " != " + std::to_string(*probe.size)};
    if (!probe.sha256.empty()) {
      const auto sum = sha256_hex(r.data);
      if (sum != probe.sha256) return {false, probe.file + ": SHA-256 " + sum + " != " + probe.sha256};
    }
    return {true, probe.file + ": " + std::to_string(r.data.size()) + " bytes" + (probe.sha256.empty() ? "" : ", SHA-256 matches") +
                      " in " + ms_since(start)};
  } catch (const std::exception& e) {
    return {false, probe.file + ": " + e.what()};
  }
}

}  // namespace deskfarm::tftp_lb
