// NFuseProtocol documents as a Web Interface sends them (the layout nmap's citrixxml.lua and the NFuse DTD show),
// parsed field by field; replies written and read back field by field; malformed and unknown requests answered
// with the protocol's error reply naming what and where; the ICA launch file.
#include <catch2/catch.hpp>

#include "deskfarm/nfuse/ica.hpp"
#include "deskfarm/nfuse/nfuse.hpp"

using namespace deskfarm::nfuse;

namespace {

std::string doc(const std::string& body, const std::string& version = "5.4") {
  return "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\r\n<!DOCTYPE NFuseProtocol SYSTEM \"NFuse.dtd\">\r\n"
         "<NFuseProtocol version=\"" + version + "\">" + body + "</NFuseProtocol>\r\n";
}

std::string error_of(const std::string& xml) {
  try {
    parse_request(xml);
  } catch (const ProtocolError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("RequestValidateCredentials as a Web Interface sends it", "[nfuse]") {
  const auto d = parse_request(doc(
      "<RequestValidateCredentials><Credentials><UserName>alice</UserName>"
      "<Password encoding=\"cleartext\">p&amp;ss &lt;word&gt;</Password><Domain type=\"NT\">CORP</Domain>"
      "</Credentials></RequestValidateCredentials>",
      "5.0"));
  CHECK(d.version == "5.0");
  const auto& v = std::get<ValidateCredentials>(d.request);
  CHECK(v.credentials.user == "alice");
  CHECK(v.credentials.password == "p&ss <word>");
  CHECK(v.credentials.domain == "CORP");
  CHECK(v.credentials.domain_type == "NT");
  CHECK(request_type(d.request) == "RequestValidateCredentials");
}

TEST_CASE("RequestAppData, RequestAddress and RequestTicket, field by field", "[nfuse]") {
  const auto app = std::get<AppDataRequest>(parse_request(doc(
      "<RequestAppData><Scope traverse=\"subtree\" /><DesiredDetails>permissions</DesiredDetails>"
      "<DesiredDetails>access-list</DesiredDetails><ServerType>win32</ServerType><ClientType>ica30</ClientType>"
      "<Credentials><UserName>alice</UserName><Password encoding=\"cleartext\">pw</Password><Domain type=\"NT\">CORP</Domain></Credentials>"
      "<ClientName>WI_alice</ClientName><ClientAddress>127.0.0.9</ClientAddress></RequestAppData>")).request);
  CHECK(app.scope == "subtree");
  CHECK(app.desired_details == std::vector<std::string>{"permissions", "access-list"});
  CHECK(app.server_type == "win32");
  CHECK(app.client_type == "ica30");
  REQUIRE(app.credentials);
  CHECK(app.credentials->user == "alice");
  CHECK(app.client_name == "WI_alice");
  CHECK(app.client_address == "127.0.0.9");

  const auto addr = std::get<AddressRequest>(parse_request(doc(
      "<RequestAddress><Flags>alt-addr no-load-bias</Flags><Name><AppName>Desktop-Sales</AppName></Name>"
      "<Credentials><UserName>alice</UserName><Password>pw</Password></Credentials></RequestAddress>")).request);
  CHECK(addr.app_name == "Desktop-Sales");
  CHECK(addr.flags == std::vector<std::string>{"alt-addr", "no-load-bias"});
  REQUIRE(addr.credentials);
  CHECK(addr.credentials->password == "pw");
  CHECK(addr.credentials->domain.empty());

  const auto ticket = std::get<TicketRequest>(parse_request(doc(
      "<RequestTicket><Credentials><UserName>alice</UserName><Password encoding=\"cleartext\">pw</Password>"
      "<Domain type=\"NT\">CORP</Domain></Credentials><TicketType>CtxLogon</TicketType>"
      "<TicketTag>IMAHostId:4711</TicketTag><TimetoLive> 600 </TimetoLive></RequestTicket>")).request);
  CHECK(ticket.ticket_type == "CtxLogon");
  CHECK(ticket.ticket_tag == "IMAHostId:4711");
  CHECK(ticket.time_to_live == 600);
  CHECK(ticket.credentials.domain == "CORP");
}

TEST_CASE("every request survives write_request then parse_request unchanged", "[nfuse]") {
  Credentials c{"bob", "x<y>&\"z'", "CORP", "NT"};
  std::vector<Document> docs = {
      {"5.4", ValidateCredentials{c}},
      {"5.1", AppDataRequest{"onelevel", {"defaults"}, "all", "rdp", c, "cn", "127.0.0.2"}},
      {"4.1", AddressRequest{"Desktop 1", {"alt-addr"}, std::nullopt, "", ""}},
      {"", AddressRequest{"D", {}, Credentials{"u", "", "", "Novell"}, "", ""}},  // no version; a domain type alone
      {"5.4", TicketRequest{c, "CtxLogon", "tag-1", 3600}},
  };
  for (const auto& d : docs) {
    INFO(request_type(d.request));
    CHECK(parse_request(write_request(d)) == d);
  }
}

TEST_CASE("replies are written as the protocol has them and read back field by field", "[nfuse]") {
  const ValidateCredentialsReply ok{-1, false, ""};
  const auto text = write_reply(ok, "5.0");
  CHECK(text.find("<!DOCTYPE NFuseProtocol SYSTEM \"NFuse.dtd\">") != std::string::npos);
  CHECK(text.find("<NFuseProtocol version=\"5.0\">") != std::string::npos);
  CHECK(text.find("<DaysUntilPasswordExpiry>-1</DaysUntilPasswordExpiry>") != std::string::npos);
  CHECK(std::get<ValidateCredentialsReply>(parse_reply(text)) == ok);
  const ValidateCredentialsReply bad{-1, false, kBadCredentials};
  CHECK(write_reply(bad).find("<ErrorId>bad-credentials</ErrorId>") != std::string::npos);
  CHECK(std::get<ValidateCredentialsReply>(parse_reply(write_reply(bad))) == bad);

  AppData a;
  a.in_name = "Desktop-Sales";
  a.f_name = "Sales desktop";
  a.users = {"CORP\\alice"};
  a.groups = {"CORP\\Sales", "Everyone"};
  AppData b = a;
  b.in_name = "Desktop-2";
  b.disabled = true;
  b.anonymous = true;
  b.client_types = {"ica30", "rdp"};
  const AppDataReply apps{{a, b}, ""};
  const auto apps_text = write_reply(apps);
  INFO(apps_text);
  CHECK(apps_text.find("appisdesktop=\"true\"") != std::string::npos);
  CHECK(apps_text.find("appisdisabled=\"false\"") != std::string::npos);
  CHECK(apps_text.find("<InName>Desktop-Sales</InName>") != std::string::npos);
  CHECK(std::get<AppDataReply>(parse_reply(apps_text)) == apps);

  const AddressReply addr{"127.0.0.1:1494", "dot-port", "IMAHostId:4711", ""};
  CHECK(std::get<AddressReply>(parse_reply(write_reply(addr))) == addr);
  const AddressReply none{"", "dot", "", kNoAvailableWorkstation};
  CHECK(std::get<AddressReply>(parse_reply(write_reply(none))).error_id == kNoAvailableWorkstation);
  const TicketReply t{"0123456789ABCDEF0123456789ABCD", ""};
  CHECK(std::get<TicketReply>(parse_reply(write_reply(t))) == t);
}

TEST_CASE("a ServerAddress's addresstype says whether it is dotted or a name, and whether a port follows", "[nfuse]") {
  CHECK(address_type("10.1.0.7") == "dot");
  CHECK(address_type("10.1.0.7:1494") == "dot-port");
  CHECK(address_type("desktop-3") == "dns");
  CHECK(address_type("desktop-3.corp.example:1494") == "dns-port");
  CHECK(address_type("1.2.3") == "dns");         // not four parts: a name as far as the client can tell
  CHECK(address_type("10.1.0.7:") == "dns");     // an empty port is no port, and the text is no dotted address
}

TEST_CASE("malformed XML and unknown requests get the protocol's error reply naming what and where", "[nfuse]") {
  CHECK(error_of("<NFuseProtocol version=\"5.4\"><RequestTicket>").find("malformed XML at line 1") != std::string::npos);
  CHECK(error_of(doc("<RequestTicket><Credentials></RequestTicket>")).find("malformed XML at line 3") != std::string::npos);
  CHECK(error_of("<Other/>").find("root element is <Other>") != std::string::npos);
  CHECK(error_of(doc("")).find("holds 0 request elements") != std::string::npos);
  CHECK(error_of(doc("<RequestTicket/>", "5.4x")) == "NFuseProtocol: version '5.4x' is not a protocol version like 5.4");
  CHECK(error_of(doc("<RequestTicket/>", "5.4&#9;")) == "NFuseProtocol: version attribute is not a protocol version like 5.4");
  const auto unknown = error_of(doc("<RequestLaunchRocket/>"));
  CHECK(unknown.find("NFuseProtocol/RequestLaunchRocket: unknown request type") != std::string::npos);
  CHECK(error_of(doc("<RequestTicket><TimetoLive>5</TimetoLive></RequestTicket>")) ==
        "NFuseProtocol/RequestTicket: <Credentials> is missing");
  CHECK(error_of(doc("<RequestTicket><Credentials><UserName>a</UserName></Credentials><TimetoLive>soon</TimetoLive></RequestTicket>")) ==
        "NFuseProtocol/RequestTicket/TimetoLive: 'soon' is not an integer");
  CHECK(error_of(doc("<RequestTicket><Credentials><UserName>a</UserName></Credentials><TimetoLive>0</TimetoLive></RequestTicket>"))
            .find("outside 1..86400") != std::string::npos);
  CHECK(error_of(doc("<RequestAddress><Name/></RequestAddress>")) == "NFuseProtocol/RequestAddress/Name: <AppName> is missing");
  CHECK(error_of(doc("<RequestAppData><ServerType>vax</ServerType></RequestAppData>")) ==
        "NFuseProtocol/RequestAppData/ServerType: server type 'vax' is not one of win32, x, all");
  CHECK(error_of(doc("<RequestValidateCredentials><Credentials><UserName>a</UserName><Password encoding=\"ctx1\">x</Password>"
                     "</Credentials></RequestValidateCredentials>"))
            .find("password encoding 'ctx1' is not supported") != std::string::npos);
  CHECK(error_of(std::string(kMaxDocument + 1, ' ')).find("larger than") != std::string::npos);
  // An external entity is not read.
  CHECK(error_of("<?xml version=\"1.0\"?><!DOCTYPE NFuseProtocol [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>"
                 "<NFuseProtocol><RequestTicket><Credentials><UserName>&x;</UserName></Credentials></RequestTicket></NFuseProtocol>")
            .find("root:") == std::string::npos);

  // The error reply: the request's Response element when its type is known, else ResponseError.
  try {
    parse_request(doc("<RequestTicket><Credentials><UserName>a</UserName></Credentials><TimetoLive>x</TimetoLive></RequestTicket>"));
    FAIL("parsed");
  } catch (const ProtocolError& e) {
    const auto reply = write_error(e);
    CHECK(reply.find("<ResponseTicket>") != std::string::npos);
    std::string detail;
    const auto t = std::get<TicketReply>(parse_reply(reply, &detail));
    CHECK(t.error_id == kUnspecified);
    CHECK(detail == "NFuseProtocol/RequestTicket/TimetoLive: 'x' is not an integer");
  }
  try {
    parse_request("<NFuse");
    FAIL("parsed");
  } catch (const ProtocolError& e) {
    const auto reply = write_error(e);
    CHECK(reply.find("<ResponseError>") != std::string::npos);
    CHECK(reply.find("<ErrorId>unspecified</ErrorId>") != std::string::npos);
    CHECK(reply.find("malformed XML at line 1") != std::string::npos);
  }
}

TEST_CASE("the ICA launch file: sections, entry, address, ticket, gateway settings", "[nfuse][ica]") {
  IcaFile f;
  f.name = "Desktop-Sales";
  f.address = "127.0.0.1:1494";
  f.logon_ticket = "0123456789ABCDEF0123456789ABCD";
  f.client_name = "WI_alice";
  const auto text = write_ica(f);
  CHECK(text.find("\r\n") != std::string::npos);
  const auto ini = parse_ini(text);
  CHECK(ini.at("WFClient").at("Version") == "2");
  CHECK(ini.at("ApplicationServers").count("Desktop-Sales") == 1);
  const auto& s = ini.at("Desktop-Sales");  // the section name matches the entry exactly
  CHECK(s.at("Address") == "127.0.0.1:1494");
  CHECK(s.at("InitialProgram") == "#Desktop");
  CHECK(s.at("LogonTicket") == "0123456789ABCDEF0123456789ABCD");
  CHECK(s.at("LogonTicketType") == "CTXS1");
  CHECK(s.at("CGPAddress") == "*:2598");
  CHECK(s.at("SSLEnable") == "Off");
  CHECK(s.count("SSLProxyHost") == 0);
  CHECK(s.at("TransportDriver") == "TCP/IP");
  CHECK(s.at("WinStationDriver") == "ICA 3.0");

  f.ssl_enable = true;
  f.ssl_proxy_host = "gateway.example:443";
  f.address = ";40;STA01;0123456789ABCDEF";
  const auto gw = parse_ini(write_ica(f)).at("Desktop-Sales");
  CHECK(gw.at("SSLEnable") == "On");
  CHECK(gw.at("SSLProxyHost") == "gateway.example:443");
  CHECK(gw.at("Address") == ";40;STA01;0123456789ABCDEF");

  IcaFile bad = f;
  bad.logon_ticket = "x\r\nAddress=evil";
  CHECK_THROWS_WITH(write_ica(bad), Catch::Contains("logon_ticket contains a line break"));
  bad = f;
  bad.name = "a]b";
  CHECK_THROWS_WITH(write_ica(bad), Catch::Contains("name 'a]b'"));
  bad = f;
  bad.ssl_proxy_host.clear();
  CHECK_THROWS_WITH(write_ica(bad), Catch::Contains("ssl_enable without ssl_proxy_host"));
}
