#include "deskfarm/nbd/server.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>
#include <list>
#include <mutex>
#include <optional>
#include <thread>

namespace deskfarm::nbd {
namespace {

/// A connected socket with a read buffer: request headers are 28 bytes and pipelined clients send many per packet.
///
/// Deadlines, not per-recv timeouts (a peer sending one byte just before each timeout would never hit one): the whole
/// handshake, reads and writes alike, must finish by handshake_timeout after accept; after it, each read_exact()
/// (a request header, a payload chunk) and each write_all() must finish within idle_timeout of its start.
class SocketTransport final : public Transport {
 public:
  using Clock = std::chrono::steady_clock;

  SocketTransport(int fd, std::chrono::milliseconds handshake, std::chrono::milliseconds idle,
                  const TlsContext* tls = nullptr)
      : fd_(fd), buffer_(new std::byte[kReceiveBuffer]), idle_(idle), tls_context_(tls) {
    if (handshake.count() > 0) deadline_ = Clock::now() + handshake;
  }
  ~SocketTransport() override {
    if (tls_) tls_->shutdown();  // close_notify, best effort (the socket is non-blocking by then)
  }

  bool tls_available() const override { return tls_context_ != nullptr; }
  bool tls_active() const override { return tls_ != nullptr; }

  bool start_tls(std::string& why) override {
    if (!tls_context_) {
      why = "TLS is not configured";
      return false;
    }
    // The client must wait for the ACK: plaintext that arrived after STARTTLS would be read as a TLS record.
    if (start_ != end_) {
      why = "the client sent data before the TLS handshake";
      return false;
    }
    // OpenSSL reads and writes the descriptor itself: non-blocking, so that every wait goes through wait_for()
    // and its deadline.
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
    auto stream = std::make_unique<TlsStream>(*tls_context_, fd_);
    for (;;) {
      const auto io = stream->accept();
      if (io == TlsStream::Io::done) break;
      if (io == TlsStream::Io::want_read || io == TlsStream::Io::want_write) {
        if (!wait_for(io == TlsStream::Io::want_read ? POLLIN : POLLOUT, deadline_)) {
          why = "no TLS handshake within the handshake deadline";
          return false;
        }
        continue;
      }
      why = stream->error().empty() ? "the peer closed the connection" : stream->error();
      return false;
    }
    tls_ = std::move(stream);
    return true;
  }

  /// "TLSv1.3 …" once TLS is on, for the log.
  std::string tls_description() const { return tls_ ? tls_->describe() : std::string(); }

  bool read_exact(std::span<std::byte> out) override {
    if (tls_) return tls_read_exact(out);
    std::size_t done = 0;
    const std::size_t have = std::min(out.size(), end_ - start_);
    if (have > 0) {
      std::memcpy(out.data(), buffer_.get() + start_, have);
      start_ += have;
      done = have;
    }
    const auto until = call_deadline();
    while (done < out.size()) {
      if (!wait_for(POLLIN, until)) return false;
      const std::size_t want = out.size() - done;
      // Large payloads go straight to the caller; small reads refill the buffer to batch later headers.
      const bool direct = want >= kReceiveBuffer / 2;
      ssize_t n = direct ? ::recv(fd_, out.data() + done, want, MSG_DONTWAIT)
                         : ::recv(fd_, buffer_.get(), kReceiveBuffer, MSG_DONTWAIT);
      if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
      if (n <= 0) return false;
      if (direct) {
        done += static_cast<std::size_t>(n);
      } else {
        const std::size_t take = std::min(want, static_cast<std::size_t>(n));
        std::memcpy(out.data() + done, buffer_.get(), take);
        done += take;
        start_ = take;
        end_ = static_cast<std::size_t>(n);
      }
    }
    return true;
  }

  bool write_all(std::span<const std::span<const std::byte>> parts) override {
    if (tls_) return tls_write_all(parts);
    iovec iov[8];
    std::size_t count = 0;
    for (const auto& p : parts) {
      if (p.empty() || count == std::size(iov)) continue;
      iov[count++] = {const_cast<std::byte*>(p.data()), p.size()};
    }
    const auto until = call_deadline();
    std::size_t first = 0;
    while (first < count) {
      msghdr msg{};
      msg.msg_iov = iov + first;
      msg.msg_iovlen = count - first;
      // MSG_NOSIGNAL: a vanished peer must not SIGPIPE the whole server.
      ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!wait_for(POLLOUT, until)) return false;
        continue;
      }
      if (n <= 0) return false;
      auto left = static_cast<std::size_t>(n);
      while (first < count && left >= iov[first].iov_len) left -= iov[first++].iov_len;
      if (first < count) {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
    return true;
  }

  /// True if a read or write gave up on the handshake deadline (before transmission) or the idle timeout (after).
  bool timed_out() const { return timed_out_; }
  bool transmitting() const { return transmitting_; }

  void enter_transmission() override { transmitting_ = true; }

  bool idle() override {
    if (start_ != end_ || (tls_ && tls_->pending() > 0)) return false;
    // A grace, not an instant check: a client sending its next request right after the reply (one in flight) would
    // otherwise be "idle" after every request, and the payload pages given back and faulted in again each time
    // (measured: 5x slower boot storms). poll() returns at once when the request arrives.
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, kIdleGraceMs) == 0;
  }

 private:
  /// Waits for what OpenSSL asked for; false (peer gone, TLS error or deadline) ends the transfer.
  bool tls_wait(TlsStream::Io io, std::optional<Clock::time_point> until) {
    if (io == TlsStream::Io::want_read) return wait_for(POLLIN, until);
    if (io == TlsStream::Io::want_write) return wait_for(POLLOUT, until);
    return false;
  }

  bool tls_read_exact(std::span<std::byte> out) {
    const auto until = call_deadline();
    for (std::size_t done = 0; done < out.size();) {
      std::size_t got = 0;
      const auto io = tls_->read(out.subspan(done), got);
      if (io == TlsStream::Io::done) {
        done += got;
      } else if (!tls_wait(io, until)) {
        return false;
      }
    }
    return true;
  }

  bool tls_write_all(std::span<const std::span<const std::byte>> parts) {
    const auto until = call_deadline();
    for (const auto& part : parts) {
      for (std::size_t done = 0; done < part.size();) {
        std::size_t put = 0;
        const auto io = tls_->write(part.subspan(done), put);
        if (io == TlsStream::Io::done) {
          done += put;
        } else if (!tls_wait(io, until)) {
          return false;
        }
      }
    }
    return true;
  }

  std::optional<Clock::time_point> call_deadline() const {
    if (!transmitting_) return deadline_;
    if (idle_.count() > 0) return Clock::now() + idle_;
    return std::nullopt;
  }

  /// Waits until the socket is ready for `events` or `until` passes (then sets timed_out_); false if it passed.
  bool wait_for(short events, std::optional<Clock::time_point> until) {
    for (;;) {
      int wait_ms = -1;
      if (until) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(*until - Clock::now()).count();
        if (left <= 0) {
          timed_out_ = true;
          return false;
        }
        wait_ms = static_cast<int>(std::min<long long>(left, 1 << 30));
      }
      pollfd p{fd_, events, 0};
      const int rc = ::poll(&p, 1, wait_ms);
      if (rc > 0) return true;  // ready, or an error/hang-up the following call reports
      if (rc < 0 && errno != EINTR) return false;
    }
  }

  // 16 KiB holds ~580 pipelined request headers; payloads of 8 KiB and more bypass it. Not zero-filled: an idle
  // connection's buffer costs only the pages data has been received into.
  static constexpr std::size_t kReceiveBuffer = 16 * 1024;
  static constexpr int kIdleGraceMs = 250;
  int fd_;
  std::unique_ptr<std::byte[]> buffer_;
  std::size_t start_ = 0, end_ = 0;
  std::optional<Clock::time_point> deadline_;  // of the handshake
  std::chrono::milliseconds idle_;
  bool timed_out_ = false;
  bool transmitting_ = false;
  const TlsContext* tls_context_;
  std::unique_ptr<TlsStream> tls_;
};

std::string peer_of(const sockaddr_storage& ss, std::string* with_port) {
  char host[INET6_ADDRSTRLEN] = "?";
  std::uint16_t port = 0;
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
  }
  *with_port = std::string(host) + ":" + std::to_string(port);
  return host;
}

/// One warning line per cause per second at most: a flood of refused connections must not become a flood of log lines.
class RateLimitedLine {
 public:
  /// True if a line may be written now; `dropped` is then the number held back since the last one.
  bool allow(std::uint64_t& dropped) {
    std::lock_guard lock(mutex_);
    const auto now = std::chrono::steady_clock::now();
    if (last_ && now - *last_ < std::chrono::seconds(1)) {
      ++dropped_;
      return false;
    }
    last_ = now;
    dropped = std::exchange(dropped_, 0);
    return true;
  }

 private:
  std::mutex mutex_;
  std::optional<std::chrono::steady_clock::time_point> last_;
  std::uint64_t dropped_ = 0;
};

std::size_t open_descriptors() {
  std::error_code ec;
  std::size_t n = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end; it.increment(ec)) ++n;
  return n;
}

const char* end_name(SessionEnd e) {
  switch (e) {
    case SessionEnd::kDisconnected: return "disconnected";
    case SessionEnd::kAborted: return "aborted";
    case SessionEnd::kPeerClosed: return "closed";
    case SessionEnd::kHandshakeError: return "handshake error";
    case SessionEnd::kProtocolError: return "protocol error";
  }
  return "?";
}

}  // namespace

struct Server::Impl {
  struct Connection {
    UniqueFd fd;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  ServerOptions options;
  Resolver resolver;
  Lister lister;
  UniqueFd listen_fd;
  UniqueFd wake_fd;
  UniqueFd spare_fd;  // given up to accept (and close) a connection when the process is out of descriptors
  std::size_t max_connections = 0;
  RateLimitedLine refused_line, no_fd_line, denied_line;
  std::thread accept_thread;
  std::atomic<bool> stopping{false};
  std::uint16_t port = 0;

  mutable std::mutex mutex;
  std::list<std::unique_ptr<Connection>> connections;
  std::atomic<std::uint64_t> accepted{0}, rejected{0}, active{0}, handshake_failures{0}, protocol_errors{0};
  SessionCounters counters;

  void log(const std::string& line) const {
    if (!options.log) return;
    try {
      options.log(line);
    } catch (...) {
      // A broken log sink must not take the connection down with it.
    }
  }

  void warn(RateLimitedLine& limiter, const std::string& line) const {
    std::uint64_t dropped = 0;
    if (!limiter.allow(dropped)) return;
    const std::string text = line + (dropped ? " (" + std::to_string(dropped) + " more like it in the last second)" : "");
    try {
      if (options.warn) options.warn(text);
      else if (options.log) options.log(text);
    } catch (...) {
      // A broken log sink must not take the accept loop down with it.
    }
  }

  void reap(bool all) {
    std::list<std::unique_ptr<Connection>> finished;
    {
      std::lock_guard lock(mutex);
      for (auto it = connections.begin(); it != connections.end();) {
        if (all || (*it)->done.load()) {
          finished.splice(finished.end(), connections, it++);
        } else {
          ++it;
        }
      }
    }
    for (auto& c : finished) {
      if (c->thread.joinable()) c->thread.join();
    }
  }

  void serve(Connection* c, std::string peer, std::string peer_port) {
    SocketTransport transport(c->fd.get(), options.handshake_timeout, options.idle_timeout, options.tls.get());
    SessionLimits limits;
    limits.max_payload = options.max_payload;
    limits.require_tls = options.tls && options.require_tls;
    // A peer asking for an export it may not have is what an operator must see (a misplaced device, or a probe).
    const Resolver checked = [this, &peer_port](std::string_view name, std::string_view from) {
      if (!resolver) return Resolution{nullptr, "no exports configured"};
      Resolution r = resolver(name, from);
      if (!r.backend && r.denied) {
        warn(denied_line, "nbd: peer " + peer_port + " denied export '" + std::string(name) + "': " + r.error);
      }
      return r;
    };
    Session session(transport, checked, lister, peer, limits, &counters);
    SessionResult r;
    try {
      r = session.run();
    } catch (const std::exception& e) {
      r.end = SessionEnd::kProtocolError;
      r.reason = std::string("internal error: ") + e.what();
    }
    if (transport.timed_out() && transport.transmitting()) {
      r.reason = "no request (or payload chunk, or reply) completed within " +
                 std::to_string(options.idle_timeout.count()) + " ms (idle_timeout)";
    } else if (transport.timed_out()) {
      r.end = SessionEnd::kHandshakeError;
      r.reason = "handshake not finished within " + std::to_string(options.handshake_timeout.count()) +
                 " ms (handshake_timeout)";
    }
    if (r.end == SessionEnd::kHandshakeError) handshake_failures.fetch_add(1);
    if (r.end == SessionEnd::kProtocolError) protocol_errors.fetch_add(1);
    const auto tls = transport.tls_description();
    log("nbd: peer " + peer_port + (r.export_name.empty() ? "" : " export '" + r.export_name + "'") +
        (tls.empty() ? "" : " (" + tls + ")") + " " + end_name(r.end) + ": " + r.reason);
    ::shutdown(c->fd.get(), SHUT_RDWR);
    active.fetch_sub(1);
    c->done.store(true);
  }

  void accept_loop() {
    while (!stopping.load()) {
      pollfd fds[2] = {{listen_fd.get(), POLLIN, 0}, {wake_fd.get(), POLLIN, 0}};
      // The timeout only paces reaping of finished connections; stop() wakes us at once through wake_fd.
      int rc = ::poll(fds, 2, 1000);
      reap(false);
      if (rc <= 0 || stopping.load()) continue;
      if (!(fds[0].revents & POLLIN)) continue;
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      UniqueFd fd(::accept4(listen_fd.get(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC));
      if (!fd) {
        if (errno == EMFILE || errno == ENFILE) {
          // The peer waits in the backlog and poll() would report it again at once: give up the spare descriptor,
          // take the connection and close it, so the peer learns at once and the loop does not spin.
          const int why = errno;
          spare_fd.reset();
          UniqueFd doomed(::accept4(listen_fd.get(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC));
          std::string peer_port = "?";
          if (doomed) peer_of(ss, &peer_port);
          doomed.reset();
          spare_fd.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
          rejected.fetch_add(1);
          warn(no_fd_line, "nbd: peer " + peer_port + " refused on port " + std::to_string(port) + ": " +
                               std::strerror(why) + " with " + std::to_string(active.load()) +
                               " connections open (raise the descriptor limit, ulimit -n, or lower max_connections)");
          if (!doomed && !spare_fd) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        continue;
      }
      std::string peer_port;
      std::string peer = peer_of(ss, &peer_port);
      if (active.load() >= max_connections) {
        rejected.fetch_add(1);
        warn(refused_line, "nbd: peer " + peer_port + " refused on port " + std::to_string(port) + ": " +
                               std::to_string(max_connections) + " connections already open (max_connections)");
        continue;
      }
      int one = 1;
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      if (const int idle = static_cast<int>(options.keepalive.count()); idle > 0) {
        const int interval = std::max(1, idle / 3), count = 3;
        ::setsockopt(fd.get(), SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
        ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
        ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
      }
      accepted.fetch_add(1);
      active.fetch_add(1);
      auto conn = std::make_unique<Connection>();
      conn->fd = std::move(fd);
      Connection* raw = conn.get();
      {
        std::lock_guard lock(mutex);
        connections.push_back(std::move(conn));
      }
      try {
        raw->thread = std::thread([this, raw, peer, peer_port] { serve(raw, peer, peer_port); });
      } catch (const std::system_error& e) {
        log("nbd: peer " + peer_port + " dropped: cannot start a thread: " + e.what());
        active.fetch_sub(1);
        raw->done.store(true);
      }
    }
  }
};

Server::Server(ServerOptions options, Resolver resolver, Lister lister) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  impl_->resolver = std::move(resolver);
  impl_->lister = std::move(lister);
}

Server::~Server() { stop(); }

void Server::start() {
  auto& s = *impl_;
  if (s.accept_thread.joinable()) return;
  const std::string where = s.options.address + ":" + std::to_string(s.options.port);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(s.options.address.c_str(), std::to_string(s.options.port).c_str(), &hints, &res); rc != 0) {
    throw ServerError("nbd: cannot listen on " + where + ": " + ::gai_strerror(rc) + " (use a numeric IP address)");
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);
  UniqueFd fd(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw ServerError("nbd: cannot create socket for " + where + ": " + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), res->ai_addr, res->ai_addrlen) != 0) {
    throw ServerError("nbd: cannot bind " + where + ": " + std::strerror(errno));
  }
  if (::listen(fd.get(), 1024) != 0) throw ServerError("nbd: cannot listen on " + where + ": " + std::strerror(errno));
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
  s.port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                          : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  const std::uint64_t fd_limit = raise_fd_limit();
  const std::size_t fits = connections_for_fd_limit(fd_limit);
  s.max_connections = s.options.max_connections == 0 ? fits : s.options.max_connections;
  if (s.max_connections > fits) {
    s.warn(s.no_fd_line, "nbd: max_connections " + std::to_string(s.max_connections) + " on " + where + " needs about " +
                             std::to_string(2 * s.max_connections) + " descriptors but the limit is " +
                             std::to_string(fd_limit) + " (" + std::to_string(fits) +
                             " fit): devices beyond that get errors; raise the hard limit (LimitNOFILE=, ulimit -Hn) "
                             "or leave max_connections at 0");
  }
  s.spare_fd.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  s.wake_fd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s.wake_fd) throw ServerError("nbd: cannot create eventfd for " + where + ": " + std::strerror(errno));
  s.listen_fd = std::move(fd);
  s.stopping = false;
  s.accept_thread = std::thread([&s] { s.accept_loop(); });
  s.log("nbd: listening on " + s.options.address + ":" + std::to_string(s.port) + ", at most " +
        std::to_string(s.max_connections) + " connections");
}

void Server::stop() {
  auto& s = *impl_;
  if (!s.accept_thread.joinable()) return;
  s.stopping = true;
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(s.wake_fd.get(), &one, sizeof one);
  s.accept_thread.join();
  s.listen_fd.reset();
  {
    // Shut down, not close: the descriptor stays valid until its thread has been joined.
    std::lock_guard lock(s.mutex);
    for (auto& c : s.connections) ::shutdown(c->fd.get(), SHUT_RDWR);
  }
  s.reap(true);
  s.log("nbd: stopped listening on port " + std::to_string(s.port));
}

std::uint16_t Server::bound_port() const { return impl_->port; }

std::size_t Server::max_connections() const { return impl_->max_connections; }

std::uint64_t raise_fd_limit() {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0) return 1024;
  if (r.rlim_cur < r.rlim_max) {
    rlimit raised = r;
    raised.rlim_cur = r.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) r = raised;
  }
  return r.rlim_cur == RLIM_INFINITY ? std::uint64_t{1} << 20 : static_cast<std::uint64_t>(r.rlim_cur);
}

std::size_t connections_for_fd_limit(std::uint64_t fd_limit) {
  const std::uint64_t reserved = open_descriptors() + 64;
  if (fd_limit <= reserved + 2) return 1;
  // Capped: a hard limit of 2^20 (containers) must not mean half a million connection threads.
  return static_cast<std::size_t>(std::min<std::uint64_t>((fd_limit - reserved) / 2, kMaxAutoConnections));
}

Stats Server::stats() const {
  const auto& s = *impl_;
  Stats st;
  st.accepted = s.accepted.load();
  st.rejected = s.rejected.load();
  st.active = s.active.load();
  st.handshake_failures = s.handshake_failures.load();
  st.protocol_errors = s.protocol_errors.load();
  st.requests = s.counters.requests.load();
  st.bytes_read = s.counters.bytes_read.load();
  st.bytes_written = s.counters.bytes_written.load();
  return st;
}

}  // namespace deskfarm::nbd
