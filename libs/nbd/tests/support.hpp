#pragma once
// NBD test helpers: a raw NBD socket and big-endian message building/reading. The generic ones (temp dirs,
// files, patterns, SHA-256, child processes) are in tests/support: <deskfarm/testing/...>.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <atomic>

#include <catch2/catch.hpp>
#include <cerrno>
#include <memory>
#include <mutex>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "deskfarm/nbd/export.hpp"
#include "deskfarm/nbd/protocol.hpp"
#include "deskfarm/nbd/server.hpp"
#include "deskfarm/nbd/unique_fd.hpp"

namespace deskfarm::nbd::test {

using namespace deskfarm::testing;

/// A raw TCP connection to 127.0.0.1:port for speaking (and breaking) the protocol by hand.
class RawSocket {
 public:
  explicit RawSocket(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("connect failed");
    timeval tv{5, 0};  // every wait in a test is bounded
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  void send(const std::vector<std::byte>& bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::send(fd_.get(), bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n <= 0) throw std::runtime_error("send failed");
      done += static_cast<std::size_t>(n);
    }
  }
  /// Exactly n bytes, or throws on EOF/timeout.
  std::vector<std::byte> recv(std::size_t n) {
    std::vector<std::byte> out(n);
    std::size_t done = 0;
    while (done < n) {
      ssize_t r = ::recv(fd_.get(), out.data() + done, n - done, 0);
      if (r <= 0) throw std::runtime_error("recv: connection closed or timed out after " + std::to_string(done) + " bytes");
      done += static_cast<std::size_t>(r);
    }
    return out;
  }
  /// True if the server closed the connection (EOF or reset within the 5 s timeout).
  bool closed_by_peer() {
    std::byte b[256];
    for (int i = 0; i < 1000; ++i) {
      ssize_t r = ::recv(fd_.get(), b, sizeof b, 0);
      if (r == 0) return true;
      if (r < 0) return errno == ECONNRESET;
    }
    return false;
  }

 private:
  UniqueFd fd_;
};

/// Big-endian message builder.
struct Msg {
  std::vector<std::byte> bytes;
  Msg& u16(std::uint64_t v) { return be(v, 2); }
  Msg& u32(std::uint64_t v) { return be(v, 4); }
  Msg& u64(std::uint64_t v) { return be(v, 8); }
  Msg& str(std::string_view s) {
    for (char c : s) bytes.push_back(static_cast<std::byte>(c));
    return *this;
  }
  Msg& be(std::uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i) bytes.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
    return *this;
  }
};

inline std::uint64_t be_at(const std::vector<std::byte>& b, std::size_t off, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<std::uint8_t>(b.at(off + static_cast<std::size_t>(i)));
  return v;
}

/// A RAM disk that counts writes and flushes and remembers how many writes the last flush covered, so a
/// test sees whether a reply came after the data was flushed; `flush_error` makes flushes fail.
class FlushRecorder final : public Export {
 public:
  explicit FlushRecorder(std::uint64_t size) : ram_(size, false) {}
  std::uint64_t size() const override { return ram_.size(); }
  bool read_only() const override { return false; }
  int read(std::uint64_t off, std::span<std::byte> out) override { return ram_.read(off, out); }
  int write(std::uint64_t off, std::span<const std::byte> in) override {
    const int err = ram_.write(off, in);
    if (err == 0) {
      ++writes;
      record('w');
    }
    return err;
  }
  int flush() override {
    flushed_writes = writes.load();
    ++flushes;
    record('f');
    return flush_error.load();
  }
  /// Every successful write ('w') and flush ('f') so far, in order.
  std::string events() const {
    std::lock_guard lock(mutex_);
    return events_;
  }
  std::atomic<int> writes{0}, flushes{0}, flushed_writes{0}, flush_error{0};

 private:
  void record(char e) {
    std::lock_guard lock(mutex_);
    events_ += e;
  }
  MemoryExport ram_;
  mutable std::mutex mutex_;
  std::string events_;
};

/// One option reply as read off the wire.
struct OptReply {
  std::uint32_t option = 0, type = 0;
  std::vector<std::byte> data;
};

/// Reads the server greeting and answers with `client_flags`.
inline void greet(RawSocket& s, std::uint32_t client_flags = proto::kClientFlagFixedNewstyle | proto::kClientFlagNoZeroes) {
  auto hello = s.recv(18);
  REQUIRE(be_at(hello, 0, 8) == proto::kNbdMagic);
  REQUIRE(be_at(hello, 8, 8) == proto::kOptMagic);
  REQUIRE(be_at(hello, 16, 2) == (proto::kFlagFixedNewstyle | proto::kFlagNoZeroes));
  s.send(Msg{}.u32(client_flags).bytes);
}

inline void send_option(RawSocket& s, std::uint32_t option, const std::vector<std::byte>& data = {}) {
  Msg m;
  m.u64(proto::kOptMagic).u32(option).u32(data.size());
  m.bytes.insert(m.bytes.end(), data.begin(), data.end());
  s.send(m.bytes);
}

inline OptReply read_reply(RawSocket& s) {
  auto head = s.recv(20);
  REQUIRE(be_at(head, 0, 8) == proto::kOptReplyMagic);
  OptReply r;
  r.option = static_cast<std::uint32_t>(be_at(head, 8, 4));
  r.type = static_cast<std::uint32_t>(be_at(head, 12, 4));
  r.data = s.recv(static_cast<std::size_t>(be_at(head, 16, 4)));
  return r;
}

/// A started server whose every export name resolves to `disk`.
struct SingleExportServer {
  Server server;
  explicit SingleExportServer(std::shared_ptr<Export> disk)
      : server({}, [disk](std::string_view, std::string_view) -> Resolution { return {disk, {}}; }) {
    server.start();
  }
  std::uint16_t port() const { return server.bound_port(); }
};

}  // namespace deskfarm::nbd::test
