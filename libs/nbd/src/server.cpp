#include "deskfarm/nbd/server.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "fiber.hpp"

namespace deskfarm::nbd {
namespace {

using Clock = std::chrono::steady_clock;

/// Where a transport waits for its socket: the connection's place in a reactor (the fiber yields until the socket is
/// ready, the deadline passes or the server stops), so a waiting connection holds no thread.
class Waiter {
 public:
  enum class Wait { ready, timed_out, stopped };
  virtual ~Waiter() = default;
  /// `events`: EPOLLIN and/or EPOLLOUT. Ready may be spurious: the caller tries again and waits again on EAGAIN.
  virtual Wait wait(std::uint32_t events, std::optional<Clock::time_point> until) = 0;
  /// Gives back the stack pages below the caller's frame (called while the connection goes idle).
  virtual void trim_stack() = 0;
};

/// A connected non-blocking socket with a read buffer: request headers are 28 bytes and pipelined clients send many
/// per packet.
///
class SocketTransport final : public Transport {
 public:
  SocketTransport(int fd, Waiter& waiter, std::chrono::milliseconds handshake, std::chrono::milliseconds idle,
                  const TlsContext* tls = nullptr)
      : fd_(fd), waiter_(waiter), buffer_(new std::byte[kReceiveBuffer]), idle_(idle), tls_context_(tls) {
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
    // OpenSSL reads and writes the (non-blocking) descriptor itself; every wait goes through wait_for() and its
    // deadline.
    auto stream = std::make_unique<TlsStream>(*tls_context_, fd_);
    for (;;) {
      const auto io = stream->accept();
      if (io == TlsStream::Io::done) break;
      if (io == TlsStream::Io::want_read || io == TlsStream::Io::want_write) {
        if (!wait_for(io == TlsStream::Io::want_read ? EPOLLIN : EPOLLOUT, deadline_)) {
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
      const std::size_t want = out.size() - done;
      // Large payloads go straight to the caller; small reads refill the buffer to batch later headers.
      const bool direct = want >= kReceiveBuffer / 2;
      ssize_t n = direct ? ::recv(fd_, out.data() + done, want, MSG_DONTWAIT)
                         : ::recv(fd_, buffer_.get(), kReceiveBuffer, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        // Try first, wait after: the reactor's readiness is edge-triggered, so a wait only ends on new data.
        if (!wait_for(EPOLLIN, until)) return false;
        continue;
      }
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
        if (!wait_for(EPOLLOUT, until)) return false;
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
    // (measured: 5x slower boot storms). The wait ends at once when the request arrives.
    if (waiter_.wait(EPOLLIN, Clock::now() + std::chrono::milliseconds(kIdleGraceMs)) != Waiter::Wait::timed_out)
      return false;
    waiter_.trim_stack();
    return true;
  }

 private:
  /// Waits for what OpenSSL asked for; false (peer gone, TLS error or deadline) ends the transfer.
  bool tls_wait(TlsStream::Io io, std::optional<Clock::time_point> until) {
    if (io == TlsStream::Io::want_read) return wait_for(EPOLLIN, until);
    if (io == TlsStream::Io::want_write) return wait_for(EPOLLOUT, until);
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

  /// Waits until the socket is ready for `events` or `until` passes (then sets timed_out_); false if it passed or the
  /// server is stopping.
  bool wait_for(std::uint32_t events, std::optional<Clock::time_point> until) {
    switch (waiter_.wait(events, until)) {
      case Waiter::Wait::ready: return true;
      case Waiter::Wait::timed_out: timed_out_ = true; return false;
      case Waiter::Wait::stopped: return false;
    }
    return false;
  }

  // 16 KiB holds ~580 pipelined request headers; payloads of 8 KiB and more bypass it. Not zero-filled: an idle
  // connection's buffer costs only the pages data has been received into.
  static constexpr std::size_t kReceiveBuffer = 16 * 1024;
  static constexpr int kIdleGraceMs = 250;
  int fd_;
  Waiter& waiter_;
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

/// Threads for the calls a reactor must not make itself: the resolver and lister are application code that may wait
/// on a database, and a FLUSH waits for the disk. A few threads, whatever the number of connections.
class BlockingPool {
 public:
  explicit BlockingPool(std::size_t threads) {
    for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
  }
  ~BlockingPool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    for (auto& t : threads_) t.join();
  }
  BlockingPool(const BlockingPool&) = delete;
  BlockingPool& operator=(const BlockingPool&) = delete;

  void post(std::function<void()> job) {
    {
      std::lock_guard lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    ready_.notify_one();
  }

 private:
  void run() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stopping, and every job posted has run
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

/// Address space reserved per connection for its fiber's stack; only the pages touched cost memory, and those below
/// the parked frame are given back when the connection goes idle. Generous because exports are application code.
constexpr std::size_t kFiberStack = 512 * 1024;
/// Threads that run resolvers, listers and flushes for all connections.
constexpr std::size_t kBlockingThreads = 4;

}  // namespace

struct Server::Impl {
  struct Reactor;

  /// One connection: its socket, its fiber (running serve()), and where it waits in its reactor.
  struct Connection final : Waiter {
    Reactor& reactor;
    UniqueFd fd;
    std::string peer, peer_port;
    std::unique_ptr<detail::Fiber> fiber;
    std::list<std::unique_ptr<Connection>>::iterator self;
    std::uint32_t pending = 0;  // readiness the reactor saw while the fiber was not waiting for it
    std::uint32_t want = 0;
    bool hung_up = false;       // EPOLLHUP/EPOLLERR: every later wait is "ready", and the call that follows fails
    bool waiting = false;       // parked in wait() or offload()
    bool offloaded = false;     // a job runs on the blocking pool; only its end resumes the fiber
    Wait result = Wait::ready;
    std::optional<std::multimap<Clock::time_point, Connection*>::iterator> timer;

    Connection(Reactor& r, UniqueFd socket, std::string ip, std::string ip_port)
        : reactor(r), fd(std::move(socket)), peer(std::move(ip)), peer_port(std::move(ip_port)) {}

    Wait wait(std::uint32_t events, std::optional<Clock::time_point> until) override {
      if (reactor.stopping.load()) return Wait::stopped;
      if (pending & events) {
        pending &= ~events;
        if (hung_up) pending |= EPOLLIN | EPOLLOUT;
        return Wait::ready;
      }
      if (until && Clock::now() >= *until) return Wait::timed_out;
      want = events;
      waiting = true;
      if (until) timer = reactor.timers.emplace(*until, this);
      fiber->yield();
      return result;
    }

    void trim_stack() override { fiber->trim_stack(); }

    /// Runs `job` on the blocking pool while the fiber is parked (its reactor serves the other connections);
    /// rethrows what the job threw.
    void offload(const std::function<void()>& job) {
      std::exception_ptr failure;
      reactor.server.pool->post([this, &job, &failure] {
        try {
          job();
        } catch (...) {
          failure = std::current_exception();
        }
        reactor.job_done(this);
      });
      // Set after posting (a failed post throws here, parking nothing): the reactor, on this very thread, cannot see
      // the job end before the yield below.
      offloaded = true;
      waiting = true;
      fiber->yield();
      if (failure) std::rethrow_exception(failure);
    }
  };

  /// An epoll loop on one thread, switching between the fibers of its connections.
  struct Reactor {
    Impl& server;
    UniqueFd epoll;
    UniqueFd wake;
    std::atomic<bool> stopping{false};
    std::list<std::unique_ptr<Connection>> connections;
    std::multimap<Clock::time_point, Connection*> timers;
    std::mutex mutex;  // guards the two queues below, filled by other threads
    std::vector<std::unique_ptr<Connection>> arrivals;
    std::vector<Connection*> jobs_done;
    std::thread thread;

    explicit Reactor(Impl& s) : server(s) {
      epoll.reset(::epoll_create1(EPOLL_CLOEXEC));
      wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (!epoll || !wake) throw ServerError(std::string("nbd: cannot create an epoll reactor: ") + std::strerror(errno));
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = nullptr;  // the wake descriptor
      ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, wake.get(), &ev);
    }

    void notify() {
      std::uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(wake.get(), &one, sizeof one);
    }
    void adopt(std::unique_ptr<Connection> c) {
      {
        std::lock_guard lock(mutex);
        arrivals.push_back(std::move(c));
      }
      notify();
    }
    void job_done(Connection* c) {
      {
        std::lock_guard lock(mutex);
        jobs_done.push_back(c);
      }
      notify();
    }

    void resume(Connection* c, Waiter::Wait why) {
      c->waiting = false;
      c->result = why;
      if (c->timer) {
        timers.erase(*c->timer);
        c->timer.reset();
      }
      c->fiber->resume();
    }

    void finish(Connection* c) {
      ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, c->fd.get(), nullptr);
      if (c->timer) timers.erase(*c->timer);
      server.active.fetch_sub(1);
      connections.erase(c->self);  // closes the socket, frees the stack
    }

    void run() {
      std::vector<epoll_event> events(256);
      std::vector<Connection*> finished;
      auto settle = [&](Connection* c) {
        if (c->fiber->finished()) finished.push_back(c);
      };
      for (;;) {
        std::vector<std::unique_ptr<Connection>> arrived;
        std::vector<Connection*> done;
        {
          std::lock_guard lock(mutex);
          arrived.swap(arrivals);
          done.swap(jobs_done);
        }
        for (auto& owned : arrived) {
          Connection* c = owned.get();
          connections.push_back(std::move(owned));
          c->self = std::prev(connections.end());
          epoll_event ev{};
          ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
          ev.data.ptr = c;
          if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, c->fd.get(), &ev) != 0) {
            server.log("nbd: peer " + c->peer_port + " dropped: cannot watch its socket: " + std::strerror(errno));
            server.active.fetch_sub(1);
            connections.erase(c->self);
            continue;
          }
          c->fiber->resume();  // greets, then parks waiting for the client's flags
          settle(c);
        }
        for (Connection* c : done) {
          c->offloaded = false;
          resume(c, Waiter::Wait::ready);
          settle(c);
        }
        const bool stop = stopping.load();
        if (stop) {
          // Every parked wait returns "stopped": sessions unwind on their own stacks and their fibers end.
          for (auto& owned : connections) {
            Connection* c = owned.get();
            if (c->waiting && !c->offloaded && !c->fiber->finished()) {
              resume(c, Waiter::Wait::stopped);
              settle(c);
            }
          }
        }
        for (Connection* c : finished) finish(c);
        finished.clear();
        if (stop && connections.empty()) return;

        int timeout = -1;
        if (stop) {
          timeout = 10;  // only jobs on the blocking pool are left; their end wakes us too
        } else if (!timers.empty()) {
          const auto left = std::chrono::ceil<std::chrono::milliseconds>(timers.begin()->first - Clock::now()).count();
          timeout = static_cast<int>(std::clamp<long long>(left, 0, 1 << 30));
        }
        const int n = ::epoll_wait(epoll.get(), events.data(), static_cast<int>(events.size()), timeout);
        for (int i = 0; i < n; ++i) {
          auto* c = static_cast<Connection*>(events[static_cast<std::size_t>(i)].data.ptr);
          const std::uint32_t e = events[static_cast<std::size_t>(i)].events;
          if (!c) {
            std::uint64_t count = 0;
            [[maybe_unused]] auto r = ::read(wake.get(), &count, sizeof count);
            continue;
          }
          if (c->fiber->finished()) continue;  // ended earlier in this batch, freed after it
          if (e & (EPOLLIN | EPOLLRDHUP)) c->pending |= EPOLLIN;
          if (e & EPOLLOUT) c->pending |= EPOLLOUT;
          if (e & (EPOLLERR | EPOLLHUP)) {
            c->hung_up = true;
            c->pending |= EPOLLIN | EPOLLOUT;
          }
          if (c->waiting && !c->offloaded && (c->pending & c->want)) {
            c->pending &= ~c->want;
            if (c->hung_up) c->pending |= EPOLLIN | EPOLLOUT;
            resume(c, Waiter::Wait::ready);
            settle(c);
          }
        }
        const auto now = Clock::now();
        while (!timers.empty() && timers.begin()->first <= now) {
          Connection* c = timers.begin()->second;
          resume(c, Waiter::Wait::timed_out);  // removes its timer
          settle(c);
        }
        for (Connection* c : finished) finish(c);
        finished.clear();
      }
    }
  };

  /// Flushes wait for the disk: on the blocking pool, so the reactor keeps serving the other connections.
  class OffloadedFlush final : public Export {
   public:
    OffloadedFlush(std::shared_ptr<Export> inner, Connection& c) : inner_(std::move(inner)), connection_(c) {}
    std::uint64_t size() const override { return inner_->size(); }
    bool read_only() const override { return inner_->read_only(); }
    int read(std::uint64_t off, std::span<std::byte> out) override { return inner_->read(off, out); }
    int write(std::uint64_t off, std::span<const std::byte> in) override { return inner_->write(off, in); }
    int write_zeroes(std::uint64_t off, std::uint64_t length) override { return inner_->write_zeroes(off, length); }
    bool multi_conn_safe() const override { return inner_->multi_conn_safe(); }
    int flush() override {
      int rc = EIO;
      connection_.offload([&] { rc = inner_->flush(); });
      return rc;
    }

   private:
    std::shared_ptr<Export> inner_;
    Connection& connection_;
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
  std::unique_ptr<BlockingPool> pool;
  std::vector<std::unique_ptr<Reactor>> reactors;
  std::size_t next_reactor = 0;

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

  /// The body of a connection's fiber: the whole session, then one log line. Never throws.
  void serve(Connection& c) noexcept {
    try {
      serve_session(c);
    } catch (...) {
      // Only allocation can fail here; the connection ends either way (its reactor closes the socket).
    }
  }

  void serve_session(Connection& c) {
    SocketTransport transport(c.fd.get(), c, options.handshake_timeout, options.idle_timeout, options.tls.get());
    SessionLimits limits;
    limits.max_payload = options.max_payload;
    limits.require_tls = options.tls && options.require_tls;
    // A peer asking for an export it may not have is what an operator must see (a misplaced device, or a probe).
    // The resolver is application code that may wait (a data store): it runs on the blocking pool.
    const Resolver checked = [this, &c](std::string_view name, std::string_view from) {
      if (!resolver) return Resolution{nullptr, "no exports configured"};
      Resolution r;
      c.offload([&] { r = resolver(name, from); });
      if (!r.backend && r.denied) {
        warn(denied_line, "nbd: peer " + c.peer_port + " denied export '" + std::string(name) + "': " + r.error);
      }
      if (r.backend) r.backend = std::make_shared<OffloadedFlush>(std::move(r.backend), c);
      return r;
    };
    Lister offloaded_lister;
    if (lister) {
      offloaded_lister = [this, &c](std::string_view from) {
        std::vector<ExportEntry> entries;
        c.offload([&] { entries = lister(from); });
        return entries;
      };
    }
    Session session(transport, checked, offloaded_lister, c.peer, limits, &counters);
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
    log("nbd: peer " + c.peer_port + (r.export_name.empty() ? "" : " export '" + r.export_name + "'") +
        (tls.empty() ? "" : " (" + tls + ")") + " " + end_name(r.end) + ": " + r.reason);
    ::shutdown(c.fd.get(), SHUT_RDWR);
  }

  void accept_loop() {
    while (!stopping.load()) {
      pollfd fds[2] = {{listen_fd.get(), POLLIN, 0}, {wake_fd.get(), POLLIN, 0}};
      // stop() wakes us at once through wake_fd.
      int rc = ::poll(fds, 2, 1000);
      if (rc <= 0 || stopping.load()) continue;
      if (!(fds[0].revents & POLLIN)) continue;
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      UniqueFd fd(::accept4(listen_fd.get(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC | SOCK_NONBLOCK));
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
      Reactor& reactor = *reactors[next_reactor++ % reactors.size()];
      std::unique_ptr<Connection> conn;
      try {
        conn = std::make_unique<Connection>(reactor, std::move(fd), std::move(peer), peer_port);
        Connection* raw = conn.get();
        conn->fiber = std::make_unique<detail::Fiber>([this, raw] { serve(*raw); }, kFiberStack);
      } catch (const std::exception& e) {
        rejected.fetch_add(1);
        warn(refused_line, "nbd: peer " + peer_port + " refused on port " + std::to_string(port) +
                               ": no memory for its connection (" + e.what() + ") with " +
                               std::to_string(active.load()) + " open; lower max_connections");
        continue;
      }
      accepted.fetch_add(1);
      active.fetch_add(1);
      reactor.adopt(std::move(conn));
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
  if (::listen(fd.get(), 4096) != 0) throw ServerError("nbd: cannot listen on " + where + ": " + std::strerror(errno));
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
  const std::size_t threads =
      s.options.threads ? s.options.threads : std::max<std::size_t>(1, std::thread::hardware_concurrency());
  s.reactors.clear();
  for (std::size_t i = 0; i < threads; ++i) s.reactors.push_back(std::make_unique<Impl::Reactor>(s));
  s.pool = std::make_unique<BlockingPool>(kBlockingThreads);
  for (auto& r : s.reactors) r->thread = std::thread([r = r.get()] { r->run(); });
  s.listen_fd = std::move(fd);
  s.stopping = false;
  s.accept_thread = std::thread([&s] { s.accept_loop(); });
  s.log("nbd: listening on " + s.options.address + ":" + std::to_string(s.port) + ", at most " +
        std::to_string(s.max_connections) + " connections on " + std::to_string(threads) + " reactor threads");
}

void Server::stop() {
  auto& s = *impl_;
  if (!s.accept_thread.joinable()) return;
  s.stopping = true;
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(s.wake_fd.get(), &one, sizeof one);
  s.accept_thread.join();
  s.listen_fd.reset();
  // Each reactor ends every session it holds (their waits return at once) and returns when none is left; jobs still on
  // the blocking pool finish first, so the pool goes last.
  for (auto& r : s.reactors) {
    r->stopping = true;
    r->notify();
  }
  for (auto& r : s.reactors) r->thread.join();
  s.reactors.clear();
  s.pool.reset();
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
  // Capped: a hard limit of 2^20 (containers) must not mean half a million connections (a fiber stack each).
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
