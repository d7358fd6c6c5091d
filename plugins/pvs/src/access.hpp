#pragma once
// pvs: who may open which export on the streaming port — a device from its own address or subnets, the maintenance
// writer from the admin networks.
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <deskfarm/net/subnet.hpp>

namespace deskfarm::pvs {

/// The address rules of one pvs instance; every configured condition must hold.
class AccessPolicy {
 public:
  AccessPolicy() = default;
  /// `device_ip`: MAC -> the one address it may come from; `device_subnets`: where any device may come from (empty =
  /// anywhere); `maintenance_from`: where VDISK@maintenance may be opened from.
  AccessPolicy(std::map<std::string, net::Subnet> device_ip, std::vector<net::Subnet> device_subnets,
               std::vector<net::Subnet> maintenance_from)
      : device_ip_(std::move(device_ip)), device_subnets_(std::move(device_subnets)),
        maintenance_from_(std::move(maintenance_from)) {}

  /// Why device `mac` may not be served to `peer`, or nullopt when it may.
  std::optional<std::string> device_denied(const std::string& mac, std::string_view peer) const;
  /// Why a maintenance writer may not connect from `peer`, or nullopt when it may.
  std::optional<std::string> maintenance_denied(std::string_view peer) const;
  /// True when a device without `ip` may come from any address (no device_subnets).
  bool devices_open_to_any() const { return device_subnets_.empty(); }

 private:
  std::map<std::string, net::Subnet> device_ip_;
  std::vector<net::Subnet> device_subnets_;
  std::vector<net::Subnet> maintenance_from_;
};

}  // namespace deskfarm::pvs
