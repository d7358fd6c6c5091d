#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
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

/// The admin endpoint's limits; the defaults are what `deskfarm run` uses.
struct AdminLimits {
  std::chrono::milliseconds request_deadline{5000};  ///< to receive a whole request head
  std::size_t max_connections = 64;                 ///< reading at once; the oldest is dropped beyond
  std::size_t max_queued = 16;                      ///< complete requests waiting; 503 beyond
  std::size_t max_head_bytes = 8192;                ///< 431 beyond
  unsigned workers = 2;
};

/// The deployment's admin endpoint: GET /metrics (Prometheus text), GET /status (JSON) and POST /request/SUBJECT
/// (a JSON bus request, `deskfarm request`).
///
/// Slow or idle clients cannot starve it: one thread accepts connections and reads request heads
/// (poll, no thread per connection) with a deadline of 5 s for the whole head; only complete requests
/// go to a bounded queue served by two workers. Connections close after one answer (no keep-alive).
/// With a token, every request needs `Authorization: Bearer <token>`.
class AdminServer {
 public:
  /// Binds `address` (throws std::invalid_argument for a refused address, Poco::Exception if it cannot bind).
  AdminServer(Deployment& deployment, const std::string& address, std::string token = {}, AdminLimits limits = AdminLimits());
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;
  /// The address actually bound ("127.0.0.1:43123").
  std::string address() const;

 private:
  struct Pending {
    Poco::Net::StreamSocket socket;
    std::string head;
    std::chrono::steady_clock::time_point deadline;
  };
  struct Request {
    Poco::Net::StreamSocket socket;
    std::string head;
  };
  void reader();
  void worker();
  void answer(Request& request);
  /// POST /request/SUBJECT: the body (JSON) as a bus request on the operator's behalf; the reply's JSON back.
  void bus_request(Request& request, const std::string& subject);

  Deployment& deployment_;
  std::string token_;
  AdminLimits limits_;
  std::string host_;
  Poco::Net::ServerSocket listener_;
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Request> queue_;
  std::thread reader_;
  std::vector<std::thread> workers_;
};

}  // namespace deskfarm::kernel
