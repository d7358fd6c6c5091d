#include "access.hpp"

#include <algorithm>

namespace deskfarm::pvs {

namespace {

std::string joined(const std::vector<net::Subnet>& nets) {
  std::string out;
  for (const auto& n : nets) out += (out.empty() ? "" : ", ") + n.text();
  return out;
}

}  // namespace

std::optional<std::string> AccessPolicy::device_denied(const std::string& mac, std::string_view peer) const {
  const auto from = net::Subnet::address(peer);
  if (!from) return "pvs: device " + mac + " refused: the peer address '" + std::string(peer) + "' is not an IP address";
  if (auto ip = device_ip_.find(mac); ip != device_ip_.end() && !ip->second.contains(*from))
    return "pvs: device " + mac + " may only connect from " + ip->second.text() + " (devices[].ip), not from " +
           std::string(peer);
  if (!device_subnets_.empty() &&
      std::none_of(device_subnets_.begin(), device_subnets_.end(), [&](const net::Subnet& n) { return n.contains(*from); }))
    return "pvs: device " + mac + " may not connect from " + std::string(peer) + ": outside device_subnets (" +
           joined(device_subnets_) + ")";
  return std::nullopt;
}

std::optional<std::string> AccessPolicy::maintenance_denied(std::string_view peer) const {
  const auto from = net::Subnet::address(peer);
  if (from && std::any_of(maintenance_from_.begin(), maintenance_from_.end(),
                          [&](const net::Subnet& n) { return n.contains(*from); }))
    return std::nullopt;
  return "pvs: maintenance access is not allowed from " + std::string(peer) + " (maintenance_from: " +
         (maintenance_from_.empty() ? std::string("none") : joined(maintenance_from_)) + ")";
}

}  // namespace deskfarm::pvs
