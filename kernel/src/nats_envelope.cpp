#include "nats_envelope.hpp"

#include <charconv>

namespace deskfarm::kernel {

namespace {
constexpr std::size_t max_version_digits = 10;  // 4294967295
}  // namespace

bool envelope_safe(std::string_view type) {
  return !type.empty() && type.size() <= max_type_name && type.find('\n') == std::string_view::npos;
}

void encode_envelope(std::string& out, std::string_view type, std::uint32_t version) {
  char digits[16];
  const auto end = std::to_chars(digits, digits + sizeof digits, version).ptr;
  out.assign(type).append(1, '@').append(digits, end).append(1, '\n');
}

std::optional<Envelope> open_envelope(std::string_view payload) {
  // The line ends within the longest one a sender writes: no search through a large foreign body.
  const auto newline = payload.substr(0, max_type_name + 1 + max_version_digits + 1).find('\n');
  if (newline == std::string_view::npos) return std::nullopt;
  const std::string_view line = payload.substr(0, newline);
  const auto at = line.rfind('@');
  if (at == std::string_view::npos || at == 0 || at > max_type_name || at + 1 == line.size()) return std::nullopt;
  Envelope out{line.substr(0, at), 0, payload.substr(newline + 1)};
  const char* end = line.data() + line.size();
  const auto [stop, error] = std::from_chars(line.data() + at + 1, end, out.version);
  if (error != std::errc() || stop != end) return std::nullopt;
  return out;
}

}  // namespace deskfarm::kernel
