#include "nats_transport.hpp"

#include <nats/nats.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <memory>
#include <set>
#include <stdexcept>
#include <utility>

#include "metrics.hpp"
#include "nats_envelope.hpp"
#include "redact.hpp"

// libnats's own publish, with its flush control: `directFlush` writes the connection's buffer to the socket before
// returning (what natsConnection_Request does for its request), else the library's flusher thread writes it a
// moment later with whatever else was published meanwhile. The library exports it but its public header does not
// declare it; its signature is the same from 2.x to the newest 3.x (src/conn.h). Checked for the major version below.
#if NATS_VERSION_MAJOR != 3
#error "libnats other than 3.x: check natsConn_publish's signature in its src/conn.h, then widen this check"
#endif
extern "C" natsStatus natsConn_publish(natsConnection* nc, natsMsg* msg, const char* reply, bool directFlush);
// Two more of its exported internals (src/msg.h, the same from 2.x to the newest 3.x). natsMsg_create makes the
// message of a request or a reply, which natsConn_publish sends with its direct flush. natsMsg_free frees a message
// on the calling thread; natsMsg_Destroy hands it to the library's collector thread, one more thread hand-off and a
// cross-thread free per message.
extern "C" natsStatus natsMsg_create(natsMsg** msg, const char* subject, int subject_length, const char* reply,
                                     int reply_length, const char* buf, int buf_length, int header_length);
extern "C" void natsMsg_free(void* msg);
// The connection's message filter (src/conn.h, from 3.2 to the newest 3.x): libnats calls it on its reader thread
// with each message it has just parsed, before it queues the message for a delivery thread, and the filter may
// take the message (setting it to NULL, then freeing it itself). The public API delivers only on libnats's delivery
// threads: one more thread per message between the socket and a subscriber's strand, a lock the reader and that
// thread take per message, and each message freed on another thread than made it — about half of what the
// receiving process spent per message. Taking messages here, the reader thread queues them to the strands itself.
// What the filter does not see is the subscription (the sid) a message came for, hence one queue group per
// connection (subscribe_locked): each message comes once and goes to every subscriber whose pattern matches.
#if NATS_VERSION_MINOR < 2
#error "libnats before 3.2 has no natsConn_setFilterWithClosure"
#endif
extern "C" void natsConn_setFilterWithClosure(natsConnection* nc, void (*filter)(natsConnection*, natsMsg**, void*),
                                              void* closure);

namespace deskfarm::kernel {

namespace {
constexpr std::string_view remote_inbox = "_INBOX.";
constexpr std::size_t max_type_names = 4096;
// How many messages wait for subscribers whose queues are full before the next is dropped (counted in
// deskfarm_bus_nats_errors_total); libnats's own limit, when it still held messages for its delivery thread, was
// raised to this from 65,536, below one burst of buffered publishes from a single strand.
constexpr std::size_t pending_messages = 1 << 20;

/// A stable home for the type names of messages from other processes (sdk::Message::type is a view): each
/// distinct name is kept once for the life of the process, and their number is bounded against a peer that
/// makes names up.
const std::string* intern_type(std::string_view name) {
  // A delivery thread mostly sees one type after another: the last name it looked up costs no lock.
  thread_local const std::string* last = nullptr;
  if (last != nullptr && *last == name) return last;
  static std::mutex mutex;
  static std::set<std::string, std::less<>> names;
  std::lock_guard lock(mutex);
  if (auto it = names.find(name); it != names.end()) return last = &*it;
  if (names.size() >= max_type_names) return nullptr;
  return last = &*names.emplace(name).first;
}

std::string status_text(natsStatus s) {
  const char* detail = nats_GetLastError(nullptr);
  std::string out = natsStatus_GetText(s);
  if (detail != nullptr && *detail != '\0' && out != detail) out += " (" + std::string(detail) + ")";
  return out;
}

void check(natsStatus s, const std::string& what) {
  if (s != NATS_OK) throw std::runtime_error(what + ": " + status_text(s));
}

struct MsgDeleter {
  void operator()(natsMsg* m) const { natsMsg_free(m); }
};
using MsgPtr = std::unique_ptr<natsMsg, MsgDeleter>;

constexpr std::size_t max_kept_encoding = 64 * 1024;  // what a thread's reused send buffer may keep between sends

}  // namespace

/// libnats calls these on its own threads.
struct NatsCallbacks {
  /// On the reader thread, every message of the connection.
  static void filter(natsConnection*, natsMsg** msg, void* self) {
    MsgPtr owned(*msg);
    *msg = nullptr;
    auto* transport = static_cast<NatsTransport*>(self);
    transport->take(owned.get(), transport->reader_routes_);
  }
  /// A subscription's callback: what the filter takes never comes here; anything else is handled the same way.
  static void message(natsConnection*, natsSubscription*, natsMsg* msg, void* self) {
    MsgPtr owned(msg);
    BusCore::RouteCache routes;  // a delivery thread's, not the reader's
    static_cast<NatsTransport*>(self)->take(msg, routes);
  }
  static void disconnected(natsConnection*, void* self) { static_cast<NatsTransport*>(self)->handle_disconnected(); }
  static void reconnected(natsConnection*, void* self) { static_cast<NatsTransport*>(self)->handle_reconnected(); }
  static void closed(natsConnection*, void* self) { static_cast<NatsTransport*>(self)->handle_closed(); }
  static void error(natsConnection*, natsSubscription* sub, natsStatus s, void* self) {
    std::string what = natsStatus_GetText(s);
    if (sub != nullptr) what += " on '" + std::string(natsSubscription_GetSubject(sub)) + "'";
    static_cast<NatsTransport*>(self)->handle_error(what);
  }
};

NatsTransport::NatsTransport(NatsSettings settings, BusCore& bus, LogSink& log, std::vector<std::string> secrets)
    : settings_(std::move(settings)), bus_(bus), log_(log), secrets_(std::move(secrets)) {}

NatsTransport::~NatsTransport() {
  close();
  {
    std::lock_guard lock(mutex_);
    for (auto& [pattern, sub] : watched_) {
      if (sub != nullptr) natsSubscription_Destroy(sub);
    }
    watched_.clear();
  }
  if (inbox_sub_ != nullptr) natsSubscription_Destroy(inbox_sub_);
  if (nc_ != nullptr) natsConnection_Destroy(nc_);
}

std::string NatsTransport::redact_secrets_(std::string text) const { return redact_secrets(std::move(text), secrets_); }

void NatsTransport::connect() {
  std::string servers;
  for (const auto& s : settings_.servers) servers += (servers.empty() ? "" : ",") + redact_url(s);
  natsOptions* raw = nullptr;
  check(natsOptions_Create(&raw), "bus: libnats options");
  std::unique_ptr<natsOptions, void (*)(natsOptions*)> opts(raw, natsOptions_Destroy);
  std::vector<const char*> urls;
  for (const auto& s : settings_.servers) urls.push_back(s.c_str());
  try {
    check(natsOptions_SetServers(opts.get(), urls.data(), static_cast<int>(urls.size())), "bus = \"" + servers + "\"");
    check(natsOptions_SetName(opts.get(), settings_.name.c_str()), "bus: connection name");
    if (!settings_.user.empty())
      check(natsOptions_SetUserInfo(opts.get(), settings_.user.c_str(), settings_.password.c_str()), "nats_user");
    if (!settings_.token.empty()) check(natsOptions_SetToken(opts.get(), settings_.token.c_str()), "nats_token");
    if (settings_.tls) {
      check(natsOptions_SetSecure(opts.get(), true), "bus: TLS (libnats built without it?)");
      if (!settings_.ca.empty())
        check(natsOptions_LoadCATrustedCertificates(opts.get(), settings_.ca.c_str()), "nats_ca = \"" + settings_.ca + "\"");
      if (!settings_.cert.empty())
        check(natsOptions_LoadCertificatesChain(opts.get(), settings_.cert.c_str(), settings_.key.c_str()),
              "nats_cert = \"" + settings_.cert + "\", nats_key = \"" + settings_.key + "\"");
    }
    // This process delivers its own publications in process (by pointer): the server must not echo them back.
    check(natsOptions_SetNoEcho(opts.get(), true), "bus: no echo");
    // Publications are buffered: libnats's flusher thread writes what accumulated in about a millisecond with one
    // write (a write per message cost 10x the throughput). Requests and replies leave at once instead (send()),
    // with everything buffered before them, so one connection keeps every publisher's order.
    check(natsOptions_SetSendAsap(opts.get(), false), "bus: buffered publishes");
    check(natsOptions_SetAllowReconnect(opts.get(), true), "bus: reconnect");
    check(natsOptions_SetMaxReconnect(opts.get(), -1), "bus: reconnect attempts");  // forever: a farm outlives a restart
    check(natsOptions_SetReconnectWait(opts.get(), settings_.reconnect_wait.count()), "nats_reconnect_wait_ms");
    check(natsOptions_SetReconnectBufSize(opts.get(), static_cast<int>(settings_.reconnect_buffer_bytes)),
          "nats_reconnect_buffer_kb");
    // A cut link (no FIN) shows only as missed pings: two of 5 s each, instead of the default 2 minutes.
    check(natsOptions_SetPingInterval(opts.get(), 5000), "bus: ping interval");
    check(natsOptions_SetMaxPingsOut(opts.get(), 2), "bus: pings out");
    check(natsOptions_SetTimeout(opts.get(), 2000), "bus: connect timeout");
    // Messages are taken on the reader thread (natsConn_setFilterWithClosure above); the delivery threads would
    // only see what the filter leaves, and one per subscription would be one thread per subject a plugin serves.
    check(natsOptions_UseGlobalMessageDelivery(opts.get(), true), "bus: message delivery");
    check(natsOptions_SetDisconnectedCB(opts.get(), &NatsCallbacks::disconnected, this), "bus: callbacks");
    check(natsOptions_SetReconnectedCB(opts.get(), &NatsCallbacks::reconnected, this), "bus: callbacks");
    check(natsOptions_SetErrorHandler(opts.get(), &NatsCallbacks::error, this), "bus: callbacks");
    check(natsOptions_SetClosedCB(opts.get(), &NatsCallbacks::closed, this), "bus: callbacks");
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(redact_secrets_(e.what()));
  }
  {
    std::unique_lock lock(gate_);
    open_ = true;
  }
  if (const natsStatus s = natsConnection_Connect(&nc_, opts.get()); s != NATS_OK) {
    nc_ = nullptr;
    throw std::runtime_error(redact_secrets_("bus: cannot connect to " + servers + ": " + status_text(s) +
                                             "; start nats-server there, or fix bus = and the nats_* keys in [deployment]"));
  }
  connected_ = true;
  natsInbox* inbox = nullptr;
  check(natsInbox_Create(&inbox), "bus: inbox");
  inbox_prefix_ = std::string(inbox) + ".";
  queue_ = "deskfarm." + std::string(inbox).substr(remote_inbox.size());  // unique to this connection
  natsInbox_Destroy(inbox);
  overflow_thread_ = std::thread([this] { run_overflow(); });
  natsConn_setFilterWithClosure(nc_, &NatsCallbacks::filter, this);  // before the first subscription
  // Not in the queue group: the server sends "no responders" only to a plain subscription of the reply subject.
  check(natsConnection_Subscribe(&inbox_sub_, nc_, (inbox_prefix_ + "*").c_str(), &NatsCallbacks::message, this),
        "bus: subscribing to the reply inbox");
  {
    std::lock_guard lock(mutex_);
    for (auto& [pattern, sub] : watched_) subscribe_locked(pattern, sub);
  }
  char url[256] = {};
  natsConnection_GetConnectedUrl(nc_, url, sizeof url);
  log(sdk::LogLevel::info, "connected to NATS at " + redact_url(url) + " (servers " + servers + ")");
}

void NatsTransport::close() {
  {
    std::unique_lock lock(gate_);  // waits for callbacks that are handing a message to the bus
    if (!open_) return;
    open_ = false;
    reader_routes_ = {};
  }
  {
    std::lock_guard lock(overflow_mutex_);
    overflow_stop_ = true;
  }
  overflow_cv_.notify_all();
  if (overflow_thread_.joinable()) overflow_thread_.join();  // what it still held for a full queue is dropped
  if (nc_ == nullptr) return;
  // Publications of the last moments (kernel.instance.down, a plugin's farewell) leave before the close.
  if (connected_) natsConnection_FlushTimeout(nc_, 1000);
  natsConnection_Close(nc_);
  connected_ = false;
  // The callbacks libnats queued before its closed callback (a disconnect among them) run first; bounded, because
  // a callback that never returns must not hold the deployment's stop forever.
  std::unique_lock lock(closed_mutex_);
  if (!closed_cv_.wait_for(lock, std::chrono::seconds(5), [&] { return closed_; }))
    log(sdk::LogLevel::warning, "libnats did not report the connection closed within 5 s; stopping anyway");
}

void NatsTransport::handle_closed() {
  std::lock_guard lock(closed_mutex_);
  closed_ = true;
  closed_cv_.notify_all();
}

bool NatsTransport::watches_inbox(const std::string& pattern) const {
  return sdk::subject_matches(pattern, inbox_prefix_ + "1");  // any subject of the inbox: they differ in the last token
}

void NatsTransport::subscribe_locked(const std::string& pattern, natsSubscription*& sub) {
  if (nc_ == nullptr || sub != nullptr) return;
  // A queue group of this connection alone: a message that matches several of its patterns comes once.
  natsStatus s = natsConnection_QueueSubscribe(&sub, nc_, pattern.c_str(), queue_.c_str(), &NatsCallbacks::message, this);
  if (s == NATS_OK && watches_inbox(pattern)) inbox_watchers_.fetch_add(1);
  if (s != NATS_OK) {
    if (sub != nullptr) natsSubscription_Destroy(sub);
    sub = nullptr;
    async_errors_.fetch_add(1, std::memory_order_relaxed);
    log(sdk::LogLevel::error, "cannot subscribe to '" + pattern + "' on NATS: " + status_text(s) +
                                  "; messages from other processes on it are lost until the next subscription");
  }
}

void NatsTransport::watch(const std::string& pattern) {
  std::lock_guard lock(mutex_);
  subscribe_locked(pattern, watched_[pattern]);
}

void NatsTransport::unwatch(const std::string& pattern) {
  natsSubscription* sub = nullptr;
  {
    std::lock_guard lock(mutex_);
    auto it = watched_.find(pattern);
    if (it == watched_.end()) return;
    sub = it->second;
    watched_.erase(it);
  }
  if (sub != nullptr) {
    if (watches_inbox(pattern)) inbox_watchers_.fetch_sub(1);
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
  }
}

void NatsTransport::settle() {
  if (nc_ != nullptr && connected_) natsConnection_FlushTimeout(nc_, 1000);
}

void NatsTransport::send(const std::string& subject, const char* reply_to, const sdk::Message& message, bool at_once) {
  if (nc_ == nullptr) return;  // not connected yet (a constructor publishing) or already closed
  // The envelope line of the type and version this thread sent last, written when they change: a stream of one
  // type costs one compare per message instead of the line's formatting.
  struct Line {
    std::string type;
    std::uint32_t version = 0;
    bool safe = false;  // a type name no receiver would read (a line break, over 200 characters) is refused
    std::string text;   // "<type>@<version>\n"
  };
  thread_local Line line;
  if (line.text.empty() || message.version != line.version || message.type != line.type) {
    line.type.assign(message.type);
    line.version = message.version;
    line.safe = envelope_safe(message.type);
    encode_envelope(line.text, message.type, message.version);
  }
  // The line, then the body: one buffer per thread, reused.
  thread_local std::string encoded;
  encoded.assign(line.text);
  encoded.append(message.encoded());
  natsStatus s = NATS_INVALID_ARG;
  if (line.safe && !at_once && reply_to == nullptr) {
    // A publication: libnats copies it into its write buffer from here, with no message of its own to allocate.
    s = natsConnection_Publish(nc_, subject.c_str(), encoded.data(), static_cast<int>(encoded.size()));
  } else if (line.safe) {
    // A request or a reply: it leaves at once (the direct flush), without waiting for the flusher (~1 ms per hop).
    natsMsg* raw = nullptr;
    s = natsMsg_create(&raw, subject.data(), static_cast<int>(subject.size()), reply_to,
                       reply_to == nullptr ? 0 : static_cast<int>(std::strlen(reply_to)), encoded.data(),
                       static_cast<int>(encoded.size()), 0);
    MsgPtr msg(raw);
    if (s == NATS_OK) s = natsConn_publish(nc_, raw, nullptr, at_once);
  }
  if (encoded.capacity() > max_kept_encoding) std::string().swap(encoded);  // one large message keeps no memory
  if (s == NATS_OK) {
    sent_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  send_failed_.fetch_add(1, std::memory_order_relaxed);
  if (!dropping_.exchange(true)) {
    log(sdk::LogLevel::warning, "dropping messages for other processes (" + status_text(s) + ", first on '" + subject +
                                    "'): the reconnect buffer is full or the connection closed; counted in "
                                    "deskfarm_bus_nats_dropped_total{reason=\"not_sent\"}");
  }
}

void NatsTransport::publish(const sdk::Message& message) { send(message.subject, nullptr, message, false); }

void NatsTransport::request(const sdk::Message& message, std::uint64_t id) {
  if (inbox_prefix_.empty()) return;  // not connected yet: the request times out, or a local responder answers
  send(message.subject, (inbox_prefix_ + std::to_string(id)).c_str(), message, true);
}

void NatsTransport::reply(const std::string& to, const sdk::Message& reply) { send(to, nullptr, reply, true); }

void NatsTransport::foreign(std::string_view subject, const std::string& why) {
  const auto n = foreign_.fetch_add(1, std::memory_order_relaxed) + 1;
  // One line for the first few and then every thousandth: a foreign publisher must not flood the log.
  if (n <= 10 || n % 1000 == 0)
    log(sdk::LogLevel::warning, "ignored a message from NATS on '" + std::string(subject) + "': " + why + " (" + std::to_string(n) +
                                    " so far, deskfarm_bus_nats_dropped_total{reason=\"foreign\"})");
}

bool NatsTransport::to_message(natsMsg* msg, sdk::Message& out) {
  const std::string_view subject = natsMsg_GetSubject(msg);
  const std::string_view payload(natsMsg_GetData(msg), static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
  const auto envelope = open_envelope(payload);
  if (!envelope) {
    // The payload's first few characters, when they are text, show an operator what came instead.
    const auto head = payload.substr(0, std::min<std::size_t>(payload.find('\n'), 40));
    const bool text = !head.empty() && std::all_of(head.begin(), head.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
    foreign(subject, "its payload does not begin with a '<type>@<version>' line" + (text ? " ('" + std::string(head) + "')" : "") +
                         " (not published by a deskfarm process)");
    return false;
  }
  const std::string* name = intern_type(envelope->type);
  if (name == nullptr) {
    foreign(subject, "more than 4096 distinct type names");
    return false;
  }
  // A stream mostly repeats its subject: the last one this thread found well formed is not checked again.
  thread_local std::string last_subject;
  if (subject != last_subject) {
    if (auto error = sdk::subject_error(subject, false); !error.empty()) {
      foreign(subject, error);
      return false;
    }
    last_subject.assign(subject);
  }
  out.subject.assign(subject);
  out.type = *name;
  out.version = envelope->version;
  out.bytes.assign(envelope->body);
  if (const char* reply = natsMsg_GetReply(msg); reply != nullptr) out.reply_to = reply;
  return true;
}

void NatsTransport::take(natsMsg* msg, BusCore::RouteCache& cache) {
  std::shared_lock lock(gate_);
  if (!open_) return;
  const std::string_view subject = natsMsg_GetSubject(msg);
  if (subject.starts_with(remote_inbox)) {
    // Replies to another process's requests are its business (a subscription of "_INBOX.>" or ">" brings them).
    if (subject.starts_with(inbox_prefix_)) handle_inbox(msg);
    return;
  }
  received_.fetch_add(1, std::memory_order_relaxed);
  sdk::Message m;
  if (!to_message(msg, m)) return;
  // Only the reader thread adds to the overflow, so while it finds it empty nothing is ahead of this message.
  auto rest = bus_.deliver_remote(std::move(m), overflowing_.load(std::memory_order_acquire) == 0, cache);
  if (rest) overflow(std::move(rest));
}

void NatsTransport::overflow(std::unique_ptr<BusCore::RemoteRest> rest) {
  {
    std::lock_guard lock(overflow_mutex_);
    if (!overflow_stop_ && overflow_.size() < pending_messages) {
      overflowing_.fetch_add(1, std::memory_order_relaxed);
      overflow_.push_back(std::move(rest));
      overflow_cv_.notify_one();
      return;
    }
  }
  async_errors_.fetch_add(1, std::memory_order_relaxed);
  if (!overflow_logged_.exchange(true)) {
    log(sdk::LogLevel::warning, "a subscriber's queue stayed full while " + std::to_string(pending_messages) +
                                    " messages from NATS waited for it: dropping (counted in deskfarm_bus_nats_errors_total)");
  }
}

void NatsTransport::run_overflow() {
  std::unique_lock lock(overflow_mutex_);
  while (true) {
    overflow_cv_.wait(lock, [&] { return overflow_stop_ || !overflow_.empty(); });
    if (overflow_stop_) break;
    auto rest = std::move(overflow_.front());
    overflow_.pop_front();
    lock.unlock();
    bus_.finish_remote(*rest);  // may wait for room, up to the bus's block timeout per subscriber
    rest.reset();
    overflowing_.fetch_sub(1, std::memory_order_release);
    lock.lock();
  }
  overflowing_.fetch_sub(overflow_.size(), std::memory_order_relaxed);
  overflow_.clear();
}

void NatsTransport::handle_inbox(natsMsg* msg) {
  received_.fetch_add(1, std::memory_order_relaxed);
  const std::string_view subject = natsMsg_GetSubject(msg);
  std::uint64_t id = 0;
  const auto digits = subject.substr(std::min(subject.size(), inbox_prefix_.size()));
  if (std::from_chars(digits.data(), digits.data() + digits.size(), id).ptr != digits.data() + digits.size()) {
    foreign(subject, "not a reply to one of this process's requests");
    return;
  }
  if (natsMsg_IsNoResponders(msg)) return bus_.remote_reply(id, {}, true);
  sdk::Message m;
  if (!to_message(msg, m)) return;
  bus_.remote_reply(id, std::move(m), false, inbox_watchers_.load(std::memory_order_relaxed) == 0);
}

void NatsTransport::handle_disconnected() {
  std::shared_lock lock(gate_);
  if (!open_) return;  // our own close
  connected_ = false;
  disconnects_.fetch_add(1, std::memory_order_relaxed);
  log(sdk::LogLevel::warning, "disconnected from NATS; reconnecting every " + std::to_string(settings_.reconnect_wait.count()) +
                                  " ms, keeping up to " + std::to_string(settings_.reconnect_buffer_bytes / 1024) +
                                  " KiB of publishes meanwhile");
}

void NatsTransport::handle_reconnected() {
  std::shared_lock lock(gate_);
  if (!open_) return;
  connected_ = true;
  dropping_ = false;
  reconnects_.fetch_add(1, std::memory_order_relaxed);
  char url[256] = {};
  natsConnection_GetConnectedUrl(nc_, url, sizeof url);
  log(sdk::LogLevel::info, "reconnected to NATS at " + redact_url(url) + "; subscriptions restored, buffered publishes sent");
}

void NatsTransport::handle_error(const std::string& what) {
  async_errors_.fetch_add(1, std::memory_order_relaxed);
  log(sdk::LogLevel::warning, "NATS: " + what);
}

bool NatsTransport::connected() const { return connected_.load(); }

Poco::JSON::Object::Ptr NatsTransport::status() const {
  Poco::JSON::Object::Ptr o = new Poco::JSON::Object;
  std::string servers;
  for (const auto& s : settings_.servers) servers += (servers.empty() ? "" : ",") + redact_url(s);
  o->set("transport", "nats");
  o->set("servers", servers);
  o->set("tls", settings_.tls);
  o->set("connected", connected_.load());
  if (nc_ != nullptr && connected_) {
    char url[256] = {};
    if (natsConnection_GetConnectedUrl(nc_, url, sizeof url) == NATS_OK) o->set("server", redact_url(url));
  }
  o->set("sent", sent_.load());
  o->set("received", received_.load());
  o->set("not_sent", send_failed_.load());
  o->set("foreign", foreign_.load());
  o->set("disconnects", disconnects_.load());
  o->set("reconnects", reconnects_.load());
  {
    std::lock_guard lock(mutex_);
    o->set("subscriptions", watched_.size());
  }
  return o;
}

std::string NatsTransport::metrics_text() const {
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  family("deskfarm_bus_nats_connected", "gauge", "1 while the bus is connected to a NATS server.");
  out += "deskfarm_bus_nats_connected " + std::string(connected_ ? "1" : "0") + "\n";
  family("deskfarm_bus_nats_messages_total", "counter", "Messages this process sent to and received from NATS.");
  out += "deskfarm_bus_nats_messages_total{direction=\"sent\"} " + std::to_string(sent_.load()) + "\n";
  out += "deskfarm_bus_nats_messages_total{direction=\"received\"} " + std::to_string(received_.load()) + "\n";
  family("deskfarm_bus_nats_dropped_total", "counter",
         "Messages lost between this process and NATS: not_sent (reconnect buffer full, connection closed), "
         "foreign (no deskfarm envelope line, or a garbled one).");
  out += "deskfarm_bus_nats_dropped_total{reason=\"not_sent\"} " + std::to_string(send_failed_.load()) + "\n";
  out += "deskfarm_bus_nats_dropped_total{reason=\"foreign\"} " + std::to_string(foreign_.load()) + "\n";
  family("deskfarm_bus_nats_disconnects_total", "counter", "Times the connection to NATS was lost.");
  out += "deskfarm_bus_nats_disconnects_total " + std::to_string(disconnects_.load()) + "\n";
  family("deskfarm_bus_nats_reconnects_total", "counter", "Times the connection to NATS was restored (subscriptions with it).");
  out += "deskfarm_bus_nats_reconnects_total " + std::to_string(reconnects_.load()) + "\n";
  family("deskfarm_bus_nats_errors_total", "counter", "Errors libnats reported on its own threads (a slow consumer, a lost subscription).");
  out += "deskfarm_bus_nats_errors_total " + std::to_string(async_errors_.load()) + "\n";
  return out;
}

}  // namespace deskfarm::kernel
