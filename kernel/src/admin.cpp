#include "admin.hpp"

#include <sstream>
#include <stdexcept>

#include <Poco/JSON/Stringifier.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/ServerSocket.h>

#include "deployment.hpp"

namespace deskfarm::kernel {

std::pair<std::string, std::uint16_t> parse_host_port(const std::string& text, const std::string& what) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw std::invalid_argument(what + " '" + text + "' is not HOST:PORT (e.g. \"127.0.0.1:9900\")");
  std::string host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string port_text = text.substr(colon + 1);
  char* end = nullptr;
  const long port = std::strtol(port_text.c_str(), &end, 10);
  if (port_text.empty() || *end != '\0' || port < 0 || port > 65535)
    throw std::invalid_argument(what + " '" + text + "' has no valid port (0-65535)");
  return {host, static_cast<std::uint16_t>(port)};
}

namespace {

class Handler final : public Poco::Net::HTTPRequestHandler {
 public:
  explicit Handler(Deployment& d) : deployment_(d) {}
  void handleRequest(Poco::Net::HTTPServerRequest& request, Poco::Net::HTTPServerResponse& response) override {
    const std::string path = request.getURI().substr(0, request.getURI().find('?'));
    if (request.getMethod() != "GET" && request.getMethod() != "HEAD") {
      response.setStatus(Poco::Net::HTTPResponse::HTTP_METHOD_NOT_ALLOWED);
      response.set("Allow", "GET, HEAD");
      response.send() << "only GET\n";
      return;
    }
    try {
      if (path == "/metrics") {
        response.setContentType("text/plain; version=0.0.4; charset=utf-8");
        response.send() << deployment_.metrics_text();
      } else if (path == "/status") {
        std::ostringstream json;
        Poco::JSON::Stringifier::stringify(deployment_.status(), json, 2);
        response.setContentType("application/json");
        response.send() << deployment_.redact(json.str()) << "\n";
      } else if (path == "/") {
        response.setContentType("text/plain; charset=utf-8");
        response.send() << "deskfarm admin endpoint: GET /status (JSON), GET /metrics (Prometheus)\n";
      } else {
        response.setStatus(Poco::Net::HTTPResponse::HTTP_NOT_FOUND);
        response.setContentType("text/plain; charset=utf-8");
        response.send() << "no such resource " << path << "; try /status or /metrics\n";
      }
    } catch (const std::exception& e) {
      response.setStatus(Poco::Net::HTTPResponse::HTTP_INTERNAL_SERVER_ERROR);
      response.send() << "error: " << deployment_.redact(e.what()) << "\n";
    }
  }

 private:
  Deployment& deployment_;
};

class Factory final : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  explicit Factory(Deployment& d) : deployment_(d) {}
  Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
    return new Handler(deployment_);
  }

 private:
  Deployment& deployment_;
};

}  // namespace

AdminServer::AdminServer(Deployment& deployment, const std::string& address) {
  auto [host, port] = parse_host_port(address, "admin address");
  host_ = host;
  Poco::Net::ServerSocket socket(Poco::Net::SocketAddress(host, port));
  auto params = new Poco::Net::HTTPServerParams;
  params->setMaxThreads(4);
  params->setKeepAlive(false);
  server_ = std::make_unique<Poco::Net::HTTPServer>(new Factory(deployment), socket, params);
  server_->start();
}

AdminServer::~AdminServer() {
  if (server_) server_->stopAll(true);
}

std::string AdminServer::address() const { return host_ + ":" + std::to_string(server_->port()); }

}  // namespace deskfarm::kernel
