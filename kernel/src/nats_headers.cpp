#include "nats_headers.hpp"

#include <charconv>

namespace deskfarm::kernel {

namespace {
bool header_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

}  // namespace

std::optional<std::string_view> header_value(std::string_view block, std::string_view key) {
  std::size_t at = block.find("\r\n");  // past the status line
  while (at != std::string_view::npos && at + 2 < block.size()) {
    const std::size_t begin = at + 2;
    const std::size_t end = block.find("\r\n", begin);
    if (end == std::string_view::npos || end == begin) return std::nullopt;  // the last, empty line
    const std::string_view line = block.substr(begin, end - begin);
    if (line.size() > key.size() && line[key.size()] == ':' && line.starts_with(key)) {
      if (end + 2 < block.size() && (block[end + 2] == ' ' || block[end + 2] == '\t')) return std::nullopt;
      std::string_view value = line.substr(key.size() + 1);
      while (!value.empty() && header_space(value.front())) value.remove_prefix(1);
      while (!value.empty() && header_space(value.back())) value.remove_suffix(1);
      return value;
    }
    at = end;
  }
  return std::nullopt;
}

std::optional<std::string_view> own_type_header(std::string_view block) {
  if (!block.starts_with(nats_header_status_line) || block.substr(nats_header_status_line.size(), 2) != "\r\n") return std::nullopt;
  block.remove_prefix(nats_header_status_line.size() + 2);
  if (!block.starts_with(nats_type_header) || block.size() <= nats_type_header.size() + 2 ||
      block[nats_type_header.size()] != ':' || block[nats_type_header.size() + 1] != ' ')
    return std::nullopt;
  block.remove_prefix(nats_type_header.size() + 2);
  const auto end = block.find("\r\n");
  if (end == std::string_view::npos || block.substr(end) != nats_header_end) return std::nullopt;
  const auto value = block.substr(0, end);
  // The value as header_value would trim it: deskfarm writes none with spaces at either end.
  if (value.empty() || header_space(value.front()) || header_space(value.back())) return std::nullopt;
  return value;
}

std::optional<TypeAndVersion> split_type(std::string_view value) {
  const auto at = value.rfind('@');
  if (at == std::string_view::npos || at == 0 || at + 1 == value.size()) return std::nullopt;
  TypeAndVersion out{value.substr(0, at)};
  const char* end = value.data() + value.size();
  const auto [stop, error] = std::from_chars(value.data() + at + 1, end, out.version);
  if (error != std::errc() || stop != end) return std::nullopt;
  return out;
}

bool header_safe(std::string_view text) { return text.find_first_of("\r\n") == std::string_view::npos; }

void encode_headers(std::string& out, std::string_view type, std::uint32_t version) {
  char digits[16];
  const auto end = std::to_chars(digits, digits + sizeof digits, version).ptr;
  out.assign(nats_header_status_line).append("\r\n").append(nats_type_header).append(": ").append(type);
  out.append(1, '@').append(digits, end).append(nats_header_end);
}

}  // namespace deskfarm::kernel
