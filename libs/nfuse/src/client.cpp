#include "deskfarm/nfuse/client.hpp"

#include <Poco/Exception.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/StreamCopier.h>
#include <Poco/URI.h>

#include <stdexcept>

#include "deskfarm/nfuse/xml_service.hpp"

namespace deskfarm::nfuse {

struct XmlClient::Impl {
  std::string address;
  Poco::Net::HTTPClientSession session;
  Impl(const std::string& host, std::uint16_t port) : address(host + ":" + std::to_string(port)), session(host, port) {}
};

XmlClient::XmlClient(std::string host, std::uint16_t port, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>(host, port)) {
  impl_->session.setTimeout(Poco::Timespan(static_cast<Poco::Timespan::TimeDiff>(timeout.count()) * 1000));
  impl_->session.setKeepAlive(true);
}

XmlClient::~XmlClient() = default;

HttpReply XmlClient::send(const std::string& method, const std::string& path, const std::string& body) {
  Poco::Net::HTTPRequest rq(method, path, Poco::Net::HTTPMessage::HTTP_1_1);
  rq.setKeepAlive(true);
  if (!body.empty()) {
    rq.setContentType(std::string(kContentType));
    rq.setContentLength(static_cast<std::streamsize>(body.size()));
  }
  HttpReply out;
  try {
    impl_->session.sendRequest(rq) << body;
    Poco::Net::HTTPResponse rs;
    auto& in = impl_->session.receiveResponse(rs);
    out.status = static_cast<int>(rs.getStatus());
    out.content_type = rs.getContentType();
    Poco::StreamCopier::copyToString(in, out.body);
  } catch (const Poco::Exception& e) {
    impl_->session.reset();  // the next request opens a new connection
    throw std::runtime_error("XML service at " + impl_->address + ": " + method + " " + path + ": " + e.displayText());
  }
  return out;
}

Reply XmlClient::ask(const Request& r, std::string* detail, const std::string& version) {
  const auto a = send("POST", std::string(kPath), write_request({version, r}));
  if (a.status != 200)
    throw std::runtime_error("XML service at " + impl_->address + ": " + request_type(r) + " answered HTTP " + std::to_string(a.status) + ": " + a.body);
  return parse_reply(a.body, detail);
}

HttpReply XmlClient::launch(const std::string& ticket) {
  std::string query;
  Poco::URI::encode(ticket, "&=+?#", query);
  return send("GET", std::string(kLaunchPath) + "?ticket=" + query);
}

}  // namespace deskfarm::nfuse
