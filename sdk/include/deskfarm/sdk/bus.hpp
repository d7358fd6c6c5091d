#pragma once
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "deskfarm/sdk/api.hpp"
#include "deskfarm/sdk/record.hpp"

namespace deskfarm::sdk {

/// A message on the bus. In process the body travels as a shared pointer, never serialised; a
/// transport that crosses processes calls `encode` and sends `type`, `version` and the bytes. A message that
/// arrived from outside the process (a transport, `deskfarm request`) carries `bytes` and no body.
struct Message {
  std::string subject;
  std::string_view type;  ///< stable type name ("deskfarm.text"); never typeid
  std::uint32_t version = 1;
  std::shared_ptr<const void> body;
  std::string (*encode)(const void* body) = nullptr;
  std::string reply_to;  ///< set on requests; reply with Bus::reply
  std::string bytes;     ///< the encoded body when `body` is empty
  /// The body's bytes: `bytes`, or the body encoded.
  std::string encoded() const { return body && encode ? encode(body.get()) : bytes; }
};

/// The type name of a message whose body is JSON text with no declared type (an operator's
/// `deskfarm request`): typed receivers decode it field by field.
inline constexpr std::string_view json_type = "deskfarm.json";

/// A message type: a stable name and version, and a byte encoding for transports between processes —
/// either a Record (encoded as JSON of its fields) or a type with its own encode()/decode().
template <class T>
concept MessageType = requires {
  { T::type_name } -> std::convertible_to<std::string_view>;
  { T::type_version } -> std::convertible_to<std::uint32_t>;
} && (Record<T> || requires(const T& value, std::string_view bytes) {
  { value.encode() } -> std::same_as<std::string>;
  { T::decode(bytes) } -> std::same_as<T>;
});

/// A message that cannot be read as the type its receiver expects (another version, bytes that do not
/// decode); what() says which type, which versions and which subject.
class DESKFARM_SDK_API MessageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Encodes a typed value to bytes (JSON for records).
template <MessageType T>
std::string encode_body(const T& value) {
  if constexpr (Record<T>) return to_value(value).to_json();
  else return value.encode();
}
/// Decodes bytes to a typed value; throws MessageError.
template <MessageType T>
T decode_body(std::string_view bytes) {
  try {
    if constexpr (Record<T>) return from_value<T>(Value::parse_json(bytes), T::type_name);
    else return T::decode(bytes);
  } catch (const MessageError&) {
    throw;
  } catch (const std::exception& e) {
    throw MessageError(std::string(T::type_name) + ": " + error_text(e));
  }
}

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
/// own executor, in publish order per publisher. A handler that throws loses only that message (the
/// kernel logs it with the instance name).
class DESKFARM_SDK_API Bus {
 public:
  virtual ~Bus();
  virtual void publish(Message message) = 0;
  virtual Subscription subscribe(std::string pattern, Handler handler, SubscribeOptions options = {}) = 0;
  /// Sends a request to every subscriber of `message.subject`; the first reply wins and `on_reply` runs
  /// once, on this instance's executor. Any later reply (a second responder, or one after the timeout)
  /// is dropped and counted in deskfarm_bus_late_replies_total. No subscriber: "no responders" at once.
  /// Give a subject one responder (use serve()).
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
  m.encode = [](const void* body) { return encode_body(*static_cast<const T*>(body)); };
  return m;
}

namespace detail {
/// Refuses a message of the right type and another version: counts it (version_refusals) and throws a
/// MessageError naming the type, both versions and the subject.
[[noreturn]] DESKFARM_SDK_API void version_mismatch(const Message& m, std::string_view type, std::uint32_t wanted);
/// Messages refused for their version in this process so far, by {type, version sent, version understood}:
/// the kernel shows them in /metrics (deskfarm_bus_version_refused_total), wherever the refusal happened.
struct VersionRefusal {
  std::string type;
  std::uint32_t sent = 0;
  std::uint32_t understood = 0;
  std::uint64_t count = 0;
};
DESKFARM_SDK_API std::vector<VersionRefusal> version_refusals();
}  // namespace detail

/// The typed body of a message: nullptr when it holds another type; the in-process body without a copy,
/// or the decoded bytes of a message from outside the process (or of a `deskfarm.json` body). Throws
/// MessageError when the type matches but the version differs or the bytes do not decode.
template <MessageType T>
std::shared_ptr<const T> body_of(const Message& m) {
  const bool json = m.type == json_type;
  if (m.type != std::string_view(T::type_name) && !json) return nullptr;
  if (!json && m.version != T::type_version) detail::version_mismatch(m, T::type_name, T::type_version);
  if (m.body && !json) return std::shared_ptr<const T>(m.body, static_cast<const T*>(m.body.get()));
  try {
    return std::make_shared<const T>(decode_body<T>(m.body && m.encode ? m.encoded() : m.bytes));
  } catch (const std::exception& e) {
    throw MessageError(std::string(e.what()) + " (subject " + m.subject + ")");
  }
}

/// The in-process typed body, or nullptr when the message holds another type or only bytes (then use
/// body_of). Throws MessageError on a version mismatch instead of casting.
template <MessageType T>
const T* body_as(const Message& m) {
  if (m.type != std::string_view(T::type_name) || !m.body) return nullptr;
  if (m.version != T::type_version) detail::version_mismatch(m, T::type_name, T::type_version);
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
        if (auto v = body_of<T>(m)) h(*v, m);
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
