#pragma once
// The NATS header block that carries a typed message's identity between deskfarm processes:
//   NATS/1.0\r\nDeskfarm-Type: <type>\r\nDeskfarm-Version: <version>\r\n\r\n
// written by encode_headers(), read by own_headers() (exactly that layout, no search per header) and by
// header_value() (any header block, e.g. one libnats's own encoder wrote). Input from other processes: every reader
// is bounded by the block it is given and fuzzed (fuzz target nats_headers: both readers must agree).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace deskfarm::kernel {

/// NATS headers that carry a typed body's identity.
inline constexpr std::string_view nats_type_header = "Deskfarm-Type";
inline constexpr std::string_view nats_version_header = "Deskfarm-Version";
inline constexpr std::string_view nats_header_status_line = "NATS/1.0";
inline constexpr std::string_view nats_header_end = "\r\n\r\n";

/// True when `text` can be a header value as it is (no line breaks).
bool header_safe(std::string_view text);

/// Replaces `out` with the header block of `type` and `version` (`type` must be header_safe()).
void encode_headers(std::string& out, std::string_view type, std::uint32_t version);

/// The first value of `key` in an encoded header block, trimmed as libnats trims it; nullopt when it is absent or
/// written in a way only libnats's own parser reads exactly (a value folded onto the next line).
std::optional<std::string_view> header_value(std::string_view block, std::string_view key);

/// The type and version of a block exactly as encode_headers() writes it, read without a search per header;
/// nullopt for any other block (then header_value() reads it). When it answers, header_value() agrees.
std::optional<std::pair<std::string_view, std::string_view>> own_headers(std::string_view block);

}  // namespace deskfarm::kernel
