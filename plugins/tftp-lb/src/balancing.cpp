#include "balancing.hpp"

#include <arpa/inet.h>

#include <bit>
#include <charconv>
#include <cmath>

#include <deskfarm/tftp/packet.hpp>

namespace deskfarm::tftp_lb {

std::optional<sockaddr_in> parse_ipv4_endpoint(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon + 1 >= text.size() || colon > 15) return std::nullopt;
  const std::string host(text.substr(0, colon));
  const auto port_text = text.substr(colon + 1);
  unsigned port = 0;
  const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535) return std::nullopt;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) return std::nullopt;
  return a;
}

std::string host_of(const sockaddr_in& addr) {
  char host[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &addr.sin_addr, host, sizeof host);
  return host;
}

std::string to_string(const sockaddr_in& addr) { return host_of(addr) + ":" + std::to_string(ntohs(addr.sin_port)); }

std::optional<std::vector<std::byte>> ecv_payload(std::string_view text, std::string_view hex,
                                                  std::string_view boot_file, std::string& error) {
  std::vector<std::byte> out;
  if (!hex.empty()) {
    int high = -1;
    for (std::size_t i = 0; i < hex.size(); ++i) {
      const char c = hex[i];
      if (c == ' ' || c == ':' || c == '-') continue;
      int v = -1;
      if (c >= '0' && c <= '9') v = c - '0';
      else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
      if (v < 0) {
        error = "send_hex: '" + std::string(1, c) + "' at offset " + std::to_string(i) + " is not a hex digit";
        return std::nullopt;
      }
      if (high < 0) {
        high = v;
      } else {
        out.push_back(static_cast<std::byte>(high * 16 + v));
        high = -1;
      }
    }
    if (high >= 0) {
      error = "send_hex: an odd number of hex digits (write each byte as two)";
      return std::nullopt;
    }
  } else if (!text.empty()) {
    for (char c : text) out.push_back(static_cast<std::byte>(c));
  } else {
    tftp::Request rrq;
    rrq.filename = std::string(boot_file);
    rrq.mode = "octet";
    tftp::encode_request(out, rrq);
  }
  if (out.empty()) {
    error = "send_hex: no bytes to send";
    return std::nullopt;
  }
  if (out.size() > 1400) {
    error = "send/send_hex: " + std::to_string(out.size()) + " bytes; a probe is one datagram of at most 1400";
    return std::nullopt;
  }
  return out;
}

std::optional<Method> parse_method(std::string_view name) {
  if (name == "round_robin") return Method::round_robin;
  if (name == "least_sessions") return Method::least_sessions;
  if (name == "source_ip") return Method::source_ip;
  return std::nullopt;
}

std::uint64_t stable_hash(std::string_view text) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

namespace {
// splitmix64: spreads a client address and a backend's name hash into a uniform 64-bit value.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

std::optional<std::size_t> Picker::pick(std::span<const Candidate> candidates, std::uint32_t client_ip) {
  std::optional<std::size_t> best;
  switch (method_) {
    case Method::round_robin: {
      if (current_.size() < candidates.size()) current_.resize(candidates.size(), 0);
      std::int64_t total = 0;
      for (std::size_t i = 0; i < candidates.size(); ++i) {
        if (!candidates[i].eligible) continue;
        current_[i] += candidates[i].weight;
        total += candidates[i].weight;
        if (!best || current_[i] > current_[*best]) best = i;
      }
      if (best) current_[*best] -= total;
      break;
    }
    case Method::least_sessions:
      // active_i / weight_i < active_b / weight_b, without division; ties go to the earlier backend.
      for (std::size_t i = 0; i < candidates.size(); ++i) {
        if (!candidates[i].eligible) continue;
        if (!best || candidates[i].active * candidates[*best].weight < candidates[*best].active * candidates[i].weight)
          best = i;
      }
      break;
    case Method::source_ip: {
      double best_score = 0;
      for (std::size_t i = 0; i < candidates.size(); ++i) {
        if (!candidates[i].eligible) continue;
        // Weighted rendezvous: score = -w / ln(u), u uniform in (0, 1) from (client, backend).
        const double u = (static_cast<double>(mix(candidates[i].name_hash ^ mix(client_ip)) >> 11) + 0.5) / 9007199254740992.0;
        const double score = -static_cast<double>(candidates[i].weight) / std::log(u);
        if (!best || score > best_score) {
          best = i;
          best_score = score;
        }
      }
      break;
    }
  }
  return best;
}

std::optional<bool> HealthTracker::record(bool ok) {
  const int n = std::max(1, std::min(rules_.retries, 32));
  const std::uint32_t mask = n == 32 ? 0xffffffffu : ((1u << n) - 1);
  window_ = ((window_ << 1) | (ok ? 0u : 1u)) & mask;
  seen_ = std::min(seen_ + 1, n);
  failures_in_row_ = ok ? 0 : failures_in_row_ + 1;
  successes_in_row_ = ok ? successes_in_row_ + 1 : 0;
  if (!known_) {
    known_ = true;
    up_ = ok;
    return up_ ? std::optional<bool>(true) : std::nullopt;  // starts DOWN: only going UP is a change
  }
  if (up_) {
    const int need = rules_.failure_retries <= 0 ? n : std::min(rules_.failure_retries, n);
    if (seen_ >= need && std::popcount(window_) >= need) {
      up_ = false;
      window_ = 0;
      seen_ = 0;
      return false;
    }
  } else if (successes_in_row_ >= std::max(1, rules_.success_retries)) {
    up_ = true;
    window_ = 0;
    seen_ = 0;
    return true;
  }
  return std::nullopt;
}

std::optional<std::string> dhcp_config(std::string_view format, std::string_view next_server, std::string_view boot_file) {
  const std::string ns(next_server), bf(boot_file);
  if (format == "isc")
    return "# ISC dhcpd (dhcpd.conf): PXE clients fetch the bootstrap through the TFTP virtual server\n"
           "option tftp-server-name \"" + ns + "\";   # option 66\n"
           "filename \"" + bf + "\";                  # option 67\n"
           "next-server " + ns + ";\n";
  if (format == "kea")
    return "{\n"
           "  \"Dhcp4\": {\n"
           "    \"next-server\": \"" + ns + "\",\n"
           "    \"boot-file-name\": \"" + bf + "\",\n"
           "    \"option-data\": [\n"
           "      { \"name\": \"tftp-server-name\", \"code\": 66, \"data\": \"" + ns + "\" },\n"
           "      { \"name\": \"boot-file-name\", \"code\": 67, \"data\": \"" + bf + "\" }\n"
           "    ]\n"
           "  }\n"
           "}\n";
  if (format == "dnsmasq")
    return "# dnsmasq: PXE clients fetch the bootstrap through the TFTP virtual server\n"
           "dhcp-option=66,\"" + ns + "\"\n"
           "dhcp-option=67,\"" + bf + "\"\n"
           "dhcp-boot=" + bf + ",," + ns + "\n";
  return std::nullopt;
}

}  // namespace deskfarm::tftp_lb
