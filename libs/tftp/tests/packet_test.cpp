#include <catch2/catch.hpp>

#include "deskfarm/tftp/packet.hpp"
#include <deskfarm/testing/files.hpp>

using namespace deskfarm::tftp;
using deskfarm::testing::to_bytes;

namespace {

ParseResult parse(std::string_view text) {
  static std::vector<std::byte> keep;
  keep = to_bytes(text);
  return parse_packet(keep);
}

const ParseError& error_of(const ParseResult& result) {
  REQUIRE(std::holds_alternative<ParseError>(result));
  return std::get<ParseError>(result);
}

}  // namespace

TEST_CASE("an RRQ with options parses with lower-cased names in wire order, duplicates kept") {
  using namespace std::string_view_literals;
  const auto result = parse("\0\1ARDBP32.BIN\0OCTET\0BlkSize\0" "1468\0tsize\0" "0\0blksize\0" "512\0"sv);
  REQUIRE(std::holds_alternative<Packet>(result));
  const auto& request = std::get<Request>(std::get<Packet>(result));
  CHECK(request.opcode == Opcode::rrq);
  CHECK(request.filename == "ARDBP32.BIN");
  CHECK(request.mode == "octet");
  REQUIRE(request.options.size() == 3);
  CHECK(request.options[0] == Option{"blksize", "1468"});
  CHECK(request.options[1] == Option{"tsize", "0"});
  CHECK(request.option("blksize") == "1468");
  CHECK_FALSE(request.option("windowsize"));
}

TEST_CASE("requests round-trip through encode_request and parse_packet") {
  Request request{Opcode::wrq, "dir/file", "netascii", {{"windowsize", "16"}, {"x-unknown", ""}}};
  std::vector<std::byte> bytes;
  encode_request(bytes, request);
  const auto result = parse_packet(bytes);
  const auto& parsed = std::get<Request>(std::get<Packet>(result));
  CHECK(parsed.opcode == Opcode::wrq);
  CHECK(parsed.filename == request.filename);
  CHECK(parsed.mode == request.mode);
  CHECK(parsed.options == request.options);
}

TEST_CASE("DATA, ACK, ERROR and OACK encode and parse back") {
  std::vector<std::byte> bytes;
  const auto payload = to_bytes("hello");
  encode_data(bytes, 65535, payload);
  auto result = parse_packet(bytes);
  const auto& data = std::get<Data>(std::get<Packet>(result));
  CHECK(data.block == 65535);
  CHECK(deskfarm::testing::to_string(data.payload) == "hello");

  bytes.clear();
  encode_ack(bytes, 7);
  CHECK(std::get<Ack>(std::get<Packet>(parse_packet(bytes))).block == 7);

  bytes.clear();
  encode_error(bytes, ErrorCode::option_refused, "no thanks");
  result = parse_packet(bytes);
  const auto& error = std::get<Error>(std::get<Packet>(result));
  CHECK(error.code == ErrorCode::option_refused);
  CHECK(error.message == "no thanks");

  bytes.clear();
  encode_oack(bytes, {{"blksize", "1468"}, {"tsize", "42"}});
  result = parse_packet(bytes);
  CHECK(std::get<Oack>(std::get<Packet>(result)).options == std::vector<Option>{{"blksize", "1468"}, {"tsize", "42"}});
}

TEST_CASE("truncated and unterminated packets give a ParseError with the offset where parsing stopped") {
  using namespace std::string_view_literals;
  CHECK(error_of(parse("")).offset == 0);
  CHECK(error_of(parse("\0"sv)).offset == 0);
  CHECK(error_of(parse("\0\1file"sv)).message == "filename is not NUL-terminated");
  CHECK(error_of(parse("\0\1\0octet\0"sv)).message == "empty filename");
  CHECK(error_of(parse("\0\1file\0octet"sv)).offset == 7);
  CHECK(error_of(parse("\0\1file\0octet\0blksize\0"sv)).message.find("odd option count") != std::string::npos);
  CHECK(error_of(parse("\0\1file\0octet\0blksize\0" "1468"sv)).message.find("not NUL-terminated") != std::string::npos);
  CHECK(error_of(parse("\0\1file\0octet\0\0" "1\0"sv)).message == "empty option name");
  CHECK(error_of(parse("\0\3\0"sv)).offset == 2);
  CHECK(error_of(parse("\0\4\0"sv)).offset == 2);
  CHECK(error_of(parse("\0\x09xyz"sv)).message == "unknown opcode 9");
  CHECK(error_of(parse("\xff\xff"sv)).message == "unknown opcode 65535");
}

TEST_CASE("trailing NUL padding after a request is tolerated") {
  using namespace std::string_view_literals;
  const auto result = parse("\0\1file\0octet\0\0\0\0"sv);
  REQUIRE(std::holds_alternative<Packet>(result));
  CHECK(std::get<Request>(std::get<Packet>(result)).options.empty());
}

TEST_CASE("an ERROR without a terminating NUL keeps its message") {
  using namespace std::string_view_literals;
  const auto result = parse("\0\5\0\1gone"sv);
  CHECK(std::get<Error>(std::get<Packet>(result)).message == "gone");
}

TEST_CASE("option numbers accept only plain decimal within range") {
  CHECK(parse_option_number("1468", 8, 65464) == 1468u);
  CHECK_FALSE(parse_option_number("", 0, 10));
  CHECK_FALSE(parse_option_number("-1", 0, 10));
  CHECK_FALSE(parse_option_number("+1", 0, 10));
  CHECK_FALSE(parse_option_number("12a", 0, 100));
  CHECK_FALSE(parse_option_number("99999999999999999999999", 0, ~0ull));
  CHECK_FALSE(parse_option_number("7", 8, 65464));
}
