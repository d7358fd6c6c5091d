#include "deskfarm/bootstrap/bootstrap.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <map>
#include <optional>

#include <Poco/DigestEngine.h>
#include <Poco/SHA2Engine.h>

namespace deskfarm::bootstrap {

namespace {

constexpr std::string_view sha_key = "sha256 = ";

std::string sha256_hex(std::string_view bytes) {
  Poco::SHA2Engine sha(Poco::SHA2Engine::SHA_256);
  sha.update(bytes.data(), static_cast<unsigned>(bytes.size()));
  return Poco::DigestEngine::digestToHex(sha.digest());
}

std::string where(std::size_t line, std::size_t offset) {
  if (line == 0) return "";
  return "line " + std::to_string(line) + " (byte " + std::to_string(offset) + "): ";
}

bool is_ipv4(std::string_view s) {
  if (s.empty() || s.size() > 15) return false;
  std::array<char, 16> buf{};
  std::copy(s.begin(), s.end(), buf.begin());
  in_addr a{};
  return ::inet_pton(AF_INET, buf.data(), &a) == 1;
}

bool is_dns_name(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  std::size_t label = 0;
  char prev = '.';
  for (char c : s) {
    if (c == '.') {
      if (label == 0 || prev == '-') return false;
      label = 0;
    } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-') {
      if (c == '-' && label == 0) return false;
      if (++label > 63) return false;
    } else {
      return false;
    }
    prev = c;
  }
  return label > 0 && prev != '-';
}

std::optional<std::uint64_t> parse_number(std::string_view s) {
  if (s.empty() || s.size() > 10 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

struct Range {
  std::uint64_t low, high;
};
const std::map<std::string_view, Range> number_ranges = {
    {"version", {1, 4294967295ULL}},
    {"login_polling_timeout_ms", {1000, 300000}},
    {"login_general_timeout_ms", {1000, 3600000}},
    {"recovery_time_s", {0, 86400}},
};

std::string check_range(std::string_view field, std::uint64_t v) {
  const Range r = number_ranges.at(field);
  if (v < r.low || v > r.high)
    return std::string(field) + " " + std::to_string(v) + " is outside " + std::to_string(r.low) + ".." +
           std::to_string(r.high);
  return {};
}

}  // namespace

BootstrapError::BootstrapError(std::string field, std::size_t line, std::size_t offset, const std::string& message)
    : std::runtime_error("bootstrap: " + where(line, offset) + message),
      field_(std::move(field)),
      line_(line),
      offset_(offset) {}

std::string to_string(Addressing a) { return a == Addressing::dhcp ? "dhcp" : "static"; }
std::string to_string(Recovery r) { return r == Recovery::reboot_to_hd ? "reboot_to_hd" : "restore_network"; }

Endpoint parse_endpoint(std::string_view text, const std::string& field) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos)
    throw BootstrapError(field, 0, 0, field + " '" + std::string(text) + "' is not host:port (e.g. 10.0.0.5:6910)");
  const std::string_view host = text.substr(0, colon);
  const std::string_view port_text = text.substr(colon + 1);
  if (!is_ipv4(host) && !is_dns_name(host))
    throw BootstrapError(field, 0, 0,
                         field + " host '" + std::string(host) + "' is neither an IPv4 address nor a DNS name");
  const auto port = parse_number(port_text);
  if (!port || *port < 1 || *port > 65535)
    throw BootstrapError(field, 0, 0, field + " port '" + std::string(port_text) + "' is not 1..65535");
  return Endpoint{std::string(host), static_cast<std::uint16_t>(*port)};
}

std::string validate(const Bootstrap& b) {
  if (b.login_servers.empty()) return "login_server: at least one login server is needed";
  if (b.login_servers.size() > max_login_servers)
    return "login_server: " + std::to_string(b.login_servers.size()) + " login servers, at most " +
           std::to_string(max_login_servers) + " fit in a bootstrap";
  for (const auto& s : b.login_servers) {
    if (!is_ipv4(s.host) && !is_dns_name(s.host))
      return "login_server: host '" + s.host + "' is neither an IPv4 address nor a DNS name";
    if (s.port == 0) return "login_server: port 0 for " + s.host;
  }
  for (auto [field, v] : {std::pair<std::string_view, std::uint64_t>{"version", b.version},
                          {"login_polling_timeout_ms", b.login_polling_timeout_ms},
                          {"login_general_timeout_ms", b.login_general_timeout_ms},
                          {"recovery_time_s", b.recovery_time_s}}) {
    if (auto e = check_range(field, v); !e.empty()) return e;
  }
  if (b.login_general_timeout_ms < b.login_polling_timeout_ms)
    return "login_general_timeout_ms " + std::to_string(b.login_general_timeout_ms) +
           " is shorter than login_polling_timeout_ms " + std::to_string(b.login_polling_timeout_ms);
  if (b.addressing == Addressing::static_ip) {
    const auto& a = b.static_address;
    for (auto [field, v] : {std::pair<std::string_view, const std::string&>{"ip", a.ip}, {"mask", a.mask},
                            {"gateway", a.gateway}}) {
      if (!is_ipv4(v)) return std::string(field) + " '" + v + "' is not an IPv4 address (static addressing)";
    }
    if (!a.dns.empty() && !is_ipv4(a.dns)) return "dns '" + a.dns + "' is not an IPv4 address";
  }
  return {};
}

std::string seal(std::string_view body) {
  std::string out(body);
  out += sha_key;
  out += sha256_hex(body);
  out += '\n';
  return out;
}

std::string encode(const Bootstrap& b) {
  if (auto e = validate(b); !e.empty()) throw BootstrapError(e.substr(0, e.find_first_of(" :")), 0, 0, e);
  std::string s;
  s += std::string(magic) + " " + std::to_string(format_version) + "\n";
  s += "version = " + std::to_string(b.version) + "\n";
  for (const auto& l : b.login_servers) s += "login_server = " + l.host + ":" + std::to_string(l.port) + "\n";
  s += "addressing = " + to_string(b.addressing) + "\n";
  if (b.addressing == Addressing::static_ip) {
    s += "ip = " + b.static_address.ip + "\n";
    s += "mask = " + b.static_address.mask + "\n";
    s += "gateway = " + b.static_address.gateway + "\n";
    if (!b.static_address.dns.empty()) s += "dns = " + b.static_address.dns + "\n";
  }
  s += "login_polling_timeout_ms = " + std::to_string(b.login_polling_timeout_ms) + "\n";
  s += "login_general_timeout_ms = " + std::to_string(b.login_general_timeout_ms) + "\n";
  s += "recovery = " + to_string(b.recovery) + "\n";
  s += "recovery_time_s = " + std::to_string(b.recovery_time_s) + "\n";
  s += std::string("verbose = ") + (b.verbose ? "true" : "false") + "\n";
  s += std::string("interrupt_safe = ") + (b.interrupt_safe ? "true" : "false") + "\n";
  s += std::string("advanced_memory = ") + (b.advanced_memory ? "true" : "false") + "\n";
  return seal(s);
}

Bootstrap parse(std::string_view bytes) {
  if (bytes.size() > max_size)
    throw BootstrapError("", 0, max_size,
                         "file is " + std::to_string(bytes.size()) + " bytes, larger than " +
                             std::to_string(max_size) + " (not a bootstrap?)");
  if (bytes.empty() || bytes.back() != '\n')
    throw BootstrapError("", 0, bytes.size(), "file does not end with a newline at byte " +
                                                  std::to_string(bytes.size()) + " (truncated download?)");
  // Split into lines (each ends with '\n'); remember where each starts.
  struct Line {
    std::string_view text;
    std::size_t offset;
  };
  std::vector<Line> lines;
  for (std::size_t pos = 0; pos < bytes.size();) {
    const std::size_t nl = bytes.find('\n', pos);
    lines.push_back({bytes.substr(pos, nl - pos), pos});
    pos = nl + 1;
  }
  // Magic and format version first: a wrong file should say so before it says "bad checksum".
  const std::string_view first = lines.front().text;
  const std::string expected_head = std::string(magic) + " ";
  if (!first.starts_with(expected_head))
    throw BootstrapError("magic", 1, 0,
                         "bad magic: the file does not start with '" + std::string(magic) +
                             "' (not a deskfarm bootstrap, or a different product's ARDBP32.BIN)");
  const auto fmt = parse_number(first.substr(expected_head.size()));
  if (!fmt || *fmt != format_version)
    throw BootstrapError("format_version", 1, expected_head.size(),
                         "format version '" + std::string(first.substr(expected_head.size())) +
                             "' is not supported (this reader knows version " + std::to_string(format_version) +
                             "); regenerate the bootstrap with this release");
  const Line& last = lines.back();
  if (lines.size() < 2 || !last.text.starts_with(sha_key))
    throw BootstrapError("sha256", lines.size(), last.offset, "the last line must be 'sha256 = <64 hex digits>'");
  const std::string_view digest = last.text.substr(sha_key.size());
  const std::string actual = sha256_hex(bytes.substr(0, last.offset));
  if (digest != actual)
    throw BootstrapError("sha256", lines.size(), last.offset + sha_key.size(),
                         "checksum mismatch: file says " + std::string(digest.substr(0, 64)) + ", bytes hash to " +
                             actual + " (corrupted or edited by hand)");

  Bootstrap b;
  std::map<std::string, std::size_t> seen;  // key -> line number
  b.login_servers.clear();
  for (std::size_t i = 1; i + 1 < lines.size(); ++i) {
    const Line& l = lines[i];
    const std::size_t line_no = i + 1;
    const std::size_t eq = l.text.find(" = ");
    if (eq == std::string_view::npos || eq == 0)
      throw BootstrapError("", line_no, l.offset, "expected 'key = value'");
    const std::string key(l.text.substr(0, eq));
    const std::string_view value = l.text.substr(eq + 3);
    const std::size_t voff = l.offset + eq + 3;
    auto fail = [&](const std::string& message) -> BootstrapError { return {key, line_no, voff, message}; };
    for (std::size_t k = 0; k < l.text.size(); ++k) {
      const auto c = static_cast<unsigned char>(l.text[k]);
      if (c < 0x20 || c >= 0x7f)
        throw BootstrapError(key, line_no, l.offset + k, "control or non-ASCII byte in " + key);
    }
    if (key != "login_server") {
      if (auto [it, fresh] = seen.emplace(key, line_no); !fresh)
        throw fail(key + " given twice (first on line " + std::to_string(it->second) + ")");
    }
    auto number = [&]() -> std::uint32_t {
      const auto v = parse_number(value);
      if (!v) throw fail(key + " '" + std::string(value) + "' is not a decimal number");
      if (auto e = check_range(key, *v); !e.empty()) throw fail(e);
      return static_cast<std::uint32_t>(*v);
    };
    auto boolean = [&]() -> bool {
      if (value == "true") return true;
      if (value == "false") return false;
      throw fail(key + " '" + std::string(value) + "' is neither true nor false");
    };
    auto ipv4 = [&]() -> std::string {
      if (!is_ipv4(value)) throw fail(key + " '" + std::string(value) + "' is not an IPv4 address");
      return std::string(value);
    };
    if (key == "version") {
      b.version = number();
    } else if (key == "login_server") {
      if (b.login_servers.size() == max_login_servers)
        throw fail("more than " + std::to_string(max_login_servers) + " login servers");
      try {
        b.login_servers.push_back(parse_endpoint(value));
      } catch (const BootstrapError& e) {
        throw BootstrapError(key, line_no, voff, std::string(e.what()).substr(11));
      }
      seen.emplace(key, line_no);
    } else if (key == "addressing") {
      if (value == "dhcp") b.addressing = Addressing::dhcp;
      else if (value == "static") b.addressing = Addressing::static_ip;
      else throw fail("addressing '" + std::string(value) + "' is neither dhcp nor static");
    } else if (key == "ip") {
      b.static_address.ip = ipv4();
    } else if (key == "mask") {
      b.static_address.mask = ipv4();
    } else if (key == "gateway") {
      b.static_address.gateway = ipv4();
    } else if (key == "dns") {
      b.static_address.dns = ipv4();
    } else if (key == "login_polling_timeout_ms") {
      b.login_polling_timeout_ms = number();
    } else if (key == "login_general_timeout_ms") {
      b.login_general_timeout_ms = number();
    } else if (key == "recovery") {
      if (value == "reboot_to_hd") b.recovery = Recovery::reboot_to_hd;
      else if (value == "restore_network") b.recovery = Recovery::restore_network;
      else throw fail("recovery '" + std::string(value) + "' is neither reboot_to_hd nor restore_network");
    } else if (key == "recovery_time_s") {
      b.recovery_time_s = number();
    } else if (key == "verbose") {
      b.verbose = boolean();
    } else if (key == "interrupt_safe") {
      b.interrupt_safe = boolean();
    } else if (key == "advanced_memory") {
      b.advanced_memory = boolean();
    } else {
      throw BootstrapError(key, line_no, l.offset, "unknown key '" + key + "' in format version 1");
    }
  }
  const std::size_t end_line = lines.size();
  const std::size_t end_off = last.offset;
  for (const char* required : {"version", "login_server", "addressing", "login_polling_timeout_ms",
                               "login_general_timeout_ms", "recovery", "recovery_time_s", "verbose", "interrupt_safe",
                               "advanced_memory"}) {
    if (!seen.contains(required))
      throw BootstrapError(required, end_line, end_off, std::string("required key '") + required + "' is missing");
  }
  const bool is_static = b.addressing == Addressing::static_ip;
  for (const char* field : {"ip", "mask", "gateway", "dns"}) {
    const bool present = seen.contains(field);
    if (present && !is_static)
      throw BootstrapError(field, seen[field], 0, std::string(field) + " is only allowed with addressing = static");
    if (!present && is_static && std::string_view(field) != "dns")
      throw BootstrapError(field, end_line, end_off,
                           std::string("addressing = static needs '") + field + "', which is missing");
  }
  if (auto e = validate(b); !e.empty()) throw BootstrapError(e.substr(0, e.find_first_of(" :")), end_line, end_off, e);
  return b;
}

}  // namespace deskfarm::bootstrap
