#include <catch2/catch.hpp>

#include <mutex>

#include "deskfarm/tftp/client.hpp"
#include "deskfarm/tftp/server.hpp"
#include "test_support.hpp"

using namespace deskfarm::tftp;
using namespace tftp_test;

namespace {

/// A server on 127.0.0.1:ephemeral serving a fresh temporary root.
struct Fixture {
  explicit Fixture(ServerOptions options = {}, bool capture_log = false) {
    options.root = dir.path() / "root";
    fs::create_directories(options.root);
    if (capture_log) {
      options.log = [this](std::string_view line) {
        std::lock_guard lock(log_mutex);
        log.emplace_back(line);
      };
    }
    root = options.root;
    server = std::make_unique<Server>(options);
    server->start();
    port = server->bound_port();
  }
  void put(const std::string& name, std::string_view text) const { put(name, std::as_bytes(std::span(text))); }
  void put(const std::string& name, std::span<const std::byte> bytes) const {
    fs::create_directories((root / name).parent_path());
    write_file(root / name, bytes);
  }
  TempDir dir;
  fs::path root;
  std::unique_ptr<Server> server;
  std::uint16_t port = 0;
  std::mutex log_mutex;
  std::vector<std::string> log;
};

template <typename T>
const T* as(const std::optional<std::pair<Packet, std::uint16_t>>& received) {
  if (!received) return nullptr;
  return std::get_if<T>(&received->first);
}

}  // namespace

TEST_CASE("a client asking for blksize 1468 and tsize gets both in the OACK and the file intact") {
  Fixture fixture({}, true);
  const auto content = to_string(pattern(100'000));
  fixture.put("ARDBP32.BIN", content);
  ClientOptions options;
  options.blksize = 1468;
  options.tsize = true;
  const auto result = Client(options).get("127.0.0.1", fixture.port, "ARDBP32.BIN");
  CHECK(result.oack == std::vector<Option>{{"blksize", "1468"}, {"tsize", "100000"}});
  CHECK(to_string(result.data) == content);
  CHECK(result.server_port != fixture.port);
  REQUIRE(wait_for_stats(*fixture.server, [](const Stats& s) { return s.transfers_done == 1; }));
  std::lock_guard lock(fixture.log_mutex);
  REQUIRE_FALSE(fixture.log.empty());
  bool found = false;
  for (const auto& line : fixture.log) found |= line.rfind("tftp: RRQ ARDBP32.BIN from 127.0.0.1:", 0) == 0 && line.find("blksize=1468 tsize=100000") != std::string::npos;
  CHECK(found);
}

TEST_CASE("a client without options gets DATA 1 straight away and 512-byte blocks") {
  Fixture fixture;
  fixture.put("a", pattern(1300));
  RawSocket socket;
  socket.send(fixture.port, rrq("a"));
  const auto first = socket.receive_packet(2000ms);
  const auto* data = as<Data>(first);
  REQUIRE(data != nullptr);
  CHECK(data->block == 1);
  CHECK(data->payload.size() == 512);
  CHECK(first->second != fixture.port);
}

TEST_CASE("a file whose size is a multiple of blksize ends with an empty DATA") {
  Fixture fixture;
  fixture.put("exact", pattern(512));
  RawSocket socket;
  socket.send(fixture.port, rrq("exact"));
  auto received = socket.receive_packet(2000ms);
  REQUIRE(as<Data>(received) != nullptr);
  CHECK(as<Data>(received)->payload.size() == 512);
  const auto tid = received->second;
  socket.send(tid, ack(1));
  received = socket.receive_packet(2000ms);
  REQUIRE(as<Data>(received) != nullptr);
  CHECK(as<Data>(received)->block == 2);
  CHECK(as<Data>(received)->payload.empty());
  socket.send(tid, ack(2));
  CHECK(wait_for_stats(*fixture.server, [](const Stats& s) { return s.transfers_done == 1 && s.transfers_active == 0; }));
}

TEST_CASE("an empty file asked for tsize gets an OACK with tsize=0, then one empty DATA 1 (RFC 2349)") {
  Fixture fixture;
  fixture.put("empty", "");
  RawSocket socket;
  socket.send(fixture.port, rrq("empty", {{"tsize", "0"}}));
  auto received = socket.receive_packet(2000ms);
  const auto* oack = as<Oack>(received);
  REQUIRE(oack != nullptr);
  CHECK(oack->options == std::vector<Option>{{"tsize", "0"}});
  const auto tid = received->second;
  socket.send(tid, ack(0));
  received = socket.receive_packet(2000ms);
  REQUIRE(as<Data>(received) != nullptr);
  CHECK(as<Data>(received)->block == 1);
  CHECK(as<Data>(received)->payload.empty());
  socket.send(tid, ack(1));
  CHECK(wait_for_stats(*fixture.server, [](const Stats& s) { return s.transfers_done == 1 && s.transfers_active == 0; }));
}

TEST_CASE("with omit_zero_tsize an empty file asked only for tsize gets DATA 1 straight away") {
  ServerOptions options;
  options.omit_zero_tsize = true;
  Fixture fixture(options);
  fixture.put("empty", "");
  RawSocket socket;
  socket.send(fixture.port, rrq("empty", {{"tsize", "0"}}));
  const auto received = socket.receive_packet(2000ms);
  REQUIRE(as<Data>(received) != nullptr);
  CHECK(as<Data>(received)->block == 1);
  CHECK(as<Data>(received)->payload.empty());
}

TEST_CASE("the listen address picks the family and may carry the port: [::1], [::1]:PORT, 127.0.0.1:PORT") {
  TempDir dir;
  write_file(dir.path() / "f", pattern(3000, 7));
  ClientOptions client_options;
  client_options.blksize = 1024;
  const Client client(client_options);
  for (const std::string address : {"[::1]", "::1", "127.0.0.1"}) {
    INFO(address);
    ServerOptions options;
    options.root = dir.path();
    options.address = address;
    Server server(options);
    server.start();
    const std::string host = address == "127.0.0.1" ? "127.0.0.1" : "::1";
    CHECK(client.get(host, server.bound_port(), "f").data == pattern(3000, 7));
    const std::uint16_t port = server.bound_port();
    server.stop();
    // The same port, now named in the address string.
    options.address = host.find(':') != std::string::npos ? "[" + host + "]:" + std::to_string(port) : host + ":" + std::to_string(port);
    Server again(options);
    again.start();
    CHECK(again.bound_port() == port);
    CHECK(client.get(host, port, "f").data == pattern(3000, 7));
  }
}

TEST_CASE("a listen address that is no IP literal, or names another port than ServerOptions.port, is refused") {
  TempDir dir;
  for (const std::string address : {"localhost", "[127.0.0.1]", "[::1]:x", "::1]"}) {
    INFO(address);
    ServerOptions options;
    options.root = dir.path();
    options.address = address;
    Server server(options);
    CHECK_THROWS_AS(server.start(), ServerError);
  }
  ServerOptions options;
  options.root = dir.path();
  options.address = "127.0.0.1:6969";
  options.port = 6970;
  Server server(options);
  CHECK_THROWS_WITH(server.start(), Catch::Contains("set only one of them"));
}

TEST_CASE("a missing final ACK ends the transfer without counting an error") {
  ServerOptions options;
  options.retransmit = 50ms;
  options.max_retries = 2;
  Fixture fixture(options);
  fixture.put("small", "0123456789");
  RawSocket socket;
  socket.send(fixture.port, rrq("small"));
  REQUIRE(as<Data>(socket.receive_packet(2000ms)) != nullptr);
  REQUIRE(wait_for_stats(*fixture.server, [](const Stats& s) { return s.transfers_active == 0 && s.rrq == 1; }));
  const auto stats = fixture.server->stats();
  CHECK(stats.transfers_unconfirmed == 1);
  CHECK(stats.transfers_timed_out == 0);
  CHECK(stats.errors_sent == 0);
}

TEST_CASE("file not found is ERROR 1 even when options were asked, never an OACK") {
  Fixture fixture;
  RawSocket socket;
  socket.send(fixture.port, rrq("missing.bin", {{"blksize", "1468"}, {"tsize", "0"}}));
  const auto received = socket.receive_packet(2000ms);
  const auto* error = as<Error>(received);
  REQUIRE(error != nullptr);
  CHECK(error->code == ErrorCode::file_not_found);
  CHECK(wait_for_stats(*fixture.server, [](const Stats& s) { return s.requests_refused == 1; }));
}

TEST_CASE("a packet from an unknown TID gets ERROR 5 and the transfer goes on") {
  Fixture fixture;
  const auto content = to_string(pattern(700));
  fixture.put("f", content);
  RawSocket client;
  RawSocket stranger;
  client.send(fixture.port, rrq("f"));
  auto received = client.receive_packet(2000ms);
  REQUIRE(as<Data>(received) != nullptr);
  const auto tid = received->second;
  stranger.send(tid, ack(1));
  const auto reply = stranger.receive_packet(2000ms);
  REQUIRE(as<Error>(reply) != nullptr);
  CHECK(as<Error>(reply)->code == ErrorCode::unknown_tid);
  CHECK(reply->second == tid);
  client.send(tid, ack(1));
  received = client.receive_packet(2000ms);
  REQUIRE(as<Data>(received) != nullptr);
  CHECK(as<Data>(received)->block == 2);
  CHECK(as<Data>(received)->payload.size() == 700 - 512);
  client.send(tid, ack(2));
  CHECK(wait_for_stats(*fixture.server, [](const Stats& s) { return s.transfers_done == 1 && s.foreign_tid == 1; }));
}

TEST_CASE("a duplicate ACK never makes the server resend DATA (Sorcerer's Apprentice)") {
  ServerOptions options;
  options.retransmit = 3000ms;
  Fixture fixture(options);
  fixture.put("f", pattern(4 * 512 + 1));
  RawSocket socket;
  socket.send(fixture.port, rrq("f"));
  auto received = socket.receive_packet(2000ms);
  REQUIRE(as<Data>(received) != nullptr);
  const auto tid = received->second;
  socket.send(tid, ack(1));
  received = socket.receive_packet(2000ms);
  REQUIRE(as<Data>(received) != nullptr);
  CHECK(as<Data>(received)->block == 2);
  for (int i = 0; i < 3; ++i) socket.send(tid, ack(1));
  CHECK_FALSE(socket.receive(300ms));
  socket.send(tid, ack(2));
  received = socket.receive_packet(2000ms);
  REQUIRE(as<Data>(received) != nullptr);
  CHECK(as<Data>(received)->block == 3);
  CHECK_FALSE(socket.receive(100ms));
  CHECK(wait_for_stats(*fixture.server, [](const Stats& s) { return s.duplicate_acks == 3 && s.retransmits == 0; }));
}

TEST_CASE("on timeout the server resends the window after the last ACKed block, then gives up after max_retries") {
  ServerOptions options;
  options.retransmit = 100ms;
  options.max_retries = 2;
  Fixture fixture(options);
  fixture.put("f", pattern(20 * 512));
  RawSocket socket;
  socket.send(fixture.port, rrq("f", {{"windowsize", "4"}}));
  auto received = socket.receive_packet(2000ms);
  REQUIRE(as<Oack>(received) != nullptr);
  CHECK(as<Oack>(received)->options == std::vector<Option>{{"windowsize", "4"}});
  const auto tid = received->second;
  socket.send(tid, ack(0));
  std::vector<std::uint16_t> blocks;
  for (int i = 0; i < 4; ++i) {
    received = socket.receive_packet(2000ms);
    REQUIRE(as<Data>(received) != nullptr);
    blocks.push_back(as<Data>(received)->block);
  }
  CHECK(blocks == std::vector<std::uint16_t>{1, 2, 3, 4});
  socket.send(tid, ack(2));  // blocks 3 and 4 "lost": the new window starts at 3
  blocks.clear();
  for (int i = 0; i < 12; ++i) {
    received = socket.receive_packet(2000ms);
    REQUIRE(as<Data>(received) != nullptr);
    blocks.push_back(as<Data>(received)->block);
  }
  CHECK(blocks == std::vector<std::uint16_t>{3, 4, 5, 6, 3, 4, 5, 6, 3, 4, 5, 6});
  CHECK_FALSE(socket.receive(400ms));
  const auto stats = fixture.server->stats();
  CHECK(stats.transfers_timed_out == 1);
  CHECK(stats.retransmits == 8);
  CHECK(stats.transfers_active == 0);
}

TEST_CASE("ERROR 8 from the client after the OACK ends the transfer quietly") {
  Fixture fixture;
  fixture.put("f", pattern(5000));
  RawSocket socket;
  socket.send(fixture.port, rrq("f", {{"tsize", "0"}}));
  const auto received = socket.receive_packet(2000ms);
  REQUIRE(as<Oack>(received) != nullptr);
  std::vector<std::byte> error;
  encode_error(error, ErrorCode::option_refused, "tsize not wanted");
  socket.send(received->second, error);
  REQUIRE(wait_for_stats(*fixture.server, [](const Stats& s) { return s.client_errors == 1 && s.transfers_active == 0; }));
  CHECK_FALSE(socket.receive(200ms));
  CHECK(fixture.server->stats().errors_sent == 0);
}

TEST_CASE("a WRQ is refused with ERROR 2: the server is read-only") {
  Fixture fixture;
  RawSocket socket;
  std::vector<std::byte> wrq;
  encode_request(wrq, Request{Opcode::wrq, "upload.bin", "octet", {}});
  socket.send(fixture.port, wrq);
  const auto received = socket.receive_packet(2000ms);
  REQUIRE(as<Error>(received) != nullptr);
  CHECK(as<Error>(received)->code == ErrorCode::access_violation);
  CHECK(wait_for_stats(*fixture.server, [&](const Stats& s) { return s.wrq_refused == 1; }));
  CHECK_FALSE(fs::exists(fixture.root / "upload.bin"));
}

TEST_CASE("path traversal and symlinks out of the root are refused with ERROR 2") {
  Fixture fixture;
  write_text(fixture.dir.path() / "secret", "top secret");
  fs::create_symlink(fixture.dir.path() / "secret", fixture.root / "link");
  fs::create_directories(fixture.root / "sub");
  for (const std::string name : {"../secret", "sub/../../secret", "..\\secret", "link"}) {
    INFO(name);
    try {
      Client().get("127.0.0.1", fixture.port, name);
      FAIL("download succeeded");
    } catch (const ClientError& error) {
      CHECK(error.code() == ErrorCode::access_violation);
    }
  }
  // A directory is not a file either.
  try {
    Client().get("127.0.0.1", fixture.port, "sub");
    FAIL("download of a directory succeeded");
  } catch (const ClientError& error) {
    CHECK(error.code() == ErrorCode::access_violation);
  }
}

TEST_CASE("backslashes and leading slashes in names resolve inside the root") {
  Fixture fixture;
  fixture.put("boot/x64/wdsnbp.com", "nbp");
  CHECK(to_string(Client().get("127.0.0.1", fixture.port, "boot\\x64\\wdsnbp.com").data) == "nbp");
  CHECK(to_string(Client().get("127.0.0.1", fixture.port, "/boot/x64/wdsnbp.com").data) == "nbp");
}

TEST_CASE("malformed packets on the listening port are counted, answered with ERROR 4 only when a request") {
  Fixture fixture;
  fixture.put("ok", "fine");
  RawSocket socket;
  using namespace std::string_view_literals;
  const std::vector<std::string_view> junk = {
      ""sv, "\0"sv, "\0\x09zzzz"sv, "\0\3\0\1data"sv, "\0\4\0\1"sv, "\0\5\0\1x\0"sv, "\0\6blksize\0" "8\0"sv,
  };
  for (const auto& packet : junk) socket.send(fixture.port, to_bytes(packet));
  CHECK_FALSE(socket.receive(200ms));  // non-requests: silence
  socket.send(fixture.port, to_bytes("\0\1no-terminator"sv));
  auto received = socket.receive_packet(2000ms);
  REQUIRE(as<Error>(received) != nullptr);
  CHECK(as<Error>(received)->code == ErrorCode::illegal_operation);
  CHECK(as<Error>(received)->message == "malformed request: filename is not NUL-terminated at offset 2");
  socket.send(fixture.port, to_bytes("\0\1ok\0octet\0blksize\0"sv));
  received = socket.receive_packet(2000ms);
  REQUIRE(as<Error>(received) != nullptr);
  CHECK(as<Error>(received)->code == ErrorCode::illegal_operation);
  std::string oversized = std::string("\0\1", 2) + std::string(3000, 'a') + std::string("\0octet\0", 7);
  socket.send(fixture.port, to_bytes(oversized));
  CHECK_FALSE(socket.receive(200ms));
  REQUIRE(wait_for_stats(*fixture.server, [&](const Stats& s) { return s.malformed_dropped == junk.size() + 3; }));
  CHECK(to_string(Client().get("127.0.0.1", fixture.port, "ok").data) == "fine");
}

TEST_CASE("mail and unknown modes are refused and netascii turns LF into CRLF and CR into CR NUL") {
  Fixture fixture;
  fixture.put("text", "a\nb\rc");
  RawSocket socket;
  socket.send(fixture.port, rrq("text", {}, "mail"));
  auto received = socket.receive_packet(2000ms);
  REQUIRE(as<Error>(received) != nullptr);
  CHECK(as<Error>(received)->code == ErrorCode::illegal_operation);
  socket.send(fixture.port, rrq("text", {}, "binary"));
  received = socket.receive_packet(2000ms);
  REQUIRE(as<Error>(received) != nullptr);
  ClientOptions options;
  options.mode = "netascii";
  options.tsize = true;
  const auto result = Client(options).get("127.0.0.1", fixture.port, "text");
  CHECK(to_string(result.data) == std::string("a\r\nb\r\0c", 7));
  CHECK(result.oack.empty());  // tsize is octet-only
}

TEST_CASE("netascii can be disabled and is then refused with ERROR 0") {
  ServerOptions options;
  options.allow_netascii = false;
  Fixture fixture(options);
  fixture.put("text", "a\n");
  ClientOptions client;
  client.mode = "netascii";
  try {
    Client(client).get("127.0.0.1", fixture.port, "text");
    FAIL("netascii download succeeded");
  } catch (const ClientError& error) {
    CHECK(error.code() == ErrorCode::not_defined);
  }
}

TEST_CASE("an RRQ beyond max_transfers gets ERROR 0 server busy") {
  ServerOptions options;
  options.max_transfers = 2;
  Fixture fixture(options);
  fixture.put("f", pattern(10'000));
  RawSocket a, b, c;
  a.send(fixture.port, rrq("f"));
  b.send(fixture.port, rrq("f"));
  REQUIRE(as<Data>(a.receive_packet(2000ms)) != nullptr);
  REQUIRE(as<Data>(b.receive_packet(2000ms)) != nullptr);
  c.send(fixture.port, rrq("f"));
  const auto received = c.receive_packet(2000ms);
  REQUIRE(as<Error>(received) != nullptr);
  CHECK(as<Error>(received)->code == ErrorCode::not_defined);
  CHECK(as<Error>(received)->message == "server busy");
  CHECK(wait_for_stats(*fixture.server, [&](const Stats& s) { return s.busy_refused == 1; }));
}

TEST_CASE("a retransmitted RRQ from the same client port does not start a second transfer") {
  Fixture fixture;
  fixture.put("f", pattern(10'000));
  RawSocket socket;
  socket.send(fixture.port, rrq("f"));
  socket.send(fixture.port, rrq("f"));
  REQUIRE(as<Data>(socket.receive_packet(2000ms)) != nullptr);
  CHECK_FALSE(socket.receive(200ms));
  CHECK(fixture.server->stats().rrq == 1);
}

TEST_CASE("files of more than 65,535 blocks arrive intact with rollover to 0 and to 1") {
  const auto content = to_string(pattern(70'000 * 8 + 5));
  for (const bool to_zero : {true, false}) {
    INFO("rollover_to_zero=" << to_zero);
    ServerOptions options;
    options.rollover_to_zero = to_zero;
    Fixture fixture(options);
    fixture.put("big", content);
    ClientOptions client;
    client.blksize = 8;
    client.windowsize = 16;
    client.rollover_to_zero = to_zero;
    client.deadline = 60'000ms;
    const auto result = Client(client).get("127.0.0.1", fixture.port, "big");
    CHECK(result.blocks == 70'001);
    CHECK(to_string(result.data) == content);
  }
}

TEST_CASE("windowsize 16 downloads match and the server grants at most max_windowsize") {
  ServerOptions options;
  options.max_windowsize = 8;
  Fixture fixture(options);
  const auto content = to_string(pattern(1 << 20));
  fixture.put("m", content);
  ClientOptions client;
  client.blksize = 1468;
  client.windowsize = 16;
  const auto result = Client(client).get("127.0.0.1", fixture.port, "m");
  CHECK(result.windowsize == 8);
  CHECK(to_string(result.data) == content);
}

TEST_CASE("a file read by many concurrent clients is loaded from disk once and a changed file is reloaded") {
  Fixture fixture;
  fixture.put("shared", pattern(5000));
  std::vector<std::unique_ptr<RawSocket>> sockets;
  for (int i = 0; i < 20; ++i) {
    sockets.push_back(std::make_unique<RawSocket>());
    sockets.back()->send(fixture.port, rrq("shared"));
  }
  for (auto& socket : sockets) REQUIRE(as<Data>(socket->receive_packet(2000ms)) != nullptr);
  CHECK(wait_for_stats(*fixture.server, [](const Stats& s) { return s.rrq == 20; }));
  const auto stats = fixture.server->stats();
  CHECK(stats.file_loads == 1);
  CHECK(stats.file_cache_hits == 19);
  CHECK(stats.transfers_active == 20);
  fixture.put("shared", pattern(6000, 2));
  CHECK(to_string(Client().get("127.0.0.1", fixture.port, "shared").data) == to_string(pattern(6000, 2)));
  CHECK(wait_for_stats(*fixture.server, [&](const Stats& s) { return s.file_loads == 2; }));
}

TEST_CASE("large files are streamed from a shared descriptor and arrive intact") {
  ServerOptions options;
  options.cache_file_bytes = 4096;  // force the pread path
  Fixture fixture(options);
  const auto content = to_string(pattern(300'000));
  fixture.put("large", content);
  ClientOptions client;
  client.blksize = 1468;
  client.windowsize = 4;
  CHECK(to_string(Client(client).get("127.0.0.1", fixture.port, "large").data) == content);
}

TEST_CASE("virtual files are served before the root and see the requesting peer") {
  ServerOptions options;
  options.virtual_file = [](std::string_view path, const sockaddr_storage& peer) -> std::optional<std::string> {
    if (path != "boot/bootstrap.cfg") return std::nullopt;
    return "generated for family " + std::to_string(peer.ss_family);
  };
  Fixture fixture(options);
  fixture.put("plain", "disk");
  CHECK(to_string(Client().get("127.0.0.1", fixture.port, "boot\\bootstrap.cfg").data) == "generated for family 2");
  CHECK(to_string(Client().get("127.0.0.1", fixture.port, "plain").data) == "disk");
}

TEST_CASE("a transfer that outlives max_lifetime is ended with ERROR 0") {
  ServerOptions options;
  options.max_lifetime = std::chrono::seconds(1);
  options.retransmit = 200ms;
  options.max_retries = 100;
  Fixture fixture(options);
  fixture.put("f", pattern(2000));
  RawSocket socket;
  socket.send(fixture.port, rrq("f"));
  std::optional<Error> last_error;
  // Bounded: at most ~7 resends within the 1 s lifetime, then the ERROR.
  for (int i = 0; i < 20 && !last_error; ++i) {
    const auto received = socket.receive_packet(2000ms);
    if (!received) break;
    if (const auto* error = as<Error>(received)) last_error = *error;
  }
  REQUIRE(last_error);
  CHECK(last_error->message == "transfer exceeded its lifetime");
  CHECK(wait_for_stats(*fixture.server, [&](const Stats& s) { return s.transfers_timed_out == 1; }));
}

TEST_CASE("transfer ports come from the configured range") {
  ServerOptions options;
  options.port_range_low = 47100;
  options.port_range_high = 47140;
  Fixture fixture(options);
  fixture.put("f", "x");
  const auto result = Client().get("127.0.0.1", fixture.port, "f");
  CHECK(result.server_port >= 47100);
  CHECK(result.server_port <= 47140);
}

TEST_CASE("a bad root or port range is a ServerError that names it") {
  ServerOptions options;
  options.root = "/nonexistent/deskfarm-tftp";
  CHECK_THROWS_WITH(Server(options), Catch::Contains("/nonexistent/deskfarm-tftp"));
  TempDir dir;
  options.root = dir.path();
  options.port_range_low = 100;
  CHECK_THROWS_WITH(Server(options), Catch::Contains("port range 100..0"));
}

TEST_CASE("stop() ends active transfers and may be called twice") {
  Fixture fixture;
  const auto content = pattern(10'000);
  fixture.put("f", content);
  RawSocket socket;
  socket.send(fixture.port, rrq("f"));
  const auto first = socket.receive_packet(2000ms);
  REQUIRE(as<Data>(first) != nullptr);
  const auto transfer_port = first->second;
  fixture.server->stop();
  fixture.server->stop();
  CHECK(fixture.server->stats().rrq == 1);
  // The transfer really ended: the ACK of block 1, which a live transfer answers with DATA 2 at once, gets
  // nothing of f (not even a resend of DATA 1 after the 1 s timeout), and the listening port serves no new
  // request. The ports are free once stopped and tests run in parallel, so another test's socket may bind one
  // meanwhile and answer: only f's own blocks count as an answer from this server.
  // Everything that arrives within `limit` (bounded: each wait is at most the time left).
  const auto any_block_of_f = [&](std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    for (auto left = limit; left > 0ms;
         left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now())) {
      const auto received = socket.receive(left);
      if (!received) return false;
      const auto parsed = parse_packet(received->bytes);
      const auto* packet = std::get_if<Packet>(&parsed);
      const auto* data = packet ? std::get_if<Data>(packet) : nullptr;
      if (data == nullptr || data->block == 0) continue;
      const auto offset = std::size_t{data->block - 1u} * 512;
      if (offset < content.size() && data->payload.size() == std::min<std::size_t>(512, content.size() - offset) &&
          std::equal(data->payload.begin(), data->payload.end(), content.begin() + static_cast<std::ptrdiff_t>(offset)))
        return true;
    }
    return false;
  };
  socket.send(transfer_port, ack(1));
  CHECK_FALSE(any_block_of_f(2500ms));
  socket.send(fixture.port, rrq("f"));
  CHECK_FALSE(any_block_of_f(1500ms));
}

TEST_CASE("one event thread serves 1,000 concurrent transfers") {
  Fixture fixture;
  const auto content = to_string(pattern(4 * 512 + 100));
  fixture.put("f", content);
  constexpr std::size_t count = 1000;
  struct Peer {
    std::unique_ptr<RawSocket> socket = std::make_unique<RawSocket>();
    std::uint16_t tid = 0;
    std::uint16_t next = 1;
    std::string data;
    bool done = false;
  };
  std::vector<Peer> peers(count);
  std::vector<pollfd> polls(count);
  for (std::size_t i = 0; i < count; ++i) polls[i] = pollfd{peers[i].socket->fd(), POLLIN, 0};
  auto pump = [&](bool ack_data, std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    auto resend_at = std::chrono::steady_clock::now() + 1000ms;
    // Bounded by `limit`.
    while (std::chrono::steady_clock::now() < until) {
      std::size_t waiting = 0;
      for (const auto& peer : peers) waiting += ack_data ? !peer.done : peer.tid == 0;
      if (waiting == 0) return true;
      if (std::chrono::steady_clock::now() >= resend_at) {
        // Lost datagrams (full buffers) are recovered the way a real client would: resend.
        for (auto& peer : peers) {
          if (peer.tid == 0) peer.socket->send(fixture.port, rrq("f"));
          else if (ack_data && !peer.done) peer.socket->send(peer.tid, ack(static_cast<std::uint16_t>(peer.next - 1)));
        }
        resend_at = std::chrono::steady_clock::now() + 1000ms;
      }
      if (::poll(polls.data(), polls.size(), 100) <= 0) continue;
      for (std::size_t i = 0; i < count; ++i) {
        if ((polls[i].revents & POLLIN) == 0) continue;
        auto& peer = peers[i];
        auto received = peer.socket->receive_packet(0ms);
        const auto* data = as<Data>(received);
        if (data == nullptr) continue;
        if (peer.tid == 0) peer.tid = received->second;
        if (data->block == peer.next) {
          peer.data += to_string(data->payload);
          ++peer.next;
          if (data->payload.size() < 512) peer.done = true;
        }
        if (ack_data) peer.socket->send(peer.tid, ack(data->block));
      }
    }
    return false;
  };
  for (auto& peer : peers) peer.socket->send(fixture.port, rrq("f"));
  REQUIRE(pump(false, 20'000ms));  // every transfer has started and none has finished
  CHECK(wait_for_stats(*fixture.server, [&](const Stats& s) { return s.transfers_peak >= count; }));
  for (auto& peer : peers) peer.socket->send(peer.tid, ack(static_cast<std::uint16_t>(peer.next - 1)));
  REQUIRE(pump(true, 60'000ms));
  for (const auto& peer : peers) REQUIRE(peer.data == content);
  CHECK(wait_for_stats(*fixture.server, [](const Stats& s) { return s.transfers_done == count && s.transfers_active == 0; }));
  CHECK(wait_for_stats(*fixture.server, [&](const Stats& s) { return s.file_loads == 1; }));
}
