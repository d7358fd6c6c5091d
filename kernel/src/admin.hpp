#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/StreamSocket.h>

namespace deskfarm::kernel {

class Deployment;

/// host:port split; throws std::invalid_argument naming the text.
std::pair<std::string, std::uint16_t> parse_host_port(const std::string& text, const std::string& what);

/// Empty when `address` may serve the admin endpoint: a loopback address, or any address when a token
/// is configured. Otherwise the reason and the fix.
std::string admin_address_error(const std::string& address, const std::string& token);

/// True when `a` equals `b`, in time that depends on their lengths only (for the bearer token).
bool equal_constant_time(std::string_view a, std::string_view b);

/// An answer of the admin endpoint: its whole HTTP text and its status (counted by status as it is, never read
/// back out of the text). Status 0: no answer yet (a bus request in flight answers later).
struct AdminAnswer {
  int code = 0;
  std::string text;
};

/// The admin endpoint's limits; the defaults are what `deskfarm run` uses (`admin_workers` and `admin_inflight`
/// under [deployment] set two of them).
struct AdminLimits {
  std::chrono::milliseconds request_deadline{5000};  ///< to receive a whole request, and to send a whole answer
  std::chrono::milliseconds idle_timeout{5000};      ///< a kept-alive connection without a new request is closed
  std::size_t max_connections = 256;                 ///< reading (or idle between requests) at once; the oldest is dropped beyond
  std::size_t max_queued = 64;                       ///< complete requests waiting for a worker; 503 beyond
  std::size_t max_head_bytes = 8192;                 ///< 431 beyond
  std::size_t max_inflight = 256;                    ///< bus requests waiting for their reply; 503 beyond
  std::size_t max_requests_per_connection = 1000;    ///< then the answer says "Connection: close"
  unsigned workers = 2;
};

/// The deployment's admin endpoint: GET /metrics (Prometheus text), GET /status (JSON) and POST /request/SUBJECT
/// (a JSON bus request, `deskfarm request`).
///
/// One I/O thread owns every connection (poll, non-blocking, no thread per connection): it reads requests within
/// a deadline, hands complete ones to a bounded queue served by the workers, and writes the answers. A worker
/// answers GET itself; for POST /request it only starts the bus request, and the reply (or the timeout) completes
/// the answer later from the bus, so a slow responder holds an in-flight slot, not a worker. Connections are kept
/// alive (HTTP/1.1) for a bounded number of requests and an idle timeout. With a token, every request needs
/// `Authorization: Bearer <token>`.
class AdminServer {
 public:
  /// Binds `address` (throws std::invalid_argument for a refused address, Poco::Exception if it cannot bind).
  AdminServer(Deployment& deployment, const std::string& address, std::string token = {}, AdminLimits limits = AdminLimits());
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;
  /// The address actually bound ("127.0.0.1:43123").
  std::string address() const;

  /// The endpoint's own metrics (Prometheus text, rendered by its MetricsRegistry): answers by status, in flight
  /// now and at most, refusals, answers dropped, requests on reused connections, the latency histogram. GET
  /// /metrics serves them after the deployment's; tests read them here (deskfarm::testing::metric_sample).
  std::string metrics_text() const;

 private:
  /// The state the I/O thread, the workers and pending bus callbacks share; it outlives the server while a
  /// callback still holds it, so a reply that comes after the server is gone writes nowhere.
  struct Shared;
  struct Connection;
  struct Job {
    std::uint64_t connection = 0;
    std::string head;
    std::string body;
    bool keep_alive = false;
  };
  void io();
  void worker();
  /// The whole HTTP answer to `job`; status 0 when it is a bus request now in flight (answered later).
  AdminAnswer answer(const Job& job);
  AdminAnswer bus_request(const Job& job, const std::string& subject);

  Deployment& deployment_;
  std::string token_;
  AdminLimits limits_;
  std::string host_;
  Poco::Net::ServerSocket listener_;
  std::shared_ptr<Shared> shared_;
  std::thread io_;
  std::vector<std::thread> workers_;
};

}  // namespace deskfarm::kernel
