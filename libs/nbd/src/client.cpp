#include "deskfarm/nbd/client.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "deskfarm/nbd/protocol.hpp"
#include "wire.hpp"

namespace deskfarm::nbd {

using detail::append_be;
using detail::get_be;
using detail::put_be;

Client::Client(const std::string& host, std::uint16_t port, const std::string& export_name)
    : Client(host, port, export_name, ClientOptions{}) {}

Client::Client(const std::string& host, std::uint16_t port, const std::string& export_name, ClientOptions options)
    : where_(host + ":" + std::to_string(port) + " export '" + export_name + "'"), options_(std::move(options)) {
  connect_socket(host, port);
  negotiate(export_name);
}

std::string Client::failure(int err) const {
  if (options_.stop.stop_requested()) return "stopped";
  if (err == EAGAIN || err == EWOULDBLOCK) return "no answer within " + std::to_string(options_.timeout.count()) + " ms";
  return std::strerror(err);
}

void Client::connect_socket(const std::string& host, std::uint16_t port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0) {
    throw ClientError("nbd client: cannot resolve " + where_ + ": " + ::gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);
  fd_.reset(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd_) throw ClientError("nbd client: socket for " + where_ + ": " + std::strerror(errno));
  if (!options_.bind_address.empty()) {
    addrinfo local_hints{};
    local_hints.ai_family = res->ai_family;
    local_hints.ai_socktype = SOCK_STREAM;
    local_hints.ai_flags = AI_NUMERICHOST;
    addrinfo* local = nullptr;
    if (::getaddrinfo(options_.bind_address.c_str(), "0", &local_hints, &local) != 0 || local == nullptr) {
      throw ClientError("nbd client: bind address '" + options_.bind_address + "' for " + where_ + " is not an IP literal of the server's family");
    }
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> local_guard(local, &::freeaddrinfo);
    if (::bind(fd_.get(), local->ai_addr, local->ai_addrlen) != 0) {
      throw ClientError("nbd client: cannot bind to " + options_.bind_address + " for " + where_ + ": " + std::strerror(errno));
    }
  }
  if (options_.stop.stop_possible()) {
    const int fd = fd_.get();
    on_stop_ = std::make_unique<std::stop_callback<std::function<void()>>>(
        options_.stop, std::function<void()>([fd] { ::shutdown(fd, SHUT_RDWR); }));
  }
  const bool bounded = options_.timeout.count() > 0 || options_.stop.stop_possible();
  if (!bounded) {
    if (::connect(fd_.get(), res->ai_addr, res->ai_addrlen) != 0) {
      throw ClientError("nbd client: cannot connect to " + where_ + ": " + std::strerror(errno));
    }
  } else {
    // Non-blocking connect, polled in slices so that a stop request or the timeout ends it.
    const int flags = ::fcntl(fd_.get(), F_GETFL);
    ::fcntl(fd_.get(), F_SETFL, flags | O_NONBLOCK);
    if (::connect(fd_.get(), res->ai_addr, res->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) throw ClientError("nbd client: cannot connect to " + where_ + ": " + std::strerror(errno));
      using Clock = std::chrono::steady_clock;
      const auto deadline = options_.timeout.count() > 0 ? Clock::now() + options_.timeout : Clock::time_point::max();
      // Bounded: every pass waits up to 50 ms and the deadline (or the stop request) ends the loop.
      while (true) {
        if (options_.stop.stop_requested()) throw ClientError("nbd client: connecting to " + where_ + ": stopped");
        const auto now = Clock::now();
        if (now >= deadline) {
          throw ClientError("nbd client: cannot connect to " + where_ + ": no answer within " +
                            std::to_string(options_.timeout.count()) + " ms");
        }
        const auto slice = std::min<Clock::duration>(deadline - now, std::chrono::milliseconds(50));
        pollfd p{fd_.get(), POLLOUT, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(slice).count()));
        if (ready < 0 && errno != EINTR) throw ClientError("nbd client: poll for " + where_ + ": " + std::strerror(errno));
        if (ready > 0) break;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) throw ClientError("nbd client: cannot connect to " + where_ + ": " + std::strerror(err));
    }
    ::fcntl(fd_.get(), F_SETFL, flags);
    if (options_.timeout.count() > 0) {
      timeval tv{};
      tv.tv_sec = static_cast<time_t>(options_.timeout.count() / 1000);
      tv.tv_usec = static_cast<suseconds_t>((options_.timeout.count() % 1000) * 1000);
      ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
  }
  int one = 1;
  ::setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void Client::negotiate(const std::string& export_name) {
  std::array<std::byte, 18> hello{};
  recv_all(hello);
  if (get_be(hello.data(), 8) != proto::kNbdMagic || get_be(hello.data() + 8, 8) != proto::kOptMagic) {
    throw ClientError("nbd client: " + where_ + " is not a newstyle NBD server");
  }
  std::vector<std::byte> msg;
  append_be(msg, proto::kClientFlagFixedNewstyle | proto::kClientFlagNoZeroes, 4);
  append_be(msg, proto::kOptMagic, 8);
  append_be(msg, proto::kOptGo, 4);
  append_be(msg, 4 + export_name.size() + 2, 4);
  append_be(msg, export_name.size(), 4);
  detail::append_bytes(msg, export_name);
  append_be(msg, 0, 2);
  send_all(msg);
  for (int i = 0; i < 16; ++i) {  // a server sends a handful of NBD_REP_INFO before the ACK
    std::array<std::byte, 20> head{};
    recv_all(head);
    const auto type = static_cast<std::uint32_t>(get_be(head.data() + 12, 4));
    const auto len = get_be(head.data() + 16, 4);
    if (len > 65536) throw ClientError("nbd client: " + where_ + ": option reply of " + std::to_string(len) + " bytes");
    std::vector<std::byte> data(static_cast<std::size_t>(len));
    recv_all(data);
    if (type == proto::kRepAck) return;
    if (type & 0x80000000U) {
      throw ClientError("nbd client: " + where_ + " refused (reply " + detail::hex32(type) +
                        "): " + std::string(reinterpret_cast<const char*>(data.data()), data.size()));
    }
    if (type == proto::kRepInfo && data.size() >= 12 && get_be(data.data(), 2) == proto::kInfoExport) {
      size_ = get_be(data.data() + 2, 8);
      flags_ = static_cast<std::uint16_t>(get_be(data.data() + 10, 2));
    }
  }
  throw ClientError("nbd client: " + where_ + ": no ACK after 16 option replies");
}

void Client::send_all(std::span<const std::byte> a, std::span<const std::byte> b) {
  iovec iov[2] = {{const_cast<std::byte*>(a.data()), a.size()}, {const_cast<std::byte*>(b.data()), b.size()}};
  int first = 0;
  const int count = b.empty() ? 1 : 2;
  while (first < count) {
    msghdr msg{};
    msg.msg_iov = iov + first;
    msg.msg_iovlen = static_cast<std::size_t>(count - first);
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw ClientError("nbd client: send to " + where_ + " failed: " + failure(errno));
    auto left = static_cast<std::size_t>(n);
    while (first < count && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (first < count) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
}

void Client::recv_all(std::span<std::byte> out) {
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::recv(fd_.get(), out.data() + done, out.size() - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw ClientError("nbd client: receive from " + where_ + " failed: " + failure(errno));
    if (n == 0) {
      throw ClientError("nbd client: " + where_ + (options_.stop.stop_requested() ? ": stopped" : " closed the connection"));
    }
    done += static_cast<std::size_t>(n);
  }
}

void Client::send_request(std::uint16_t type, std::uint64_t cookie, std::uint64_t off, std::uint32_t length,
                          std::span<const std::byte> payload, std::uint16_t flags) {
  std::array<std::byte, 28> head{};
  put_be(head.data(), proto::kRequestMagic, 4);
  put_be(head.data() + 4, flags, 2);
  put_be(head.data() + 6, type, 2);
  put_be(head.data() + 8, cookie, 8);
  put_be(head.data() + 16, off, 8);
  put_be(head.data() + 24, length, 4);
  send_all(head, payload);
}

std::uint32_t Client::receive_reply(std::uint64_t& cookie) {
  std::array<std::byte, 16> head{};
  recv_all(head);
  if (get_be(head.data(), 4) != proto::kSimpleReplyMagic) {
    throw ClientError("nbd client: " + where_ + " sent a reply with magic " + detail::hex32(get_be(head.data(), 4)));
  }
  cookie = get_be(head.data() + 8, 8);
  return static_cast<std::uint32_t>(get_be(head.data() + 4, 4));
}

void Client::receive_payload(std::span<std::byte> out) { recv_all(out); }

std::uint32_t Client::read(std::uint64_t off, std::span<std::byte> out) {
  const auto cookie = next_cookie_++;
  send_request(proto::kCmdRead, cookie, off, static_cast<std::uint32_t>(out.size()));
  std::uint64_t got = 0;
  const auto err = receive_reply(got);
  if (err == 0) receive_payload(out);
  return err;
}

std::uint32_t Client::write(std::uint64_t off, std::span<const std::byte> in, std::uint16_t flags) {
  const auto cookie = next_cookie_++;
  send_request(proto::kCmdWrite, cookie, off, static_cast<std::uint32_t>(in.size()), in, flags);
  std::uint64_t got = 0;
  return receive_reply(got);
}

std::uint32_t Client::flush() {
  send_request(proto::kCmdFlush, next_cookie_++, 0, 0);
  std::uint64_t got = 0;
  return receive_reply(got);
}

void Client::disconnect() {
  if (!fd_) return;
  try {
    send_request(proto::kCmdDisc, next_cookie_++, 0, 0);
  } catch (const ClientError&) {
    // The server may already have gone; disconnecting is what we wanted anyway.
  }
  on_stop_.reset();  // before the descriptor closes (the callback shuts it down)
  fd_.reset();
}

}  // namespace deskfarm::nbd
