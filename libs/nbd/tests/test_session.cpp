#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <cerrno>
#include <mutex>
#include <thread>

#include "deskfarm/nbd/client.hpp"
#include "deskfarm/nbd/export.hpp"
#include "deskfarm/nbd/protocol.hpp"
#include "deskfarm/nbd/server.hpp"
#include "support.hpp"

using namespace deskfarm::nbd;
using namespace deskfarm::nbd::test;
namespace p = deskfarm::nbd::proto;

namespace {

constexpr std::uint64_t kSize = 1 << 20;

/// An in-process server on 127.0.0.1:ephemeral with "ro" (read-only) and "rw" (RAM) exports.
struct TestServer {
  std::shared_ptr<MemoryExport> ro = std::make_shared<MemoryExport>(pattern(kSize, 1), true);
  std::shared_ptr<MemoryExport> rw = std::make_shared<MemoryExport>(kSize, false);
  std::mutex log_mutex;
  std::vector<std::string> lines;
  Server server;

  explicit TestServer(ServerOptions o = {})
      : server(with_log(std::move(o)),
               [this](std::string_view name, std::string_view) -> Resolution {
                 if (name == "ro" || name.empty()) return {ro, {}};
                 if (name == "rw") return {rw, {}};
                 return {nullptr, "unknown device '" + std::string(name) + "'"};
               },
               [](std::string_view) {
                 return std::vector<ExportEntry>{{"ro", "read-only vDisk"}, {"rw", "scratch disk"}};
               }) {
    server.start();
  }
  ServerOptions with_log(ServerOptions o) {
    o.log = [this](std::string_view line) {
      std::lock_guard lock(log_mutex);
      lines.emplace_back(line);
    };
    return o;
  }
  std::uint16_t port() const { return server.bound_port(); }
  std::string log_text() {
    std::lock_guard lock(log_mutex);
    std::string all;
    for (auto& l : lines) all += l + "\n";
    return all;
  }
  /// Waits (at most 5 s) until the server has no open connection.
  void wait_idle() {
    eventually([this] { return server.stats().active == 0; }, std::chrono::seconds(5));
  }
};

std::vector<std::byte> go_data(std::string_view name, std::vector<std::uint16_t> infos = {}) {
  Msg m;
  m.u32(name.size()).str(name).u16(infos.size());
  for (auto i : infos) m.u16(i);
  return m.bytes;
}

/// Sends NBD_OPT_GO and returns the NBD_INFO_EXPORT transmission flags; fails the test on refusal.
std::uint16_t go(RawSocket& s, std::string_view name) {
  send_option(s, p::kOptGo, go_data(name));
  std::uint16_t flags = 0;
  for (int i = 0; i < 8; ++i) {
    auto r = read_reply(s);
    REQUIRE(r.type != p::kRepErrUnknown);
    if (r.type == p::kRepAck) return flags;
    if (r.type == p::kRepInfo && be_at(r.data, 0, 2) == p::kInfoExport) flags = static_cast<std::uint16_t>(be_at(r.data, 10, 2));
  }
  FAIL("no ACK to NBD_OPT_GO");
  return 0;
}

void request(RawSocket& s, std::uint16_t type, std::uint64_t cookie, std::uint64_t off, std::uint32_t len,
             std::uint16_t flags = 0) {
  s.send(Msg{}.u32(p::kRequestMagic).u16(flags).u16(type).u64(cookie).u64(off).u32(len).bytes);
}

void write_request(RawSocket& s, std::uint64_t cookie, std::uint64_t off, const std::vector<std::byte>& data,
                   std::uint16_t flags) {
  Msg m;
  m.u32(p::kRequestMagic).u16(flags).u16(p::kCmdWrite).u64(cookie).u64(off).u32(data.size());
  m.bytes.insert(m.bytes.end(), data.begin(), data.end());
  s.send(m.bytes);
}

std::uint32_t simple_reply(RawSocket& s, std::uint64_t cookie) {
  auto r = s.recv(16);
  REQUIRE(be_at(r, 0, 4) == p::kSimpleReplyMagic);
  REQUIRE(be_at(r, 8, 8) == cookie);
  return static_cast<std::uint32_t>(be_at(r, 4, 4));
}

}  // namespace

TEST_CASE("NBD_OPT_LIST returns every export as NBD_REP_SERVER, then ACK") {
  TestServer ts;
  RawSocket s(ts.port());
  greet(s);
  send_option(s, p::kOptList);
  auto a = read_reply(s);
  auto b = read_reply(s);
  auto ack = read_reply(s);
  CHECK(a.type == p::kRepServer);
  CHECK(be_at(a.data, 0, 4) == 2);
  CHECK(to_string(std::span(a.data).subspan(4)) == "roread-only vDisk");
  CHECK(b.type == p::kRepServer);
  CHECK(ack.type == p::kRepAck);
  CHECK(ack.option == p::kOptList);
  send_option(s, p::kOptList, {std::byte{1}});  // LIST carries no data
  CHECK(read_reply(s).type == p::kRepErrInvalid);
}

TEST_CASE("without a Lister NBD_OPT_LIST gets ERR_POLICY, and a denied export ERR_POLICY with the resolver's text") {
  Server server({}, [](std::string_view name, std::string_view peer) -> Resolution {
    return {nullptr, "device " + std::string(name) + " may not connect from " + std::string(peer), true};
  });
  server.start();
  RawSocket s(server.bound_port());
  greet(s);
  send_option(s, p::kOptList);
  auto r = read_reply(s);
  CHECK(to_string(r.data) == "export listing is disabled on this server");
  CHECK((r.option == p::kOptList && r.type == p::kRepErrPolicy));
  send_option(s, p::kOptGo, go_data("pc-1"));
  r = read_reply(s);
  CHECK(r.type == p::kRepErrPolicy);
  CHECK(to_string(r.data) == "device pc-1 may not connect from 127.0.0.1");
}

TEST_CASE("NBD_OPT_GO for an unknown device is refused with ERR_UNKNOWN and a message, and the client may retry") {
  TestServer ts;
  RawSocket s(ts.port());
  greet(s);
  send_option(s, p::kOptGo, go_data("pc-42"));
  auto r = read_reply(s);
  CHECK(r.type == p::kRepErrUnknown);
  CHECK(to_string(r.data) == "unknown device 'pc-42'");
  CHECK((go(s, "ro") & p::kTxReadOnly) != 0);
}

TEST_CASE("NBD_OPT_INFO reports size, flags and block sizes without entering transmission") {
  TestServer ts;
  RawSocket s(ts.port());
  greet(s);
  send_option(s, p::kOptInfo, go_data("rw", {p::kInfoBlockSize, p::kInfoName}));
  auto exp = read_reply(s);
  REQUIRE(exp.type == p::kRepInfo);
  CHECK(be_at(exp.data, 0, 2) == p::kInfoExport);
  CHECK(be_at(exp.data, 2, 8) == kSize);
  const auto flags = be_at(exp.data, 10, 2);
  CHECK((flags & p::kTxHasFlags) != 0);
  CHECK((flags & p::kTxSendFlush) != 0);
  CHECK((flags & p::kTxReadOnly) == 0);
  auto bs = read_reply(s);
  REQUIRE(bs.type == p::kRepInfo);
  CHECK(be_at(bs.data, 0, 2) == p::kInfoBlockSize);
  CHECK(be_at(bs.data, 2, 4) == 1);
  CHECK(be_at(bs.data, 6, 4) == 4096);
  CHECK(be_at(bs.data, 10, 4) == (32U << 20));
  auto name = read_reply(s);
  CHECK(be_at(name.data, 0, 2) == p::kInfoName);
  CHECK(read_reply(s).type == p::kRepAck);
  CHECK((go(s, "ro") & p::kTxReadOnly) != 0);  // still haggling after INFO
}

TEST_CASE("unknown options and structured replies get ERR_UNSUP and haggling continues") {
  TestServer ts;
  RawSocket s(ts.port());
  greet(s);
  send_option(s, 0x4242, Msg{}.u32(7).bytes);
  CHECK(read_reply(s).type == p::kRepErrUnsup);
  send_option(s, p::kOptStructuredReply);
  CHECK(read_reply(s).type == p::kRepErrUnsup);
  send_option(s, p::kOptStartTls);
  CHECK(read_reply(s).type == p::kRepErrUnsup);
  go(s, "ro");
}

TEST_CASE("NBD_OPT_GO whose lengths do not add up gets ERR_INVALID") {
  TestServer ts;
  RawSocket s(ts.port());
  greet(s);
  send_option(s, p::kOptGo, Msg{}.u32(1000).str("ro").u16(0).bytes);  // name length runs past the data
  CHECK(read_reply(s).type == p::kRepErrInvalid);
  send_option(s, p::kOptGo, Msg{}.u32(2).str("ro").u16(3).u16(0).bytes);  // 3 requests announced, 1 sent
  CHECK(read_reply(s).type == p::kRepErrInvalid);
  send_option(s, p::kOptInfo, Msg{}.u16(0).bytes);  // shorter than the fixed part
  CHECK(read_reply(s).type == p::kRepErrInvalid);
  go(s, "ro");
}

TEST_CASE("an option longer than 64 KiB gets ERR_TOO_BIG and the connection is closed without buffering it") {
  TestServer ts;
  RawSocket s(ts.port());
  greet(s);
  s.send(Msg{}.u64(p::kOptMagic).u32(p::kOptGo).u32(0xfffffff0).bytes);
  CHECK(read_reply(s).type == p::kRepErrTooBig);
  CHECK(s.closed_by_peer());
  ts.wait_idle();
  CHECK(ts.server.stats().handshake_failures == 1);
}

TEST_CASE("NBD_OPT_ABORT is acknowledged and the connection closed") {
  TestServer ts;
  RawSocket s(ts.port());
  greet(s);
  send_option(s, p::kOptAbort);
  auto r = read_reply(s);
  CHECK(r.type == p::kRepAck);
  CHECK(r.option == p::kOptAbort);
  CHECK(s.closed_by_peer());
}

TEST_CASE("malformed handshakes are counted and closed") {
  TestServer ts;
  {
    RawSocket s(ts.port());
    greet(s, 0x80);  // unknown client flag
    CHECK(s.closed_by_peer());
  }
  {
    RawSocket s(ts.port());
    greet(s, p::kClientFlagNoZeroes);  // old (non-fixed) newstyle client
    CHECK(s.closed_by_peer());
  }
  {
    RawSocket s(ts.port());
    greet(s);
    s.send(Msg{}.u64(0x1122334455667788ULL).u32(p::kOptGo).u32(0).bytes);  // bad option magic
    CHECK(s.closed_by_peer());
  }
  ts.wait_idle();
  CHECK(ts.server.stats().handshake_failures == 3);
  CHECK_THAT(ts.log_text(), Catch::Contains("unknown client flags 0x00000080"));
  CHECK_THAT(ts.log_text(), Catch::Contains("bad option magic"));
}

TEST_CASE("NBD_OPT_EXPORT_NAME selects the export the old way, with and without zero padding") {
  TestServer ts;
  for (bool no_zeroes : {true, false}) {
    RawSocket s(ts.port());
    greet(s, p::kClientFlagFixedNewstyle | (no_zeroes ? p::kClientFlagNoZeroes : 0));
    send_option(s, p::kOptExportName, Msg{}.str("ro").bytes);
    auto r = s.recv(no_zeroes ? 10 : 134);
    CHECK(be_at(r, 0, 8) == kSize);
    CHECK((be_at(r, 8, 2) & p::kTxReadOnly) != 0);
    request(s, p::kCmdRead, 9, 0, 16);
    REQUIRE(simple_reply(s, 9) == 0);
    auto data = s.recv(16);
    const auto orig = pattern(kSize, 1);
    CHECK(data == std::vector<std::byte>(orig.begin(), orig.begin() + 16));
  }
  RawSocket s(ts.port());
  greet(s);
  send_option(s, p::kOptExportName, Msg{}.str("nope").bytes);
  CHECK(s.closed_by_peer());  // this option has no error reply
}

TEST_CASE("READ past the end of the export fails with EINVAL and the connection stays usable") {
  TestServer ts;
  RawSocket s(ts.port());
  greet(s);
  go(s, "ro");
  request(s, p::kCmdRead, 1, kSize - 10, 20);
  CHECK(simple_reply(s, 1) == p::kEinval);
  request(s, p::kCmdRead, 2, ~0ULL - 5, 10);  // wraps around 2^64
  CHECK(simple_reply(s, 2) == p::kEinval);
  request(s, p::kCmdRead, 3, 0, (32U << 20) + 1);  // over the advertised maximum
  CHECK(simple_reply(s, 3) == p::kEinval);
  request(s, p::kCmdRead, 4, kSize - 10, 10);
  REQUIRE(simple_reply(s, 4) == 0);
  const auto orig = pattern(kSize, 1);
  CHECK(s.recv(10) == std::vector<std::byte>(orig.end() - 10, orig.end()));
  request(s, 77, 5, 0, 0);  // unknown command
  CHECK(simple_reply(s, 5) == p::kEinval);
}

TEST_CASE("WRITE to a read-only export fails with EPERM and its payload is consumed") {
  TestServer ts;
  RawSocket s(ts.port());
  greet(s);
  go(s, "ro");
  Msg m;
  m.u32(p::kRequestMagic).u16(0).u16(p::kCmdWrite).u64(1).u64(0).u32(4).u32(0xdeadbeef);
  s.send(m.bytes);
  CHECK(simple_reply(s, 1) == p::kEperm);
  request(s, p::kCmdFlush, 2, 0, 0);
  CHECK(simple_reply(s, 2) == 0);
  request(s, p::kCmdDisc, 3, 0, 0);
  CHECK(s.closed_by_peer());
}

TEST_CASE("WRITE and WRITE_ZEROES on a writable export land in it") {
  TestServer ts;
  Client c("127.0.0.1", ts.port(), "rw");
  CHECK((c.flags() & p::kTxSendWriteZeroes) != 0);
  const auto data = pattern(100000, 5);
  CHECK(c.write(777, data) == 0);
  std::vector<std::byte> back(data.size());
  CHECK(c.read(777, back) == 0);
  CHECK(back == data);
  c.send_request(p::kCmdWriteZeroes, 42, 1000, 500);
  std::uint64_t cookie = 0;
  CHECK(c.receive_reply(cookie) == 0);
  CHECK(cookie == 42);
  std::vector<std::byte> z(500);
  CHECK(c.read(1000, z) == 0);
  CHECK(z == std::vector<std::byte>(500));
  // The spec: a write (of data or zeroes) beyond the end SHOULD fail with ENOSPC; the export is unchanged.
  CHECK(c.write(kSize - 1, std::vector<std::byte>(2, std::byte{0x77})) == p::kEnospc);
  c.send_request(p::kCmdWriteZeroes, 43, kSize - 4096, 8192);
  CHECK(c.receive_reply(cookie) == p::kEnospc);
  std::vector<std::byte> tail(4096);
  CHECK(c.read(kSize - 4096, tail) == 0);
  CHECK(tail == std::vector<std::byte>(4096));
  c.disconnect();
}

namespace {

/// A third-party-style export that checks nothing itself (as an export written outside this library might):
/// every call is counted, and a call out of range is recorded instead of touching memory.
class UncheckedExport final : public Export {
 public:
  explicit UncheckedExport(std::uint64_t size) : bytes_(size) {}
  std::uint64_t size() const override { return bytes_.size(); }
  bool read_only() const override { return false; }
  int read(std::uint64_t off, std::span<std::byte> out) override {
    ++calls;
    if (out.empty() || off > bytes_.size() || out.size() > bytes_.size() - off) ++out_of_range;
    else std::copy_n(bytes_.begin() + static_cast<std::ptrdiff_t>(off), out.size(), out.begin());
    return 0;
  }
  int write(std::uint64_t off, std::span<const std::byte> in) override {
    ++calls;
    if (in.empty() || off > bytes_.size() || in.size() > bytes_.size() - off) ++out_of_range;
    else std::copy(in.begin(), in.end(), bytes_.begin() + static_cast<std::ptrdiff_t>(off));
    return 0;
  }
  int write_zeroes(std::uint64_t off, std::uint64_t length) override {
    ++calls;
    if (length == 0 || off > bytes_.size() || length > bytes_.size() - off) ++out_of_range;
    return 0;
  }
  int flush() override { return 0; }
  std::atomic<int> calls{0}, out_of_range{0};

 private:
  std::vector<std::byte> bytes_;
};

}  // namespace

TEST_CASE("the session itself refuses bad READ/WRITE/WRITE_ZEROES before an export that checks nothing sees them") {
  auto disk = std::make_shared<UncheckedExport>(kSize);
  SingleExportServer server(disk);
  RawSocket s(server.port());
  greet(s);
  go(s, "disk");
  request(s, p::kCmdRead, 1, 0, 0);  // length 0
  CHECK(simple_reply(s, 1) == p::kEinval);
  request(s, p::kCmdRead, 2, 0, 512, 0x80);  // an unknown command flag
  CHECK(simple_reply(s, 2) == p::kEinval);
  request(s, p::kCmdRead, 3, kSize - 256, 512);  // past the end
  CHECK(simple_reply(s, 3) == p::kEinval);
  request(s, p::kCmdRead, 4, ~0ULL - 100, 512);  // offset + length wraps around 2^64
  CHECK(simple_reply(s, 4) == p::kEinval);
  write_request(s, 5, kSize - 256, pattern(512, 2), 0);  // past the end
  CHECK(simple_reply(s, 5) == p::kEnospc);
  write_request(s, 6, 0, pattern(512, 2), 0x80);  // an unknown command flag
  CHECK(simple_reply(s, 6) == p::kEinval);
  request(s, p::kCmdWriteZeroes, 7, kSize, 1);
  CHECK(simple_reply(s, 7) == p::kEnospc);
  request(s, p::kCmdWriteZeroes, 8, 0, 0);  // length 0
  CHECK(simple_reply(s, 8) == p::kEinval);
  CHECK(disk->calls == 0);
  // The connection is still in step: a good request after the refused ones (and their payloads) works.
  request(s, p::kCmdRead, 9, kSize - 512, 512);
  REQUIRE(simple_reply(s, 9) == 0);
  CHECK(s.recv(512) == std::vector<std::byte>(512));
  CHECK(disk->calls == 1);
  CHECK(disk->out_of_range == 0);
}

TEST_CASE("a WRITE with FUA is acknowledged only after the export is flushed, and a failed flush fails it") {
  auto disk = std::make_shared<FlushRecorder>(kSize);
  SingleExportServer server(disk);
  RawSocket s(server.port());
  greet(s);
  CHECK((go(s, "disk") & p::kTxSendFua) != 0);  // advertised, so clients may send it
  const auto data = pattern(8192, 6);
  write_request(s, 1, 0, data, 0);
  REQUIRE(simple_reply(s, 1) == 0);
  CHECK(disk->flushes == 0);  // a plain WRITE is acknowledged without a flush
  write_request(s, 2, 65536, data, p::kCmdFlagFua);
  REQUIRE(simple_reply(s, 2) == 0);
  // By the time the reply arrived, a flush covering both writes had run (NBD spec: FUA means the data is on
  // permanent storage before the reply is sent).
  CHECK(disk->flushes == 1);
  CHECK(disk->flushed_writes == 2);
  request(s, p::kCmdWriteZeroes, 3, 4096, 4096, p::kCmdFlagFua);
  REQUIRE(simple_reply(s, 3) == 0);
  CHECK(disk->flushes == 2);
  // The reply carries the flush's outcome: a write that could not be made durable is not acknowledged as done.
  disk->flush_error = EIO;
  write_request(s, 4, 131072, data, p::kCmdFlagFua);
  CHECK(simple_reply(s, 4) == p::kEio);
  write_request(s, 5, 196608, data, 0);
  CHECK(simple_reply(s, 5) == 0);  // without FUA the failing flush is not called
  CHECK(disk->flushes == 3);
  std::vector<std::byte> back(data.size());
  REQUIRE(disk->read(65536, back) == 0);
  CHECK(back == data);
}

TEST_CASE("a WRITE larger than the maximum payload closes the connection") {
  ServerOptions o;
  o.max_payload = 65536;
  TestServer ts(o);
  RawSocket s(ts.port());
  greet(s);
  go(s, "rw");
  request(s, p::kCmdWrite, 1, 0, 65537);
  CHECK(s.closed_by_peer());
  ts.wait_idle();
  CHECK(ts.server.stats().protocol_errors == 1);
}

TEST_CASE("stalled WRITE headers of 32 MiB reserve no payload memory before it arrives") {
  TestServer ts;
  constexpr int kStalled = 8;
  constexpr std::uint32_t kLength = 32U << 20;  // the default max_payload: accepted, not refused
  std::vector<std::unique_ptr<RawSocket>> peers;
  for (int i = 0; i < kStalled; ++i) {
    peers.push_back(std::make_unique<RawSocket>(ts.port()));
    greet(*peers.back());
    go(*peers.back(), "rw");
  }
  const std::size_t before = resident_bytes();
  for (auto& s : peers) {
    // A header and the first 4 KiB of its payload, then nothing: the server sits in the middle of the payload.
    Msg m;
    m.u32(p::kRequestMagic).u16(0).u16(p::kCmdWrite).u64(1).u64(0).u32(kLength);
    const auto head = pattern(4096, 3);
    m.bytes.insert(m.bytes.end(), head.begin(), head.end());
    s->send(m.bytes);
  }
  REQUIRE(eventually([&] { return ts.server.stats().requests == kStalled; }, std::chrono::seconds(5)));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let each connection park waiting for the rest
  const std::size_t grown = resident_bytes() - std::min(before, resident_bytes());
  INFO("resident memory grew by " << grown / 1024 << " KiB for " << kStalled << " stalled 32 MiB WRITEs");
  // At most one payload chunk per connection (kIoChunk), never the announced length (8 x 32 MiB).
  CHECK(grown < kStalled * std::size_t{kIoChunk} + (4U << 20));
}

TEST_CASE("an idle device that read 4 KiB and wrote 64 KiB holds under 32 KiB of server memory") {
  TestServer ts;
  constexpr int kDevices = 200;
  const auto data = pattern(64 << 10, 4);
  std::vector<std::unique_ptr<RawSocket>> devices;
  devices.reserve(kDevices);
  const std::size_t before = resident_bytes();
  for (int i = 0; i < kDevices; ++i) {
    auto s = std::make_unique<RawSocket>(ts.port());
    greet(*s);
    go(*s, "rw");
    request(*s, p::kCmdRead, 1, 0, 4096);
    REQUIRE(simple_reply(*s, 1) == 0);
    s->recv(4096);
    write_request(*s, 2, 65536, data, 0);
    REQUIRE(simple_reply(*s, 2) == 0);
    devices.push_back(std::move(s));
  }
  // Past the transport's idle grace (250 ms): every connection has given back its payload and deeper stack pages and
  // waits for a request.
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  const std::size_t after = resident_bytes();
  const std::size_t per_device = (after - std::min(before, after)) / kDevices;
  INFO("resident memory per idle device: " << per_device / 1024 << " KiB (fiber stack, buffers; the export is shared)");
  // Was ~137 KiB: a zero-filled 64 KiB receive buffer and a payload buffer as large as the largest request; then
  // 29 KiB and a thread each. Measured 27 KiB on a fiber.
#if defined(__SANITIZE_ADDRESS__)
  // Under AddressSanitizer each connection also carries shadow memory and redzones: the figure that
  // counts is the plain build's; here only a payload buffer kept per device (+1 MiB) would show.
  CHECK(per_device < 512 * 1024);
#else
  CHECK(per_device < 32 * 1024);
#endif
}

TEST_CASE("a WRITE and a READ spanning several payload chunks move every byte") {
  auto disk = std::make_shared<FlushRecorder>(4 * std::uint64_t{kIoChunk});
  SingleExportServer server(disk);
  Client c("127.0.0.1", server.port(), "disk");
  const auto data = pattern(2 * kIoChunk + 12345, 9);
  CHECK(c.write(100, data, p::kCmdFlagFua) == 0);
  CHECK(disk->writes == 3);  // one export write per chunk ...
  CHECK(disk->flushes == 1);  // ... and the FUA flush once, after the last
  CHECK(disk->flushed_writes == 3);
  std::vector<std::byte> back(data.size());
  CHECK(c.read(100, back) == 0);
  CHECK(back == data);
  std::vector<std::byte> direct(data.size());
  REQUIRE(disk->read(100, direct) == 0);
  CHECK(direct == data);
}

TEST_CASE("a request with bad magic closes only that connection and is counted") {
  TestServer ts;
  Client good("127.0.0.1", ts.port(), "ro");
  RawSocket bad(ts.port());
  greet(bad);
  go(bad, "ro");
  bad.send(Msg{}.u32(0xbadc0de5).u16(0).u16(0).u64(1).u64(0).u32(512).bytes);
  CHECK(bad.closed_by_peer());
  std::vector<std::byte> buf(4096);
  CHECK(good.read(8192, buf) == 0);
  eventually([&] { return ts.server.stats().protocol_errors != 0; }, std::chrono::seconds(5));
  CHECK(ts.server.stats().protocol_errors == 1);
  CHECK_THAT(ts.log_text(), Catch::Contains("bad request magic 0xbadc0de5 in request 1"));
}

TEST_CASE("a truncated WRITE payload ends the session without touching the export") {
  TestServer ts;
  {
    RawSocket s(ts.port());
    greet(s);
    go(s, "rw");
    Msg m;
    m.u32(p::kRequestMagic).u16(0).u16(p::kCmdWrite).u64(1).u64(0).u32(4096).u32(0x01020304);
    s.send(m.bytes);
  }  // hang up mid-payload
  ts.wait_idle();
  std::vector<std::byte> head(4);
  REQUIRE(ts.rw->read(0, head) == 0);
  CHECK(head == std::vector<std::byte>(4));
  CHECK(ts.server.stats().protocol_errors == 1);
}

TEST_CASE("connections beyond max_connections are closed at accept") {
  ServerOptions o;
  o.max_connections = 2;
  TestServer ts(o);
  Client a("127.0.0.1", ts.port(), "ro");
  Client b("127.0.0.1", ts.port(), "ro");
  CHECK_THROWS_AS(Client("127.0.0.1", ts.port(), "ro"), ClientError);
  CHECK(ts.server.stats().rejected == 1);
  a.disconnect();
  ts.server.stats();
  eventually([&] { return ts.server.stats().active <= 1; }, std::chrono::seconds(2));
  Client c("127.0.0.1", ts.port(), "ro");  // room again
  CHECK(c.size() == kSize);
}

namespace {

/// Log lines containing `needle`.
std::size_t lines_with(TestServer& ts, std::string_view needle) {
  std::lock_guard lock(ts.log_mutex);
  return static_cast<std::size_t>(
      std::count_if(ts.lines.begin(), ts.lines.end(), [&](const std::string& l) { return l.find(needle) != std::string::npos; }));
}

}  // namespace

TEST_CASE("a flood of refused connections is one warning a second, the next one counting those held back") {
  TestServer ts({.max_connections = 1});
  Client holder("127.0.0.1", ts.port(), "ro");
  for (int i = 0; i < 20; ++i) CHECK_THROWS_AS(Client("127.0.0.1", ts.port(), "ro"), ClientError);
  CHECK(ts.server.stats().rejected == 20);
  CHECK(lines_with(ts, "(max_connections)") == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  CHECK_THROWS_AS(Client("127.0.0.1", ts.port(), "ro"), ClientError);
  CHECK(lines_with(ts, "(max_connections)") == 2);
  CHECK(lines_with(ts, "(19 more like it in the last second)") == 1);
}

TEST_CASE("out of descriptors, a waiting peer is accepted and closed at once, with a warning") {
  TestServer ts;  // start() raised the soft limit; lowered below for this test only
  rlimit old{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
  std::size_t open_now = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++open_now;
  int closed_at_once = 0, left_waiting = 0;
  std::size_t held_count = 0;
  {
    struct Restore {
      rlimit limit;
      ~Restore() { ::setrlimit(RLIMIT_NOFILE, &limit); }
    } restore{old};
    rlimit low = old;
    low.rlim_cur = open_now + 20;  // room for about ten connections (client and server side each take one)
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
    std::vector<std::unique_ptr<RawSocket>> held;
    // Client and server share this process's descriptors: two spares of our own let the client side connect
    // whichever side runs out first.
    std::vector<UniqueFd> spares;
    for (int i = 0; i < 2; ++i) spares.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    for (int i = 0; i < 40 && closed_at_once + left_waiting < 3; ++i) {
      std::unique_ptr<RawSocket> s;
      try {
        s = std::make_unique<RawSocket>(ts.port());
      } catch (const std::runtime_error&) {
        if (spares.empty()) break;
        spares.pop_back();
        continue;
      }
      const auto asked = std::chrono::steady_clock::now();
      try {
        s->recv(18);  // greeted: the server holds it
        held.push_back(std::move(s));
      } catch (const std::runtime_error&) {
        // Closed by the server at once, or left waiting in the backlog until the 5 s receive timeout.
        ++(std::chrono::steady_clock::now() - asked < std::chrono::seconds(1) ? closed_at_once : left_waiting);
      }
    }
    held_count = held.size();
  }
  INFO(held_count << " connections held before the limit");
  CHECK(held_count >= 5);
  CHECK(closed_at_once == 3);
  CHECK(left_waiting == 0);
  CHECK(lines_with(ts, "Too many open files") == 1);  // the next two in the same second are held back
  Client after("127.0.0.1", ts.port(), "ro");  // limit restored: served again
  CHECK(after.size() == kSize);
}

TEST_CASE("a handshake that stalls is cut off after handshake_timeout") {
  ServerOptions o;
  o.handshake_timeout = std::chrono::milliseconds(200);
  TestServer ts(o);
  RawSocket s(ts.port());
  s.recv(18);  // never answer
  CHECK(s.closed_by_peer());
  ts.wait_idle();
  CHECK(ts.server.stats().handshake_failures == 1);
  CHECK_THAT(ts.log_text(), Catch::Contains("handshake not finished within 200 ms"));
}

namespace {

/// Sends `bytes` one at a time, `gap` apart, until the server has no connection left (or all are sent); returns how
/// long the server kept the connection. A per-recv timeout longer than `gap` never fires on such a peer.
std::chrono::milliseconds dribble(TestServer& ts, RawSocket& s, const std::vector<std::byte>& bytes,
                                  std::chrono::milliseconds gap) {
  const auto start = std::chrono::steady_clock::now();
  for (const auto b : bytes) {
    try {
      s.send({b});
    } catch (const std::runtime_error&) {
      break;  // the server hung up
    }
    std::this_thread::sleep_for(gap);
    if (ts.server.stats().active == 0) break;
  }
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
}

/// Dribbles `bytes` 100 ms apart (20 or more take 2 s: a per-recv timeout would let them through) and checks that
/// the server hung up well before they were all sent (a deadline of 400 ms), logged `why`, and freed the connection's
/// slot (max_connections = 1).
void check_cut_off(TestServer& ts, RawSocket& s, const std::vector<std::byte>& bytes, const std::string& why) {
  CHECK(dribble(ts, s, bytes, std::chrono::milliseconds(100)) < std::chrono::milliseconds(1500));
  CHECK(s.closed_by_peer());
  ts.wait_idle();
  CHECK(ts.server.stats().active == 0);
  CHECK_THAT(ts.log_text(), Catch::Contains(why));
  Client c("127.0.0.1", ts.port(), "ro");
  CHECK(c.size() == kSize);
}

}  // namespace

TEST_CASE("a handshake sent one byte at a time is cut off at the handshake deadline and its slot freed") {
  TestServer ts({.max_connections = 1, .handshake_timeout = std::chrono::milliseconds(400)});
  RawSocket s(ts.port());
  s.recv(18);
  // Client flags, then an NBD_OPT_GO for "rw": 4 + 16 + 4 + 2 + 2 bytes, 100 ms apart (2.8 s in all).
  Msg m;
  m.u32(p::kClientFlagFixedNewstyle).u64(p::kOptMagic).u32(p::kOptGo).u32(8).u32(2).str("rw").u16(0);
  check_cut_off(ts, s, m.bytes, "handshake not finished within 400 ms");
  CHECK(ts.server.stats().handshake_failures == 1);
}

TEST_CASE("after the handshake a silent or dribbling client is closed at idle_timeout and its slot freed") {
  TestServer ts({.max_connections = 1, .idle_timeout = std::chrono::milliseconds(400)});
  RawSocket s(ts.port());
  greet(s);
  go(s, "rw");
  SECTION("silent") {
    check_cut_off(ts, s, {}, "completed within 400 ms (idle_timeout)");
  }
  SECTION("a request header one byte per 100 ms") {
    check_cut_off(ts, s, Msg{}.u32(p::kRequestMagic).u16(0).u16(p::kCmdFlush).u64(1).u64(0).u32(0).bytes,
                  "completed within 400 ms (idle_timeout)");
  }
}

TEST_CASE("two hundred concurrent connections each read their own range correctly") {
  TestServer ts;
  const auto orig = pattern(kSize, 1);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 200; ++i) clients.push_back(std::make_unique<Client>("127.0.0.1", ts.port(), "ro"));
  CHECK(ts.server.stats().active == 200);
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 200; ++i) {
    threads.emplace_back([&, i] {
      std::vector<std::byte> buf(4096);
      const std::uint64_t off = static_cast<std::uint64_t>(i) * 4096;
      bool ok = true;
      for (int k = 0; k < 10; ++k) {
        ok = ok && clients[static_cast<std::size_t>(i)]->read(off, buf) == 0 &&
             std::equal(buf.begin(), buf.end(), orig.begin() + static_cast<long>(off));
      }
      if (ok) ++good;
    });
  }
  for (auto& t : threads) t.join();
  CHECK(good == 200);
}

TEST_CASE("three hundred connected devices are served by the server's fixed threads, none added per connection") {
  ServerOptions o;
  o.threads = 2;
  TestServer ts(o);
  const std::size_t before = thread_count();
  const auto orig = pattern(kSize, 1);
  std::vector<std::unique_ptr<RawSocket>> devices;
  for (int i = 0; i < 300; ++i) {
    auto s = std::make_unique<RawSocket>(ts.port());
    greet(*s);
    go(*s, "ro");
    request(*s, p::kCmdRead, 1, static_cast<std::uint64_t>(i) * 512, 512);
    REQUIRE(simple_reply(*s, 1) == 0);
    const auto got = s->recv(512);
    REQUIRE(std::equal(got.begin(), got.end(), orig.begin() + i * 512));
    devices.push_back(std::move(s));
  }
  CHECK(ts.server.stats().active == 300);
  INFO("threads before: " << before << ", with 300 devices connected: " << thread_count());
  CHECK(thread_count() == before);  // one thread per connection would be 300 more
}

TEST_CASE("on one reactor thread, clients stalled mid-handshake and mid-payload do not hold up another device") {
  ServerOptions o;
  o.threads = 1;
  TestServer ts(o);
  RawSocket dribbler(ts.port());  // the greeting read, then one byte of the client flags and nothing more
  dribbler.recv(18);
  dribbler.send({std::byte{0}});
  RawSocket staller(ts.port());  // a 1 MiB WRITE header and 4 KiB of its payload, then nothing
  greet(staller);
  go(staller, "rw");
  Msg m;
  m.u32(p::kRequestMagic).u16(0).u16(p::kCmdWrite).u64(1).u64(0).u32(1U << 20);
  const auto head = pattern(4096, 3);
  m.bytes.insert(m.bytes.end(), head.begin(), head.end());
  staller.send(m.bytes);
  REQUIRE(eventually([&] { return ts.server.stats().requests == 1; }, std::chrono::seconds(5)));
  // A third device boots and reads while both are parked mid-message on the only reactor thread.
  const auto start = std::chrono::steady_clock::now();
  Client c("127.0.0.1", ts.port(), "ro");
  std::vector<std::byte> buf(65536);
  REQUIRE(c.read(4096, buf) == 0);
  const auto took = std::chrono::steady_clock::now() - start;
  const auto orig = pattern(kSize, 1);
  CHECK(std::equal(buf.begin(), buf.end(), orig.begin() + 4096));
  CHECK(took < std::chrono::seconds(1));
  CHECK(ts.server.stats().active == 3);
}

TEST_CASE("stop() returns with clients still connected and mid-handshake") {
  auto ts = std::make_unique<TestServer>();
  Client c("127.0.0.1", ts->port(), "ro");
  RawSocket half(ts->port());
  half.recv(18);
  ts->server.stop();
  std::vector<std::byte> buf(16);
  CHECK_THROWS_AS(c.read(0, buf), ClientError);
  ts.reset();
}

TEST_CASE("a resolver that throws refuses that client only") {
  auto disk = std::make_shared<MemoryExport>(pattern(kSize, 8), true);
  Server server({}, [disk](std::string_view name, std::string_view) -> Resolution {
    if (name == "x") throw std::runtime_error("db down");
    return {disk, {}};
  });
  server.start();
  Client before("127.0.0.1", server.bound_port(), "ok");  // connected before the failure
  CHECK_THROWS_WITH(Client("127.0.0.1", server.bound_port(), "x"), Catch::Contains("db down"));
  // The other client is still served, and the server still takes new clients.
  std::vector<std::byte> buf(4096);
  REQUIRE(before.read(8192, buf) == 0);
  const auto orig = pattern(kSize, 8);
  CHECK(std::equal(buf.begin(), buf.end(), orig.begin() + 8192));
  Client after("127.0.0.1", server.bound_port(), "ok");
  REQUIRE(after.read(0, buf) == 0);
  CHECK(std::equal(buf.begin(), buf.end(), orig.begin()));
}
