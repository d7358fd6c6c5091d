#pragma once
// The XML service's HTTP endpoint: POST /scripts/wpnbr.dll with an NFuseProtocol document, answered through a
// Broker the controller implements. Poco::Net::HTTPServer threads parse the request, hand it to the broker, and
// wait (bounded) for its answer, which the broker may give from any thread (a controller answers from its executor
// after its own bus requests). Malformed documents and unknown request types get the protocol's error reply.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "deskfarm/nfuse/ica.hpp"
#include "deskfarm/nfuse/nfuse.hpp"

namespace deskfarm::nfuse {

/// What the XML service asks its controller. Each call answers through `done` exactly once, from any thread; an
/// answer after the service stopped waiting (XmlServiceOptions::answer_timeout) is dropped.
class Broker {
 public:
  virtual ~Broker() = default;
  virtual void validate_credentials(const ValidateCredentials& req, std::function<void(ValidateCredentialsReply)> done) = 0;
  virtual void app_data(const AppDataRequest& req, std::function<void(AppDataReply)> done) = 0;
  virtual void address(const AddressRequest& req, std::function<void(AddressReply)> done) = 0;
  virtual void ticket(const TicketRequest& req, std::function<void(TicketReply)> done) = 0;
  /// GET kLaunchPath?ticket=T: the ICA launch file of the launch a RequestTicket ticket belongs to; nullopt = no
  /// such ticket (404). A broker that serves no launch files keeps this default.
  virtual void launch(const std::string& ticket, std::function<void(std::optional<IcaFile>)> done) { (void)ticket; done(std::nullopt); }
};

/// Where the service hands out ICA launch files: GET /scripts/launch.ica?ticket=<RequestTicket's ticket>.
inline constexpr std::string_view kLaunchPath = "/scripts/launch.ica";

struct XmlServiceOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;  ///< 0 = any free port (see XmlService::port())
  int max_threads = 8;     ///< requests served at once
  int max_queued = 64;     ///< connections waiting beyond them
  std::chrono::milliseconds answer_timeout{5000};  ///< the broker's answer; then "unspecified" with the reason
  std::chrono::milliseconds io_timeout{10000};     ///< reading a request, writing a reply
  /// HTTPS when both are set: PEM certificate chain and its private key (TLS 1.2 and newer; the handshake runs on
  /// the request's thread, bounded by io_timeout). Both empty = plain HTTP.
  std::string tls_certificate;
  std::string tls_key;
};

struct XmlServiceStats {
  std::uint64_t requests = 0;        ///< documents posted to the path
  std::uint64_t protocol_errors = 0; ///< malformed or unknown (answered with an error reply)
  std::uint64_t broker_timeouts = 0;
  std::uint64_t not_found = 0;       ///< other paths or methods, unknown launch tickets
  std::uint64_t launches = 0;        ///< ICA files handed out
};

class XmlService {
 public:
  XmlService(XmlServiceOptions options, std::shared_ptr<Broker> broker);
  ~XmlService();  ///< stops
  XmlService(const XmlService&) = delete;
  XmlService& operator=(const XmlService&) = delete;
  /// Binds and serves; throws std::runtime_error naming the address when it cannot bind, or the file when the
  /// certificate or key cannot be loaded.
  void start();
  /// Stops accepting, closes the open connections, ends the waits for the broker (a late answer writes only into
  /// the request's own shared promise) and joins the service's threads. Idempotent.
  void stop();
  std::uint16_t port() const;
  XmlServiceStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace deskfarm::nfuse
