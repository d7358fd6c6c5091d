#pragma once
// NBD server (fixed newstyle, simple replies): a fixed set of epoll reactor threads, each switching between the
// fibers (stackful coroutines) of its connections, so a connection costs memory, never a thread of its own.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include "deskfarm/nbd/session.hpp"
#include "deskfarm/nbd/tls.hpp"

namespace deskfarm::nbd {

/// The server could not start; the message names the address, port and cause.
class ServerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Server settings.
struct ServerOptions {
  std::string address = "127.0.0.1";      ///< IPv4 or IPv6 address to listen on
  std::uint16_t port = 0;                 ///< 0 = ephemeral, see Server::bound_port(); NBD's own is 10809
  /// Connections beyond this are closed at accept. 0 = sized at start() to the descriptor limit
  /// (connections_for_fd_limit()), so the server runs out of slots before the process runs out of descriptors.
  std::size_t max_connections = 0;
  std::uint32_t max_payload = 32U << 20;  ///< largest READ/WRITE; advertised as maximum block size
  /// Reactor threads serving every connection (0 = one per core). Resolvers, listers and flushes run on 4 more.
  std::size_t threads = 0;
  std::chrono::milliseconds handshake_timeout{30000};  ///< option haggling must finish within this
  /// After the handshake: a connection that sends nothing for this long is closed (0 = never). A client that
  /// reconnects loses nothing by it; it frees the slot a vanished or hard-reset peer would hold.
  std::chrono::milliseconds idle_timeout{0};
  /// TCP keepalive: probe a silent peer after this long, then every third of it, 3 times (0 = off). Finds
  /// half-open connections (a peer reset without a FIN) even while the idle timeout has not run out.
  std::chrono::seconds keepalive{0};
  /// NBD_OPT_STARTTLS (null = TLS not offered). The TLS handshake counts against handshake_timeout.
  std::shared_ptr<const TlsContext> tls;
  /// With `tls`: every connection must STARTTLS before anything else (NBD_REP_ERR_TLS_REQD).
  bool require_tls = false;
  std::function<void(std::string_view)> log;           ///< one line per event; empty = silent
  /// Refused connections and accept failures (a peer or the machine is short of something an operator should see);
  /// at most one line a second per cause, with the number left out. Empty = `log`.
  std::function<void(std::string_view)> warn;
};

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (a server holds a descriptor per connection, and the
/// usual soft limit of 1024 is far below what a site needs); returns the soft limit now in force.
std::uint64_t raise_fd_limit();

/// The most connections max_connections = 0 sizes to, whatever the descriptor limit.
inline constexpr std::size_t kMaxAutoConnections = 65536;

/// How many connections fit in `fd_limit` descriptors: two each (the socket and a device's write cache overflow
/// file), after the descriptors open now and a reserve of 64 for everything else (data store, logs, new layers);
/// at most kMaxAutoConnections.
std::size_t connections_for_fd_limit(std::uint64_t fd_limit);

/// Counters since start().
struct Stats {
  std::uint64_t accepted = 0;            ///< connections taken
  std::uint64_t rejected = 0;            ///< connections closed at accept (max_connections reached, no descriptor)
  std::uint64_t active = 0;              ///< connections open now
  std::uint64_t handshake_failures = 0;  ///< malformed or timed-out option haggling
  std::uint64_t protocol_errors = 0;     ///< malformed transmission requests (connection closed)
  std::uint64_t requests = 0;            ///< transmission requests handled
  std::uint64_t bytes_read = 0;          ///< READ payload bytes sent
  std::uint64_t bytes_written = 0;       ///< WRITE payload bytes received
};

/// Serves exports chosen per connection by a Resolver.
class Server {
 public:
  /// `resolver` picks the export for GO/INFO/EXPORT_NAME; `lister` answers NBD_OPT_LIST (empty = no entries).
  Server(ServerOptions options, Resolver resolver, Lister lister = {});
  /// Stops if running.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Raises the descriptor limit (raise_fd_limit()), binds and starts accepting; throws ServerError.
  void start();
  /// Closes the listener, ends every session (each one's waits return at once) and joins all threads. Idempotent.
  void stop();
  /// The port actually bound (useful with port 0).
  std::uint16_t bound_port() const;
  /// A snapshot of the counters.
  Stats stats() const;
  /// The connection limit in force (max_connections, or what start() sized it to).
  std::size_t max_connections() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace deskfarm::nbd
