#include "deskfarm/net/subnet.hpp"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>

namespace deskfarm::net {

std::optional<Subnet> Subnet::parse(std::string_view text) {
  Subnet s;
  s.text_ = std::string(text);
  const auto slash = text.find('/');
  const std::string host(text.substr(0, slash));
  if (::inet_pton(AF_INET, host.c_str(), s.bytes_.data()) == 1) {
    s.family_ = Family::ipv4;
  } else if (::inet_pton(AF_INET6, host.c_str(), s.bytes_.data()) == 1) {
    s.family_ = Family::ipv6;
    // An IPv4-mapped IPv6 address is the IPv4 host it maps: one form to compare.
    static constexpr std::uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::equal(kMapped, kMapped + 12, s.bytes_.begin()) && slash == std::string_view::npos) {
      std::copy(s.bytes_.begin() + 12, s.bytes_.end(), s.bytes_.begin());
      std::fill(s.bytes_.begin() + 4, s.bytes_.end(), 0);
      s.family_ = Family::ipv4;
    }
  } else {
    return std::nullopt;
  }
  const int bits = s.family_ == Family::ipv4 ? 32 : 128;
  s.prefix_ = bits;
  if (slash != std::string_view::npos) {
    const auto p = text.substr(slash + 1);
    if (p.empty() || p.size() > 3 || p.find_first_not_of("0123456789") != std::string_view::npos) return std::nullopt;
    int prefix = 0;
    for (char c : p) prefix = prefix * 10 + (c - '0');
    if (prefix > bits) return std::nullopt;
    s.prefix_ = prefix;
    for (int i = prefix; i < bits; ++i)
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

std::uint32_t Subnet::ipv4_value() const {
  return static_cast<std::uint32_t>(bytes_[0]) << 24 | static_cast<std::uint32_t>(bytes_[1]) << 16 |
         static_cast<std::uint32_t>(bytes_[2]) << 8 | bytes_[3];
}

std::uint32_t Subnet::host_count() const {
  if (family_ != Family::ipv4 || prefix_ > 30) return 0;
  return static_cast<std::uint32_t>((std::uint64_t{1} << (32 - prefix_)) - 2);
}

std::optional<Subnet> Subnet::host(std::uint32_t n) const {
  if (n < 1 || n > host_count()) return std::nullopt;
  const std::uint32_t value = ipv4_value() + n;
  Subnet h;
  h.family_ = Family::ipv4;
  h.prefix_ = 32;
  for (std::size_t i = 0; i < 4; ++i) h.bytes_[i] = static_cast<std::uint8_t>(value >> (24 - 8 * i));
  char buf[INET_ADDRSTRLEN];
  h.text_ = ::inet_ntop(AF_INET, h.bytes_.data(), buf, sizeof buf) ? buf : "";
  return h;
}

std::optional<std::uint32_t> Subnet::host_number(const Subnet& address) const {
  if (host_count() == 0 || !contains(address)) return std::nullopt;
  const std::uint32_t n = address.ipv4_value() - ipv4_value();
  if (n < 1 || n > host_count()) return std::nullopt;
  return n;
}

bool is_loopback(std::string_view host) {
  static const auto v4 = *Subnet::parse("127.0.0.0/8");
  static const auto v6 = *Subnet::parse("::1");
  const auto a = Subnet::address(host);
  return a && (v4.contains(*a) || v6.contains(*a));
}

}  // namespace deskfarm::net
