// The XML service as a Web Interface (or any client) uses it: the real `deskfarm` binary on a manifest with a
// simulated XenServer pool, desktop agents, a controller, a licence server and a directory; every request posted
// by the real `curl` and every reply compared field by field; the desktop it hands out checked with the
// controller's own admin.desktops, and the ICA launch file with the address that desktop's agent registered. Bad input gets the
// protocol's error answers, is counted, and the next good request still works.
#include <csignal>
#include <fstream>

#include <catch2/catch.hpp>

#include <deskfarm/interfaces/ddc/ddc.hpp>
#include <deskfarm/nfuse/ica.hpp>
#include <deskfarm/nfuse/nfuse.hpp>
#include <deskfarm/nfuse/xml_service.hpp>
#include <deskfarm/sdk/record.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/net.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "password.hpp"

namespace {
using namespace std::chrono_literals;
using namespace deskfarm::testing;
namespace nf = deskfarm::nfuse;
namespace ddc = deskfarm::interfaces::ddc;
const std::string bin = DESKFARM_BIN;

/// curl's answer: body, status code and content type.
struct CurlAnswer {
  std::string body, status, content_type;
};

CurlAnswer curl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"curl", "-s", "-S", "--max-time", "20", "-w", "\n%{http_code} %{content_type}"};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto r = run_child(argv, 30s);
  if (r.exit_code != 0) FAIL("curl failed (" << r.exit_code << "): " << r.err);
  const auto nl = r.out.rfind('\n');
  const auto tail = r.out.substr(nl + 1);
  const auto sp = tail.find(' ');
  return {r.out.substr(0, nl), tail.substr(0, sp), sp == std::string::npos ? "" : tail.substr(sp + 1)};
}

/// POSTs `body` to the XML service as a Web Interface does (Content-Type text/xml).
CurlAnswer post(const TempDir& dir, std::uint16_t port, const std::string& body) {
  const auto file = dir / "request.xml";
  std::ofstream(file, std::ios::binary) << body;
  return curl({"-H", "Content-Type: text/xml", "--data-binary", "@" + file.string(),
               "http://127.0.0.1:" + std::to_string(port) + std::string(nf::kPath)});
}

template <class Reply>
Reply ask(const TempDir& dir, std::uint16_t port, const nf::Request& r) {
  const auto a = post(dir, port, nf::write_request({"5.4", r}));
  INFO(a.body);
  REQUIRE(a.status == "200");
  REQUIRE(a.content_type.starts_with("text/xml"));
  return std::get<Reply>(nf::parse_reply(a.body));
}

nf::Credentials creds(const std::string& user, const std::string& password) { return {user, password, "CORP", "NT"}; }

std::uint64_t metric(const std::string& text, const std::string& series) {
  const auto at = text.find(series + " ");
  if (at == std::string::npos) return 0;
  return std::stoull(text.substr(at + series.size() + 1));
}
}  // namespace

TEST_CASE("the XML service of a running farm, driven by curl: credentials, desktops, address, ticket, ICA file, bad input") {
  if (!require_program("curl")) return;
  TempDir dir;
  const auto file = dir / "farm.toml";
  const auto xml_port = free_port();
  const auto admin_port = free_port();
  const std::string alice_hash = deskfarm::directory::make_hash("wonderland", 1000);
  const std::string bob_hash = deskfarm::directory::make_hash("builder", 1000);
  write_text(file,
             "[deployment]\nname = \"farm\"\nstate_dir = \"" + (dir / "var").string() + "\"\nadmin = \"127.0.0.1:" +
                 std::to_string(admin_port) + "\"\n\n"
                 "[instances.hv]\nplugin = \"hypervisor-xen\"\nvms = [{ template = \"desktop\", count = 3, prefix = \"desktop-\" }]\n"
                 "networks = [{ name = \"lan\", subnet = \"10.30.0.0/24\" }]\n"
                 "latencies = [{ action = \"start\", distribution = \"constant\", ms = 100 }]\n\n"
                 "[instances.ddc-1]\nplugin = \"ddc\"\nfarm_key = \"e2e-key\"\npool_interval_s = 1\nlicense = \"lic\"\n"
                 "xml_address = \"127.0.0.1:" + std::to_string(xml_port) + "\"\ndirectory = \"dir\"\n"
                 "groups = [{ name = \"office\", desktops = [\"desktop-1\", \"desktop-2\"], directory_groups = [\"Office\"], hypervisor = \"hv\", "
                 "idle_peak = 2, idle_business = 2, idle_off_hours = 2 },\n"
                 "  { name = \"lab\", desktops = [\"desktop-3\"], users = [\"bob\"], hypervisor = \"hv\" }]\n\n"
                 "[instances.lic]\nplugin = \"license\"\nfarms = [{ name = \"farm\", licenses = 5 }]\n\n"
                 "[instances.agents]\nplugin = \"vda\"\ncontrollers = [\"ddc-1\"]\nfarm_key = \"e2e-key\"\n\n"
                 "[instances.dir]\nplugin = \"directory\"\ndomain = \"CORP\"\nusers = [\n"
                 "  { name = \"alice\", password_hash = \"" + alice_hash + "\", groups = [\"Office\"] },\n"
                 "  { name = \"bob\", password_hash = \"" + bob_hash + "\" },\n]\n");
  REQUIRE(run_child({bin, "check", file.string()}, 20s).exit_code == 0);
  ChildProcess run({bin, "run", file.string()}, dir / "run.log");
  REQUIRE(eventually([&] {
    auto g = run_child({bin, "request", "ddc.ddc-1.admin.groups", "{}", file.string()}, 10s);
    return g.exit_code == 0 && g.out.find("\"idle\":2") != std::string::npos;
  }, 30s));

  // Credentials, good and bad.
  CHECK(ask<nf::ValidateCredentialsReply>(dir, xml_port, nf::ValidateCredentials{creds("alice", "wonderland")}) ==
        nf::ValidateCredentialsReply{-1, false, ""});
  CHECK(ask<nf::ValidateCredentialsReply>(dir, xml_port, nf::ValidateCredentials{creds("alice", "wrong")}) ==
        nf::ValidateCredentialsReply{-1, false, nf::kBadCredentials});

  // The desktops alice may use: exactly the group her directory group entitles (not bob's lab).
  nf::AppData office;
  office.in_name = office.f_name = "office";
  office.groups = {"CORP\\Office"};
  CHECK(ask<nf::AppDataReply>(dir, xml_port, nf::AppDataRequest{"onelevel", {}, "all", "ica30", creds("alice", "wonderland"), "", ""}) ==
        nf::AppDataReply{{office}, ""});
  nf::AppData lab;
  lab.in_name = lab.f_name = "lab";
  lab.users = {"CORP\\bob"};
  CHECK(ask<nf::AppDataReply>(dir, xml_port, nf::AppDataRequest{"onelevel", {}, "all", "ica30", creds("bob", "builder"), "", ""}) ==
        nf::AppDataReply{{lab}, ""});

  // A desktop for alice: the controller's own view shows it in use by her, from her endpoint.
  const auto addr = ask<nf::AddressReply>(dir, xml_port, nf::AddressRequest{"office", {}, creds("alice", "wonderland"), "alice-pc", "127.0.0.1"});
  REQUIRE(addr.error_id == "");
  // The address her desktop's agent registered: the VM's lease on the hypervisor's network (desktop-N is the Nth VM,
  // so it leased 10.30.0.N) and the ICA port.
  CHECK((addr.server_address == "10.30.0.1:1494" || addr.server_address == "10.30.0.2:1494"));
  CHECK(addr.address_type == "dot-port");
  CHECK(addr.ticket_tag.size() == 32);
  auto listed = run_child({bin, "request", "ddc.ddc-1.admin.desktops", R"({"user":"alice"})", file.string()}, 10s);
  REQUIRE(listed.exit_code == 0);
  const auto mine = deskfarm::sdk::from_value<ddc::DesktopList>(deskfarm::sdk::Value::parse_json(listed.out)).desktops;
  REQUIRE(mine.size() == 1);
  CHECK(mine[0].desktop == "desktop-" + addr.server_address.substr(8, 1));
  CHECK(mine[0].address == addr.server_address);
  CHECK(mine[0].group == "office");
  CHECK(mine[0].registration == ddc::kRegistered);
  CHECK(mine[0].session_state == ddc::kActive);
  CHECK(mine[0].user == "alice");
  CHECK(mine[0].endpoint == "alice-pc");
  CHECK(mine[0].controller == "ddc-1");

  // The logon ticket of that launch, and its ICA file naming that desktop's address.
  const auto ticket = ask<nf::TicketReply>(dir, xml_port, nf::TicketRequest{creds("alice", "wonderland"), "CtxLogon", addr.ticket_tag, 120});
  REQUIRE(ticket.error_id == "");
  REQUIRE(ticket.ticket.size() == 30);
  const auto ica = curl({"http://127.0.0.1:" + std::to_string(xml_port) + std::string(nf::kLaunchPath) + "?ticket=" + ticket.ticket});
  CHECK(ica.status == "200");
  CHECK(ica.content_type == nf::kIcaContentType);
  const auto ini = nf::parse_ini(ica.body);
  CHECK(ini.at("WFClient").at("Version") == "2");
  CHECK(ini.at("ApplicationServers").contains("office"));
  const auto& entry = ini.at("office");
  CHECK(entry.at("Address") == addr.server_address);
  CHECK(entry.at("LogonTicket") == ticket.ticket);
  CHECK(entry.at("LogonTicketType") == "CTXS1");
  CHECK(entry.at("InitialProgram") == "#Desktop");
  CHECK(ini.at("WFClient").at("ClientName") == "alice-pc");
  CHECK(entry.at("Title") == "office (" + mine[0].desktop + ")");
  // Single use: the same link again gets nothing.
  CHECK(curl({"http://127.0.0.1:" + std::to_string(xml_port) + std::string(nf::kLaunchPath) + "?ticket=" + ticket.ticket}).status == "404");

  // Bad input: each a clear error answer, counted; nothing corrupted.
  const auto malformed = post(dir, xml_port, "<NFuseProtocol version=\"5.4\"><RequestAddress>");
  CHECK(malformed.status == "200");
  CHECK(malformed.body.find("<ErrorId>unspecified</ErrorId>") != std::string::npos);
  CHECK(malformed.body.find("malformed XML at line 1") != std::string::npos);
  const auto unknown = post(dir, xml_port, "<NFuseProtocol version=\"5.4\"><RequestLaunchRocket/></NFuseProtocol>");
  CHECK(unknown.body.find("<ErrorId>unspecified</ErrorId>") != std::string::npos);
  CHECK(unknown.body.find("unknown request type &lt;RequestLaunchRocket&gt;") != std::string::npos);
  const auto huge = post(dir, xml_port, "<NFuseProtocol version=\"5.4\"><RequestValidateCredentials>" + std::string(200 * 1024, ' ') +
                                            "</RequestValidateCredentials></NFuseProtocol>");
  CHECK(huge.status == "200");
  CHECK(huge.body.find("request body is larger than 65536 bytes") != std::string::npos);
  CHECK(ask<nf::AddressReply>(dir, xml_port, nf::AddressRequest{"office", {}, creds("alice", "letmein"), "", ""}).error_id == nf::kBadCredentials);
  CHECK(curl({"http://127.0.0.1:" + std::to_string(xml_port) + std::string(nf::kLaunchPath) + "?ticket=FORGED"}).status == "404");
  // The next good request works, and alice still holds exactly her one desktop.
  CHECK(ask<nf::ValidateCredentialsReply>(dir, xml_port, nf::ValidateCredentials{creds("alice", "wonderland")}).error_id == "");
  auto again = run_child({bin, "request", "ddc.ddc-1.admin.desktops", R"({"user":"alice"})", file.string()}, 10s);
  CHECK(deskfarm::sdk::from_value<ddc::DesktopList>(deskfarm::sdk::Value::parse_json(again.out)).desktops.size() == 1);

  const std::string series = "deskfarm_ddc_xml_answers_total{instance=\"ddc-1\",result=";
  std::string metrics;
  CHECK(eventually([&] {  // the service's own counts reach the metrics within a second
    metrics = curl({"http://127.0.0.1:" + std::to_string(admin_port) + "/metrics"}).body;
    return metric(metrics, series + "\"protocol_error\"}") == 3;
  }, 10s));
  CHECK(metric(metrics, series + "\"bad_credentials\"}") == 2);
  CHECK(metric(metrics, series + "\"ok\"}") == 6);

  CHECK(run.terminate(15s) == 0);
  const auto log = read_text(dir / "run.log");
  CHECK(log.find("XML service on http://127.0.0.1:" + std::to_string(xml_port)) != std::string::npos);
  CHECK(log.find("XML service: alice gets " + mine[0].desktop + " of office") != std::string::npos);
  CHECK(log.find("wonderland") == std::string::npos);
  CHECK(log.find(" error ") == std::string::npos);
}
