// The XML service endpoint answered by a test broker and asked by a real HTTP client (curl): each of the four
// requests comes back as its reply, compared field by field with what the broker gave; malformed documents, other
// paths and methods, and a broker that never answers get clear answers.
#include <catch2/catch.hpp>

#include <deskfarm/testing/certs.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>

#include <chrono>
#include <fstream>
#include <mutex>
#include <thread>

#include "deskfarm/nfuse/xml_service.hpp"

using namespace deskfarm::nfuse;
namespace dt = deskfarm::testing;

namespace {

/// Answers from the calling thread, and records what it was asked (the HTTP threads call it, the test reads it
/// after the reply arrived).
class TestBroker final : public Broker {
 public:
  AppDataReply apps;
  AddressReply address_reply{"127.0.0.1:1494", "dot-port", "IMAHostId:7", ""};
  bool silent = false;  // never answers: the service's timeout answers instead

  void validate_credentials(const ValidateCredentials& req, std::function<void(ValidateCredentialsReply)> done) override {
    record(req.credentials.user);
    if (silent) return;
    done(req.credentials.password == "right" ? ValidateCredentialsReply{} : ValidateCredentialsReply{-1, false, kBadCredentials});
  }
  void app_data(const AppDataRequest& req, std::function<void(AppDataReply)> done) override {
    record(req.credentials ? req.credentials->user : "");
    done(apps);
  }
  void address(const AddressRequest& req, std::function<void(AddressReply)> done) override {
    record(req.app_name);
    done(address_reply);
  }
  void ticket(const TicketRequest& req, std::function<void(TicketReply)> done) override {
    record(req.ticket_tag + "/" + std::to_string(req.time_to_live));
    done(TicketReply{"0123456789ABCDEF0123456789ABCD", ""});
  }
  void launch(const std::string& ticket, std::function<void(std::optional<IcaFile>)> done) override {
    record("launch " + ticket);
    if (ticket != "0123456789ABCDEF0123456789ABCD") return done(std::nullopt);
    done(IcaFile{.name = "Desktop-Sales", .address = "127.0.0.1:1494", .logon_ticket = ticket});
  }
  std::vector<std::string> asked() {
    std::lock_guard lock(mu_);
    return asked_;
  }

 private:
  void record(const std::string& s) {
    std::lock_guard lock(mu_);
    asked_.push_back(s);
  }
  std::mutex mu_;
  std::vector<std::string> asked_;
};

struct Client {
  dt::TempDir dir{"nfuse-curl"};
  std::uint16_t port;
  std::string ca;  ///< HTTPS, trusting this CA certificate (curl checks the name 127.0.0.1 too)
  /// POSTs `body` with curl; returns curl's stdout (the reply) and the status code.
  std::pair<std::string, std::string> post(const std::string& body, const std::string& path = "/scripts/WPnBr.dll",
                                           const std::string& method = "POST") {
    const auto file = dir / "request.xml";
    std::ofstream(file, std::ios::binary) << body;
    std::vector<std::string> argv{"curl", "-s", "-S", "--max-time", "10", "-X", method, "-H", "Content-Type: text/xml",
                                  "--data-binary", "@" + file.string(), "-w", "\n%{http_code}"};
    if (!ca.empty()) argv.insert(argv.end(), {"--cacert", ca});
    argv.push_back((ca.empty() ? "http://127.0.0.1:" : "https://127.0.0.1:") + std::to_string(port) + path);
    const auto r = dt::run_child(argv, std::chrono::seconds(20));
    if (r.exit_code != 0) FAIL("curl failed (" << r.exit_code << "): " << r.err);
    const auto nl = r.out.rfind('\n');
    return {r.out.substr(0, nl), r.out.substr(nl + 1)};
  }
};

Credentials alice(const std::string& password = "right") { return Credentials{"alice", password, "CORP", "NT"}; }

}  // namespace

TEST_CASE("the XML service answers the four requests over HTTP, read by curl and compared field by field", "[nfuse][http]") {
  if (!dt::have_program("curl")) {
    WARN("curl is not installed (Debian package curl; scripts/setup.sh)");
    return;
  }
  auto broker = std::make_shared<TestBroker>();
  AppData desk;
  desk.in_name = "Desktop-Sales";
  desk.f_name = "Sales desktop";
  desk.groups = {"CORP\\Sales"};
  broker->apps.apps = {desk};
  XmlService service(XmlServiceOptions{}, broker);
  service.start();
  Client c{.port = service.port()};

  auto [ok, status] = c.post(write_request({"5.4", ValidateCredentials{alice()}}));
  CHECK(status == "200");
  CHECK(std::get<ValidateCredentialsReply>(parse_reply(ok)) == ValidateCredentialsReply{});
  auto [bad, bad_status] = c.post(write_request({"5.4", ValidateCredentials{alice("wrong")}}));
  CHECK(std::get<ValidateCredentialsReply>(parse_reply(bad)).error_id == kBadCredentials);

  auto [apps, s2] = c.post(write_request({"5.4", AppDataRequest{"onelevel", {}, "all", "ica30", alice(), "", ""}}));
  CHECK(std::get<AppDataReply>(parse_reply(apps)) == broker->apps);
  auto [addr, s3] = c.post(write_request({"5.4", AddressRequest{"Desktop-Sales", {}, alice(), "", ""}}));
  CHECK(std::get<AddressReply>(parse_reply(addr)) == broker->address_reply);
  auto [ticket, s4] = c.post(write_request({"5.4", TicketRequest{alice(), "CtxLogon", "IMAHostId:7", 120}}));
  CHECK(std::get<TicketReply>(parse_reply(ticket)).ticket == "0123456789ABCDEF0123456789ABCD");
  CHECK(broker->asked() == std::vector<std::string>{"alice", "alice", "alice", "Desktop-Sales", "IMAHostId:7/120"});

  auto [junk, s5] = c.post("<NFuseProtocol version=\"5.4\"><RequestTicket>");
  CHECK(s5 == "200");
  CHECK(junk.find("<ResponseError>") != std::string::npos);
  CHECK(junk.find("<ErrorId>unspecified</ErrorId>") != std::string::npos);
  CHECK(junk.find("malformed XML at line 1") != std::string::npos);
  auto [unknown, s6] = c.post("<NFuseProtocol version=\"5.4\"><RequestLaunch/></NFuseProtocol>");
  CHECK(unknown.find("unknown request type &lt;RequestLaunch&gt;") != std::string::npos);
  CHECK(c.post("", "/other").second == "404");
  CHECK(c.post("", "/scripts/wpnbr.dll", "GET").second == "405");

  const auto st = service.stats();
  CHECK(st.requests == 7);
  CHECK(st.protocol_errors == 2);
  CHECK(st.not_found == 2);
  service.stop();
}

TEST_CASE("a body over the limit still on its way is read to its end, so the client gets the answer, not a reset", "[nfuse][http]") {
  XmlService service(XmlServiceOptions{}, std::make_shared<TestBroker>());
  service.start();
  Poco::Net::StreamSocket s(Poco::Net::SocketAddress("127.0.0.1", service.port()));
  s.setReceiveTimeout(Poco::Timespan(10, 0));
  constexpr int pieces = 16;
  const std::string piece(16 * 1024, ' ');
  const std::string head = "POST /scripts/WPnBr.dll HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\nContent-Length: " +
                           std::to_string(pieces * piece.size()) + "\r\n\r\n";
  REQUIRE(s.sendBytes(head.data(), static_cast<int>(head.size())) == static_cast<int>(head.size()));
  // The service can answer from the head alone; the client goes on sending, as curl does, in pieces.
  for (int k = 0; k < pieces; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    INFO("piece " << k);
    REQUIRE_NOTHROW(s.sendBytes(piece.data(), static_cast<int>(piece.size())));
  }
  std::string answer;
  char buf[4096];
  for (int n; answer.size() < 1'000'000 && (n = s.receiveBytes(buf, sizeof buf)) > 0;) answer.append(buf, static_cast<std::size_t>(n));
  CHECK(answer.starts_with("HTTP/1.1 200"));
  CHECK(answer.find("Connection: Close") != std::string::npos);
  CHECK(answer.find("request body is larger than 65536 bytes") != std::string::npos);
  CHECK(service.stats().protocol_errors == 1);
}

TEST_CASE("a broker that does not answer gets the request's error reply after answer_timeout", "[nfuse][http]") {
  if (!dt::have_program("curl")) return;
  auto broker = std::make_shared<TestBroker>();
  broker->silent = true;
  XmlServiceOptions o;
  o.answer_timeout = std::chrono::milliseconds(200);
  XmlService service(o, broker);
  service.start();
  Client c{.port = service.port()};
  auto [reply, status] = c.post(write_request({"5.0", ValidateCredentials{alice()}}));
  std::string detail;
  CHECK(std::get<ValidateCredentialsReply>(parse_reply(reply, &detail)).error_id == kUnspecified);
  CHECK(detail == "the broker did not answer RequestValidateCredentials within 200 ms");
  CHECK(service.stats().broker_timeouts == 1);
}

TEST_CASE("the XML service refuses an address it cannot bind, naming it", "[nfuse][http]") {
  auto broker = std::make_shared<TestBroker>();
  XmlService first(XmlServiceOptions{}, broker);
  first.start();
  XmlServiceOptions o;
  o.port = first.port();
  XmlService second(o, broker);
  // Poco binds with SO_REUSEADDR only; a port in use by a listening socket still fails.
  CHECK_THROWS_WITH(second.start(), Catch::Contains("cannot listen on 127.0.0.1:" + std::to_string(first.port())));
}

TEST_CASE("the XML service hands out the ICA launch file of a ticket, and 404 for an unknown one", "[nfuse][http]") {
  if (!dt::have_program("curl")) return;
  auto broker = std::make_shared<TestBroker>();
  XmlService service(XmlServiceOptions{}, broker);
  service.start();
  Client c{.port = service.port()};
  const auto url = "http://127.0.0.1:" + std::to_string(service.port()) + std::string(kLaunchPath);
  const auto r = dt::run_child({"curl", "-s", "-S", "--max-time", "10", "-w", "\n%{http_code} %{content_type}",
                                url + "?ticket=0123456789ABCDEF0123456789ABCD"},
                               std::chrono::seconds(20));
  REQUIRE(r.exit_code == 0);
  const auto nl = r.out.rfind('\n');
  CHECK(r.out.substr(nl + 1) == "200 application/x-ica");
  const auto ini = parse_ini(r.out.substr(0, nl));
  CHECK(ini.at("ApplicationServers").at("Desktop-Sales").empty());
  CHECK(ini.at("Desktop-Sales").at("Address") == "127.0.0.1:1494");
  CHECK(ini.at("Desktop-Sales").at("LogonTicket") == "0123456789ABCDEF0123456789ABCD");
  CHECK(c.post("", std::string(kLaunchPath) + "?ticket=nope", "GET").second == "404");
  CHECK(c.post("", std::string(kLaunchPath), "GET").second == "400");
  CHECK(c.post("", std::string(kLaunchPath) + "?ticket=x", "POST").second == "405");
  const auto st = service.stats();
  CHECK(st.launches == 1);
  CHECK(st.not_found == 3);
  CHECK(st.requests == 0);
}

TEST_CASE("with a certificate and key the XML service speaks HTTPS only: curl checks it, plain HTTP and TLS 1.1 get nothing", "[nfuse][http][tls]") {
  if (!dt::require_program("curl") || !dt::require_program("openssl")) return;
  dt::TempDir dir("nfuse-tls");
  const auto ca = dir / "ca-cert.pem";
  const auto made = dt::make_test_certificates(dir.path(), ca);
  INFO(made);
  REQUIRE(made.empty());
  auto broker = std::make_shared<TestBroker>();
  XmlServiceOptions o;
  o.tls_certificate = (dir / "server-cert.pem").string();
  o.tls_key = (dir / "server-key.pem").string();
  XmlService service(o, broker);
  service.start();

  Client c{.port = service.port(), .ca = ca.string()};
  auto [ok, status] = c.post(write_request({"5.4", ValidateCredentials{alice()}}));
  CHECK(status == "200");
  CHECK(std::get<ValidateCredentialsReply>(parse_reply(ok)) == ValidateCredentialsReply{});
  auto [ticket, s2] = c.post(write_request({"5.4", TicketRequest{alice(), "CtxLogon", "IMAHostId:7", 120}}));
  CHECK(std::get<TicketReply>(parse_reply(ticket)).ticket == "0123456789ABCDEF0123456789ABCD");

  // Plain HTTP to the HTTPS port: no answer, and the service goes on.
  const auto plain = dt::run_child({"curl", "-s", "--max-time", "5", "-w", "%{http_code}", "-X", "POST", "--data-binary", "x",
                                    "http://127.0.0.1:" + std::to_string(service.port()) + "/scripts/wpnbr.dll"},
                                   std::chrono::seconds(15));
  CHECK(plain.exit_code != 0);
  CHECK(plain.out.find("200") == std::string::npos);
  // openssl s_client: TLS 1.2 and 1.3 accepted with our certificate, TLS 1.1 refused.
  const auto connect = "127.0.0.1:" + std::to_string(service.port());
  const auto tls12 = dt::run_child({"sh", "-c", "echo | openssl s_client -brief -tls1_2 -CAfile " + ca.string() + " -connect " + connect}, std::chrono::seconds(15));
  INFO(tls12.out << tls12.err);
  CHECK((tls12.out + tls12.err).find("Verification: OK") != std::string::npos);
  // The client is told to allow TLS 1.1 (security level 0), so only the server can refuse it.
  const auto tls11 = dt::run_child({"sh", "-c", "echo | openssl s_client -brief -tls1_1 -cipher DEFAULT@SECLEVEL=0 -connect " + connect},
                                   std::chrono::seconds(15));
  INFO(tls11.out << tls11.err);
  CHECK((tls11.out + tls11.err).find("Verification: OK") == std::string::npos);
  CHECK((tls11.out + tls11.err).find("alert protocol version") != std::string::npos);  // the server's refusal
  CHECK(c.post(write_request({"5.4", ValidateCredentials{alice("wrong")}})).second == "200");  // still serving
  service.stop();
}

TEST_CASE("an XML service whose certificate or key cannot be loaded does not start, and says which file", "[nfuse][http][tls]") {
  XmlServiceOptions o;
  o.tls_certificate = "/nonexistent/xml-cert.pem";
  o.tls_key = "/nonexistent/xml-key.pem";
  XmlService service(o, std::make_shared<TestBroker>());
  CHECK_THROWS_WITH(service.start(), Catch::Contains("/nonexistent/xml-cert.pem"));
  XmlServiceOptions half;
  half.tls_certificate = "cert.pem";
  XmlService other(half, std::make_shared<TestBroker>());
  CHECK_THROWS_WITH(other.start(), Catch::Contains("needs its key"));
}
