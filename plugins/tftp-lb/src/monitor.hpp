#pragma once
// The monitors' probes: one blocking call per probe, run on the deployment's blocking pool.
#include <netinet/in.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

namespace deskfarm::tftp_lb {

struct ProbeResult {
  bool ok = false;
  std::string reason;  ///< "DATA 1 from port 40123 in 3 ms", "ICMP port unreachable", "no reply in 2000 ms"
};

/// NetScaler's udp-ecv: sends `payload` to `backend`; with `receive` set, a reply from the backend's address
/// (any port) must contain it; without it, `tftp_reply` decides: true (the default RRQ) wants DATA or OACK,
/// false takes any reply or silence (only an ICMP port-unreachable fails, as NetScaler's own). After a TFTP
/// reply it sends ERROR 0 to the port that answered, so the backend stops retransmitting.
struct EcvProbe {
  sockaddr_in backend{};
  std::vector<std::byte> payload;
  std::string receive;
  bool tftp_reply = true;
  std::chrono::milliseconds timeout{2000};
};
ProbeResult probe_udp_ecv(const EcvProbe& probe, std::stop_token stop);

/// The strict monitor: downloads `file` whole and checks its size and SHA-256 (lower-case hex) when given.
struct TftpProbe {
  sockaddr_in backend{};
  std::string file;
  std::optional<std::uint64_t> size;
  std::string sha256;
  std::chrono::milliseconds timeout{2000};
};
ProbeResult probe_tftp(const TftpProbe& probe);

/// Lower-case hex SHA-256 of `bytes`.
std::string sha256_hex(const std::vector<std::byte>& bytes);

}  // namespace deskfarm::tftp_lb
