#pragma once
// How a typed message travels between deskfarm processes over NATS: its payload begins with one line that names
// the type and its version, and the body's encoding follows:
//   <type>@<version>\n<body>
// (deskfarm.text@1, then the text). No NATS headers: the line costs 16 bytes for deskfarm.text where a header block
// with a type and a version header cost 63, and nats-server spent 30-40 % more CPU per 64-byte message on the
// header path (HPUB/HMSG; docs/benchmarks.md). Written by encode_envelope() and read by open_envelope(), which is
// bounded by the payload it is given and fuzzed (fuzz target nats_envelope).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace deskfarm::kernel {

/// The longest type name a receiver takes.
inline constexpr std::size_t max_type_name = 200;

/// True when `type` can be sent: not empty, no line break, at most max_type_name characters.
bool envelope_safe(std::string_view type);

/// Replaces `out` with the envelope line of `type` and `version` (`type` must be envelope_safe()); the body's
/// encoding goes after it.
void encode_envelope(std::string& out, std::string_view type, std::uint32_t version);

/// A payload's parts: the type name (split at the line's last '@'), the version (decimal, 32 bits) and the body.
struct Envelope {
  std::string_view type;
  std::uint32_t version = 0;
  std::string_view body;
};
/// The parts of `payload`; nullopt when it does not begin with an envelope line (a foreign publisher's message).
std::optional<Envelope> open_envelope(std::string_view payload);

}  // namespace deskfarm::kernel
