#pragma once
// The tftp role's contract: TFTP services that serve the boot files (pvs instances, foreign servers) and the
// health that a load balancer's monitors report about them.
#include <string>

#include <deskfarm/sdk/service.hpp>

namespace deskfarm::interfaces::tftp {

using sdk::field;

/// A TFTP service a load balancer may send clients to. pvs instances advertise theirs to discovery under the
/// endpoint name "tftp"; foreign servers are listed by address in the balancer's manifest.
struct Backend {
  static constexpr std::string_view type_name = "deskfarm.tftp.Backend";
  static constexpr std::uint32_t type_version = 1;
  std::string name;      ///< instance name, or the address for a foreign server
  std::string address;   ///< "host:port"
  std::string boot_file; ///< what a monitor downloads ("ARDBP32.BIN")
  static constexpr auto fields() {
    return std::tuple{field("name", &Backend::name), field("address", &Backend::address),
                      field("boot_file", &Backend::boot_file)};
  }
};

/// Service states, as a NetScaler shows them.
inline constexpr const char* kUp = "UP";
inline constexpr const char* kDown = "DOWN";
inline constexpr const char* kDraining = "DRAINING";

/// Published on every state change of a backend, with the monitor's reason.
struct BackendHealth {
  static constexpr std::string_view type_name = "deskfarm.tftp.BackendHealth";
  static constexpr std::uint32_t type_version = 1;
  Backend backend;
  std::string state;
  std::string previous;
  std::string monitor;  ///< "udp-ecv" | "tftp"
  std::string reason;   ///< "no reply in 2 s, 3rd try", "size 1024 != 2048"
  std::string balancer; ///< the balancer instance
  static constexpr auto fields() {
    return std::tuple{field("backend", &BackendHealth::backend), field("state", &BackendHealth::state),
                      field("previous", &BackendHealth::previous), field("monitor", &BackendHealth::monitor),
                      field("reason", &BackendHealth::reason), field("balancer", &BackendHealth::balancer)};
  }
};

/// tftp-lb.<instance>.backend.<name>.health
inline std::string health_subject(std::string_view balancer, std::string_view backend) {
  return "tftp-lb." + std::string(balancer) + ".backend." + std::string(backend) + ".health";
}

}  // namespace deskfarm::interfaces::tftp
