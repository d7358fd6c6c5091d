#pragma once
// What the `deskfarm` commands that talk to a running deployment share: exit codes, durations, finding the admin
// endpoint (--admin, or the address `run` wrote into the manifest's state directory) and one HTTP exchange with it.
#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace Poco::Net {
class HTTPClientSession;
class HTTPRequest;
}  // namespace Poco::Net

namespace deskfarm::kernel {
struct Manifest;
}

namespace deskfarm::cli {

// Documented in the README and in --help.
enum Exit : int {
  ok = 0,
  runtime_failure = 1,
  usage = 2,
  invalid = 3,
  start_failed = 4,
  unreachable = 5,
};

/// "90s", "5m", "2h", "1d", "250ms", or plain seconds; `option` names the flag in the error.
std::chrono::nanoseconds parse_duration(const std::string& text, const std::string& option = "--for");

/// The admin token: the manifest's admin_token, else DESKFARM_ADMIN_TOKEN.
std::string admin_token(const kernel::Manifest* m);

/// Where `run` writes the address of its admin endpoint.
std::filesystem::path admin_file(const kernel::Manifest& m);

/// Names of the running instances of `plugin` in a /status document, in the deployment's start order.
std::vector<std::string> instances_of(const std::string& status_json, const std::string& plugin);

/// Where a running deployment's admin endpoint is, and the token it wants.
struct AdminTarget {
  std::string address;
  std::string token;
};

/// `admin` (--admin), or what `run` wrote into MANIFEST's state directory; the token from the manifest or the
/// environment. Nothing, with the problem on stderr and `exit_code` set (usage, unreachable), when neither says.
std::optional<AdminTarget> admin_target(const std::string& admin, const std::string& command, const std::string& manifest,
                                        int& exit_code);

/// One answer of the admin endpoint.
struct HttpAnswer {
  int status = 0;
  std::string body;
  std::string reply_type;  ///< X-Reply-Type of a bus request's answer
};

/// HTTP to one admin endpoint. Connections are kept alive and reused (the endpoint keeps them for a bounded number
/// of requests and an idle timeout); an exchange on a kept connection the endpoint had closed meanwhile goes again,
/// once, on a fresh one. Throws Poco::Exception when the endpoint cannot be reached. Safe to use from several
/// threads: each exchange takes a connection of its own.
class AdminClient {
 public:
  explicit AdminClient(AdminTarget target);
  ~AdminClient();
  AdminClient(const AdminClient&) = delete;
  AdminClient& operator=(const AdminClient&) = delete;
  HttpAnswer get(const std::string& path, std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  /// POST /request/SUBJECT with a JSON body; the bus request waits `timeout` for its reply.
  HttpAnswer request(const std::string& subject, const std::string& json, std::chrono::milliseconds timeout) const;
  const std::string& address() const { return target_.address; }
  /// Connections opened so far (each exchange on a kept one opens none).
  std::size_t connections_opened() const;

 private:
  HttpAnswer exchange(Poco::Net::HTTPRequest& request, const std::string& body, std::chrono::milliseconds socket_timeout) const;

  AdminTarget target_;
  std::string host_;
  std::uint16_t port_ = 0;
  mutable std::mutex mutex_;
  mutable std::vector<std::unique_ptr<Poco::Net::HTTPClientSession>> idle_;  ///< kept alive for the next exchange
  mutable std::size_t opened_ = 0;
};

}  // namespace deskfarm::cli
