// `deskfarm querydc` / `queryds`: finds the deployment's ima instances in its /status, asks the first for the
// collectors it knows (after an election with -e), and for queryds each collector for its dynamic data.
#include "ima_command.hpp"

#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/StreamCopier.h>

#include <cstdio>
#include <iostream>
#include <optional>
#include <sstream>

#include "admin.hpp"

namespace deskfarm::cli {
namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

/// One admin call: the body, or nullopt after printing why (then `code` says unreachable or failed).
std::optional<std::string> admin_call(const std::string& address, const std::string& token, const std::string& method,
                                      const std::string& path, const std::string& body, std::chrono::milliseconds timeout,
                                      int& code) {
  auto [host, port] = kernel::parse_host_port(address, "--admin");
  try {
    Poco::Net::HTTPClientSession session(host, port);
    session.setTimeout(Poco::Timespan(static_cast<long>(timeout.count() / 1000) + 5, 0));
    Poco::Net::HTTPRequest request(method, path);
    if (!token.empty()) request.set("Authorization", "Bearer " + token);
    if (method == Poco::Net::HTTPRequest::HTTP_POST) {
      request.setContentType("application/json");
      request.setContentLength(static_cast<std::streamsize>(body.size()));
      request.set("X-Timeout-Ms", std::to_string(timeout.count()));
    }
    session.sendRequest(request) << body;
    Poco::Net::HTTPResponse response;
    std::ostringstream out;
    Poco::StreamCopier::copyStream(session.receiveResponse(response), out);
    if (response.getStatus() == Poco::Net::HTTPResponse::HTTP_OK) return out.str();
    std::cerr << "deskfarm: " << path << " failed: " << out.str() << "\n";
    code = 1;
  } catch (const Poco::Exception& e) {
    std::cerr << "deskfarm: cannot reach the admin endpoint at " << address << ": " << e.displayText() << "\n";
    code = 5;
  }
  return std::nullopt;
}

Object::Ptr parse(const std::string& json) { return Poco::JSON::Parser().parse(json).extract<Object::Ptr>(); }

}  // namespace

int cmd_ima(const std::string& command, bool elect, const std::string& admin_address, const std::string& token,
            std::chrono::milliseconds timeout) {
  int code = 0;
  auto status = admin_call(admin_address, token, Poco::Net::HTTPRequest::HTTP_GET, "/status", "", timeout, code);
  if (!status) return code;
  std::string first;
  auto instances = parse(*status)->getArray("instances");
  for (std::size_t i = 0; instances && i < instances->size() && first.empty(); ++i) {
    auto o = instances->getObject(static_cast<unsigned>(i));
    if (o->optValue<std::string>("plugin", "") == "ima" && o->optValue<std::string>("state", "") == "running")
      first = o->getValue<std::string>("name");
  }
  if (first.empty()) {
    std::cerr << "deskfarm " << command << ": the deployment at " << admin_address
              << " runs no ima instance; add one ([instances.NAME] plugin = \"ima\") or point at another deployment\n";
    return 1;
  }
  const std::string request = elect && command == "querydc" ? "admin.elect" : "admin.querydc";
  auto reply = admin_call(admin_address, token, Poco::Net::HTTPRequest::HTTP_POST, "/request/ima." + first + "." + request, "{}", timeout, code);
  if (!reply) return code;
  auto collectors = parse(*reply)->getArray("collectors");
  const std::size_t n = collectors ? collectors->size() : 0;
  if (command == "querydc") {
    std::printf("%-16s %-20s %-8s %-10s %-15s %-6s %s\n", "zone", "collector", "host_id", "version", "preference", "epoch", "reachable");
    for (std::size_t i = 0; i < n; ++i) {
      auto c = collectors->getObject(static_cast<unsigned>(i));
      std::printf("%-16s %-20s %-8lld %-10s %-15s %-6lld %s\n", c->getValue<std::string>("zone").c_str(),
                  c->getValue<std::string>("instance").c_str(), static_cast<long long>(c->getValue<Poco::Int64>("host_id")),
                  c->getValue<std::string>("version").c_str(), c->getValue<std::string>("preference").c_str(),
                  static_cast<long long>(c->getValue<Poco::Int64>("epoch")), c->getValue<bool>("reachable") ? "yes" : "no");
    }
    return 0;
  }
  std::printf("%-20s %-16s %-20s %-8s %-9s %-8s %-6s %s\n", "collector", "zone", "server", "host_id", "sessions", "load", "seq", "updated");
  for (std::size_t i = 0; i < n; ++i) {
    const auto zdc = collectors->getObject(static_cast<unsigned>(i))->getValue<std::string>("instance");
    auto data = admin_call(admin_address, token, Poco::Net::HTTPRequest::HTTP_POST, "/request/ima." + zdc + ".admin.queryds", "{}", timeout, code);
    if (!data) continue;  // a collector of another process that does not answer: said on stderr, the rest still printed
    auto records = parse(*data)->getArray("records");
    for (std::size_t j = 0; records && j < records->size(); ++j) {
      auto r = records->getObject(static_cast<unsigned>(j));
      std::printf("%-20s %-16s %-20s %-8lld %-9lld %-8.1f %-6lld %s\n", zdc.c_str(), r->getValue<std::string>("zone").c_str(),
                  r->getValue<std::string>("instance").c_str(), static_cast<long long>(r->getValue<Poco::Int64>("host_id")),
                  static_cast<long long>(r->getValue<Poco::Int64>("sessions")), r->getValue<double>("load"),
                  static_cast<long long>(r->getValue<Poco::Int64>("seq")), r->getValue<std::string>("updated").c_str());
    }
  }
  return code;
}

}  // namespace deskfarm::cli
