#include "access.hpp"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <charconv>

namespace deskfarm::pvs {

namespace {

std::string joined(const std::vector<Subnet>& nets) {
  std::string out;
  for (const auto& n : nets) out += (out.empty() ? "" : ", ") + n.text();
  return out;
}

}  // namespace

std::optional<Subnet> Subnet::parse(std::string_view text) {
  Subnet s;
  s.text_ = std::string(text);
  const auto slash = text.find('/');
  const std::string host(text.substr(0, slash));
  if (::inet_pton(AF_INET, host.c_str(), s.bytes_.data()) == 1) {
    s.family_ = AF_INET;
  } else if (::inet_pton(AF_INET6, host.c_str(), s.bytes_.data()) == 1) {
    s.family_ = AF_INET6;
    // An IPv4-mapped IPv6 address is the IPv4 host it maps: one form to compare.
    static constexpr std::uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::equal(kMapped, kMapped + 12, s.bytes_.begin()) && slash == std::string_view::npos) {
      std::copy(s.bytes_.begin() + 12, s.bytes_.end(), s.bytes_.begin());
      std::fill(s.bytes_.begin() + 4, s.bytes_.end(), 0);
      s.family_ = AF_INET;
    }
  } else {
    return std::nullopt;
  }
  const int bits = s.family_ == AF_INET ? 32 : 128;
  s.prefix_ = bits;
  if (slash != std::string_view::npos) {
    const auto p = text.substr(slash + 1);
    int prefix = -1;
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), prefix);
    if (p.empty() || ec != std::errc() || end != p.data() + p.size() || prefix < 0 || prefix > bits) return std::nullopt;
    s.prefix_ = prefix;
    for (int i = prefix; i < bits; ++i)  // "10.1.2.3/8" is a typo for a host or a network: refuse it
      if (s.bytes_[static_cast<std::size_t>(i / 8)] & (0x80 >> (i % 8))) return std::nullopt;
  }
  return s;
}

std::optional<Subnet> Subnet::address(std::string_view text) {
  if (text.find('/') != std::string_view::npos) return std::nullopt;
  return parse(text);
}

bool Subnet::contains(const Subnet& host) const {
  if (host.family_ != family_) return false;
  for (int i = 0; i < prefix_; i += 8) {
    const int take = std::min(8, prefix_ - i);
    const auto mask = static_cast<std::uint8_t>(0xff << (8 - take));
    const auto at = static_cast<std::size_t>(i / 8);
    if ((bytes_[at] & mask) != (host.bytes_[at] & mask)) return false;
  }
  return true;
}

bool is_loopback(std::string_view host) {
  const auto a = Subnet::address(host);
  return a && (Subnet::parse("127.0.0.0/8")->contains(*a) || Subnet::parse("::1")->contains(*a));
}

std::optional<std::string> AccessPolicy::device_denied(const std::string& mac, std::string_view peer) const {
  const auto from = Subnet::address(peer);
  if (!from) return "pvs: device " + mac + " refused: the peer address '" + std::string(peer) + "' is not an IP address";
  if (auto ip = device_ip_.find(mac); ip != device_ip_.end() && !ip->second.contains(*from))
    return "pvs: device " + mac + " may only connect from " + ip->second.text() + " (devices[].ip), not from " +
           std::string(peer);
  if (!device_subnets_.empty() &&
      std::none_of(device_subnets_.begin(), device_subnets_.end(), [&](const Subnet& n) { return n.contains(*from); }))
    return "pvs: device " + mac + " may not connect from " + std::string(peer) + ": outside device_subnets (" +
           joined(device_subnets_) + ")";
  return std::nullopt;
}

std::optional<std::string> AccessPolicy::maintenance_denied(std::string_view peer) const {
  const auto from = Subnet::address(peer);
  if (from && std::any_of(maintenance_from_.begin(), maintenance_from_.end(),
                          [&](const Subnet& n) { return n.contains(*from); }))
    return std::nullopt;
  return "pvs: maintenance access is not allowed from " + std::string(peer) + " (maintenance_from: " +
         (maintenance_from_.empty() ? std::string("none") : joined(maintenance_from_)) + ")";
}

}  // namespace deskfarm::pvs
