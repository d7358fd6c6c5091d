#include "cli_common.hpp"

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

#include <Poco/Exception.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/StreamCopier.h>

#include "admin.hpp"
#include "deskfarm/sdk/value.hpp"
#include "manifest.hpp"

namespace deskfarm::cli {

std::vector<std::string> instances_of(const std::string& status_json, const std::string& plugin) {
  std::vector<std::string> out;
  const auto status = sdk::Value::parse_json(status_json);
  const sdk::Value* list = status.find("instances");
  if (!list || !list->is_array()) return out;
  for (const auto& i : list->as_array()) {
    const sdk::Value* p = i.find("plugin");
    const sdk::Value* n = i.find("name");
    const sdk::Value* st = i.find("state");
    if (p && n && p->is_string() && n->is_string() && p->as_string() == plugin && (!st || !st->is_string() || st->as_string() == "running"))
      out.push_back(n->as_string());
  }
  return out;
}

std::chrono::nanoseconds parse_duration(const std::string& text, const std::string& option) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (...) {
    throw std::invalid_argument(option + " '" + text + "' is not a duration like 90s, 5m, 2h, 1d");
  }
  const std::string unit = text.substr(used);
  double seconds = value;
  if (unit == "ms") seconds = value / 1000;
  else if (unit == "s" || unit.empty()) seconds = value;
  else if (unit == "m") seconds = value * 60;
  else if (unit == "h") seconds = value * 3600;
  else if (unit == "d") seconds = value * 86400;
  else throw std::invalid_argument(option + " '" + text + "' has an unknown unit '" + unit + "' (ms, s, m, h, d)");
  if (seconds < 0) throw std::invalid_argument(option + " must not be negative");
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(seconds));
}

std::string admin_token(const kernel::Manifest* m) {
  if (m && !m->admin_token.empty()) return m->admin_token;
  const char* env = std::getenv("DESKFARM_ADMIN_TOKEN");
  return env ? env : "";
}

std::filesystem::path admin_file(const kernel::Manifest& m) { return m.state_dir / "admin.address"; }

std::optional<AdminTarget> admin_target(const std::string& admin, const std::string& command, const std::string& manifest,
                                        int& exit_code) {
  AdminTarget t{admin, admin_token(nullptr)};
  if (!manifest.empty()) {
    auto m = kernel::load_manifest(manifest);
    t.token = admin_token(&m);
    if (t.address.empty()) {
      std::ifstream in(admin_file(m));
      if (!(in >> t.address)) {
        std::cerr << "deskfarm " << command << ": deployment " << m.name << " is not running (no " << admin_file(m).string() << ")\n";
        exit_code = unreachable;
        return std::nullopt;
      }
    }
  }
  if (t.address.empty()) {
    std::cerr << "deskfarm " << command << ": give the MANIFEST of a running deployment, or --admin HOST:PORT\n";
    exit_code = usage;
    return std::nullopt;
  }
  return t;
}

AdminClient::AdminClient(AdminTarget target) : target_(std::move(target)) {
  std::tie(host_, port_) = kernel::parse_host_port(target_.address, "--admin");
}

AdminClient::~AdminClient() = default;

std::size_t AdminClient::connections_opened() const {
  std::lock_guard lock(mutex_);
  return opened_;
}

namespace {

/// Idle connections kept; more threads than this open (and then close) their own.
constexpr std::size_t max_idle = 256;

}  // namespace

HttpAnswer AdminClient::exchange(Poco::Net::HTTPRequest& request, const std::string& body, std::chrono::milliseconds socket_timeout) const {
  if (!target_.token.empty()) request.set("Authorization", "Bearer " + target_.token);
  if (request.getMethod() == Poco::Net::HTTPRequest::HTTP_POST) {
    request.setContentType("application/json");
    request.setContentLength(static_cast<std::streamsize>(body.size()));
  }
  request.setKeepAlive(true);
  std::unique_ptr<Poco::Net::HTTPClientSession> session;
  {
    std::lock_guard lock(mutex_);
    if (!idle_.empty()) {
      session = std::move(idle_.back());
      idle_.pop_back();
    }
  }
  bool kept = session != nullptr;
  for (int attempt = 0;; ++attempt) {
    if (!session) {
      session = std::make_unique<Poco::Net::HTTPClientSession>(host_, port_);
      // Below the endpoint's idle timeout (5 s), so a kept connection is rarely one it is closing.
      session->setKeepAliveTimeout(Poco::Timespan(2, 0));
      std::lock_guard lock(mutex_);
      ++opened_;
    }
    session->setKeepAlive(true);
    session->setTimeout(Poco::Timespan(static_cast<Poco::Timespan::TimeDiff>(socket_timeout.count()) * 1000));
    try {
      if (request.getMethod() == Poco::Net::HTTPRequest::HTTP_POST) session->sendRequest(request) << body;
      else session->sendRequest(request);
      Poco::Net::HTTPResponse response;
      std::istream& in = session->receiveResponse(response);
      HttpAnswer a;
      a.status = static_cast<int>(response.getStatus());
      a.reply_type = response.get("X-Reply-Type", "");
      std::ostringstream text;
      Poco::StreamCopier::copyStream(in, text);
      a.body = text.str();
      if (response.getKeepAlive()) {
        std::lock_guard lock(mutex_);
        if (idle_.size() < max_idle) idle_.push_back(std::move(session));
      }
      return a;
    } catch (const Poco::TimeoutException&) {
      throw;  // the request may be running: never sent twice
    } catch (const Poco::Exception&) {
      // A kept connection the endpoint closed while it was idle (its idle timeout, or it dropped its oldest idle
      // reader) answers nothing: the request was never read, so it goes once more on a fresh connection.
      if (!kept || attempt > 0) throw;
      session.reset();
      kept = false;
    }
  }
}

HttpAnswer AdminClient::get(const std::string& path, std::chrono::milliseconds timeout) const {
  Poco::Net::HTTPRequest request(Poco::Net::HTTPRequest::HTTP_GET, path, Poco::Net::HTTPMessage::HTTP_1_1);
  return exchange(request, {}, timeout);
}

HttpAnswer AdminClient::request(const std::string& subject, const std::string& json, std::chrono::milliseconds timeout) const {
  Poco::Net::HTTPRequest request(Poco::Net::HTTPRequest::HTTP_POST, "/request/" + subject, Poco::Net::HTTPMessage::HTTP_1_1);
  request.set("X-Timeout-Ms", std::to_string(timeout.count()));
  // The endpoint answers within the bus timeout; the socket waits a little longer so the answer is not cut off.
  return exchange(request, json, timeout + std::chrono::seconds(5));
}

}  // namespace deskfarm::cli
