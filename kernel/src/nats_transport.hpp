#pragma once
// The bus across processes: every deskfarm process of a farm connects to the same NATS servers with libnats,
// and the bus's subjects, wildcards and requests travel there as they are. Typed bodies cross as their
// encoding after a line with the type name and version (nats_envelope.hpp).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <Poco/JSON/Object.h>

#include "bus.hpp"
#include "log.hpp"

struct __natsConnection;
struct __natsSubscription;
struct __natsMsg;

namespace deskfarm::kernel {

/// How to reach the NATS servers: from `bus = "nats://host:port[,host:port…]"` and the `nats_*` keys of [deployment].
struct NatsSettings {
  std::vector<std::string> servers;  ///< "nats://host:port" or "tls://host:port", each as written
  std::string user;
  std::string password;  ///< a secret
  std::string token;     ///< a secret
  std::string ca;        ///< PEM file of the CA that signed the servers' certificates; TLS when set
  std::string cert;      ///< PEM client certificate and its key, for servers that verify clients
  std::string key;
  bool tls = false;  ///< a tls:// server, or a CA or client certificate given
  std::size_t reconnect_buffer_bytes = 8 * 1024 * 1024;  ///< publishes kept while disconnected; beyond: dropped, counted
  std::chrono::milliseconds reconnect_wait{250};
  std::string name;  ///< the connection's name as the servers show it (the deployment's name)
};

/// One libnats connection carrying a BusCore to other processes. Each pattern this process subscribes to is
/// one NATS subscription, all of them (and the reply inbox) members of one queue group of this connection's own,
/// so the server sends each message once however many of the patterns match it; the connection echoes nothing
/// back (NoEcho). Messages are taken on libnats's reader thread and queued to the subscribers' strands there.
/// libnats reconnects by itself (resubscribing), buffers publishes within `reconnect_buffer_bytes` meanwhile,
/// and this counts the rest.
class NatsTransport final : public RemoteTransport {
 public:
  NatsTransport(NatsSettings settings, BusCore& bus, LogSink& log, std::vector<std::string> secrets);
  ~NatsTransport() override;
  NatsTransport(const NatsTransport&) = delete;
  NatsTransport& operator=(const NatsTransport&) = delete;

  /// Connects and subscribes every pattern watched so far. Throws std::runtime_error naming the servers
  /// (secrets masked), libnats's reason and what to do.
  void connect();
  /// Flushes what is buffered (bounded), then closes: once this returns no message reaches the bus any more.
  void close();

  void publish(const sdk::Message& message) override;
  void request(const sdk::Message& message, std::uint64_t id) override;
  void reply(const std::string& to, const sdk::Message& reply) override;
  void watch(const std::string& pattern) override;
  void unwatch(const std::string& pattern) override;
  /// A round trip to the server (at most 1 s, and only while connected): subscriptions sent before are in place.
  void settle() override;

  /// The transport at /status: servers (masked), state, the server connected to, counters.
  Poco::JSON::Object::Ptr status() const;
  /// deskfarm_bus_nats_* families in Prometheus text.
  std::string metrics_text() const;
  bool connected() const;

 private:
  friend struct NatsCallbacks;  // libnats's callbacks, in the .cpp (they need its types)
  /// A message from NATS, on libnats's reader thread: for the bus's subscribers, or a reply to this process.
  void take(__natsMsg* msg, BusCore::RouteCache& cache);
  void handle_inbox(__natsMsg* msg);
  /// Hands what a full subscriber queue left to the overflow thread (the reader thread never waits).
  void overflow(std::unique_ptr<BusCore::RemoteRest> rest);
  void run_overflow();
  void handle_disconnected();
  void handle_reconnected();
  void handle_error(const std::string& what);
  void handle_closed();
  /// Sends one message, to the socket before returning when `at_once` (requests, replies), else buffered for the
  /// flusher (publications); counts a failure (the reconnect buffer is full, the connection closed).
  void send(const std::string& subject, const char* reply_to, const sdk::Message& message, bool at_once);
  /// A message from NATS as the bus sees it; false (counted, logged) when it is foreign or garbled.
  bool to_message(__natsMsg* msg, sdk::Message& out);
  void subscribe_locked(const std::string& pattern, __natsSubscription*& sub);
  /// Whether a subscription of `pattern` also brings this process's replies (counted in inbox_watchers_).
  bool watches_inbox(const std::string& pattern) const;
  void foreign(std::string_view subject, const std::string& why);
  void log(sdk::LogLevel level, const std::string& text) { log_.write(level, "bus", redact_secrets_(text)); }
  std::string redact_secrets_(std::string text) const;

  NatsSettings settings_;
  BusCore& bus_;
  LogSink& log_;
  std::vector<std::string> secrets_;
  __natsConnection* nc_ = nullptr;  // destroyed with the transport; publishes after close() fail harmlessly
  std::string inbox_prefix_;        // "_INBOX.<nuid>." — replies to this process's requests
  std::string queue_;               // the queue group of every subscription of this connection
  BusCore::RouteCache reader_routes_;  // the reader thread's; cleared by close()
  __natsSubscription* inbox_sub_ = nullptr;
  mutable std::mutex mutex_;  // guards watched_ and the subscriptions
  std::map<std::string, __natsSubscription*> watched_;  // nullptr until connected
  // Subscriptions of watched_ that match this process's reply inbox: each reply then comes twice (the inbox is no
  // member of the queue group: the server answers "no responders" only to a plain subscription).
  std::atomic<int> inbox_watchers_{0};
  // Callbacks hold it shared while they hand a message to the bus; close() takes it exclusively.
  std::shared_mutex gate_;
  bool open_ = false;  // guarded by gate_
  std::atomic<bool> connected_{false};
  std::atomic<std::uint64_t> sent_{0}, received_{0}, send_failed_{0}, foreign_{0}, disconnects_{0}, reconnects_{0},
      async_errors_{0};
  std::atomic<bool> dropping_{false};  // a drop was logged in this disconnection already
  // Messages for subscribers whose queue was full, delivered in order by overflow_thread_, which may wait for room;
  // while any is there or being delivered (overflowing_ > 0), the reader thread queues every message behind them.
  std::mutex overflow_mutex_;
  std::condition_variable overflow_cv_;
  std::deque<std::unique_ptr<BusCore::RemoteRest>> overflow_;  // guarded by overflow_mutex_
  bool overflow_stop_ = false;                                 // guarded by overflow_mutex_
  std::atomic<std::size_t> overflowing_{0};
  std::atomic<bool> overflow_logged_{false};
  std::thread overflow_thread_;
  // libnats runs the connection's callbacks (disconnected, reconnected, errors, closed) on its own thread, in order,
  // after natsConnection_Close returns: close() waits for the last of them, so none runs on a destroyed transport.
  std::mutex closed_mutex_;
  std::condition_variable closed_cv_;
  bool closed_ = false;  // guarded by closed_mutex_
};

}  // namespace deskfarm::kernel
