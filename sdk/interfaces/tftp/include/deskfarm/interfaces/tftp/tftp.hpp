#pragma once
// The tftp role's contract: TFTP services that serve the boot files (pvs instances, foreign servers) and the
// health that a load balancer's monitors report about them.
#include <cstdint>
#include <string>
#include <vector>

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

/// tftp-lb.<instance>.backend.<name>.health (subscribe to tftp-lb.*.backend.*.health for every balancer)
inline std::string health_subject(std::string_view balancer, std::string_view backend) {
  return "tftp-lb." + std::string(balancer) + ".backend." + std::string(backend) + ".health";
}

// ---- a balancer's admin requests: tftp-lb.<instance>.admin.<action> ----

/// One backend as the balancer sees it now.
struct BackendView {
  static constexpr std::string_view type_name = "deskfarm.tftp.BackendView";
  static constexpr std::uint32_t type_version = 1;
  std::string name;
  std::string address;
  std::string source;  ///< "manifest" (a foreign server listed by address) | "discovery" (a pvs instance)
  std::string state;   ///< kUp | kDown | kDraining
  std::string reason;  ///< why it is in that state (the monitor's last verdict, or "drained by an operator")
  std::int64_t weight = 1;
  std::int64_t active_sessions = 0;
  std::int64_t sessions_total = 0;
  static constexpr auto fields() {
    return std::tuple{field("name", &BackendView::name), field("address", &BackendView::address),
                      field("source", &BackendView::source), field("state", &BackendView::state),
                      field("reason", &BackendView::reason), field("weight", &BackendView::weight),
                      field("active_sessions", &BackendView::active_sessions),
                      field("sessions_total", &BackendView::sessions_total)};
  }
};

/// Reply of `backend.list` and `backend.drain`: every backend of the balancer.
struct BackendList {
  static constexpr std::string_view type_name = "deskfarm.tftp.BackendList";
  static constexpr std::uint32_t type_version = 1;
  std::string balancer;
  std::vector<BackendView> backends;
  static constexpr auto fields() {
    return std::tuple{field("balancer", &BackendList::balancer), field("backends", &BackendList::backends)};
  }
};

/// `backend.drain`: no new sessions go to `backend` (its running transfers finish); `drain = false` puts it back in
/// service (its state is then the monitor's verdict).
struct Drain {
  static constexpr std::string_view type_name = "deskfarm.tftp.Drain";
  static constexpr std::uint32_t type_version = 1;
  std::string backend;
  bool drain = true;
  static constexpr auto fields() { return std::tuple{field("backend", &Drain::backend), field("drain", &Drain::drain)}; }
};

/// `dhcp.config`: the DHCP option 66/67 configuration that sends PXE clients to the balancer's virtual server.
struct DhcpRequest {
  static constexpr std::string_view type_name = "deskfarm.tftp.DhcpRequest";
  static constexpr std::uint32_t type_version = 1;
  std::string format = "dnsmasq";  ///< "isc" (ISC dhcpd) | "kea" (Kea DHCPv4 JSON) | "dnsmasq"
  static constexpr auto fields() { return std::tuple{field("format", &DhcpRequest::format)}; }
};

/// Reply of `dhcp.config`: the configuration text and the two option values it carries.
struct DhcpConfig {
  static constexpr std::string_view type_name = "deskfarm.tftp.DhcpConfig";
  static constexpr std::uint32_t type_version = 1;
  std::string format;
  std::string next_server;  ///< option 66: the virtual server's address
  std::string boot_file;    ///< option 67
  std::string text;
  static constexpr auto fields() {
    return std::tuple{field("format", &DhcpConfig::format), field("next_server", &DhcpConfig::next_server),
                      field("boot_file", &DhcpConfig::boot_file), field("text", &DhcpConfig::text)};
  }
};

/// Admin requests: tftp-lb.<instance>.admin.<action>: "backend.list" (Empty → BackendList), "backend.drain"
/// (Drain → BackendList), "dhcp.config" (DhcpRequest → DhcpConfig).
inline std::string admin_subject(std::string_view balancer, std::string_view action) {
  return "tftp-lb." + std::string(balancer) + ".admin." + std::string(action);
}

}  // namespace deskfarm::interfaces::tftp
