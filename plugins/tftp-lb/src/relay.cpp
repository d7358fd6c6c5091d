#include "relay.hpp"

#include <arpa/inet.h>
#include <liburing.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <deque>
#include <stdexcept>
#include <unordered_map>
#include <variant>

#include <deskfarm/tftp/packet.hpp>
#include <deskfarm/tftp/server.hpp>

#include "busy_poll.hpp"
#include "tc_bpf.hpp"

namespace deskfarm::tftp_lb {

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint32_t kNone = 0xffffffffu;
constexpr std::uint64_t kListenTag = 0xffffffffffffffffull;
constexpr std::uint64_t kWakeTag = 0xfffffffffffffffeull;
constexpr int kEvents = 256;
// Datagrams per recvmmsg: one call takes a socket's whole burst (a window, retransmissions, both directions of a
// session, a storm of requests), and bounds one socket's share of a round so a busy transfer cannot starve others.
constexpr unsigned kBatch = 32;
constexpr int kListenRounds = 2;           // recvmmsg calls on the virtual server per readiness
constexpr std::size_t kSlot = 65536;       // above the largest IPv4 UDP payload (65,507): nothing is truncated

// io_uring engine. A received datagram's buffer comes from a provided-buffer ring and is sent on from where it
// landed; it goes back to the ring when its send completes (or at once when it produced nothing to send).
constexpr unsigned kRingEntries = 4096;       // submissions per io_uring_enter before an early one is needed
constexpr unsigned kBuffers = 1024;           // datagrams in flight (received, send not yet completed); power of 2
constexpr std::size_t kBufSize = kSlot + 64;  // io_uring_recvmsg_out + the sender's address + the payload
constexpr int kGroup = 7;
// user_data: the kind in the top byte; a session's receive carries its index and generation (24 bits).
enum : std::uint64_t { kRecvListen = 1, kRecvSession = 2, kSend = 3, kWakeRead = 4, kIgnore = 5 };
constexpr std::uint64_t tag(std::uint64_t kind, std::uint64_t value = 0) { return (kind << 56) | value; }
constexpr std::uint64_t session_tag(std::uint32_t index, std::uint32_t gen) {
  return tag(kRecvSession, (static_cast<std::uint64_t>(gen & 0xffffffu) << 32) | index);
}

std::uint64_t key_of(const sockaddr_in& a) {
  return (static_cast<std::uint64_t>(a.sin_addr.s_addr) << 16) | a.sin_port;
}
bool same(const sockaddr_in& a, const sockaddr_in& b) {
  return a.sin_addr.s_addr == b.sin_addr.s_addr && a.sin_port == b.sin_port;
}
bool same_key(const tftp_lb_key& a, const tftp_lb_key& b) {
  return a.saddr == b.saddr && a.daddr == b.daddr && a.sport == b.sport && a.dport == b.dport;
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

}  // namespace

std::optional<RelayEngine> relay_engine_from(std::string_view name) {
  if (name == "auto") return RelayEngine::automatic;
  if (name == "io_uring") return RelayEngine::io_uring;
  if (name == "epoll") return RelayEngine::epoll;
  if (name == "tc-bpf") return RelayEngine::tc_bpf;
  return std::nullopt;
}

/// The io_uring engine's ring, its provided buffers and, per buffer, the send that carries it on.
struct Relay::Ring {
  io_uring ring{};
  bool ring_open = false;
  bool enable_in_loop = false;  // created disabled: the relay thread enables it and is its only submitter
  io_uring_buf_ring* buf_ring = nullptr;
  std::size_t buf_ring_bytes = 0;
  std::byte* buffers = nullptr;
  std::size_t buffers_bytes = kBuffers * kBufSize;
  msghdr recv_template{};  // what a multishot receive wants: the sender's address, no control data
  std::array<msghdr, kBuffers> tx_msg{};
  std::array<iovec, kBuffers> tx_iov{};
  std::array<sockaddr_in, kBuffers> tx_to{};
  std::array<std::uint8_t, kBuffers> tx_kind{};
  std::uint64_t wake_value = 0;
  std::vector<std::uint64_t> rearm;  // receives ended (no buffer left, an error): armed again at the turn's end
  std::vector<int> to_close;         // closed sessions' sockets, closed once the turn's submissions are in

  Ring() = default;
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring() {
    if (ring_open) io_uring_queue_exit(&ring);  // first: the kernel lets go of the buffers
    if (buf_ring) ::munmap(buf_ring, buf_ring_bytes);
    if (buffers) ::munmap(buffers, buffers_bytes);
    for (int fd : to_close) ::close(fd);
  }
  std::byte* buffer(unsigned bid) { return buffers + static_cast<std::size_t>(bid) * kBufSize; }
  void give_back(unsigned bid) {
    io_uring_buf_ring_add(buf_ring, buffer(bid), kBufSize, static_cast<unsigned short>(bid),
                          io_uring_buf_ring_mask(kBuffers), 0);
    io_uring_buf_ring_advance(buf_ring, 1);
  }

  /// The ring with its buffers registered, or null and why not (the caller falls back to epoll or refuses).
  static std::unique_ptr<Ring> open(std::string& why) {
    utsname u{};
    int major = 0, minor = 0;
    if (::uname(&u) == 0 && std::sscanf(u.release, "%d.%d", &major, &minor) == 2 && major < 6) {
      why = std::string("kernel ") + u.release + " has no multishot recvmsg (needs 6.0+)";
      return nullptr;
    }
    auto r = std::make_unique<Ring>();
    // Completions are posted only when the relay thread enters the kernel (DEFER_TASKRUN, 6.1+), so a datagram's
    // arrival does not interrupt the relay with task work; the ring starts disabled and the relay thread enables
    // it, becoming its single issuer. Before 6.1, cooperative task running (5.19+) is the next best.
    int e = -EINVAL;
    for (const unsigned flags : {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
                                 unsigned{IORING_SETUP_COOP_TASKRUN}}) {
      io_uring_params params{};
      params.flags = flags | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
      params.cq_entries = 4 * kRingEntries;
      e = io_uring_queue_init_params(kRingEntries, &r->ring, &params);
      r->enable_in_loop = (flags & IORING_SETUP_R_DISABLED) != 0;
      if (e != -EINVAL) break;
    }
    if (e < 0) {
      why = std::string("io_uring_queue_init: ") + std::strerror(-e) +
            " (a kernel before 6.0, seccomp, or sysctl kernel.io_uring_disabled refuses it)";
      return nullptr;
    }
    r->ring_open = true;
    r->buf_ring_bytes = kBuffers * sizeof(io_uring_buf);
    void* br = ::mmap(nullptr, r->buf_ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void* bufs = ::mmap(nullptr, r->buffers_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                        -1, 0);
    if (br == MAP_FAILED || bufs == MAP_FAILED) {
      why = std::string("mmap of the receive buffers: ") + std::strerror(errno);
      if (br != MAP_FAILED) ::munmap(br, r->buf_ring_bytes);
      if (bufs != MAP_FAILED) ::munmap(bufs, r->buffers_bytes);
      return nullptr;
    }
    r->buf_ring = static_cast<io_uring_buf_ring*>(br);
    r->buffers = static_cast<std::byte*>(bufs);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(br);
    reg.ring_entries = kBuffers;
    reg.bgid = kGroup;
    if ((e = io_uring_register_buf_ring(&r->ring, &reg, 0)) < 0) {
      why = std::string("io_uring_register_buf_ring: ") + std::strerror(-e) + " (provided buffer rings need 5.19+)";
      return nullptr;
    }
    io_uring_buf_ring_init(r->buf_ring);
    for (unsigned b = 0; b < kBuffers; ++b) r->give_back(b);
    r->recv_template.msg_namelen = sizeof(sockaddr_in);
    for (unsigned b = 0; b < kBuffers; ++b) {
      r->tx_msg[b].msg_iov = &r->tx_iov[b];
      r->tx_msg[b].msg_iovlen = 1;
      r->tx_msg[b].msg_name = &r->tx_to[b];
      r->tx_msg[b].msg_namelen = sizeof(sockaddr_in);
    }
    return r;
  }
};

struct Relay::Session {
  int fd = -1;
  std::uint32_t gen = 0;
  bool in_use = false;
  bool finished = false;
  sockaddr_in client{};
  std::uint32_t backend = 0;
  std::uint16_t tid = 0;  // backend transfer port, network order; 0 until its first reply
  std::uint16_t port = 0;  // the session socket's port, network order (tc-bpf: the map's keys)
  bool in_kernel = false;  // tc-bpf: its two map entries are installed
  bool pending = false;    // tc-bpf: its PENDING entry is in the map (a read request, no transfer ID learnt yet)
  tftp_lb_key pending_key{};  // tc-bpf: backend address, VIP, any port, session port
  std::uint64_t kernel_packets[2] = {0, 0};  // tc-bpf: the map's counters at the last poll, to backend / to client
  std::uint64_t kernel_bytes = 0;            // tc-bpf: bytes to the client at the last poll
  tftp_lb_key kernel_keys[2] = {};           // tc-bpf: client -> backend, backend -> client, as installed
  std::uint16_t blksize = tftp::default_blksize;
  std::int32_t last_block = -1;  // block number of the short DATA that ends the transfer
  Clock::time_point last{};
  std::uint32_t prev = kNone, next = kNone;  // LRU by last activity: head = oldest
};

struct Relay::State {
  struct Backend {
    RelayBackend config;
    bool listed = true;  // still in the latest set_backends(); a removed one keeps its running sessions
    std::uint64_t total = 0;
  };
  explicit State(Method method) : picker(method) {}
  std::vector<Session> sessions;
  std::vector<std::uint32_t> free;
  std::uint32_t head = kNone, tail = kNone;
  std::unordered_map<std::uint64_t, std::uint32_t> by_client;
  struct Lingering {
    std::uint32_t index;
    std::uint32_t gen;
    Clock::time_point until;
  };
  std::deque<Lingering> lingering;  // finished sessions in finishing order (the linger is constant)
  // tc-bpf poll: entries of sessions the program completed but user space had not adopted yet when it read them
  // (the PENDING entry comes later in the same read): accounted once the read is over.
  std::vector<std::pair<std::uint32_t, tftp_lb_value>> deferred;
  std::vector<tftp_lb_key> orphans;  // tc-bpf poll: entries no session accounts for, deleted after the read
  std::vector<Backend> backends;
  std::vector<Candidate> candidates;
  Picker picker;
  RelayStats stats;
  // One receive burst, allocated (and touched) once. A relayed datagram is sent from the slot it was received
  // into: the relay path copies nothing in user space.
  std::vector<std::byte> rx = std::vector<std::byte>(kBatch * kSlot);
  std::array<iovec, kBatch> rx_iov{};
  std::array<mmsghdr, kBatch> rx_msg{};
  std::array<sockaddr_in, kBatch> rx_from{};
  // What one burst produces (at most one datagram per datagram received), sent with one sendmmsg in order.
  enum class Out : std::uint8_t { to_backend, to_client, error };
  std::array<iovec, kBatch> tx_iov{};
  std::array<mmsghdr, kBatch> tx_msg{};
  std::array<sockaddr_in, kBatch> tx_to{};
  std::array<Out, kBatch> tx_kind{};
  unsigned tx_count = 0;
  // The ERROR packets the relay writes, encoded once.
  std::vector<std::byte> unknown_tid, no_backend, busy;
};

Relay::Relay(RelayOptions options) : options_(std::move(options)) {}

Relay::~Relay() { stop(); }

void Relay::start() {
  state_ = std::make_unique<State>(options_.method);
  {
    State& st = *state_;
    for (unsigned k = 0; k < kBatch; ++k) {
      st.rx_iov[k] = iovec{st.rx.data() + k * kSlot, kSlot};
      st.rx_msg[k].msg_hdr.msg_iov = &st.rx_iov[k];
      st.rx_msg[k].msg_hdr.msg_iovlen = 1;
      st.rx_msg[k].msg_hdr.msg_name = &st.rx_from[k];
      st.tx_msg[k].msg_hdr.msg_iov = &st.tx_iov[k];
      st.tx_msg[k].msg_hdr.msg_iovlen = 1;
      st.tx_msg[k].msg_hdr.msg_name = &st.tx_to[k];
      st.tx_msg[k].msg_hdr.msg_namelen = sizeof(sockaddr_in);
    }
    tftp::encode_error(st.unknown_tid, tftp::ErrorCode::unknown_tid, "unknown transfer ID");
    tftp::encode_error(st.no_backend, tftp::ErrorCode::not_defined, "no TFTP backend available, try again later");
    tftp::encode_error(st.busy, tftp::ErrorCode::not_defined, "server busy");
  }
  state_->by_client.reserve(std::min<std::size_t>(options_.max_sessions, 65536));
  state_->sessions.reserve(std::min<std::size_t>(options_.max_sessions, 1024));
  const std::string where = to_string(options_.vip);
  listen_fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) throw std::runtime_error("tftp-lb: socket for " + where + ": " + std::strerror(errno));
  // A boot storm's read requests all come here at once: with Linux's default buffer most would be lost.
  const int receive_buffer = tftp::set_receive_buffer(listen_fd_, tftp::storm_receive_buffer);
  if (::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&options_.vip), sizeof options_.vip) != 0) {
    const int e = errno;
    close_fd(listen_fd_);
    throw std::runtime_error("tftp-lb: cannot bind the virtual server " + where + ": " + std::strerror(e) +
                             " (choose a free port, or run with the right to bind it)");
  }
  sockaddr_in bound{};
  socklen_t len = sizeof bound;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len);
  port_ = ntohs(bound.sin_port);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (wake_fd_ < 0 || epoll_fd_ < 0) {
    close_fd(listen_fd_);
    close_fd(wake_fd_);
    close_fd(epoll_fd_);
    throw std::runtime_error(std::string("tftp-lb: eventfd/epoll: ") + std::strerror(errno));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenTag;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.u64 = kWakeTag;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  engine_ = RelayEngine::epoll;
  const auto log = [this](const std::string& line) {
    if (options_.log) options_.log(line);
  };
  if (receive_buffer < tftp::storm_receive_buffer) {
    log("relay on " + to_string(bound) + ": the virtual server's receive buffer is " + std::to_string(receive_buffer / 1024) +
        " KiB, not " + std::to_string(tftp::storm_receive_buffer / 1024) +
        " KiB: a storm of read requests beyond it is lost until its clients resend (raise net.core.rmem_max, or run "
        "with CAP_NET_ADMIN)");
  }
  if (options_.engine != RelayEngine::epoll) {
    std::string why;
    ring_ = Ring::open(why);
    if (ring_) {
      engine_ = RelayEngine::io_uring;
    } else if (options_.engine == RelayEngine::io_uring) {
      close_fd(listen_fd_);
      close_fd(wake_fd_);
      close_fd(epoll_fd_);
      throw std::runtime_error("tftp-lb: relay = \"io_uring\" on " + where + ", but " + why +
                               " (set relay = \"auto\" to fall back to epoll)");
    } else {
      log("relay on " + where + ": epoll, because io_uring is unavailable: " + why);
    }
  }
  if (options_.engine == RelayEngine::tc_bpf) {
    std::string why;
    sockaddr_in bound_vip = options_.vip;
    bound_vip.sin_port = htons(port_);
    tc_ = TcBpf::open(bound_vip, options_.max_sessions, log, why);
    const std::string user_space = engine_ == RelayEngine::io_uring ? "io_uring" : "epoll";
    if (tc_)
      log("relay on " + to_string(bound_vip) + ": tc-bpf, established sessions relayed in the kernel (tc filter on " +
          tc_->device() + " ingress, priority " + std::to_string(tc_->priority()) + "), the rest on " + user_space);
    else
      log("relay on " + to_string(bound_vip) + ": tc-bpf unavailable, relaying in user space with " + user_space + ": " + why);
  }
  stopping_ = false;
  thread_ = std::thread([this] { loop(); });
}

void Relay::stop() {
  if (thread_.joinable()) {
    stopping_ = true;
    const std::uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
    thread_.join();
  }
  tc_.reset();  // detaches the filter first: no datagram is rewritten towards a socket about to close
  ring_.reset();
  if (state_)
    for (auto& s : state_->sessions) close_fd(s.fd);
  close_fd(listen_fd_);
  close_fd(wake_fd_);
  close_fd(epoll_fd_);
}

void Relay::set_backends(std::vector<RelayBackend> backends) {
  {
    std::lock_guard lock(mutex_);
    pending_ = std::move(backends);
    pending_set_ = true;
  }
  if (wake_fd_ >= 0) {
    const std::uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  }
}

std::uint32_t Relay::tc_priority() const { return tc_ ? tc_->priority() : 0; }

RelayStats Relay::stats() const {
  std::lock_guard lock(mutex_);
  return published_;
}

void Relay::loop() {
  State& st = *state_;
  auto& stats = st.stats;
  const auto log = [this](const std::string& line) {
    if (options_.log) options_.log(line);
  };

  // ---- the session table ----
  const auto unlink = [&](std::uint32_t i) {
    auto& s = st.sessions[i];
    (s.prev == kNone ? st.head : st.sessions[s.prev].next) = s.next;
    (s.next == kNone ? st.tail : st.sessions[s.next].prev) = s.prev;
    s.prev = s.next = kNone;
  };
  const auto append = [&](std::uint32_t i) {
    auto& s = st.sessions[i];
    s.prev = st.tail;
    s.next = kNone;
    (st.tail == kNone ? st.head : st.sessions[st.tail].next) = i;
    st.tail = i;
  };
  const auto touch = [&](std::uint32_t i, Clock::time_point now) {
    st.sessions[i].last = now;
    if (st.tail != i) {
      unlink(i);
      append(i);
    }
  };
  const auto finish = [&](std::uint32_t i, Clock::time_point now) {
    auto& s = st.sessions[i];
    if (s.finished) return;
    s.finished = true;
    --st.candidates[s.backend].active;
    ++stats.sessions_finished;
    ++stats.sessions_lingering;
    st.lingering.push_back({i, s.gen, now + options_.linger});
  };
  Ring* const ring = ring_.get();
  TcBpf* const tc = tc_.get();
  // tc-bpf: adds what the program relayed since the last look at this entry; the datagrams it moved, 0 if none.
  const auto kernel_account = [&](std::uint32_t i, const tftp_lb_value& v) -> std::uint64_t {
    auto& s = st.sessions[i];
    const unsigned dir = v.to_client ? 1 : 0;
    const std::uint64_t moved = v.packets - s.kernel_packets[dir];
    s.kernel_packets[dir] = v.packets;
    if (dir == 1) {
      stats.packets_to_client += moved;
      stats.kernel_packets_to_client += moved;
      stats.bytes_to_client += v.bytes - s.kernel_bytes;
      s.kernel_bytes = v.bytes;
    } else {
      stats.packets_to_backend += moved;
      stats.kernel_packets_to_backend += moved;
    }
    return moved;
  };
  // tc-bpf: the keys of an established session's two entries (client -> backend, backend -> client).
  const auto set_kernel_keys = [&](Session& s) {
    const auto& backend = st.backends[s.backend].config.address;
    const std::uint32_t vip = options_.vip.sin_addr.s_addr;
    s.kernel_keys[0] = tftp_lb_key{s.client.sin_addr.s_addr, vip, s.client.sin_port, s.port};
    s.kernel_keys[1] = tftp_lb_key{backend.sin_addr.s_addr, vip, s.tid, s.port};
  };
  // tc-bpf: both entries are in the map (installed by user space or by the program): the kernel relays the session,
  // and its counters there start from zero.
  const auto now_in_kernel = [&](Session& s) {
    s.in_kernel = true;
    s.kernel_packets[0] = s.kernel_packets[1] = s.kernel_bytes = 0;
    ++stats.kernel_sessions;
  };
  // tc-bpf: an established session (the backend's transfer ID known) goes to the kernel, both directions.
  const auto to_kernel = [&](std::uint32_t i) {
    auto& s = st.sessions[i];
    const auto& backend = st.backends[s.backend].config.address;
    const std::uint32_t vip = options_.vip.sin_addr.s_addr;
    set_kernel_keys(s);
    tftp_lb_value to_backend{};
    to_backend.new_saddr = vip;
    to_backend.new_daddr = backend.sin_addr.s_addr;
    to_backend.new_sport = s.port;
    to_backend.new_dport = s.tid;
    to_backend.session = i;
    to_backend.gen = s.gen;
    to_backend.blksize = s.blksize;
    to_backend.last_block = s.last_block;  // a one-block file: its short DATA already went through user space
    tftp_lb_value to_client = to_backend;
    to_client.new_daddr = s.client.sin_addr.s_addr;
    to_client.new_dport = s.client.sin_port;
    to_client.to_client = 1;
    to_client.last_block = -1;
    if (!tc->put(s.kernel_keys[0], to_backend) || !tc->put(s.kernel_keys[1], to_client)) {
      const int e = errno;
      tc->erase(s.kernel_keys[0]);
      tc->erase(s.kernel_keys[1]);
      if (++stats.kernel_install_errors == 1 || stats.kernel_install_errors % 1000 == 0)
        log("tc-bpf: session of " + to_string(s.client) + " stays in user space: the BPF map refused it: " +
            std::strerror(e) + " (" + std::to_string(stats.kernel_install_errors) + " so far)");
      return;
    }
    now_in_kernel(s);
  };
  // tc-bpf: a read request's session waits in the map for the backend's first reply (its PENDING entry, keyed by
  // the backend's address and the session port, any source port), so the program can complete the session itself
  // and relay that reply: then no datagram of the transfer reaches user space. Written before the request leaves.
  const auto await_first_reply = [&](std::uint32_t i) {
    auto& s = st.sessions[i];
    const auto& backend = st.backends[s.backend].config.address;
    const std::uint32_t vip = options_.vip.sin_addr.s_addr;
    s.pending_key = tftp_lb_key{backend.sin_addr.s_addr, vip, TFTP_LB_ANY_PORT, s.port};
    tftp_lb_value v{};
    v.new_saddr = vip;
    v.new_daddr = s.client.sin_addr.s_addr;
    v.new_sport = s.port;
    v.new_dport = s.client.sin_port;
    v.session = i;
    v.gen = s.gen;
    v.to_client = 1;
    v.state = TFTP_LB_PENDING;
    v.last_block = -1;
    s.pending = tc->put(s.pending_key, v);  // refused (full): the first reply goes through user space, as before
  };
  // tc-bpf: the program completed the session (`v`, its PENDING entry, says how); user space takes it over as if
  // it had installed it. The PENDING entry is already gone.
  const auto adopt = [&](std::uint32_t i, const tftp_lb_value& v) {
    auto& s = st.sessions[i];
    s.pending = false;
    s.tid = static_cast<std::uint16_t>(v.tid & 0xffffu);
    s.blksize = v.blksize;
    s.last_block = v.last_block;
    set_kernel_keys(s);
    now_in_kernel(s);
    ++stats.kernel_first_replies;
  };
  // tc-bpf: the PENDING entry goes; if the program completed the session meanwhile, user space adopts it (its
  // entries are in the map and must be accounted and deleted with the session).
  const auto end_pending = [&](std::uint32_t i) {
    auto& s = st.sessions[i];
    if (!s.pending) return;
    s.pending = false;
    tftp_lb_value v;
    if (tc->take(s.pending_key, v) && (v.tid & TFTP_LB_INSTALLED)) adopt(i, v);
  };
  // tc-bpf: before user space decides anything about a pending session, has the program completed it?
  const auto sync_pending = [&](std::uint32_t i) {
    auto& s = st.sessions[i];
    tftp_lb_value v;
    if (s.pending && tc->get(s.pending_key, v) && (v.tid & TFTP_LB_INSTALLED)) end_pending(i);
  };
  // io_uring: a submission slot, submitting what is queued when the queue is full (only a turn of thousands).
  const auto sqe = [&]() -> io_uring_sqe* {
    io_uring_sqe* q = io_uring_get_sqe(&ring->ring);
    for (int tries = 0; !q && tries < 8; ++tries) {
      ++stats.ring_enters;
      io_uring_submit(&ring->ring);
      q = io_uring_get_sqe(&ring->ring);
    }
    return q;
  };
  const auto arm_receive = [&](int fd, std::uint64_t user_data) {
    io_uring_sqe* q = sqe();
    if (!q) {
      ring->rearm.push_back(user_data);
      return;
    }
    io_uring_prep_recvmsg_multishot(q, fd, &ring->recv_template, 0);
    q->flags |= IOSQE_BUFFER_SELECT;
    q->buf_group = kGroup;
    io_uring_sqe_set_data64(q, user_data);
  };
  const auto close_session = [&](std::uint32_t i) {
    auto& s = st.sessions[i];
    if (s.pending) end_pending(i);
    if (s.in_kernel) {
      // The counts since the last poll, and the entries, in one system call each: later datagrams of this
      // 4-tuple reach the socket (or, once it is closed, get an ICMP error), as they would without the kernel path.
      for (const auto& key : s.kernel_keys) {
        tftp_lb_value v;
        if (tc->take(key, v)) kernel_account(i, v);
      }
      s.in_kernel = false;
    }
    if (ring) {
      // The multishot receive holds the socket: cancel it, and close the descriptor only after this turn's
      // submissions are in, so no queued send can land on a new socket that reused the number.
      if (io_uring_sqe* q = sqe()) {
        io_uring_prep_cancel64(q, session_tag(i, s.gen), 0);
        io_uring_sqe_set_data64(q, tag(kIgnore));
      }
      ring->to_close.push_back(s.fd);
      s.fd = -1;
    } else {
      close_fd(s.fd);
    }
    st.by_client.erase(key_of(s.client));
    unlink(i);
    if (!s.finished) --st.candidates[s.backend].active;
    else --stats.sessions_lingering;
    s.in_use = false;
    s.finished = false;
    ++s.gen;
    st.free.push_back(i);
    --stats.sessions_active;
  };

  const auto count_sent = [&](State::Out kind, std::size_t n) {
    if (kind == State::Out::to_backend) ++stats.packets_to_backend;
    else if (kind == State::Out::to_client) {
      ++stats.packets_to_client;
      stats.bytes_to_client += n;
    }
  };
  // ---- output: epoll queues per burst, then one sendmmsg per socket; io_uring queues a send submission ----
  // io_uring: the socket and the buffer of the datagram being handled. It produces at most one datagram, sent
  // with that buffer, which goes back to the ring when the send completes.
  int current_fd = -1;
  unsigned current_buffer = 0;
  bool buffer_taken = false;
  unsigned sends_queued = 0;  // since the last io_uring_enter: each completes at once (MSG_DONTWAIT)
  const auto ring_send = [&](int fd, const sockaddr_in& to, const std::byte* data, std::size_t n, State::Out kind) {
    io_uring_sqe* q = buffer_taken ? nullptr : sqe();
    if (!q) {
      ++stats.socket_errors;
      return;
    }
    const unsigned b = current_buffer;
    buffer_taken = true;
    ring->tx_to[b] = to;
    ring->tx_iov[b] = iovec{const_cast<std::byte*>(data), n};
    ring->tx_kind[b] = static_cast<std::uint8_t>(kind);
    // MSG_DONTWAIT: a full send buffer fails this datagram now (as sendmmsg does) instead of parking it, so
    // sends on one socket leave in the order they were queued.
    io_uring_prep_sendmsg(q, fd, &ring->tx_msg[b], MSG_DONTWAIT);
    io_uring_sqe_set_data64(q, tag(kSend, b));
    ++sends_queued;
    count_sent(kind, n);  // now, with the datagram's other effects; a failed send takes it back
  };
  const auto queue = [&](const sockaddr_in& to, const std::byte* data, std::size_t n, State::Out kind) {
    if (ring) return ring_send(current_fd, to, data, n, kind);
    const unsigned k = st.tx_count++;  // never beyond kBatch: at most one output per datagram of the burst
    st.tx_to[k] = to;
    st.tx_iov[k] = iovec{const_cast<std::byte*>(data), n};
    st.tx_kind[k] = kind;
  };
  const auto flush = [&](int fd) {
    unsigned sent = 0;
    // Bounded: every call sends at least one datagram or skips one.
    for (unsigned calls = 0; sent < st.tx_count && calls < kBatch; ++calls) {
      ++stats.send_calls;
      const int r = ::sendmmsg(fd, &st.tx_msg[sent], st.tx_count - sent, 0);
      if (r <= 0) {
        // A full send buffer or an ICMP error reported on this socket: that datagram is lost (the endpoints'
        // retransmissions recover), the ones after it still go.
        ++stats.socket_errors;
        ++sent;
        continue;
      }
      for (unsigned k = sent; k < sent + static_cast<unsigned>(r); ++k) count_sent(st.tx_kind[k], st.tx_iov[k].iov_len);
      sent += static_cast<unsigned>(r);
    }
    st.tx_count = 0;
  };
  // One datagram on its own (a new session's request leaves from the session's new socket).
  const auto send_now = [&](int fd, const sockaddr_in& to, const std::byte* data, std::size_t n, State::Out kind) {
    if (ring) return ring_send(fd, to, data, n, kind);
    ++stats.send_calls;
    if (::sendto(fd, data, n, 0, reinterpret_cast<const sockaddr*>(&to), sizeof to) < 0) {
      ++stats.socket_errors;  // a full send buffer or an ICMP error: the endpoints' retransmissions recover
      return;
    }
    count_sent(kind, n);
  };
  const auto receive = [&](int fd) -> unsigned {
    for (unsigned k = 0; k < kBatch; ++k) st.rx_msg[k].msg_hdr.msg_namelen = sizeof(sockaddr_in);
    const int got = ::recvmmsg(fd, st.rx_msg.data(), kBatch, MSG_DONTWAIT, nullptr);
    if (got <= 0) return 0;
    ++stats.receive_calls;
    return static_cast<unsigned>(got);
  };

  const auto apply_backends = [&] {
    std::vector<RelayBackend> next;
    {
      std::lock_guard lock(mutex_);
      if (!pending_set_) return;
      next = std::move(pending_);
      pending_set_ = false;
    }
    for (auto& b : st.backends) b.listed = false;
    for (auto& n : next) {
      std::size_t i = 0;
      while (i < st.backends.size() && st.backends[i].config.name != n.name) ++i;
      if (i == st.backends.size()) {
        st.backends.push_back({n, true, 0});
        st.candidates.push_back({});
        st.candidates[i].name_hash = stable_hash(n.name);
      }
      st.backends[i].config = n;
      st.backends[i].listed = true;
    }
    for (std::size_t i = 0; i < st.backends.size(); ++i) {
      st.candidates[i].weight = std::max<std::uint32_t>(1, st.backends[i].config.weight);
      st.candidates[i].eligible = st.backends[i].listed && st.backends[i].config.eligible;
    }
    st.picker.reserve(st.backends.size());
  };

  const auto new_session = [&](const sockaddr_in& client, const std::byte* data, std::size_t n, bool read,
                               Clock::time_point now) {
    const std::uint32_t ip = ntohl(client.sin_addr.s_addr);
    const auto chosen = st.picker.pick(st.candidates, ip);
    if (!chosen) {
      ++stats.no_backend;
      if (stats.no_backend == 1 || stats.no_backend % 1000 == 0)
        log("no backend is UP for a request from " + to_string(client) + " (" + std::to_string(stats.no_backend) +
            " refused so far; see the backends' health)");
      queue(client, st.no_backend.data(), st.no_backend.size(), State::Out::error);
      return;
    }
    if (stats.sessions_active >= options_.max_sessions && st.head != kNone) {
      ++stats.sessions_evicted;
      if (stats.sessions_evicted == 1 || stats.sessions_evicted % 1000 == 0)
        log("session table full (" + std::to_string(options_.max_sessions) + "): evicted the oldest idle session, of " +
            to_string(st.sessions[st.head].client) + " (" + std::to_string(stats.sessions_evicted) +
            " evictions so far; raise max_sessions)");
      close_session(st.head);
    }
    const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in local = options_.vip;
    local.sin_port = 0;
    if (fd < 0 || ::bind(fd, reinterpret_cast<const sockaddr*>(&local), sizeof local) != 0) {
      const int e = errno;
      if (fd >= 0) ::close(fd);
      ++stats.socket_errors;
      log("cannot open a session socket on " + host_of(local) + " for " + to_string(client) + ": " + std::strerror(e) +
          " (raise the open-files limit, or lower max_sessions)");
      queue(client, st.busy.data(), st.busy.size(), State::Out::error);
      return;
    }
    std::uint32_t i;
    if (!st.free.empty()) {
      i = st.free.back();
      st.free.pop_back();
    } else {
      i = static_cast<std::uint32_t>(st.sessions.size());
      st.sessions.emplace_back();
    }
    auto& s = st.sessions[i];
    sockaddr_in bound{};
    socklen_t bound_len = sizeof bound;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len);
    s.port = bound.sin_port;
    s.in_kernel = false;
    s.pending = false;
    s.fd = fd;
    s.in_use = true;
    s.finished = false;
    s.client = client;
    s.backend = static_cast<std::uint32_t>(*chosen);
    s.tid = 0;
    s.blksize = tftp::default_blksize;
    s.last_block = -1;
    s.last = now;
    append(i);
    if (ring) {
      arm_receive(fd, session_tag(i, s.gen));
    } else {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = (static_cast<std::uint64_t>(s.gen) << 32) | i;
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    }
    st.by_client.emplace(key_of(client), i);
    ++st.candidates[*chosen].active;
    ++st.backends[*chosen].total;
    ++stats.sessions_started;
    ++stats.sessions_active;
    stats.sessions_peak = std::max(stats.sessions_peak, stats.sessions_active);
    if (tc && read) await_first_reply(i);
    send_now(fd, st.backends[*chosen].config.address, data, n, State::Out::to_backend);
  };

  // The virtual server's socket: a burst of requests per call. Refusals (ERROR 0) leave together from it; a new
  // session's request leaves from the session's own socket.
  const auto listen_datagram = [&](const sockaddr_in& from, const std::byte* data, std::size_t n,
                                   Clock::time_point now) {
    const auto parsed = tftp::parse_packet(std::span(data, n));
    const auto* packet = std::get_if<tftp::Packet>(&parsed);
    if (!packet) {
      ++stats.malformed_client;
      return;
    }
    const auto* request = std::get_if<tftp::Request>(packet);
    if (!request) {
      ++stats.not_a_request;  // no reply: an answer here would let anyone reflect traffic off the VIP
      return;
    }
    const bool read = request->opcode == tftp::Opcode::rrq;
    const auto found = st.by_client.find(key_of(from));
    if (found != st.by_client.end()) sync_pending(found->second);
    if (found != st.by_client.end() && st.sessions[found->second].in_kernel && !st.sessions[found->second].finished) {
      // tc-bpf: the kernel may have seen this transfer end since the last poll (UEFI's ERROR 8 after the tsize
      // probe, then a new request at once): ask the map now, so the request starts a new session.
      tftp_lb_value v;
      for (const auto& key : st.sessions[found->second].kernel_keys)
        if (tc->get(key, v) && v.state != TFTP_LB_RUNNING) finish(found->second, now);
    }
    if (found != st.by_client.end() && st.sessions[found->second].finished) {
      // A new request from the port of a finished transfer (UEFI asks for tsize, aborts, asks again from the
      // same port): a new session, with a new transfer port on the backend.
      close_session(found->second);
      new_session(from, data, n, read, now);
      return;
    }
    if (found == st.by_client.end()) {
      new_session(from, data, n, read, now);
      return;
    }
    // The client resent its request (our backend's first reply is slow or lost): the same backend gets it,
    // and a backend that already started this transfer ignores a duplicate from the same (ip, port).
    const auto i = found->second;
    touch(i, now);
    send_now(st.sessions[i].fd, st.backends[st.sessions[i].backend].config.address, data, n, State::Out::to_backend);
  };
  const auto on_listen = [&](Clock::time_point now) {
    for (int round = 0; round < kListenRounds; ++round) {
      const unsigned got = receive(listen_fd_);
      for (unsigned k = 0; k < got; ++k) {
        const sockaddr_in& from = st.rx_from[k];
        if (st.rx_msg[k].msg_hdr.msg_namelen < sizeof(sockaddr_in) || from.sin_family != AF_INET) continue;
        listen_datagram(from, st.rx.data() + k * kSlot, st.rx_msg[k].msg_len, now);
      }
      flush(listen_fd_);
      if (got < kBatch) return;  // drained: no EAGAIN round trip
    }
  };

  // A session's socket: everything queued on it (the client's and the backend's datagrams, in arrival order) in
  // one recvmmsg, handled in that order, and what it produces leaves in the same order with one sendmmsg, so
  // batching never reorders a transfer. Lockstep transfers mostly bring one datagram; what is left beyond a
  // burst is reported again by the level-triggered epoll in the next round.
  const auto session_datagram = [&](std::uint32_t i, const sockaddr_in& from, const std::byte* data, std::size_t n,
                                    Clock::time_point now) {
    do {  // once: `continue` drops the datagram
      auto& s = st.sessions[i];
      const auto& backend = st.backends[s.backend].config.address;
      if (s.pending) {
        // tc-bpf: the program may have completed this session (then its transfer ID is known here too). A datagram
        // from the backend that it left to user space (an ERROR, an OACK it does not parse, a full map) ends the
        // PENDING entry: user space learns the transfer ID from it, as without the kernel path.
        if (from.sin_addr.s_addr == backend.sin_addr.s_addr) end_pending(i);
        else sync_pending(i);
      }
      if (same(from, s.client)) {
        const auto parsed = tftp::parse_packet(std::span(data, n));
        const auto* packet = std::get_if<tftp::Packet>(&parsed);
        if (!packet) {
          ++stats.malformed_client;
          continue;
        }
        if (s.tid == 0) continue;  // nothing to answer yet: the client cannot know this port before a reply
        touch(i, now);
        sockaddr_in to = backend;
        to.sin_port = s.tid;
        queue(to, data, n, State::Out::to_backend);
        if (const auto* a = std::get_if<tftp::Ack>(packet); a && s.last_block == a->block) finish(i, now);
        else if (std::holds_alternative<tftp::Error>(*packet)) finish(i, now);
      } else if (from.sin_addr.s_addr == backend.sin_addr.s_addr && (s.tid == 0 || from.sin_port == s.tid)) {
        const auto parsed = tftp::parse_packet(std::span(data, n));
        const auto* packet = std::get_if<tftp::Packet>(&parsed);
        if (!packet) {
          ++stats.malformed_backend;
          continue;
        }
        s.tid = from.sin_port;  // the first valid reply from any port of the backend is its transfer ID
        touch(i, now);
        if (const auto* d = std::get_if<tftp::Data>(packet)) {
          if (d->payload.size() < s.blksize) s.last_block = d->block;
        } else if (const auto* oack = std::get_if<tftp::Oack>(packet)) {
          for (const auto& o : oack->options)
            if (o.name == "blksize")
              if (auto v = tftp::parse_option_number(o.value, tftp::min_blksize, tftp::max_blksize))
                s.blksize = static_cast<std::uint16_t>(*v);
        }
        queue(s.client, data, n, State::Out::to_client);
        if (std::holds_alternative<tftp::Error>(*packet)) finish(i, now);
        else if (tc && !s.in_kernel && !s.finished) to_kernel(i);
      } else if (from.sin_addr.s_addr == s.client.sin_addr.s_addr || from.sin_addr.s_addr == backend.sin_addr.s_addr) {
        ++stats.wrong_tid;  // RFC 1350: a packet from an unknown port gets ERROR 5 and the transfer goes on
        queue(from, st.unknown_tid.data(), st.unknown_tid.size(), State::Out::error);
      } else {
        ++stats.foreign_dropped;  // never answered: the balancer talks only to its clients and backends
      }
    } while (false);
  };
  const auto on_session = [&](std::uint32_t i, Clock::time_point now) {
    if (!st.sessions[i].in_use) return;
    const int fd = st.sessions[i].fd;
    const unsigned got = receive(fd);
    for (unsigned k = 0; k < got; ++k) session_datagram(i, st.rx_from[k], st.rx.data() + k * kSlot, st.rx_msg[k].msg_len, now);
    flush(fd);
  };

  const auto publish = [&] {
    stats.backends.resize(st.backends.size());
    for (std::size_t b = 0; b < st.backends.size(); ++b) {
      stats.backends[b].name = st.backends[b].config.name;
      stats.backends[b].active = st.candidates[b].active;
      stats.backends[b].total = st.backends[b].total;
    }
    std::lock_guard lock(mutex_);
    published_ = stats;
  };

  auto next_sweep = Clock::now();
  auto next_publish = next_sweep;
  const auto housekeeping = [&](Clock::time_point now) {
    if (now >= next_publish) {  // counters a status request reads are at most 20 ms old
      next_publish = now + std::chrono::milliseconds(20);
      publish();
    }
    if (now >= next_sweep) {
      next_sweep = now + std::chrono::milliseconds(100);
      if (tc) {
        // The kernel's share: its counts, activity for the idle timeout, and the transfers it saw end.
        st.deferred.clear();
        stats.kernel_entries = tc->for_each([&](const tftp_lb_key& key, const tftp_lb_value& v) {
          // An entry user space does not account for is an orphan: the program completed a session in the very
          // moment user space let go of its PENDING entry (a session closed, or a reply it handles itself, on
          // another CPU). Deleted after this read: that session's datagrams then reach its socket (or, closed, get
          // an ICMP error), and a live session goes back to the kernel with the backend's next reply.
          const auto orphan = [&] {
            if (st.orphans.size() < 65536) st.orphans.push_back(key);
          };
          const auto i = v.session;
          if (i >= st.sessions.size() || !st.sessions[i].in_use || st.sessions[i].gen != v.gen) return orphan();
          auto& s = st.sessions[i];
          if (v.state == TFTP_LB_PENDING) {
            // Completed by the program since the last poll: user space adopts it (one delete, no lookup).
            if (s.pending && (v.tid & TFTP_LB_INSTALLED)) {
              tc->erase(key);
              adopt(i, v);
            } else if (!s.pending) {
              orphan();
            }
            return;
          }
          if (s.in_kernel && (same_key(key, s.kernel_keys[0]) || same_key(key, s.kernel_keys[1]))) {
            if (kernel_account(i, v) > 0) touch(i, now);
            if (v.state != TFTP_LB_RUNNING) finish(i, now);
          } else if (s.pending) {
            if (st.deferred.size() < 65536) st.deferred.emplace_back(i, v);  // its PENDING entry may come later
          } else {
            orphan();
          }
        });
        for (const auto& [i, v] : st.deferred) {
          if (!st.sessions[i].in_use || !st.sessions[i].in_kernel || st.sessions[i].gen != v.gen) continue;
          if (kernel_account(i, v) > 0) touch(i, now);
          if (v.state != TFTP_LB_RUNNING) finish(i, now);
        }
        for (const auto& key : st.orphans) tc->erase(key);
        stats.kernel_orphans_deleted += st.orphans.size();
        st.orphans.clear();
      }
      while (!st.lingering.empty() && st.lingering.front().until <= now) {
        const auto l = st.lingering.front();
        st.lingering.pop_front();
        if (st.sessions[l.index].in_use && st.sessions[l.index].gen == l.gen) close_session(l.index);
      }
      // The LRU head is the session idle longest: close from there while it is past the idle timeout.
      for (int bound = 0; st.head != kNone && bound < 100000; ++bound) {
        const auto i = st.head;
        if (now - st.sessions[i].last < options_.idle_timeout) break;
        ++stats.sessions_idle_closed;
        close_session(i);
      }
    }
  };

  apply_backends();
  BusyPoll busy_poll(options_.busy_poll);
  bool poll_next = false;  // the next wait polls instead of sleeping
  if (!ring) {
    epoll_event events[kEvents];
    while (!stopping_) {
      if (poll_next) ++stats.busy_polls;
      const int n = ::epoll_wait(epoll_fd_, events, kEvents, poll_next ? 0 : 100);
      const auto now = Clock::now();
      bool found = false;
      for (int e = 0; e < n; ++e) {
        const auto t = events[e].data.u64;
        found = found || t != kWakeTag;
        if (t == kWakeTag) {
          std::uint64_t v;
          (void)!::read(wake_fd_, &v, sizeof v);
          apply_backends();
        } else if (t == kListenTag) {
          on_listen(now);
        } else {
          const auto i = static_cast<std::uint32_t>(t & 0xffffffffu);
          if (i < st.sessions.size() && st.sessions[i].in_use && st.sessions[i].gen == static_cast<std::uint32_t>(t >> 32))
            on_session(i, now);
        }
      }
      if (poll_next && found) ++stats.busy_poll_hits;
      poll_next = busy_poll.next_polls(found, now);
      housekeeping(now);
    }
    publish();
    return;
  }

  // ---- io_uring: a turn is one io_uring_enter that submits the last turn's sends and re-armed receives and
  // waits for completions; the completions are handled in the order the kernel posted them (per socket, the order
  // the datagrams arrived), and what they produce is queued in that order for the next enter. ----
  const auto arm_wake = [&] {
    if (io_uring_sqe* q = sqe()) {
      io_uring_prep_read(q, wake_fd_, &ring->wake_value, sizeof ring->wake_value, 0);
      io_uring_sqe_set_data64(q, tag(kWakeRead));
    }
  };
  unsigned turn_datagrams = 0;  // received this turn: a turn with none ends a busy poll's window sooner or later
  const auto receive_completion = [&](const io_uring_cqe& c, Clock::time_point now) {
    const std::uint64_t t = c.user_data;
    const bool listen = (t >> 56) == kRecvListen;
    const auto i = static_cast<std::uint32_t>(t & 0xffffffffu);
    const bool live = listen || (i < st.sessions.size() && st.sessions[i].in_use &&
                                 (st.sessions[i].gen & 0xffffffu) == ((t >> 32) & 0xffffffu));
    if (c.flags & IORING_CQE_F_BUFFER) {
      ++turn_datagrams;
      current_buffer = c.flags >> IORING_CQE_BUFFER_SHIFT;
      buffer_taken = false;
      auto* out = io_uring_recvmsg_validate(ring->buffer(current_buffer), c.res, &ring->recv_template);
      if (live && out && c.res >= 0 && !(out->flags & MSG_TRUNC) && out->namelen >= sizeof(sockaddr_in)) {
        sockaddr_in from;
        std::memcpy(&from, io_uring_recvmsg_name(out), sizeof from);
        const auto* data = static_cast<const std::byte*>(io_uring_recvmsg_payload(out, &ring->recv_template));
        const std::size_t n = io_uring_recvmsg_payload_length(out, c.res, &ring->recv_template);
        if (from.sin_family == AF_INET) {
          current_fd = listen ? listen_fd_ : st.sessions[i].fd;
          if (listen) listen_datagram(from, data, n, now);
          else session_datagram(i, from, data, n, now);
        }
      }
      if (!buffer_taken) ring->give_back(current_buffer);
    } else if (c.res < 0 && c.res != -ENOBUFS && c.res != -ECANCELED && live) {
      ++stats.socket_errors;
    }
    // The receive ended (no buffer was free, or an error): armed again at the turn's end while its socket lives.
    if (!(c.flags & IORING_CQE_F_MORE) && c.res != -ECANCELED && live) ring->rearm.push_back(t);
  };
  const auto send_completion = [&](const io_uring_cqe& c) {
    const auto b = static_cast<unsigned>(c.user_data & 0xffffffu);
    if (b >= kBuffers) return;
    if (c.res < 0) {  // a full send buffer or an ICMP error: the endpoints' retransmissions recover
      ++stats.socket_errors;
      const auto kind = static_cast<State::Out>(ring->tx_kind[b]);
      if (kind == State::Out::to_backend) --stats.packets_to_backend;
      else if (kind == State::Out::to_client) {
        --stats.packets_to_client;
        stats.bytes_to_client -= ring->tx_iov[b].iov_len;
      }
    }
    ring->give_back(b);
  };

  if (ring->enable_in_loop) {
    // liburing 2.3 declares io_uring_enable_rings but does not export it: the system call itself.
    if (::syscall(__NR_io_uring_register, ring->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) < 0) {
      log(std::string("io_uring relay stopped: enabling its ring: ") + std::strerror(errno) +
          " (set relay = \"epoll\")");
      publish();
      return;
    }
  }
  arm_receive(listen_fd_, tag(kRecvListen));
  arm_wake();
  std::vector<std::uint64_t> rearm;
  while (!stopping_) {
    ++stats.ring_enters;
    if (poll_next) {
      // Enter with GETEVENTS and min_complete 0: submits, runs the deferred task work (with DEFER_TASKRUN
      // completions are posted only then, so peeking at the CQ alone would see nothing) and returns at once.
      ++stats.busy_polls;
      io_uring_submit_and_get_events(&ring->ring);
    } else {
      // Wait for one completion beyond the sends this call submits: a MSG_DONTWAIT send completes during the
      // submission, so waiting for just one would return at once with only send completions and cost a second
      // call before the next datagram (two calls per datagram in a lockstep transfer).
      __kernel_timespec wait{0, 100'000'000};
      io_uring_cqe* first = nullptr;
      io_uring_submit_and_wait_timeout(&ring->ring, &first, 1 + sends_queued, &wait, nullptr);
    }
    sends_queued = 0;
    for (int fd : ring->to_close) ::close(fd);  // their last submissions are in
    ring->to_close.clear();
    const auto now = Clock::now();
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* c;
    io_uring_for_each_cqe(&ring->ring, head, c) {
      ++seen;
      const auto kind = c->user_data >> 56;
      if (kind == kRecvListen || kind == kRecvSession) {
        receive_completion(*c, now);
      } else if (kind == kSend) {
        send_completion(*c);
      } else if (kind == kWakeRead) {
        apply_backends();
        arm_wake();
      }
    }
    io_uring_cq_advance(&ring->ring, seen);
    rearm.swap(ring->rearm);
    for (const auto t : rearm) {
      if ((t >> 56) == kRecvListen) {
        arm_receive(listen_fd_, t);
        continue;
      }
      const auto i = static_cast<std::uint32_t>(t & 0xffffffffu);
      if (i < st.sessions.size() && st.sessions[i].in_use && (st.sessions[i].gen & 0xffffffu) == ((t >> 32) & 0xffffffu))
        arm_receive(st.sessions[i].fd, t);
    }
    rearm.clear();
    const bool found = turn_datagrams > 0;
    turn_datagrams = 0;
    if (poll_next && found) ++stats.busy_poll_hits;
    poll_next = busy_poll.next_polls(found, now);
    housekeeping(now);
  }
  publish();
}

}  // namespace deskfarm::tftp_lb
