#pragma once
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "deskfarm/sdk/api.hpp"

namespace deskfarm::sdk {

/// A message on the bus. In process the body travels as a shared pointer, never serialised; a
/// transport that crosses processes calls `encode` and sends `type`, `version` and the bytes.
struct Message {
  std::string subject;
  std::string_view type;  ///< stable type name ("deskfarm.text"); never typeid
  std::uint32_t version = 1;
  std::shared_ptr<const void> body;
  std::string (*encode)(const void* body) = nullptr;
  std::string reply_to;  ///< set on requests; reply with Bus::reply
};

/// A message type: a stable name and version, and a byte encoding for transports between processes.
template <class T>
concept MessageType = requires(const T& value, std::string_view bytes) {
  { T::type_name } -> std::convertible_to<std::string_view>;
  { T::type_version } -> std::convertible_to<std::uint32_t>;
  { value.encode() } -> std::same_as<std::string>;
  { T::decode(bytes) } -> std::same_as<T>;
};

/// What a full subscriber queue does to a publisher.
enum class Overflow {
  block,        ///< the publisher waits for room, at most the bus's block timeout, then the message is dropped
  drop_newest,  ///< the new message is dropped and counted
  drop_oldest,  ///< the oldest queued message is dropped and counted
};

struct SubscribeOptions {
  std::size_t queue_limit = 65536;  ///< messages queued for this subscriber before Overflow applies
  Overflow overflow = Overflow::block;
};

/// Ends a subscription when destroyed (or on reset()); queued messages for it are then skipped.
class DESKFARM_SDK_API Subscription {
 public:
  Subscription() = default;
  explicit Subscription(std::function<void()> cancel) : cancel_(std::move(cancel)) {}
  Subscription(Subscription&& other) noexcept : cancel_(std::exchange(other.cancel_, nullptr)) {}
  Subscription& operator=(Subscription&& other) noexcept;
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;
  ~Subscription();
  void reset();

 private:
  std::function<void()> cancel_;
};

using Handler = std::function<void(const Message&)>;
/// Called once with the reply, or with nullptr and the reason ("timeout after 20 ms", "no responders").
using ReplyHandler = std::function<void(const Message* reply, std::string_view error)>;

/// The message bus as one plugin instance sees it. Subjects are dot-separated tokens; patterns may use
/// `*` (one token) and `>` (one or more trailing tokens), as NATS does. Handlers run on the instance's
/// own executor, in publish order per publisher.
class DESKFARM_SDK_API Bus {
 public:
  virtual ~Bus();
  virtual void publish(Message message) = 0;
  virtual Subscription subscribe(std::string pattern, Handler handler, SubscribeOptions options = {}) = 0;
  /// Sends a request to every subscriber of `message.subject`; the first reply wins and `on_reply` runs
  /// once, on this instance's executor. Any later reply (a second responder, or one after the timeout)
  /// is dropped and counted in deskfarm_bus_late_replies_total. No subscriber: "no responders" at once.
  virtual void request(Message message, std::chrono::nanoseconds timeout, ReplyHandler on_reply) = 0;
  /// Answers a request received by a handler.
  virtual void reply(const Message& request, Message reply) = 0;
};

/// Wraps a typed value into a Message.
template <MessageType T>
Message make_message(std::string subject, T value) {
  Message m;
  m.subject = std::move(subject);
  m.type = T::type_name;
  m.version = T::type_version;
  m.body = std::make_shared<const T>(std::move(value));
  m.encode = [](const void* body) { return static_cast<const T*>(body)->encode(); };
  return m;
}

/// The typed body of a message, or nullptr when it holds another type.
template <MessageType T>
const T* body_as(const Message& m) {
  if (m.type != std::string_view(T::type_name) || !m.body) return nullptr;
  return static_cast<const T*>(m.body.get());
}

/// Publishes a typed value.
template <MessageType T>
void publish(Bus& bus, std::string subject, T value) {
  bus.publish(make_message(std::move(subject), std::move(value)));
}

/// Subscribes to messages of type T; messages of other types on the same subjects are ignored.
template <MessageType T>
Subscription subscribe(Bus& bus, std::string pattern, std::function<void(const T&, const Message&)> handler,
                       SubscribeOptions options = {}) {
  return bus.subscribe(
      std::move(pattern),
      [h = std::move(handler)](const Message& m) {
        if (const T* v = body_as<T>(m)) h(*v, m);
      },
      options);
}

/// A plain text message, for tests, examples and simple notifications.
struct Text {
  static constexpr std::string_view type_name = "deskfarm.text";
  static constexpr std::uint32_t type_version = 1;
  std::string value;
  std::string encode() const { return value; }
  static Text decode(std::string_view bytes) { return Text{std::string(bytes)}; }
};

/// True when `subject` matches `pattern` (`*` one token, `>` the rest).
DESKFARM_SDK_API bool subject_matches(std::string_view pattern, std::string_view subject);
/// Empty when `subject` (or pattern, if `is_pattern`) is well formed, else what is wrong with it.
DESKFARM_SDK_API std::string subject_error(std::string_view subject, bool is_pattern);

}  // namespace deskfarm::sdk
