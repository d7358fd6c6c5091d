#pragma once
// deskfarm::net — IP networks as manifests write them ("10.1.0.0/16", "fd00::/64", a bare address): parsed once,
// here, for every plugin and library that takes one (README.md).
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace deskfarm::net {

enum class Family { ipv4, ipv6 };

/// An IPv4 or IPv6 network; a bare address is a /32 or /128. An IPv4-mapped IPv6 address ("::ffff:10.1.2.3", what a
/// dual-stack socket reports for an IPv4 peer) is read as the IPv4 address it maps, so it matches IPv4 networks.
class Subnet {
 public:
  /// nullopt when `text` is not an address or ADDRESS/PREFIX: the prefix is 0..32 (IPv4) or 0..128 (IPv6) in
  /// decimal digits, and the host bits must be zero ("10.1.2.3/8" is a typo for a host or a network, so it is
  /// refused rather than masked). Callers turn nullopt into an error naming their own manifest key.
  static std::optional<Subnet> parse(std::string_view text);
  /// A host address, no "/PREFIX" (a peer's address, a device's reservation); nullopt when it is not one.
  static std::optional<Subnet> address(std::string_view text);

  /// True when `host` (any Subnet; a network counts by its own address) lies inside this network; never across
  /// families.
  bool contains(const Subnet& host) const;

  Family family() const { return family_; }
  int prefix() const { return prefix_; }
  /// The text it was parsed from, as written (error messages quote it); for host() the dotted address.
  const std::string& text() const { return text_; }

  /// IPv4 host numbering, for handing out addresses in order: host numbers 1..host_count() lie strictly between the
  /// network and broadcast addresses (2^(32-prefix) - 2; 0 for a /31, a /32 and any IPv6 network).
  std::uint32_t host_count() const;
  /// Host `n` of this network ("10.1.0.0/16" host 258 = "10.1.1.2"); nullopt unless 1 <= n <= host_count().
  std::optional<Subnet> host(std::uint32_t n) const;
  /// The host number of `address` in this network; nullopt unless it is one of 1..host_count().
  std::optional<std::uint32_t> host_number(const Subnet& address) const;

 private:
  std::uint32_t ipv4_value() const;

  Family family_ = Family::ipv4;
  int prefix_ = 0;
  std::array<std::uint8_t, 16> bytes_{};  // network byte order; IPv4 in the first 4
  std::string text_;
};

/// True for an address in 127.0.0.0/8 or ::1: a listener there is reachable from this machine only.
bool is_loopback(std::string_view host);

}  // namespace deskfarm::net
