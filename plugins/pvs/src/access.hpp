#pragma once
// pvs: who may open which export on the streaming port — a device from its own address or subnets, the maintenance
// writer from the admin networks.
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace deskfarm::pvs {

/// An IPv4 or IPv6 network: "10.1.0.0/16", "fd00::/64"; a bare address is a /32 or /128. IPv4-mapped IPv6 peers
/// ("::ffff:10.1.2.3") match IPv4 networks.
class Subnet {
 public:
  /// nullopt when `text` is not an address or network (the prefix must fit the family; host bits must be zero).
  static std::optional<Subnet> parse(std::string_view text);
  /// A host address (what the NBD server reports as the peer); nullopt when it is not one.
  static std::optional<Subnet> address(std::string_view text);
  bool contains(const Subnet& host) const;
  const std::string& text() const { return text_; }

 private:
  int family_ = 0;  // AF_INET or AF_INET6
  int prefix_ = 0;
  std::array<std::uint8_t, 16> bytes_{};
  std::string text_;
};

/// True for 127.0.0.0/8 and ::1: a listener there is reachable from this machine only.
bool is_loopback(std::string_view host);

/// The address rules of one pvs instance; every configured condition must hold.
class AccessPolicy {
 public:
  AccessPolicy() = default;
  /// `device_ip`: MAC -> the one address it may come from; `device_subnets`: where any device may come from (empty =
  /// anywhere); `maintenance_from`: where VDISK@maintenance may be opened from.
  AccessPolicy(std::map<std::string, Subnet> device_ip, std::vector<Subnet> device_subnets,
               std::vector<Subnet> maintenance_from)
      : device_ip_(std::move(device_ip)), device_subnets_(std::move(device_subnets)),
        maintenance_from_(std::move(maintenance_from)) {}

  /// Why device `mac` may not be served to `peer`, or nullopt when it may.
  std::optional<std::string> device_denied(const std::string& mac, std::string_view peer) const;
  /// Why a maintenance writer may not connect from `peer`, or nullopt when it may.
  std::optional<std::string> maintenance_denied(std::string_view peer) const;
  /// True when a device without `ip` may come from any address (no device_subnets).
  bool devices_open_to_any() const { return device_subnets_.empty(); }

 private:
  std::map<std::string, Subnet> device_ip_;
  std::vector<Subnet> device_subnets_;
  std::vector<Subnet> maintenance_from_;
};

}  // namespace deskfarm::pvs
