#include "deskfarm/bootstrap/boot_script.hpp"

#include <cctype>
#include <charconv>

namespace deskfarm::bootstrap {

namespace {
constexpr std::string_view prefix = "deskfarm/v";
constexpr std::string_view suffix = "/boot.ipxe";

bool equal_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

/// "52-54-00-12-34-56" or "52:54:00:12:34:56" (one separator throughout) → lower case with colons.
std::optional<std::string> mac_of(std::string_view text) {
  if (text.size() != 17) return std::nullopt;
  const char sep = text[2];
  if (sep != ':' && sep != '-') return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (i % 3 == 2) {
      if (c != static_cast<unsigned char>(sep)) return std::nullopt;
      out += ':';
    } else {
      if (!std::isxdigit(c)) return std::nullopt;
      out += static_cast<char>(std::tolower(c));
    }
  }
  return out;
}
}  // namespace

std::string boot_script_name(std::uint32_t version, std::string_view mac) {
  return std::string(prefix) + std::to_string(version) + "/" + std::string(mac) + std::string(suffix);
}

std::optional<BootScriptRequest> parse_boot_script_name(std::string_view name) {
  if (name.size() <= prefix.size() + suffix.size() || !equal_ignoring_case(name.substr(0, prefix.size()), prefix) ||
      !equal_ignoring_case(name.substr(name.size() - suffix.size()), suffix))
    return std::nullopt;
  const auto middle = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());  // "<version>/<mac>"
  const auto slash = middle.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash > 10) return std::nullopt;
  BootScriptRequest r;
  const auto digits = middle.substr(0, slash);
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), r.version);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  auto mac = mac_of(middle.substr(slash + 1));
  if (!mac) return std::nullopt;
  r.mac = std::move(*mac);
  return r;
}

}  // namespace deskfarm::bootstrap
