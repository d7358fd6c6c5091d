#include "cli_common.hpp"

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

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

namespace {

HttpAnswer exchange(Poco::Net::HTTPClientSession& session, Poco::Net::HTTPRequest& request, const std::string& body,
                    const std::string& token) {
  if (!token.empty()) request.set("Authorization", "Bearer " + token);
  if (request.getMethod() == Poco::Net::HTTPRequest::HTTP_POST) {
    request.setContentType("application/json");
    request.setContentLength(static_cast<std::streamsize>(body.size()));
    session.sendRequest(request) << body;
  } else {
    session.sendRequest(request);
  }
  Poco::Net::HTTPResponse response;
  std::istream& in = session.receiveResponse(response);
  HttpAnswer a;
  a.status = static_cast<int>(response.getStatus());
  a.reply_type = response.get("X-Reply-Type", "");
  std::ostringstream text;
  Poco::StreamCopier::copyStream(in, text);
  a.body = text.str();
  return a;
}

}  // namespace

HttpAnswer AdminClient::get(const std::string& path, std::chrono::milliseconds timeout) const {
  Poco::Net::HTTPClientSession session(host_, port_);
  session.setTimeout(Poco::Timespan(static_cast<Poco::Timespan::TimeDiff>(timeout.count()) * 1000));
  Poco::Net::HTTPRequest request(Poco::Net::HTTPRequest::HTTP_GET, path, Poco::Net::HTTPMessage::HTTP_1_1);
  return exchange(session, request, {}, target_.token);
}

HttpAnswer AdminClient::request(const std::string& subject, const std::string& json, std::chrono::milliseconds timeout) const {
  Poco::Net::HTTPClientSession session(host_, port_);
  // The endpoint answers within the bus timeout; the socket waits a little longer so the answer is not cut off.
  session.setTimeout(Poco::Timespan(static_cast<Poco::Timespan::TimeDiff>(timeout.count() + 5000) * 1000));
  Poco::Net::HTTPRequest request(Poco::Net::HTTPRequest::HTTP_POST, "/request/" + subject, Poco::Net::HTTPMessage::HTTP_1_1);
  request.set("X-Timeout-Ms", std::to_string(timeout.count()));
  return exchange(session, request, json, target_.token);
}

}  // namespace deskfarm::cli
