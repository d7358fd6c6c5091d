#pragma once
// Read-only, event-driven TFTP server: one epoll thread serves every transfer, one socket (TID) per transfer.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <sys/socket.h>

namespace deskfarm::tftp {

/// The receive buffer a socket that takes a storm's read requests asks for (the server's listener, a load
/// balancer's virtual server): a PXE boot storm sends thousands of requests at once, and Linux's default
/// (net.core.rmem_default, 208 KiB) holds about 200 of them; the rest are lost until their clients resend.
inline constexpr int storm_receive_buffer = 4 << 20;

/// Sets `fd`'s receive buffer to `bytes`: SO_RCVBUFFORCE where the process may (CAP_NET_ADMIN), else SO_RCVBUF,
/// which the kernel caps at net.core.rmem_max. Returns the size granted, in the measure of `bytes` (Linux reports
/// twice that, its bookkeeping included), or 0 when it cannot be read.
int set_receive_buffer(int fd, int bytes);

/// Server configuration; every default is safe for PXE on a LAN.
struct ServerOptions {
  /// Where to listen; the family follows the literal: "127.0.0.1", "0.0.0.0", "::1", "[::1]", "[::]" (IPv6 and,
  /// unless the system sets IPV6_V6ONLY, IPv4 too); a port may follow ("127.0.0.1:69", "[::1]:69").
  std::string address = "127.0.0.1";
  std::uint16_t port = 0;             ///< Listening port unless `address` names one; 0 = ephemeral, see bound_port().
  std::filesystem::path root;         ///< The only directory served; symlinks may not leave it.
  std::uint16_t port_range_low = 0;   ///< Transfer (TID) ports low..high; 0/0 = kernel-chosen ephemeral.
  std::uint16_t port_range_high = 0;
  std::uint16_t max_blksize = 1468;   ///< Cap for blksize (RFC 2348 8..65464); MTU-32 by default.
  bool allow_windowsize = true;       ///< Grant windowsize (RFC 7440) at all; only ever if the client asks.
  std::uint16_t max_windowsize = 16;  ///< Cap for windowsize in blocks.
  std::size_t max_window_bytes = std::size_t{1} << 20;  ///< Cap for windowsize x blksize in bytes.
  bool refuse_blksize = false;        ///< Leave blksize out of OACK (clients that crash when it is granted).
  bool refuse_tsize = false;          ///< Leave tsize out of OACK.
  bool omit_zero_tsize = false;       ///< Leave tsize out for an empty file (curl rejects tsize=0; RFC 2349 sends it).
  bool refuse_timeout = false;        ///< Leave timeout out of OACK.
  bool refuse_windowsize = false;     ///< Leave windowsize out of OACK.
  std::chrono::milliseconds retransmit{1000};  ///< Resend timer; kept below the client's negotiated timeout.
  int max_retries = 5;                         ///< Resends of one window before the transfer is dropped.
  std::chrono::seconds max_lifetime{1800};     ///< Hard cap on one transfer's duration.
  std::size_t max_transfers = 1024;            ///< Concurrent transfers; excess RRQs get ERROR 0 "server busy".
  bool rollover_to_zero = true;                ///< Block number after 65535 is 0 (tftp-hpa default), else 1.
  bool map_backslash = true;                   ///< Treat `\` in names as `/` (Windows-style PXE names).
  bool allow_netascii = true;                  ///< Serve mode netascii (LF→CRLF, CR→CR NUL); else ERROR 0.
  std::size_t cache_file_bytes = std::size_t{8} << 20;   ///< Files up to this size are held in memory, shared.
  std::size_t cache_total_bytes = std::size_t{128} << 20;  ///< Memory cap of idle cached files.
  /// Optional generated content for a name (e.g. a bootstrap), checked before the root; nullopt = not virtual.
  std::function<std::optional<std::string>(std::string_view path, const sockaddr_storage& peer)> virtual_file;
  /// Optional sink for one structured line per event ("tftp: RRQ a.bin from 127.0.0.1:40000 ..."); default silent.
  std::function<void(std::string_view line)> log;
};

/// Counter snapshot; all values are totals since start() except the two `transfers_active*`.
struct Stats {
  std::uint64_t rrq = 0;                  ///< RRQs accepted (a transfer was started).
  std::uint64_t wrq_refused = 0;          ///< WRQs answered with ERROR 2.
  std::uint64_t requests_refused = 0;     ///< RRQs answered with an ERROR (not found, path, mode, busy...).
  std::uint64_t busy_refused = 0;         ///< RRQs refused because max_transfers was reached.
  std::uint64_t malformed_dropped = 0;    ///< Datagrams that did not parse or were out of place.
  std::uint64_t foreign_tid = 0;          ///< Packets from an unknown (ip, port) to a transfer socket (ERROR 5).
  std::uint64_t errors_sent = 0;          ///< ERROR packets sent.
  std::uint64_t client_errors = 0;        ///< Transfers ended by an ERROR from the client (incl. code 8).
  std::uint64_t transfers_active = 0;     ///< Transfers in progress now.
  std::uint64_t transfers_peak = 0;       ///< Highest transfers_active seen.
  std::uint64_t transfers_done = 0;       ///< Transfers whose last block was acknowledged.
  std::uint64_t transfers_unconfirmed = 0;///< All data sent, final ACK never came (not an error, RFC 1350).
  std::uint64_t transfers_timed_out = 0;  ///< Dropped after max_retries or max_lifetime.
  std::uint64_t bytes_sent = 0;           ///< File payload bytes sent, retransmits included.
  std::uint64_t packets_sent = 0;         ///< DATA and OACK datagrams sent.
  std::uint64_t retransmits = 0;          ///< DATA/OACK datagrams sent again after a timeout.
  std::uint64_t duplicate_acks = 0;       ///< ACKs that did not advance the window (never answered, RFC 1123).
  std::uint64_t file_loads = 0;           ///< Files opened from disk into the shared cache.
  std::uint64_t file_cache_hits = 0;      ///< RRQs served from an already-open shared file.
};

/// Failure to configure or start the server (bad address, root, port in use).
class ServerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The server; start() binds and launches the event thread, stop() (or the destructor) joins it.
class Server {
 public:
  /// Validates options (root must be a directory); throws ServerError.
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Binds the listening socket and starts the event thread; throws ServerError.
  void start();
  /// Ends every transfer silently and joins the event thread; idempotent.
  void stop();
  /// The listening port (useful with port 0); 0 before start().
  std::uint16_t bound_port() const;
  /// Consistent snapshot of the counters; callable from any thread.
  Stats stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace deskfarm::tftp
