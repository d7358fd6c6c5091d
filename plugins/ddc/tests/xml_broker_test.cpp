// The controller's XML service (its nfuse::Broker), asked through nfuse::XmlClient, in a deployment on the virtual clock, with a directory, a
// simulated XenServer pool and agents: credentials checked by the directory on every request, the groups a user is
// entitled to (by name or by directory group), RequestAddress through the same brokering as admin.broker, the
// ticket tied to that launch and the ICA file with the address the desktop's agent registered; refusals answered with the protocol's ErrorId.
#include <catch2/catch.hpp>

#include <deskfarm/interfaces/ddc/ddc.hpp>
#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/nfuse/client.hpp>
#include <deskfarm/nfuse/ica.hpp>
#include <deskfarm/nfuse/nfuse.hpp>
#include <deskfarm/nfuse/xml_service.hpp>
#include <deskfarm/testing/certs.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "password.hpp"

namespace {

using namespace std::chrono_literals;
namespace ddc = deskfarm::interfaces::ddc;
namespace hv = deskfarm::interfaces::hypervisor;
namespace nf = deskfarm::nfuse;
using deskfarm::sdk::Empty;
using deskfarm::testing::Harness;

// Few iterations keep the tests quick; each hash carries its own count.
const std::string alice_hash = deskfarm::directory::make_hash("wonderland", 1000);
const std::string carol_hash = deskfarm::directory::make_hash("christmas", 1000);
const std::string dave_hash = deskfarm::directory::make_hash("disabled", 1000);

std::string manifest(const std::string& xml_extra = "") {
  return "[deployment]\nname = \"farm\"\nclock = \"virtual\"\nclock_start = 2026-01-05T09:00:00Z\n\n"
         "[instances.hv-1]\nplugin = \"hypervisor-xen\"\nmax_in_progress = 0\n"
         "latencies = [{ action = \"start\", distribution = \"constant\", ms = 2000 }]\n"
         "vms = [{ template = \"desktop\", count = 4, prefix = \"desktop-\" }]\n"
         "networks = [{ name = \"lan\", subnet = \"10.20.0.0/24\" }]\n\n"
         "[instances.ddc-1]\nplugin = \"ddc\"\nfarm_key = \"k\"\nxml_address = \"127.0.0.1:0\"\ndirectory = \"dir\"\n" + xml_extra +
         "groups = [\n"
         "  { name = \"sales\", desktops = [\"desktop-1\", \"desktop-2\"], users = [\"alice\"] },\n"
         "  { name = \"remote\", desktops = [\"desktop-3\"], directory_groups = [\"Remote\"] },\n"
         "  { name = \"eng\", desktops = [\"desktop-4\"], users = [\"bob\"] },\n]\n\n"
         "[instances.vda-1]\nplugin = \"vda\"\ncontrollers = [\"ddc-1\"]\nfarm_key = \"k\"\n\n"
         "[instances.dir]\nplugin = \"directory\"\ndomain = \"CORP\"\nusers = [\n"
         "  { name = \"alice\", password_hash = \"" + alice_hash + "\", groups = [\"Sales\"] },\n"
         "  { name = \"carol\", password_hash = \"" + carol_hash + "\", groups = [\"Remote\"] },\n"
         "  { name = \"dave\", password_hash = \"" + dave_hash + "\", disabled = true },\n]\n";
}

deskfarm::testing::HarnessOptions options() {
  deskfarm::testing::HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR};
  return o;
}

void boot_all(Harness& h) {
  const auto inventory = h.request<Empty, hv::Inventory>("hypervisor.hv-1.inventory", {});
  REQUIRE(inventory);
  for (const auto& vm : inventory->vms) {
    auto t = h.request<hv::VmAction, hv::Task>("hypervisor.hv-1.vm.action", hv::VmAction{"start", vm.id, "", "", "", {}});
    REQUIRE(t);
  }
  h.advance(10s);
}

std::uint16_t xml_port(Harness& h) {
  const auto address = h.instance_status("ddc-1")["xml"]["address"].as_string();
  return static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
}

template <class Reply>
Reply ask(std::uint16_t port, const nf::Request& r) {
  nf::XmlClient client("127.0.0.1", port);
  return client.ask_as<Reply>(r);
}

nf::Credentials creds(const std::string& user, const std::string& password) { return {user, password, "CORP", "NT"}; }

}  // namespace

TEST_CASE("the XML service checks credentials with the directory on every request and counts refusals") {
  Harness h(manifest(), options());
  h.start();
  const auto port = xml_port(h);
  CHECK(ask<nf::ValidateCredentialsReply>(port, nf::ValidateCredentials{creds("alice", "wonderland")}) == nf::ValidateCredentialsReply{-1, false, ""});
  CHECK(ask<nf::ValidateCredentialsReply>(port, nf::ValidateCredentials{creds("alice", "wrong")}).error_id == nf::kBadCredentials);
  CHECK(ask<nf::ValidateCredentialsReply>(port, nf::ValidateCredentials{creds("nobody", "wonderland")}).error_id == nf::kBadCredentials);
  CHECK(ask<nf::ValidateCredentialsReply>(port, nf::ValidateCredentials{creds("dave", "disabled")}).error_id == nf::kAccountDisabled);
  // Every request that carries credentials is checked: a wrong password gets no desktops, no address, no ticket.
  CHECK(ask<nf::AppDataReply>(port, nf::AppDataRequest{"onelevel", {}, "all", "ica30", creds("alice", "wrong"), "", ""}) ==
        nf::AppDataReply{{}, nf::kBadCredentials});
  CHECK(ask<nf::AppDataReply>(port, nf::AppDataRequest{}).error_id == nf::kBadCredentials);  // no credentials at all
  CHECK(ask<nf::AddressReply>(port, nf::AddressRequest{"sales", {}, creds("alice", "wrong"), "", ""}).error_id == nf::kBadCredentials);
  CHECK(ask<nf::TicketReply>(port, nf::TicketRequest{creds("alice", "wrong"), "CtxLogon", "x", 60}).error_id == nf::kBadCredentials);
  const auto metrics = h.metrics_text();
  CHECK(metrics.find("deskfarm_ddc_xml_answers_total{instance=\"ddc-1\",result=\"bad_credentials\"} 6") != std::string::npos);
  CHECK(metrics.find("deskfarm_ddc_xml_answers_total{instance=\"ddc-1\",result=\"account_disabled\"} 1") != std::string::npos);
  CHECK(metrics.find("deskfarm_ddc_xml_answers_total{instance=\"ddc-1\",result=\"ok\"} 1") != std::string::npos);
  CHECK(h.logged("RequestValidateCredentials of alice refused by directory dir (refused)"));
  CHECK_FALSE(h.logged("wonderland"));
}

TEST_CASE("RequestAppData lists exactly the groups a user is entitled to, by name or by directory group") {
  Harness h(manifest(), options());
  h.start();
  const auto port = xml_port(h);
  auto alice = ask<nf::AppDataReply>(port, nf::AppDataRequest{"onelevel", {}, "all", "ica30", creds("alice", "wonderland"), "", ""});
  nf::AppData sales;
  sales.in_name = sales.f_name = "sales";
  sales.users = {"CORP\\alice"};
  CHECK(alice == nf::AppDataReply{{sales}, ""});
  auto carol = ask<nf::AppDataReply>(port, nf::AppDataRequest{"onelevel", {}, "all", "ica30", creds("carol", "christmas"), "", ""});
  nf::AppData remote;
  remote.in_name = remote.f_name = "remote";
  remote.groups = {"CORP\\Remote"};
  CHECK(carol == nf::AppDataReply{{remote}, ""});
  // A group in maintenance mode is listed disabled.
  REQUIRE(h.request<ddc::Maintenance, ddc::Ack>("ddc.ddc-1.admin.maintenance", ddc::Maintenance{"", "remote", true})->ok);
  remote.disabled = true;
  CHECK(ask<nf::AppDataReply>(port, nf::AppDataRequest{"onelevel", {}, "all", "ica30", creds("carol", "christmas"), "", ""}).apps ==
        std::vector<nf::AppData>{remote});
}

TEST_CASE("RequestAddress brokers like admin.broker, and the ticket and the ICA file belong to that launch") {
  Harness h(manifest(), options());
  h.start();
  boot_all(h);
  const auto port = xml_port(h);
  auto addr = ask<nf::AddressReply>(port, nf::AddressRequest{"sales", {}, creds("alice", "wonderland"), "alice-laptop", "127.0.0.1"});
  REQUIRE(addr.error_id == "");
  CHECK(addr.address_type == "dot-port");
  CHECK(addr.ticket_tag.size() == 32);
  auto mine = h.request<ddc::DesktopQuery, ddc::DesktopList>("ddc.ddc-1.admin.desktops", ddc::DesktopQuery{"", "alice"})->desktops;
  REQUIRE(mine.size() == 1);
  // The address her desktop's agent registered: its VM's lease (desktop-N is the Nth VM) and the ICA port.
  CHECK(addr.server_address == "10.20.0." + mine[0].desktop.substr(mine[0].desktop.rfind('-') + 1) + ":1494");
  CHECK(mine[0].address == addr.server_address);
  CHECK(mine[0].group == "sales");
  CHECK(mine[0].session_state == ddc::kActive);
  CHECK(mine[0].endpoint == "alice-laptop");

  // Not entitled to eng, no such group, and carol entitled through her directory group only.
  CHECK(ask<nf::AddressReply>(port, nf::AddressRequest{"eng", {}, creds("alice", "wonderland"), "", ""}).error_id == nf::kAppRemoved);
  CHECK(ask<nf::AddressReply>(port, nf::AddressRequest{"nope", {}, creds("alice", "wonderland"), "", ""}).error_id == nf::kAppRemoved);
  auto carol = ask<nf::AddressReply>(port, nf::AddressRequest{"remote", {}, creds("carol", "christmas"), "", ""});
  CHECK(carol.server_address == "10.20.0.3:1494");
  // admin.broker takes the same path, directory groups included (asked with groups-of).
  auto d = h.request<ddc::BrokerRequest, ddc::BrokerDecision>("ddc.ddc-1.admin.broker", ddc::BrokerRequest{"carol", "other", "remote"});
  REQUIRE(d);
  CHECK(d->outcome == "connect");  // carol's own active session roams (rule always)
  CHECK(d->desktop == "desktop-3");

  // The ticket is tied to the launch: only its user gets it, an unknown tag gets none.
  CHECK(ask<nf::TicketReply>(port, nf::TicketRequest{creds("carol", "christmas"), "CtxLogon", addr.ticket_tag, 60}).error_id == nf::kUnspecified);
  CHECK(ask<nf::TicketReply>(port, nf::TicketRequest{creds("alice", "wonderland"), "CtxLogon", "0000", 60}).error_id == nf::kUnspecified);
  auto ticket = ask<nf::TicketReply>(port, nf::TicketRequest{creds("alice", "wonderland"), "CtxLogon", addr.ticket_tag, 60});
  REQUIRE(ticket.error_id == "");
  CHECK(ticket.ticket.size() == 30);

  nf::XmlClient client("127.0.0.1", port);
  const auto ica = client.launch(ticket.ticket);
  CHECK(ica.status == 200);
  CHECK(ica.content_type == nf::kIcaContentType);
  const auto ini = nf::parse_ini(ica.body);
  CHECK(ini.at("ApplicationServers").contains("sales"));
  CHECK(ini.at("sales").at("Address") == addr.server_address);
  CHECK(ini.at("sales").at("LogonTicket") == ticket.ticket);
  CHECK(ini.at("WFClient").at("ClientName") == "alice-laptop");
  CHECK(client.launch("ABC").status == 404);
  // Single use: the tag gave its ticket, the ticket its launch file; replays get nothing.
  CHECK(ask<nf::TicketReply>(port, nf::TicketRequest{creds("alice", "wonderland"), "CtxLogon", addr.ticket_tag, 60}).error_id == nf::kUnspecified);
  CHECK(client.launch(ticket.ticket).status == 404);

  // A ticket lives TimetoLive seconds (deployment clock).
  const auto again = ask<nf::AddressReply>(port, nf::AddressRequest{"sales", {}, creds("alice", "wonderland"), "alice-laptop", "127.0.0.1"});
  REQUIRE(again.error_id == "");
  CHECK(again.server_address == addr.server_address);  // her own session again
  auto late = ask<nf::TicketReply>(port, nf::TicketRequest{creds("alice", "wonderland"), "CtxLogon", again.ticket_tag, 60});
  REQUIRE(late.error_id == "");
  h.advance(61s);
  CHECK(client.launch(late.ticket).status == 404);
}

TEST_CASE("an XML service without a directory, or at no HOST:PORT, is refused naming the key") {
  auto error = [](const std::string& extra) -> std::string {
    try {
      Harness h("[instances.ddc-1]\nplugin = \"ddc\"\n" + extra, options());
      h.start();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  };
  CHECK_THAT(error("xml_address = \"127.0.0.1:0\"\n"), Catch::Contains("xml_address is set but directory is not"));
  CHECK_THAT(error("xml_address = \"8080\"\ndirectory = \"dir\"\n"), Catch::Contains("xml_address '8080' is not HOST:PORT"));
}

TEST_CASE("with xml_tls_certificate and xml_tls_key the XML service answers over HTTPS, checked by curl") {
  if (!deskfarm::testing::require_program("curl") || !deskfarm::testing::require_program("openssl")) return;
  deskfarm::testing::TempDir dir("ddc-xml-tls");
  const auto ca = dir / "ca-cert.pem";
  REQUIRE(deskfarm::testing::make_test_certificates(dir.path(), ca).empty());
  Harness h(manifest("xml_tls_certificate = \"" + (dir / "server-cert.pem").string() + "\"\nxml_tls_key = \"" +
                     (dir / "server-key.pem").string() + "\"\n"),
            options());
  h.start();
  CHECK(h.logged("XML service on https://127.0.0.1:"));
  deskfarm::testing::write_text(dir / "apps.xml", nf::write_request({"5.4", nf::AppDataRequest{"onelevel", {}, "all", "ica30", creds("alice", "wonderland"), "", ""}}));
  const auto r = deskfarm::testing::run_child({"curl", "-sS", "--max-time", "10", "--cacert", ca.string(), "-H", "Content-Type: text/xml",
                                               "--data-binary", "@" + (dir / "apps.xml").string(),
                                               "https://127.0.0.1:" + std::to_string(xml_port(h)) + std::string(nf::kPath)},
                                              20s);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto apps = std::get<nf::AppDataReply>(nf::parse_reply(r.out));
  REQUIRE(apps.apps.size() == 1);
  CHECK(apps.apps[0].in_name == "sales");
}
