#pragma once
#include <memory>
#include <string>

#include <Poco/Net/HTTPServer.h>

namespace deskfarm::kernel {

class Deployment;

/// host:port split; throws std::invalid_argument naming the text.
std::pair<std::string, std::uint16_t> parse_host_port(const std::string& text, const std::string& what);

/// The deployment's admin endpoint on loopback: GET /metrics (Prometheus text) and GET /status (JSON).
class AdminServer {
 public:
  AdminServer(Deployment& deployment, const std::string& address);
  ~AdminServer();
  /// The address actually bound ("127.0.0.1:43123").
  std::string address() const;

 private:
  std::unique_ptr<Poco::Net::HTTPServer> server_;
  std::string host_;
};

}  // namespace deskfarm::kernel
