#pragma once
// Typed request/reply on the bus: serve<Req, Rep>() answers a subject, request<Req, Rep>() asks it. Failures
// travel as one standard envelope, sdk::Error, instead of each plugin inventing its own.
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "deskfarm/sdk/bus.hpp"

namespace deskfarm::sdk {

/// The standard error reply. Codes are short snake_case words; the kernel's own are `timeout`,
/// `no_responders`, `bad_request` (the request did not decode), `bad_reply`, `version_mismatch` and
/// `internal` (the handler threw something that is not a RequestError).
struct Error {
  static constexpr std::string_view type_name = "deskfarm.error";
  static constexpr std::uint32_t type_version = 1;
  std::string code;
  std::string message;
  static constexpr auto fields() { return std::tuple{field("code", &Error::code), field("message", &Error::message)}; }
};

/// Thrown by a serve() handler to answer with an Error of this code.
class DESKFARM_SDK_API RequestError : public std::runtime_error {
 public:
  RequestError(std::string code, const std::string& message) : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

/// A reply: the value, or the error that took its place.
template <class T>
class Reply {
 public:
  explicit Reply(T value) : value_(std::move(value)) {}
  explicit Reply(Error error) : error_(std::move(error)) {}
  bool ok() const { return value_.has_value(); }
  explicit operator bool() const { return ok(); }
  const T& value() const { return *value_; }
  const T& operator*() const { return *value_; }
  const T* operator->() const { return &*value_; }
  const Error& error() const { return error_; }

 private:
  std::optional<T> value_;
  Error error_;
};

/// Answers one request, once, from any time on the instance's executor (after blocking work, say).
template <class Rep>
class Responder {
 public:
  Responder(Bus& bus, Message request) : state_(std::make_shared<State>(State{&bus, std::move(request), false})) {}
  void ok(Rep value) { send(make_message("", std::move(value))); }
  void fail(std::string code, std::string message) { send(make_message("", Error{std::move(code), std::move(message)})); }
  bool answered() const { return state_->answered; }
  const Message& request() const { return state_->request; }

 private:
  struct State {
    Bus* bus;
    Message request;
    bool answered;
  };
  void send(Message reply) {
    if (state_->answered) return;
    state_->answered = true;
    if (!state_->request.reply_to.empty()) state_->bus->reply(state_->request, std::move(reply));
  }
  std::shared_ptr<State> state_;
};

/// Serves `subject`: each request decodes to Req (a typed body, or JSON from `deskfarm request`), `handler`
/// answers through the Responder. A request that does not decode is answered `bad_request`.
template <MessageType Req, MessageType Rep>
Subscription serve_async(Bus& bus, std::string subject, std::function<void(const Req&, Responder<Rep>)> handler,
                         SubscribeOptions options = {}) {
  return bus.subscribe(
      std::move(subject),
      [&bus, h = std::move(handler)](const Message& m) {
        Responder<Rep> responder(bus, m);
        std::shared_ptr<const Req> req;
        try {
          req = body_of<Req>(m);
          if (!req) {
            responder.fail("bad_request", "expected " + std::string(Req::type_name) + ", got " + std::string(m.type));
            return;
          }
        } catch (const MessageError& e) {
          const bool other_version = m.type == std::string_view(Req::type_name) && m.version != Req::type_version;
          responder.fail(other_version ? "version_mismatch" : "bad_request", e.what());
          return;
        }
        try {
          h(*req, responder);
        } catch (const RequestError& e) {
          responder.fail(e.code(), e.what());
        } catch (const std::exception& e) {
          responder.fail("internal", error_text(e));
        }
      },
      options);
}

/// Serves `subject` with a handler that answers at once; throw RequestError to answer with an error.
template <MessageType Req, MessageType Rep>
Subscription serve(Bus& bus, std::string subject, std::function<Rep(const Req&)> handler, SubscribeOptions options = {}) {
  return serve_async<Req, Rep>(
      bus, std::move(subject),
      [h = std::move(handler)](const Req& req, Responder<Rep> responder) { responder.ok(h(req)); }, options);
}

namespace detail {
/// The error code for a bus failure text ("timeout after 20 ms" → timeout).
DESKFARM_SDK_API std::string bus_error_code(std::string_view error);
}

/// Sends `req` to `subject`; `on_reply` runs once on this instance's executor with the reply or an Error.
template <MessageType Req, MessageType Rep>
void request(Bus& bus, std::string subject, Req req, std::chrono::nanoseconds timeout,
             std::function<void(Reply<Rep>)> on_reply) {
  bus.request(make_message(std::move(subject), std::move(req)), timeout,
              [cb = std::move(on_reply)](const Message* reply, std::string_view error) {
                if (!reply) return cb(Reply<Rep>(Error{detail::bus_error_code(error), std::string(error)}));
                try {
                  if (auto e = body_of<Error>(*reply)) return cb(Reply<Rep>(*e));
                  if (auto v = body_of<Rep>(*reply)) return cb(Reply<Rep>(*v));
                  cb(Reply<Rep>(Error{"bad_reply", "expected " + std::string(Rep::type_name) + ", got " + std::string(reply->type)}));
                } catch (const MessageError& e) {
                  cb(Reply<Rep>(Error{"bad_reply", e.what()}));
                }
              });
}

/// An empty request or reply body, for requests that carry no arguments and replies that carry no data.
struct Empty {
  static constexpr std::string_view type_name = "deskfarm.empty";
  static constexpr std::uint32_t type_version = 1;
  static constexpr auto fields() { return std::tuple{}; }
};

}  // namespace deskfarm::sdk
