#include "deskfarm/tftp/server.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <queue>
#include <random>
#include <thread>
#include <unordered_map>

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "deskfarm/tftp/packet.hpp"
#include "deskfarm/tftp/path.hpp"
#include "file_cache.hpp"
#include "socket.hpp"
#include "transfer.hpp"

namespace deskfarm::tftp {
using namespace detail;

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint64_t listener_id = 0;
constexpr std::uint64_t wake_id = 1;
// RFC 2347 limits a request to 512 bytes; allow slack for sloppy clients, drop anything bigger unread.
constexpr std::size_t max_request_bytes = 1024;
// Fairness: one busy socket may not starve the others within one epoll round.
constexpr int max_datagrams_per_wakeup = 64;
constexpr std::size_t max_batch = 64;
// ACKs and ERRORs are small; one recvmmsg drains up to this many per socket without a second (EAGAIN) call.
constexpr std::size_t receive_batch = 4;
constexpr std::size_t receive_slot_bytes = 2048;

struct Connection {
  Connection(std::uint64_t id_value, Fd socket, const Negotiated& negotiated_value, std::uint64_t size, bool rollover)
      : id(id_value),
        fd(std::move(socket)),
        negotiated(negotiated_value),
        transfer(size, negotiated_value.blksize, negotiated_value.windowsize, !negotiated_value.oack.empty(), rollover) {}
  std::uint64_t id;
  Fd fd;
  Negotiated negotiated;
  Transfer transfer;
  sockaddr_storage peer{};
  std::string peer_text;
  std::string filename;
  std::shared_ptr<const FileData> file;
  Clock::time_point started;
  Clock::time_point deadline;
  Clock::time_point expires;
  std::chrono::milliseconds rto{1000};
  int retries = 0;
  bool timer_queued = false;
  ReadCache read_cache;
};

struct Timer {
  Clock::time_point at;
  std::uint64_t id = 0;
  bool operator>(const Timer& other) const { return at > other.at; }
};

void set_port(sockaddr_storage& address, std::uint16_t port) {
  if (address.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&address)->sin_port = htons(port);
  if (address.ss_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&address)->sin6_port = htons(port);
}

bool is_wildcard(const sockaddr_storage& address) {
  if (address.ss_family == AF_INET) return reinterpret_cast<const sockaddr_in*>(&address)->sin_addr.s_addr == htonl(INADDR_ANY);
  if (address.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6*>(&address)->sin6_addr;
    return std::memcmp(&v6, &in6addr_any, sizeof v6) == 0;
  }
  return false;
}

enum class Outcome { done, unconfirmed, timed_out, client_error, aborted, stopped };

}  // namespace

class Server::Impl {
 public:
  explicit Impl(ServerOptions options);
  ~Impl() { stop(); }
  void start();
  void stop();
  std::uint16_t bound_port() const { return bound_port_.load(); }
  Stats stats() const {
    std::lock_guard lock(published_mutex_);
    return published_;
  }

 private:
  void run();
  void run_once();
  void on_listener();
  void on_request(const Request& request, const sockaddr_storage& peer, const sockaddr_storage& local);
  void on_connection(std::uint64_t id);
  void on_timers(Clock::time_point now);
  bool send_burst(Connection& connection, const Burst& burst, bool retransmit);
  void send_error(int fd, const sockaddr_storage& to, const sockaddr_storage* from, ErrorCode code, std::string_view message);
  void finish(std::uint64_t id, Outcome outcome, std::string_view why);
  void schedule(Connection& connection);
  Fd open_transfer_socket(const sockaddr_storage& local, std::string& error);
  void log(const std::string& line);
  bool logging() const { return static_cast<bool>(options_.log); }

  ServerOptions options_;
  std::filesystem::path real_root_;
  FileCache cache_;
  Fd epoll_;
  Fd listener_;
  Fd wake_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint16_t> bound_port_{0};
  sockaddr_storage listen_address_{};
  bool wildcard_ = false;
  std::unordered_map<std::uint64_t, std::unique_ptr<Connection>> connections_;
  std::map<std::string, std::uint64_t> by_peer_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers_;
  std::uint64_t next_id_ = 2;
  Stats stats_;
  mutable std::mutex published_mutex_;
  Stats published_;
  std::vector<std::byte> packet_;
  std::vector<std::byte> receive_;
  std::minstd_rand random_;
  // Scratch reused on every wake-up: the hot path neither allocates nor zeroes kilobytes per packet.
  std::array<epoll_event, 256> events_;
  std::array<std::array<std::byte, 4>, max_batch> headers_;
  std::array<std::array<iovec, 2>, max_batch> send_iovs_;
  std::array<mmsghdr, max_batch> send_messages_;
  std::vector<std::byte> batch_buffers_;
  std::array<iovec, receive_batch> receive_iovs_;
  std::array<mmsghdr, receive_batch> receive_messages_;
  std::array<sockaddr_storage, receive_batch> receive_from_;
};

namespace {

std::filesystem::path checked_root(const ServerOptions& options) {
  std::error_code error;
  if (options.root.empty()) throw ServerError("tftp: ServerOptions.root is empty; set it to the directory to serve");
  auto real = std::filesystem::canonical(options.root, error);
  if (error) throw ServerError("tftp: root " + options.root.string() + ": " + error.message());
  if (!std::filesystem::is_directory(real, error)) throw ServerError("tftp: root " + options.root.string() + " is not a directory");
  if ((options.port_range_low == 0) != (options.port_range_high == 0) || options.port_range_low > options.port_range_high) {
    throw ServerError("tftp: transfer port range " + std::to_string(options.port_range_low) + ".." +
                      std::to_string(options.port_range_high) + " is invalid; use 0/0 or low <= high, both non-zero");
  }
  if (options.max_blksize < min_blksize) throw ServerError("tftp: max_blksize " + std::to_string(options.max_blksize) + " is below 8 (RFC 2348)");
  if (options.retransmit.count() <= 0) throw ServerError("tftp: retransmit must be positive");
  return real;
}

}  // namespace

Server::Impl::Impl(ServerOptions options)
    : options_(std::move(options)),
      real_root_(checked_root(options_)),
      cache_(real_root_, options_.cache_file_bytes, options_.cache_total_bytes),
      receive_(65536 + 16),
      random_(std::random_device{}()),
      batch_buffers_(receive_batch * receive_slot_bytes) {}

void Server::Impl::start() {
  if (thread_.joinable()) return;
  const auto endpoint = parse_endpoint(options_.address);
  if (!endpoint) {
    throw ServerError("tftp: listen address '" + options_.address +
                      "' is not an IP literal with an optional port; use e.g. 127.0.0.1, 0.0.0.0:69, [::1] or [::]:69");
  }
  if (endpoint->port && options_.port != 0 && *endpoint->port != options_.port) {
    throw ServerError("tftp: listen address '" + options_.address + "' names port " + std::to_string(*endpoint->port) +
                      " but ServerOptions.port is " + std::to_string(options_.port) + "; set only one of them");
  }
  auto address = make_address(endpoint->host, endpoint->port.value_or(options_.port));
  listen_address_ = address->first;
  wildcard_ = is_wildcard(listen_address_);
  const std::string where = format_address(listen_address_);

  epoll_ = Fd(::epoll_create1(EPOLL_CLOEXEC));
  wake_ = Fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  listener_ = Fd(::socket(listen_address_.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!epoll_ || !wake_ || !listener_) throw ServerError("tftp: cannot create sockets for " + where + ": " + errno_text(errno));
  const int on = 1;
  if (listen_address_.ss_family == AF_INET) {
    ::setsockopt(listener_.get(), IPPROTO_IP, IP_PKTINFO, &on, sizeof on);
  } else {
    ::setsockopt(listener_.get(), IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on);
  }
  set_receive_buffer(listener_.get(), storm_receive_buffer);
  if (::bind(listener_.get(), reinterpret_cast<const sockaddr*>(&listen_address_), address->second) != 0) {
    throw ServerError("tftp: cannot bind " + where + ": " + errno_text(errno));
  }
  sockaddr_storage bound{};
  socklen_t length = sizeof bound;
  ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&bound), &length);
  bound_port_ = address_port(bound);

  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u64 = listener_id;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listener_.get(), &event);
  event.data.u64 = wake_id;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &event);

  stopping_ = false;
  stats_ = Stats{};
  {
    std::lock_guard lock(published_mutex_);
    published_ = Stats{};
  }
  log("tftp: listening on " + format_address(bound) + " root " + real_root_.string());
  thread_ = std::thread([this] { run(); });
}

void Server::Impl::stop() {
  if (!thread_.joinable()) return;
  stopping_ = true;
  const std::uint64_t one = 1;
  [[maybe_unused]] const auto written = ::write(wake_.get(), &one, sizeof one);
  thread_.join();
  connections_.clear();
  by_peer_.clear();
  timers_ = {};
  listener_.reset();
  epoll_.reset();
  wake_.reset();
}

void Server::Impl::log(const std::string& line) {
  if (!options_.log) return;
  try {
    options_.log(line);
  } catch (...) {
    // A failing log sink must not take the server down.
  }
}

void Server::Impl::run() {
  while (!stopping_) {
    try {
      run_once();
    } catch (const std::exception& error) {
      log(std::string("tftp: internal error in event loop: ") + error.what());
    }
    stats_.transfers_active = connections_.size();
    std::lock_guard lock(published_mutex_);
    published_ = stats_;
  }
  for (auto& [id, connection] : connections_) log("tftp: " + connection->filename + " to " + connection->peer_text + " stopped with the server");
}

void Server::Impl::run_once() {
  int wait_ms = -1;
  if (!timers_.empty()) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(timers_.top().at - Clock::now()).count();
    wait_ms = static_cast<int>(std::clamp<long long>(left, 0, 60'000));
  }
  const int count = ::epoll_wait(epoll_.get(), events_.data(), static_cast<int>(events_.size()), wait_ms);
  if (count < 0 && errno != EINTR) throw std::runtime_error("epoll_wait: " + errno_text(errno));
  for (int i = 0; i < count; ++i) {
    const std::uint64_t id = events_[static_cast<std::size_t>(i)].data.u64;
    if (id == wake_id) {
      std::uint64_t value = 0;
      [[maybe_unused]] const auto got = ::read(wake_.get(), &value, sizeof value);
    } else if (id == listener_id) {
      on_listener();
    } else {
      on_connection(id);
    }
  }
  on_timers(Clock::now());
}

void Server::Impl::send_error(int fd, const sockaddr_storage& to, const sockaddr_storage* from, ErrorCode code,
                              std::string_view message) {
  packet_.clear();
  encode_error(packet_, code, message);
  iovec iov{packet_.data(), packet_.size()};
  msghdr msg{};
  msg.msg_name = const_cast<sockaddr_storage*>(&to);
  msg.msg_namelen = address_length(to);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  // On a wildcard listener the reply must leave from the address the request was sent to.
  alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(in6_pktinfo))> control{};
  if (from != nullptr && wildcard_) {
    msg.msg_control = control.data();
    if (from->ss_family == AF_INET) {
      msg.msg_controllen = CMSG_SPACE(sizeof(in_pktinfo));
      cmsghdr* header = CMSG_FIRSTHDR(&msg);
      header->cmsg_level = IPPROTO_IP;
      header->cmsg_type = IP_PKTINFO;
      header->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
      in_pktinfo info{};
      info.ipi_spec_dst = reinterpret_cast<const sockaddr_in*>(from)->sin_addr;
      std::memcpy(CMSG_DATA(header), &info, sizeof info);
    } else {
      msg.msg_controllen = CMSG_SPACE(sizeof(in6_pktinfo));
      cmsghdr* header = CMSG_FIRSTHDR(&msg);
      header->cmsg_level = IPPROTO_IPV6;
      header->cmsg_type = IPV6_PKTINFO;
      header->cmsg_len = CMSG_LEN(sizeof(in6_pktinfo));
      in6_pktinfo info{};
      info.ipi6_addr = reinterpret_cast<const sockaddr_in6*>(from)->sin6_addr;
      std::memcpy(CMSG_DATA(header), &info, sizeof info);
    }
  }
  if (::sendmsg(fd, &msg, MSG_DONTWAIT) >= 0) ++stats_.errors_sent;
}

void Server::Impl::on_listener() {
  for (int i = 0; i < max_datagrams_per_wakeup; ++i) {
    sockaddr_storage peer{};
    iovec iov{receive_.data(), receive_.size()};
    alignas(cmsghdr) std::array<char, 256> control{};
    msghdr msg{};
    msg.msg_name = &peer;
    msg.msg_namelen = sizeof peer;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    const ssize_t got = ::recvmsg(listener_.get(), &msg, MSG_DONTWAIT);
    if (got < 0) {
      if (errno == EINTR) continue;
      return;  // EAGAIN, or an error the next wake-up will report again
    }
    sockaddr_storage local = listen_address_;
    for (cmsghdr* header = CMSG_FIRSTHDR(&msg); header != nullptr; header = CMSG_NXTHDR(&msg, header)) {
      if (header->cmsg_level == IPPROTO_IP && header->cmsg_type == IP_PKTINFO && local.ss_family == AF_INET) {
        in_pktinfo info{};
        std::memcpy(&info, CMSG_DATA(header), sizeof info);
        reinterpret_cast<sockaddr_in*>(&local)->sin_addr = info.ipi_addr;
      } else if (header->cmsg_level == IPPROTO_IPV6 && header->cmsg_type == IPV6_PKTINFO && local.ss_family == AF_INET6) {
        in6_pktinfo info{};
        std::memcpy(&info, CMSG_DATA(header), sizeof info);
        reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr = info.ipi6_addr;
      }
    }
    set_port(local, 0);
    const auto size = static_cast<std::size_t>(got);
    if ((msg.msg_flags & MSG_TRUNC) != 0 || size > max_request_bytes || address_port(peer) == 0) {
      ++stats_.malformed_dropped;
      if (logging()) log("tftp: dropped " + std::to_string(size) + "-byte datagram from " + format_address(peer) + " (oversized or port 0)");
      continue;
    }
    const auto result = parse_packet(std::span<const std::byte>(receive_.data(), size));
    if (const auto* error = std::get_if<ParseError>(&result)) {
      ++stats_.malformed_dropped;
      const bool is_request = size >= 2 && receive_[0] == std::byte{0} && (receive_[1] == std::byte{1} || receive_[1] == std::byte{2});
      const std::string text = "malformed request: " + error->message + " at offset " + std::to_string(error->offset);
      // Only a request has a meaningful reply address; anything else is dropped without an answer (no reflection).
      if (is_request) send_error(listener_.get(), peer, &local, ErrorCode::illegal_operation, text);
      if (logging()) log("tftp: " + text + " from " + format_address(peer) + (is_request ? " (ERROR 4 sent)" : " (dropped)"));
      continue;
    }
    const auto& packet = std::get<Packet>(result);
    if (const auto* request = std::get_if<Request>(&packet)) {
      if (request->opcode == Opcode::wrq) {
        ++stats_.wrq_refused;
        send_error(listener_.get(), peer, &local, ErrorCode::access_violation, "server is read-only");
        if (logging()) log("tftp: WRQ " + request->filename + " from " + format_address(peer) + " refused: read-only");
        continue;
      }
      on_request(*request, peer, local);
    } else {
      ++stats_.malformed_dropped;  // DATA/ACK/ERROR/OACK have no business on the listening port
    }
  }
}

void Server::Impl::on_request(const Request& request, const sockaddr_storage& peer, const sockaddr_storage& local) {
  const std::string peer_text = format_address(peer);
  // A retransmitted RRQ (our first reply was slow) must not start a second transfer.
  if (by_peer_.contains(peer_text)) return;
  auto refuse = [&](ErrorCode code, const std::string& message) {
    ++stats_.requests_refused;
    send_error(listener_.get(), peer, &local, code, message);
    if (logging()) {
      log("tftp: RRQ " + request.filename + " from " + peer_text + " refused: ERROR " +
          std::to_string(static_cast<unsigned>(code)) + " " + message);
    }
  };
  if (connections_.size() >= options_.max_transfers) {
    ++stats_.busy_refused;
    refuse(ErrorCode::not_defined, "server busy");
    return;
  }
  const bool netascii = request.mode == "netascii";
  if (request.mode == "mail") return refuse(ErrorCode::illegal_operation, "mode mail is not supported");
  if (netascii && !options_.allow_netascii) return refuse(ErrorCode::not_defined, "mode netascii is disabled; use octet");
  if (!netascii && request.mode != "octet") return refuse(ErrorCode::illegal_operation, "unknown mode '" + request.mode + "'");
  const auto path = sanitize_request_path(request.filename, options_.map_backslash);
  if (const auto* error = std::get_if<PathError>(&path)) return refuse(ErrorCode::access_violation, error->message);
  const auto& relative = std::get<std::filesystem::path>(path);

  std::shared_ptr<const FileData> file;
  bool cache_hit = false;
  if (options_.virtual_file) {
    try {
      if (auto content = options_.virtual_file(relative.generic_string(), peer)) {
        file = std::make_shared<const FileData>(netascii ? to_netascii(*content) : std::move(*content));
      }
    } catch (const std::exception& error) {
      if (logging()) log("tftp: virtual_file(" + relative.generic_string() + ") threw: " + error.what());
      return refuse(ErrorCode::not_defined, "internal error");
    }
  }
  if (!file) {
    auto opened = cache_.open(relative, netascii);
    if (const auto* error = std::get_if<OpenError>(&opened)) return refuse(error->code, error->message);
    auto& ok = std::get<OpenedFile>(opened);
    file = std::move(ok.data);
    cache_hit = ok.cache_hit;
    ++(cache_hit ? stats_.file_cache_hits : stats_.file_loads);
  }

  Negotiated negotiated = negotiate(request, options_, file->size());
  std::string socket_error;
  Fd fd = open_transfer_socket(local, socket_error);
  if (!fd) {
    if (logging()) log("tftp: no transfer socket for " + peer_text + ": " + socket_error);
    return refuse(ErrorCode::not_defined, "no free transfer port");
  }
  const std::uint64_t id = next_id_++;
  auto connection = std::make_unique<Connection>(id, std::move(fd), negotiated, file->size(), options_.rollover_to_zero);
  connection->peer = peer;
  connection->peer_text = peer_text;
  connection->filename = request.filename;
  connection->file = std::move(file);
  connection->started = Clock::now();
  connection->expires = connection->started + options_.max_lifetime;
  connection->rto = options_.retransmit;
  if (negotiated.timeout_seconds) {
    // Stay below the client's timer so our resend arrives before it gives up or resends itself (PVS CPVS61E011).
    connection->rto = std::min(connection->rto, std::chrono::milliseconds(*negotiated.timeout_seconds * 750));
  }
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u64 = id;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, connection->fd.get(), &event) != 0) {
    return refuse(ErrorCode::not_defined, "internal error");
  }
  Connection& added = *connection;
  connections_.emplace(id, std::move(connection));
  by_peer_.emplace(peer_text, id);
  ++stats_.rrq;
  stats_.transfers_peak = std::max<std::uint64_t>(stats_.transfers_peak, connections_.size());
  if (logging()) {
    std::string line = "tftp: RRQ " + request.filename + " from " + peer_text + " mode=" + request.mode;
    for (const auto& option : negotiated.oack) line += " " + option.name + "=" + option.value;
    line += " size=" + std::to_string(added.file->size()) + (cache_hit ? " (shared)" : "");
    log(line);
  }
  if (!send_burst(added, added.transfer.start(), false)) return;
  added.deadline = Clock::now() + added.rto;
  schedule(added);
}

Fd Server::Impl::open_transfer_socket(const sockaddr_storage& local, std::string& error) {
  Fd fd(::socket(local.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    error = "socket: " + errno_text(errno);
    return {};
  }
  sockaddr_storage address = local;
  const socklen_t length = address_length(address);
  if (options_.port_range_low == 0) {
    set_port(address, 0);
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0) return fd;
    error = "bind " + format_address(address) + ": " + errno_text(errno);
    return {};
  }
  const std::uint32_t range = static_cast<std::uint32_t>(options_.port_range_high - options_.port_range_low) + 1;
  const std::uint32_t first = static_cast<std::uint32_t>(random_()) % range;
  for (std::uint32_t i = 0; i < range; ++i) {
    set_port(address, static_cast<std::uint16_t>(options_.port_range_low + (first + i) % range));
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0) return fd;
    if (errno != EADDRINUSE) {
      error = "bind " + format_address(address) + ": " + errno_text(errno);
      return {};
    }
  }
  error = "every port in " + std::to_string(options_.port_range_low) + ".." + std::to_string(options_.port_range_high) + " is in use";
  return {};
}

bool Server::Impl::send_burst(Connection& connection, const Burst& burst, bool retransmit) {
  if (burst.oack) {
    packet_.clear();
    encode_oack(packet_, connection.negotiated.oack);
    if (::sendto(connection.fd.get(), packet_.data(), packet_.size(), MSG_DONTWAIT,
                 reinterpret_cast<const sockaddr*>(&connection.peer), address_length(connection.peer)) >= 0) {
      ++stats_.packets_sent;
      if (retransmit) ++stats_.retransmits;
    }
    return true;
  }
  if (burst.empty()) return true;
  const Transfer& transfer = connection.transfer;
  const std::uint64_t offset = transfer.block_offset(burst.first);
  std::uint64_t length = 0;
  for (std::uint64_t block = burst.first; block <= burst.last; ++block) length += transfer.block_length(block);
  const auto bytes = connection.file->read(offset, static_cast<std::size_t>(length), connection.read_cache);
  if (!bytes) {
    send_error(connection.fd.get(), connection.peer, nullptr, ErrorCode::not_defined, "file changed while being served");
    finish(connection.id, Outcome::aborted, "file changed while being served");
    return false;
  }
  auto& headers = headers_;
  auto& iovs = send_iovs_;
  auto& messages = send_messages_;
  std::uint64_t block = burst.first;
  std::size_t position = 0;
  // Bounded by the window size: each batch sends up to max_batch blocks or stops on a full socket buffer.
  while (block <= burst.last) {
    std::size_t count = 0;
    std::size_t batch_bytes = 0;
    for (; count < max_batch && block + count <= burst.last; ++count) {
      const std::uint64_t current = block + count;
      const std::size_t size = transfer.block_length(current);
      const std::uint16_t wire = transfer.wire_block(current);
      headers[count] = {std::byte{0}, std::byte{3}, static_cast<std::byte>(wire >> 8), static_cast<std::byte>(wire & 0xff)};
      iovs[count][0] = iovec{headers[count].data(), 4};
      iovs[count][1] = iovec{const_cast<std::byte*>(bytes->data() + position + batch_bytes), size};
      messages[count] = mmsghdr{};
      messages[count].msg_hdr.msg_name = &connection.peer;
      messages[count].msg_hdr.msg_namelen = address_length(connection.peer);
      messages[count].msg_hdr.msg_iov = iovs[count].data();
      messages[count].msg_hdr.msg_iovlen = size == 0 ? 1 : 2;
      batch_bytes += size;
    }
    const int sent = ::sendmmsg(connection.fd.get(), messages.data(), static_cast<unsigned>(count), MSG_DONTWAIT);
    if (sent <= 0) break;  // full buffer: the retransmit timer covers what is missing
    for (int i = 0; i < sent; ++i) stats_.bytes_sent += iovs[static_cast<std::size_t>(i)][1].iov_len * (messages[static_cast<std::size_t>(i)].msg_hdr.msg_iovlen - 1);
    stats_.packets_sent += static_cast<std::uint64_t>(sent);
    if (retransmit) stats_.retransmits += static_cast<std::uint64_t>(sent);
    if (static_cast<std::size_t>(sent) < count) break;
    position += batch_bytes;
    block += count;
  }
  return true;
}

void Server::Impl::on_connection(std::uint64_t id) {
  const auto found = connections_.find(id);
  if (found == connections_.end()) return;
  Connection& connection = *found->second;
  // Bounded: a few batches per wake-up, then other sockets get their turn (level-triggered epoll returns here).
  for (int round = 0; round < max_datagrams_per_wakeup / static_cast<int>(receive_batch); ++round) {
    for (std::size_t i = 0; i < receive_batch; ++i) {
      receive_iovs_[i] = iovec{batch_buffers_.data() + i * receive_slot_bytes, receive_slot_bytes};
      receive_messages_[i] = mmsghdr{};
      receive_messages_[i].msg_hdr.msg_name = &receive_from_[i];
      receive_messages_[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage);
      receive_messages_[i].msg_hdr.msg_iov = &receive_iovs_[i];
      receive_messages_[i].msg_hdr.msg_iovlen = 1;
    }
    const int got = ::recvmmsg(connection.fd.get(), receive_messages_.data(), receive_batch, MSG_DONTWAIT, nullptr);
    if (got <= 0) return;
    for (std::size_t i = 0; i < static_cast<std::size_t>(got); ++i) {
      const sockaddr_storage& from = receive_from_[i];
      if (!same_endpoint(from, connection.peer)) {
        // RFC 1350 §4: tell the stranger, keep the transfer going.
        ++stats_.foreign_tid;
        send_error(connection.fd.get(), from, nullptr, ErrorCode::unknown_tid, "unknown transfer ID");
        if (logging()) log("tftp: packet from unknown TID " + format_address(from) + " on transfer of " + connection.filename + " to " + connection.peer_text + " (ERROR 5 sent)");
        continue;
      }
      const std::size_t size = receive_messages_[i].msg_len;
      const bool truncated = (receive_messages_[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
      const auto result = parse_packet(std::span<const std::byte>(batch_buffers_.data() + i * receive_slot_bytes, size));
      const auto* packet = std::get_if<Packet>(&result);
      if (packet == nullptr) {
        ++stats_.malformed_dropped;
        continue;
      }
      if (const auto* ack = std::get_if<Ack>(packet); ack != nullptr && !truncated) {
        Burst next;
        switch (connection.transfer.on_ack(ack->block, next)) {
          case Transfer::AckResult::advanced:
            connection.retries = 0;
            if (!send_burst(connection, next, false)) return;
            connection.deadline = Clock::now() + connection.rto;
            schedule(connection);
            break;
          case Transfer::AckResult::complete:
            finish(id, Outcome::done, "");
            return;
          case Transfer::AckResult::duplicate:
          case Transfer::AckResult::stale:
            ++stats_.duplicate_acks;
            break;
        }
      } else if (const auto* error = std::get_if<Error>(packet)) {
        ++stats_.client_errors;
        finish(id, Outcome::client_error,
               "client ERROR " + std::to_string(static_cast<unsigned>(error->code)) + " '" + error->message + "'");
        return;
      } else {
        ++stats_.malformed_dropped;
      }
    }
    if (static_cast<std::size_t>(got) < receive_batch) return;  // queue drained: no EAGAIN round trip
  }
}

void Server::Impl::schedule(Connection& connection) {
  if (connection.timer_queued) return;
  timers_.push(Timer{std::min(connection.deadline, connection.expires), connection.id});
  connection.timer_queued = true;
}

void Server::Impl::on_timers(Clock::time_point now) {
  // Bounded: each pass pops one timer; re-queued timers lie in the future.
  while (!timers_.empty() && timers_.top().at <= now) {
    const Timer timer = timers_.top();
    timers_.pop();
    const auto found = connections_.find(timer.id);
    if (found == connections_.end()) continue;
    Connection& connection = *found->second;
    connection.timer_queued = false;
    if (now >= connection.expires) {
      send_error(connection.fd.get(), connection.peer, nullptr, ErrorCode::not_defined, "transfer exceeded its lifetime");
      finish(timer.id, Outcome::timed_out, "lifetime of " + std::to_string(options_.max_lifetime.count()) + " s exceeded");
      continue;
    }
    if (connection.deadline > now) {
      schedule(connection);  // activity since this timer was queued: sleep until the new deadline
      continue;
    }
    if (connection.retries >= options_.max_retries) {
      if (connection.transfer.all_sent()) {
        finish(timer.id, Outcome::unconfirmed, "final ACK never came");
      } else {
        finish(timer.id, Outcome::timed_out, "no ACK after " + std::to_string(options_.max_retries) + " resends");
      }
      continue;
    }
    ++connection.retries;
    if (!send_burst(connection, connection.transfer.resend(), true)) continue;
    connection.deadline = now + connection.rto;
    schedule(connection);
  }
}

void Server::Impl::finish(std::uint64_t id, Outcome outcome, std::string_view why) {
  const auto found = connections_.find(id);
  if (found == connections_.end()) return;
  Connection& connection = *found->second;
  switch (outcome) {
    case Outcome::done: ++stats_.transfers_done; break;
    case Outcome::unconfirmed: ++stats_.transfers_unconfirmed; break;
    case Outcome::timed_out: ++stats_.transfers_timed_out; break;
    case Outcome::client_error:
    case Outcome::aborted:
    case Outcome::stopped: break;
  }
  if (logging()) {
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - connection.started).count();
    static constexpr const char* names[] = {"done", "done (unconfirmed)", "timed out", "ended by client", "aborted", "stopped"};
    std::string line = "tftp: " + connection.filename + " to " + connection.peer_text + " " + names[static_cast<int>(outcome)] +
                       " after " + std::to_string(connection.transfer.acked()) + " blocks in " + std::to_string(elapsed) + " ms";
    if (!why.empty()) line += ": " + std::string(why);
    log(line);
  }
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, connection.fd.get(), nullptr);
  by_peer_.erase(connection.peer_text);
  connections_.erase(found);
}

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Server::~Server() = default;
void Server::start() { impl_->start(); }
void Server::stop() { impl_->stop(); }
std::uint16_t Server::bound_port() const { return impl_->bound_port(); }
Stats Server::stats() const { return impl_->stats(); }

}  // namespace deskfarm::tftp
