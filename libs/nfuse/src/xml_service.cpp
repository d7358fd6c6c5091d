#include "deskfarm/nfuse/xml_service.hpp"

#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/SSLManager.h>
#include <Poco/Net/SecureServerSocket.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/ThreadPool.h>
#include <Poco/URI.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <optional>
#include <variant>
#include <future>
#include <istream>
#include <stdexcept>

namespace deskfarm::nfuse {

namespace {

struct Counters {
  std::atomic<std::uint64_t> requests{0}, protocol_errors{0}, broker_timeouts{0}, not_found{0}, launches{0};
  std::atomic<bool> stopping{false};  ///< stop() ends the waits for the broker, so its threads can be joined at once
};

/// Asks the broker and waits for its answer at most `timeout`; the promise is shared, so a late answer only
/// writes into it.
template <class Rep, class Req, class Ask>
std::optional<Rep> ask(const Req& req, Ask ask_fn, std::chrono::milliseconds timeout, const std::atomic<bool>& stopping) {
  auto answer = std::make_shared<std::promise<Rep>>();
  auto once = std::make_shared<std::atomic<bool>>(false);
  auto fut = answer->get_future();
  ask_fn(req, [answer, once](Rep r) {
    if (!once->exchange(true)) answer->set_value(std::move(r));
  });
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (fut.wait_for(std::min<std::chrono::steady_clock::duration>(std::chrono::milliseconds(50), end - std::chrono::steady_clock::now())) !=
         std::future_status::ready)
    if (stopping || std::chrono::steady_clock::now() >= end) return std::nullopt;
  return fut.get();
}

/// Reads the body, at most kMaxDocument bytes; false when there is more (a chunked body says no length first).
bool read_bounded(std::istream& in, std::string& body) {
  char buf[8192];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    body.append(buf, static_cast<std::size_t>(in.gcount()));
    if (body.size() > kMaxDocument) return false;
  }
  return true;
}

/// An oversized body's rest is read and dropped before the answer (at most kMaxDrained bytes and kDrainTime):
/// closing a socket with unread data resets the connection, and the reset can destroy the answer in the
/// client's receive buffer before the client reads it. A longer body gets the answer and the reset.
constexpr std::streamsize kMaxDrained = 4 * 1024 * 1024;
constexpr auto kDrainTime = std::chrono::seconds(2);

void discard_rest(Poco::Net::HTTPServerRequest& req) {
  if (req.getContentLength() > kMaxDrained) return;
  std::istream& in = req.stream();
  char buf[16384];
  std::streamsize drained = 0;
  const auto end = std::chrono::steady_clock::now() + kDrainTime;
  while (drained < kMaxDrained && std::chrono::steady_clock::now() < end && (in.read(buf, sizeof buf) || in.gcount() > 0))
    drained += in.gcount();
}

class Handler final : public Poco::Net::HTTPRequestHandler {
 public:
  Handler(std::shared_ptr<Broker> broker, std::shared_ptr<Counters> counters, std::chrono::milliseconds timeout)
      : broker_(std::move(broker)), counters_(std::move(counters)), timeout_(timeout) {}

  void handleRequest(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& res) override {
    // Paths compare without case: clients spell it /scripts/WPnBr.dll as often as /scripts/wpnbr.dll.
    std::string path = req.getURI().substr(0, req.getURI().find('?'));
    for (auto& c : path) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (path == kLaunchPath) return launch(req, res);
    if (path != kPath) {
      ++counters_->not_found;
      return text(res, Poco::Net::HTTPResponse::HTTP_NOT_FOUND, "no XML service at " + req.getURI() + "; POST to " + std::string(kPath) + "\n");
    }
    if (req.getMethod() != Poco::Net::HTTPRequest::HTTP_POST) {
      ++counters_->not_found;
      res.set("Allow", "POST");
      return text(res, Poco::Net::HTTPResponse::HTTP_METHOD_NOT_ALLOWED, req.getMethod() + " " + std::string(kPath) + ": only POST\n");
    }
    ++counters_->requests;
    std::string body;
    if (req.getContentLength() > static_cast<std::streamsize>(kMaxDocument) || !read_bounded(req.stream(), body)) {
      ++counters_->protocol_errors;
      discard_rest(req);
      res.setKeepAlive(false);  // an undrained rest of the body would be taken for the next request
      return xml(res, write_error(ProtocolError("", "request body is larger than " + std::to_string(kMaxDocument) + " bytes")));
    }
    Document d;
    try {
      d = parse_request(body);
    } catch (const ProtocolError& e) {
      ++counters_->protocol_errors;
      return xml(res, write_error(e));
    }
    const std::string type = request_type(d.request);
    std::optional<std::string> reply = std::visit(
        [&](const auto& r) -> std::optional<std::string> {
          using T = std::decay_t<decltype(r)>;
          auto fmt = [&](auto rep) -> std::optional<std::string> {
            if (!rep) return std::nullopt;
            return write_reply(*rep, d.version);
          };
          if constexpr (std::is_same_v<T, ValidateCredentials>)
            return fmt(ask<ValidateCredentialsReply>(r, [this](const auto& q, auto done) { broker_->validate_credentials(q, done); }, timeout_, counters_->stopping));
          else if constexpr (std::is_same_v<T, AppDataRequest>)
            return fmt(ask<AppDataReply>(r, [this](const auto& q, auto done) { broker_->app_data(q, done); }, timeout_, counters_->stopping));
          else if constexpr (std::is_same_v<T, AddressRequest>)
            return fmt(ask<AddressReply>(r, [this](const auto& q, auto done) { broker_->address(q, done); }, timeout_, counters_->stopping));
          else
            return fmt(ask<TicketReply>(r, [this](const auto& q, auto done) { broker_->ticket(q, done); }, timeout_, counters_->stopping));
        },
        d.request);
    if (!reply) {
      ++counters_->broker_timeouts;
      return xml(res, write_error(ProtocolError(type, "the broker did not answer " + type + " within " +
                                                          std::to_string(timeout_.count()) + " ms"),
                                  d.version));
    }
    xml(res, *reply);
  }

 private:
  /// GET kLaunchPath?ticket=T → the ICA file (application/x-ica) the broker has for that ticket.
  void launch(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& res) {
    if (req.getMethod() != Poco::Net::HTTPRequest::HTTP_GET) {
      ++counters_->not_found;
      res.set("Allow", "GET");
      return text(res, Poco::Net::HTTPResponse::HTTP_METHOD_NOT_ALLOWED, req.getMethod() + " " + std::string(kLaunchPath) + ": only GET\n");
    }
    std::string ticket;
    for (const auto& [key, value] : Poco::URI(req.getURI()).getQueryParameters())
      if (key == "ticket") ticket = value;
    if (ticket.empty()) {
      ++counters_->not_found;
      return text(res, Poco::Net::HTTPResponse::HTTP_BAD_REQUEST, std::string(kLaunchPath) + ": give ?ticket=<the ticket of RequestTicket>\n");
    }
    auto file = ask<std::optional<IcaFile>>(ticket, [this](const auto& t, auto done) { broker_->launch(t, done); }, timeout_, counters_->stopping);
    if (!file) {
      ++counters_->broker_timeouts;
      return text(res, Poco::Net::HTTPResponse::HTTP_SERVICE_UNAVAILABLE, "the broker did not answer the launch within " + std::to_string(timeout_.count()) + " ms\n");
    }
    if (!*file) {
      ++counters_->not_found;
      return text(res, Poco::Net::HTTPResponse::HTTP_NOT_FOUND, "no launch for that ticket (unknown or expired); ask RequestAddress and RequestTicket again\n");
    }
    std::string body;
    try {
      body = write_ica(**file);
    } catch (const std::invalid_argument& e) {
      return text(res, Poco::Net::HTTPResponse::HTTP_INTERNAL_SERVER_ERROR, std::string("cannot write the ICA file: ") + e.what() + "\n");
    }
    ++counters_->launches;
    res.setStatus(Poco::Net::HTTPResponse::HTTP_OK);
    res.setContentType(std::string(kIcaContentType));
    res.setContentLength(static_cast<std::streamsize>(body.size()));
    res.send() << body;
  }
  static void xml(Poco::Net::HTTPServerResponse& res, const std::string& body) {
    res.setStatus(Poco::Net::HTTPResponse::HTTP_OK);
    res.setContentType("text/xml; charset=utf-8");
    res.setContentLength(static_cast<std::streamsize>(body.size()));
    res.send() << body;
  }
  static void text(Poco::Net::HTTPServerResponse& res, Poco::Net::HTTPResponse::HTTPStatus status, const std::string& body) {
    res.setStatus(status);
    res.setContentType("text/plain; charset=utf-8");
    res.setContentLength(static_cast<std::streamsize>(body.size()));
    res.send() << body;
  }
  std::shared_ptr<Broker> broker_;
  std::shared_ptr<Counters> counters_;
  std::chrono::milliseconds timeout_;
};

class Factory final : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  Factory(std::shared_ptr<Broker> broker, std::shared_ptr<Counters> counters, std::chrono::milliseconds timeout)
      : broker_(std::move(broker)), counters_(std::move(counters)), timeout_(timeout) {}
  Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
    return new Handler(broker_, counters_, timeout_);  // Poco's HTTPServer owns and deletes it
  }

 private:
  std::shared_ptr<Broker> broker_;
  std::shared_ptr<Counters> counters_;
  std::chrono::milliseconds timeout_;
};

}  // namespace

struct XmlService::Impl {
  XmlServiceOptions options;
  std::shared_ptr<Broker> broker;
  std::shared_ptr<Counters> counters = std::make_shared<Counters>();
  /// The service's own threads, joined at stop: none outlives it (a plugin's code, or OpenSSL's per-thread state of
  /// a TLS handshake, must not stay behind on threads of Poco's shared default pool).
  std::unique_ptr<Poco::ThreadPool> threads;
  std::unique_ptr<Poco::Net::HTTPServer> server;
  std::uint16_t port = 0;
};

XmlService::XmlService(XmlServiceOptions options, std::shared_ptr<Broker> broker) : impl_(std::make_unique<Impl>()) {
  if (!broker) throw std::invalid_argument("XmlService: no broker");
  impl_->options = std::move(options);
  impl_->broker = std::move(broker);
}

XmlService::~XmlService() { stop(); }

namespace {

/// A server context for the certificate and key (TLS 1.2+), or the reason, naming the file, why it cannot be made.
Poco::Net::Context::Ptr tls_context(const XmlServiceOptions& o) {
  if (o.tls_certificate.empty() != o.tls_key.empty())
    throw std::runtime_error("XML service: a TLS certificate needs its key and a key its certificate (both PEM files)");
  // Poco's SSL layer: initialised once per process, before the first context (it is reference counted).
  static const bool ssl_ready = [] { Poco::Net::initializeSSL(); return true; }();
  (void)ssl_ready;
  try {
    Poco::Net::Context::Params p;
    p.certificateFile = o.tls_certificate;
    p.privateKeyFile = o.tls_key;
    p.verificationMode = Poco::Net::Context::VERIFY_NONE;  // clients are users with passwords, not certificates
    p.loadDefaultCAs = false;
    Poco::Net::Context::Ptr ctx = new Poco::Net::Context(Poco::Net::Context::TLS_SERVER_USE, p);
    ctx->disableProtocols(Poco::Net::Context::PROTO_SSLV2 | Poco::Net::Context::PROTO_SSLV3 | Poco::Net::Context::PROTO_TLSV1 |
                          Poco::Net::Context::PROTO_TLSV1_1);
    return ctx;
  } catch (const Poco::Exception& e) {
    throw std::runtime_error("XML service: cannot load the TLS certificate '" + o.tls_certificate + "' with key '" + o.tls_key +
                             "': " + e.displayText() + "; give PEM files the service can read");
  }
}

}  // namespace

void XmlService::start() {
  if (impl_->server) return;
  const auto& o = impl_->options;
  const bool tls = !o.tls_certificate.empty() || !o.tls_key.empty();
  Poco::Net::ServerSocket socket = tls ? Poco::Net::SecureServerSocket(tls_context(o)) : Poco::Net::ServerSocket();
  try {
    socket.bind(Poco::Net::SocketAddress(o.host, o.port), true, false);  // no SO_REUSEPORT: a port in use fails
    socket.listen(o.max_queued);
  } catch (const Poco::Exception& e) {
    throw std::runtime_error("XML service: cannot listen on " + o.host + ":" + std::to_string(o.port) + ": " + e.displayText() +
                             "; choose another address or port");
  }
  impl_->port = socket.address().port();
  auto params = new Poco::Net::HTTPServerParams;  // reference-counted: the server holds it
  params->setMaxThreads(o.max_threads);
  params->setMaxQueued(o.max_queued);
  params->setTimeout(Poco::Timespan(static_cast<long>(o.io_timeout.count() / 1000), static_cast<long>(o.io_timeout.count() % 1000) * 1000));
  params->setKeepAlive(true);
  impl_->counters->stopping = false;
  impl_->threads = std::make_unique<Poco::ThreadPool>(1, o.max_threads + 1);
  impl_->server = std::make_unique<Poco::Net::HTTPServer>(
      new Factory(impl_->broker, impl_->counters, o.answer_timeout), *impl_->threads, socket, params);
  impl_->server->start();
}

void XmlService::stop() {
  if (!impl_ || !impl_->server) return;
  impl_->counters->stopping = true;
  impl_->server->stopAll(true);
  impl_->server.reset();
  impl_->threads->joinAll();
  impl_->threads.reset();
}

std::uint16_t XmlService::port() const { return impl_->port; }

XmlServiceStats XmlService::stats() const {
  const auto& c = *impl_->counters;
  return XmlServiceStats{c.requests.load(), c.protocol_errors.load(), c.broker_timeouts.load(), c.not_found.load(), c.launches.load()};
}

}  // namespace deskfarm::nfuse
