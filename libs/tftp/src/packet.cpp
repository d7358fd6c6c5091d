#include "deskfarm/tftp/packet.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>

namespace deskfarm::tftp {
namespace {

std::uint16_t read_u16(std::span<const std::byte> bytes, std::size_t at) {
  return static_cast<std::uint16_t>((std::to_integer<unsigned>(bytes[at]) << 8) | std::to_integer<unsigned>(bytes[at + 1]));
}

void put_u16(std::vector<std::byte>& out, std::uint16_t value) {
  out.push_back(static_cast<std::byte>(value >> 8));
  out.push_back(static_cast<std::byte>(value & 0xff));
}

void put_string(std::vector<std::byte>& out, std::string_view text) {
  const auto* first = reinterpret_cast<const std::byte*>(text.data());
  out.insert(out.end(), first, first + text.size());
  out.push_back(std::byte{0});
}

std::string lower(std::string_view text) {
  std::string result(text);
  std::transform(result.begin(), result.end(), result.begin(),
                 [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; });
  return result;
}

// Reads a NUL-terminated string starting at `pos`; on success moves `pos` past the NUL.
std::optional<std::string_view> read_cstring(std::span<const std::byte> bytes, std::size_t& pos) {
  const auto* begin = reinterpret_cast<const char*>(bytes.data()) + pos;
  const std::size_t left = bytes.size() - pos;
  const void* nul = std::memchr(begin, 0, left);
  if (nul == nullptr) return std::nullopt;
  const auto length = static_cast<std::size_t>(static_cast<const char*>(nul) - begin);
  pos += length + 1;
  return std::string_view(begin, length);
}

bool only_zero_bytes(std::span<const std::byte> bytes, std::size_t from) {
  return std::all_of(bytes.begin() + static_cast<std::ptrdiff_t>(from), bytes.end(),
                     [](std::byte b) { return b == std::byte{0}; });
}

// Option list shared by requests and OACK: pairs of NUL-terminated strings, name lower-cased.
// Trailing NUL padding is tolerated because some PXE ROMs pad requests.
std::optional<ParseError> read_options(std::span<const std::byte> bytes, std::size_t pos, std::vector<Option>& options) {
  while (pos < bytes.size()) {
    if (only_zero_bytes(bytes, pos)) return std::nullopt;
    const std::size_t name_at = pos;
    const auto name = read_cstring(bytes, pos);
    if (!name) return ParseError{name_at, "option name is not NUL-terminated"};
    if (name->empty()) return ParseError{name_at, "empty option name"};
    const std::size_t value_at = pos;
    if (pos >= bytes.size()) return ParseError{value_at, "option '" + lower(*name) + "' has no value (odd option count)"};
    const auto value = read_cstring(bytes, pos);
    if (!value) return ParseError{value_at, "value of option '" + lower(*name) + "' is not NUL-terminated"};
    options.push_back(Option{lower(*name), std::string(*value)});
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string_view> Request::option(std::string_view name) const {
  for (const auto& option : options) {
    if (option.name == name) return std::string_view(option.value);
  }
  return std::nullopt;
}

ParseResult parse_packet(std::span<const std::byte> bytes) {
  if (bytes.size() < 2) return ParseError{0, "datagram of " + std::to_string(bytes.size()) + " bytes has no opcode"};
  const std::uint16_t opcode = read_u16(bytes, 0);
  switch (opcode) {
    case static_cast<std::uint16_t>(Opcode::rrq):
    case static_cast<std::uint16_t>(Opcode::wrq): {
      Request request;
      request.opcode = static_cast<Opcode>(opcode);
      std::size_t pos = 2;
      const auto filename = read_cstring(bytes, pos);
      if (!filename) return ParseError{2, "filename is not NUL-terminated"};
      if (filename->empty()) return ParseError{2, "empty filename"};
      const std::size_t mode_at = pos;
      const auto mode = read_cstring(bytes, pos);
      if (!mode) return ParseError{mode_at, "mode is not NUL-terminated"};
      if (mode->empty()) return ParseError{mode_at, "empty mode"};
      request.filename = std::string(*filename);
      request.mode = lower(*mode);
      if (auto error = read_options(bytes, pos, request.options)) return *error;
      return Packet{std::move(request)};
    }
    case static_cast<std::uint16_t>(Opcode::data): {
      if (bytes.size() < 4) return ParseError{2, "DATA shorter than 4 bytes"};
      if (bytes.size() - 4 > max_blksize) return ParseError{4, "DATA payload larger than 65464 bytes"};
      return Packet{Data{read_u16(bytes, 2), bytes.subspan(4)}};
    }
    case static_cast<std::uint16_t>(Opcode::ack): {
      if (bytes.size() < 4) return ParseError{2, "ACK shorter than 4 bytes"};
      return Packet{Ack{read_u16(bytes, 2)}};
    }
    case static_cast<std::uint16_t>(Opcode::error): {
      if (bytes.size() < 4) return ParseError{2, "ERROR shorter than 4 bytes"};
      Error error{static_cast<ErrorCode>(read_u16(bytes, 2)), {}};
      std::size_t pos = 4;
      // A missing terminator is tolerated: the message is informational and the peer is ending anyway.
      if (const auto message = read_cstring(bytes, pos)) {
        error.message = std::string(*message);
      } else {
        error.message.assign(reinterpret_cast<const char*>(bytes.data()) + 4, bytes.size() - 4);
      }
      return Packet{std::move(error)};
    }
    case static_cast<std::uint16_t>(Opcode::oack): {
      Oack oack;
      if (auto error = read_options(bytes, 2, oack.options)) return *error;
      return Packet{std::move(oack)};
    }
    default:
      return ParseError{0, "unknown opcode " + std::to_string(opcode)};
  }
}

void encode_request(std::vector<std::byte>& out, const Request& request) {
  put_u16(out, static_cast<std::uint16_t>(request.opcode));
  put_string(out, request.filename);
  put_string(out, request.mode);
  for (const auto& option : request.options) {
    put_string(out, option.name);
    put_string(out, option.value);
  }
}

void encode_data(std::vector<std::byte>& out, std::uint16_t block, std::span<const std::byte> payload) {
  put_u16(out, static_cast<std::uint16_t>(Opcode::data));
  put_u16(out, block);
  out.insert(out.end(), payload.begin(), payload.end());
}

void encode_ack(std::vector<std::byte>& out, std::uint16_t block) {
  put_u16(out, static_cast<std::uint16_t>(Opcode::ack));
  put_u16(out, block);
}

void encode_error(std::vector<std::byte>& out, ErrorCode code, std::string_view message) {
  put_u16(out, static_cast<std::uint16_t>(Opcode::error));
  put_u16(out, static_cast<std::uint16_t>(code));
  // An embedded NUL would end the message early on the peer; cut there rather than send garbage.
  put_string(out, message.substr(0, message.find('\0')));
}

void encode_oack(std::vector<std::byte>& out, const std::vector<Option>& options) {
  put_u16(out, static_cast<std::uint16_t>(Opcode::oack));
  for (const auto& option : options) {
    put_string(out, option.name);
    put_string(out, option.value);
  }
}

std::string opcode_name(std::uint16_t opcode) {
  switch (opcode) {
    case 1: return "RRQ";
    case 2: return "WRQ";
    case 3: return "DATA";
    case 4: return "ACK";
    case 5: return "ERROR";
    case 6: return "OACK";
    default: return "opcode " + std::to_string(opcode);
  }
}

std::optional<std::uint64_t> parse_option_number(std::string_view value, std::uint64_t low, std::uint64_t high) {
  if (value.empty() || value.size() > 20) return std::nullopt;
  std::uint64_t number = 0;
  const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), number);
  if (error != std::errc{} || end != value.data() + value.size()) return std::nullopt;
  if (number < low || number > high) return std::nullopt;
  return number;
}

}  // namespace deskfarm::tftp
