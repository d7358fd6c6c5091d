#pragma once
// TFTP wire codec (RFC 1350, 2347, 2348, 2349, 7440): pure functions shared by the server, the client,
// the fuzzer and the load balancer. Nothing here allocates sockets or touches the file system.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace deskfarm::tftp {

/// Opcodes [RFC 1350 §5, RFC 2347].
enum class Opcode : std::uint16_t { rrq = 1, wrq = 2, data = 3, ack = 4, error = 5, oack = 6 };

/// Error codes [RFC 1350 appendix, RFC 2347].
enum class ErrorCode : std::uint16_t {
  not_defined = 0,
  file_not_found = 1,
  access_violation = 2,
  disk_full = 3,
  illegal_operation = 4,
  unknown_tid = 5,
  file_exists = 6,
  no_such_user = 7,
  option_refused = 8,
};

/// One option as sent on the wire; the parser lower-cases the name, keeps the value as is.
struct Option {
  std::string name;
  std::string value;
  bool operator==(const Option&) const = default;
};

/// RRQ or WRQ: filename, lower-cased mode, options in wire order (duplicates kept).
struct Request {
  Opcode opcode = Opcode::rrq;
  std::string filename;
  std::string mode;
  std::vector<Option> options;
  /// First value of option `name` (lower-case), if present.
  std::optional<std::string_view> option(std::string_view name) const;
};

/// DATA: block number and payload (a view into the parsed buffer).
struct Data {
  std::uint16_t block = 0;
  std::span<const std::byte> payload;
};

/// ACK of one block number.
struct Ack {
  std::uint16_t block = 0;
};

/// ERROR with code and message.
struct Error {
  ErrorCode code = ErrorCode::not_defined;
  std::string message;
};

/// OACK: accepted options in wire order.
struct Oack {
  std::vector<Option> options;
};

/// Why a datagram is not a valid TFTP packet; `offset` is the byte where parsing stopped.
struct ParseError {
  std::size_t offset = 0;
  std::string message;
};

/// Any valid packet.
using Packet = std::variant<Request, Data, Ack, Error, Oack>;

/// Either a packet or the reason it is not one.
using ParseResult = std::variant<Packet, ParseError>;

/// Parses one datagram; never throws on bad input, never reads past `bytes`.
ParseResult parse_packet(std::span<const std::byte> bytes);

/// Lowest and highest blksize allowed by RFC 2348.
inline constexpr std::uint16_t min_blksize = 8;
inline constexpr std::uint16_t max_blksize = 65464;
/// blksize when no option is negotiated [RFC 1350].
inline constexpr std::uint16_t default_blksize = 512;

/// Appends an RRQ/WRQ to `out`.
void encode_request(std::vector<std::byte>& out, const Request& request);
/// Appends a DATA header and payload to `out`.
void encode_data(std::vector<std::byte>& out, std::uint16_t block, std::span<const std::byte> payload);
/// Appends an ACK to `out`.
void encode_ack(std::vector<std::byte>& out, std::uint16_t block);
/// Appends an ERROR to `out`.
void encode_error(std::vector<std::byte>& out, ErrorCode code, std::string_view message);
/// Appends an OACK to `out`.
void encode_oack(std::vector<std::byte>& out, const std::vector<Option>& options);

/// Short human name of an opcode for logs ("RRQ"), or "opcode N".
std::string opcode_name(std::uint16_t opcode);

/// Parses a decimal option value in [low, high]; nullopt for empty, signs, junk or overflow.
std::optional<std::uint64_t> parse_option_number(std::string_view value, std::uint64_t low, std::uint64_t high);

}  // namespace deskfarm::tftp
