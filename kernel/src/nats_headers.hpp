#pragma once
// The NATS header block that carries a typed message's identity between deskfarm processes, one header:
//   NATS/1.0\r\nDeskfarm-Type: <type>@<version>\r\n\r\n
// written by encode_headers(), read by own_type_header() (exactly that layout, no search) and by header_value()
// (any header block, e.g. one libnats's own encoder or another NATS client wrote); split_type() splits the value.
// Input from other processes: every reader is bounded by the block it is given and fuzzed (fuzz target
// nats_headers: both readers must agree, and what the writer writes must come back).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace deskfarm::kernel {

/// The NATS header that carries a typed body's type name and version, as "<type>@<version>".
inline constexpr std::string_view nats_type_header = "Deskfarm-Type";
inline constexpr std::string_view nats_header_status_line = "NATS/1.0";
inline constexpr std::string_view nats_header_end = "\r\n\r\n";

/// True when `text` can be a header value as it is (no line breaks).
bool header_safe(std::string_view text);

/// Replaces `out` with the header block of `type` and `version` (`type` must be header_safe()).
void encode_headers(std::string& out, std::string_view type, std::uint32_t version);

/// The first value of `key` in an encoded header block, trimmed as libnats trims it; nullopt when it is absent or
/// written in a way only libnats's own parser reads exactly (a value folded onto the next line).
std::optional<std::string_view> header_value(std::string_view block, std::string_view key);

/// The Deskfarm-Type value of a block exactly as encode_headers() writes it, read without a search; nullopt for
/// any other block (then header_value() reads it). When it answers, header_value() agrees.
std::optional<std::string_view> own_type_header(std::string_view block);

/// A Deskfarm-Type value split at its last '@': the type name and the version (decimal, fits 32 bits); nullopt
/// when either is missing or the version is not a number.
struct TypeAndVersion {
  std::string_view type;
  std::uint32_t version = 0;
};
std::optional<TypeAndVersion> split_type(std::string_view value);

}  // namespace deskfarm::kernel
