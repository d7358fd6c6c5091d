#pragma once
// A client of the XML service (tests, benchmarks, a logon storm): NFuseProtocol documents POSTed over one
// keep-alive HTTP connection (Poco::Net), replies parsed; ICA launch files fetched. Not thread-safe: one client
// per thread.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <variant>

#include "deskfarm/nfuse/nfuse.hpp"

namespace deskfarm::nfuse {

struct HttpReply {
  int status = 0;
  std::string content_type;
  std::string body;
};

class XmlClient {
 public:
  XmlClient(std::string host, std::uint16_t port, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  ~XmlClient();
  XmlClient(const XmlClient&) = delete;
  XmlClient& operator=(const XmlClient&) = delete;

  /// Any method and path, with `body` as text/xml when not empty. Throws std::runtime_error naming the address
  /// when the connection fails.
  HttpReply send(const std::string& method, const std::string& path, const std::string& body = "");
  /// POSTs `r` (protocol `version`) to kPath and parses the reply; `detail` gets an error reply's <Detail>.
  /// Throws std::runtime_error on a status other than 200, ProtocolError on an unreadable reply.
  Reply ask(const Request& r, std::string* detail = nullptr, const std::string& version = std::string(kVersion));
  template <class T>
  T ask_as(const Request& r) {
    return std::get<T>(ask(r));
  }
  /// GET kLaunchPath?ticket=<ticket>.
  HttpReply launch(const std::string& ticket);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace deskfarm::nfuse
