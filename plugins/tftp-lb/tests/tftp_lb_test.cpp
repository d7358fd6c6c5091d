// tftp-lb against real clients and backends: tftp-hpa, curl and atftp through the virtual server; the pvs TFTP
// service and tftpd-hpa behind it; monitors, drain, failover, bad input, the bounded session table, DHCP text.
#include <atomic>
#include <thread>

#include "tftp_lb_lab.hpp"

#include <deskfarm/testing/conformance_catch.hpp>

using namespace tftp_lb_test;
using dt::require_program;

namespace {
const std::string fast_udp_ecv =
    "method = \"round_robin\"\nmonitor = \"udp-ecv\"\ninterval_ms = 200\nresponse_timeout_ms = 150\nretries = 3\n"
    "downtime_ms = 500\n";

std::string sha_of(const std::filesystem::path& p) { return dt::sha256_file(p); }
}  // namespace

TEST_CASE("tftp-hpa, curl and atftp fetch through the virtual server from the pvs TFTP service and tftpd-hpa") {
  if (!require_program("tftp") || !require_program("curl") || !require_program("atftp") ||
      !require_program("in.tftpd"))
    return;
  Lab lab(TFTP_LB_ENGINE_OR_TC_BPF());
  lab.start_hpa();
  lab.start(fast_udp_ecv);
  REQUIRE(lab.all_in({"pvs-1", "hpa"}, api::kUp));
  const auto want = sha_of(lab.root() / "big.bin");
  const auto port = std::to_string(lab.vip_port());
  int n = 0;
  for (int round = 0; round < 2; ++round) {
    const auto out = [&] { return (lab.dir.path() / ("out" + std::to_string(++n))).string(); };
    const auto a = out();
    auto r = dt::run_child({"tftp", "-m", "binary", vip_host, port, "-c", "get", "big.bin", a}, 60s);
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(sha_of(a) == want);
    const auto b = out();
    r = dt::run_child({"curl", "-sS", "-o", b, "tftp://" + std::string(vip_host) + ":" + port + "/big.bin"}, 60s);
    REQUIRE(r.exit_code == 0);
    CHECK(sha_of(b) == want);
    const auto c = out();
    r = dt::run_child({"atftp", "-g", "-r", "big.bin", "-l", c, vip_host, port}, 60s);
    REQUIRE(r.exit_code == 0);
    CHECK(sha_of(c) == want);
  }
  // Round robin over two equal backends: three transfers each.
  std::this_thread::sleep_for(100ms);  // the relay's counters are published every 20 ms
  CHECK(lab.backend("pvs-1").sessions_total == 3);
  CHECK(lab.backend("hpa").sessions_total == 3);
  CHECK(lab.backend("pvs-1").source == "discovery");
  CHECK(lab.backend("hpa").source == "manifest");
  CHECK(lab.relay("malformed_client") == 0);
  CHECK(lab.relay("wrong_tid") == 0);
}

TEST_CASE("the client sees only the virtual server, and a wrong port gets ERROR 5, strangers and junk are dropped and counted") {
  if (!require_program("in.tftpd")) return;
  Lab lab(TFTP_LB_ENGINE_OR_TC_BPF());
  lab.start_hpa();
  lab.start("monitor = \"none\"\ndiscover = false\n");
  REQUIRE(lab.all_in({"hpa"}, api::kUp));
  const auto vip = lab.vip_port();
  Udp client;
  client.send_to(vip_host, vip, rrq("boot.bin"));
  auto first = client.receive(5s);
  REQUIRE(first);
  CHECK(first->host == vip_host);  // never the backend's 127.0.0.1
  const auto tid = first->port;
  CHECK(tid != vip);
  CHECK(tid != lab.hpa_port);

  // Another port of the client's own address: ERROR 5, and the transfer goes on.
  Udp other;
  other.send_to(vip_host, tid, ack(1));
  auto e5 = other.receive(2s);
  REQUIRE(e5);
  const auto parsed = tftp::parse_packet(e5->bytes);
  const auto* error = std::get_if<tftp::Error>(&std::get<tftp::Packet>(parsed));
  REQUIRE(error);
  CHECK(error->code == tftp::ErrorCode::unknown_tid);
  // Another address: no answer at all.
  Udp stranger("127.0.0.3");
  stranger.send_to(vip_host, tid, ack(1));
  CHECK_FALSE(stranger.receive(300ms));
  // Junk from the client itself, to its session and to the virtual server: dropped.
  client.send_to(vip_host, tid, {std::byte{0}, std::byte{9}});
  client.send_to(vip_host, vip, {std::byte{0xff}});
  client.send_to(vip_host, vip, ack(7));  // not a request, no session: no reflection

  // The transfer completes: six blocks, all from the same VIP port.
  std::vector<std::byte> data;
  auto packet = first;
  for (int i = 0; i < 20 && packet; ++i) {
    REQUIRE(packet->host == vip_host);
    REQUIRE(packet->port == tid);
    const auto p = tftp::parse_packet(packet->bytes);
    const auto* d = std::get_if<tftp::Data>(&std::get<tftp::Packet>(p));
    REQUIRE(d);
    data.insert(data.end(), d->payload.begin(), d->payload.end());
    client.send_to(vip_host, tid, ack(d->block));
    if (d->payload.size() < 512) break;
    packet = client.receive(5s);
  }
  CHECK(data == dt::pattern(boot_size, 11));
  CHECK(dt::eventually([&] { return lab.relay("sessions_finished") == 1; }, 5s));
  CHECK(lab.relay("wrong_tid") == 1);
  CHECK(lab.relay("foreign_dropped") == 1);
  CHECK(lab.relay("malformed_client") == 2);
  CHECK(lab.relay("not_a_request") == 1);
  // The finished session lingers briefly for a lost final ACK, then leaves the table.
  CHECK(dt::eventually([&] { return lab.relay("sessions_active") == 0; }, 5s));
}

TEST_CASE("UEFI's tsize probe, its abort and the download from the same port are two sessions on the same backend") {
  if (!require_program("in.tftpd")) return;
  Lab lab(TFTP_LB_ENGINE_OR_TC_BPF());
  lab.start_hpa();
  lab.start("method = \"source_ip\"\nmonitor = \"udp-ecv\"\ninterval_ms = 500\nresponse_timeout_ms = 400\n");
  REQUIRE(lab.all_in({"pvs-1", "hpa"}, api::kUp));
  const auto vip = lab.vip_port();
  std::int64_t pvs_before = 0, hpa_before = 0;
  for (const char* host : {"127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"}) {
    INFO("client " << host);
    Udp client(host);
    std::vector<std::byte> probe;
    tftp::encode_request(probe, tftp::Request{tftp::Opcode::rrq, "boot.bin", "octet", {{"tsize", "0"}}});
    client.send_to(vip_host, vip, probe);
    const auto oack = client.receive(5s);
    REQUIRE(oack);
    CHECK(std::holds_alternative<tftp::Oack>(std::get<tftp::Packet>(tftp::parse_packet(oack->bytes))));
    std::vector<std::byte> abort;
    tftp::encode_error(abort, tftp::ErrorCode::option_refused, "tsize probe only");
    client.send_to(vip_host, oack->port, abort);
    // The download, from the same port: a new session, with a new transfer port.
    client.send_to(vip_host, vip, rrq("boot.bin"));
    std::size_t got = 0;
    std::optional<std::uint16_t> tid;
    for (int i = 0; i < 20; ++i) {
      const auto packet = client.receive(5s);
      REQUIRE(packet);
      if (!tid) tid = packet->port;
      CHECK(packet->port != oack->port);
      const auto parsed = tftp::parse_packet(packet->bytes);
      const auto* d = std::get_if<tftp::Data>(&std::get<tftp::Packet>(parsed));
      REQUIRE(d);
      got += d->payload.size();
      client.send_to(vip_host, *tid, ack(d->block));
      if (d->payload.size() < 512) break;
    }
    CHECK(got == boot_size);
    // Both sessions of this client went to one backend.
    std::int64_t pvs = 0, hpa = 0;
    REQUIRE(dt::eventually([&] {
      pvs = lab.backend("pvs-1").sessions_total - pvs_before;
      hpa = lab.backend("hpa").sessions_total - hpa_before;
      return pvs + hpa == 2;
    }, 5s));
    CHECK((pvs == 2 || hpa == 2));
    pvs_before += pvs;
    hpa_before += hpa;
  }
  CHECK(dt::eventually([&] { return lab.relay("sessions_finished") == 8; }, 5s));
}

TEST_CASE("the session table is bounded: a new session evicts the oldest idle one and is counted") {
  if (!require_program("in.tftpd")) return;
  Lab lab(TFTP_LB_ENGINE());
  lab.start_hpa();
  lab.start("monitor = \"none\"\ndiscover = false\nmax_sessions = 2\n");
  REQUIRE(lab.all_in({"hpa"}, api::kUp));
  const auto vip = lab.vip_port();
  Udp a, b, c;
  a.send_to(vip_host, vip, rrq("big.bin"));
  REQUIRE(a.receive(5s));
  b.send_to(vip_host, vip, rrq("big.bin"));
  REQUIRE(b.receive(5s));
  c.send_to(vip_host, vip, rrq("big.bin"));
  REQUIRE(c.receive(5s));
  CHECK(dt::eventually([&] { return lab.relay("sessions_evicted") == 1; }, 5s));
  CHECK(lab.relay("sessions_active") == 2);
  CHECK(lab.h->logged("session table full (2): evicted the oldest idle session"));
}

TEST_CASE("udp-ecv marks a closed port DOWN on ICMP port-unreachable, and the tftp monitor checks size and SHA-256") {
  if (!require_program("in.tftpd")) return;
  Lab lab;
  lab.start_hpa();
  const auto closed = free_udp_port();
  const auto sha = dt::sha256_file(lab.root() / "boot.bin");
  SECTION("udp-ecv") {
    lab.start(fast_udp_ecv + "backends = [ { name = \"hpa\", address = \"127.0.0.1:" + std::to_string(lab.hpa_port) +
              "\" }, { name = \"dead\", address = \"127.0.0.1:" + std::to_string(closed) + "\" } ]\n");
    REQUIRE(lab.all_in({"hpa", "pvs-1"}, api::kUp));
    CHECK(dt::eventually([&] { return lab.backend("dead").reason.find("ICMP port unreachable") != std::string::npos; }, 5s));
    CHECK(lab.backend("dead").state == api::kDown);
  }
  SECTION("tftp, size and SHA-256 right") {
    lab.start("monitor = \"tftp\"\ninterval_ms = 300\nresponse_timeout_ms = 250\nexpect_size = " +
              std::to_string(boot_size) + "\nexpect_sha256 = \"" + sha + "\"\n");
    REQUIRE(lab.all_in({"hpa", "pvs-1"}, api::kUp));
    CHECK(lab.backend("hpa").reason.find("SHA-256 matches") != std::string::npos);
  }
  SECTION("tftp, size wrong") {
    lab.start("monitor = \"tftp\"\ninterval_ms = 300\nresponse_timeout_ms = 250\nexpect_size = " +
              std::to_string(boot_size + 1) + "\n");
    CHECK(dt::eventually([&] { return lab.backend("hpa").reason.find("size 3000 != 3001") != std::string::npos; }, 5s));
    CHECK(lab.backend("hpa").state == api::kDown);
  }
}

TEST_CASE("a drained backend gets no new sessions, its state is published, and it comes back when undrained") {
  if (!require_program("in.tftpd")) return;
  Lab lab(TFTP_LB_ENGINE());
  lab.start_hpa();
  lab.start(fast_udp_ecv);
  REQUIRE(lab.all_in({"pvs-1", "hpa"}, api::kUp));
  auto health = lab.h->probe(api::health_subject("lb", "pvs-1"));
  auto drained = lab.h->request<api::Drain, api::BackendList>(api::admin_subject("lb", "backend.drain"), api::Drain{"pvs-1", true}, 10s);
  REQUIRE(drained);
  const auto msg = health.await(5s);
  REQUIRE(msg);
  const auto h = sdk::body_of<api::BackendHealth>(*msg);
  REQUIRE(h);
  CHECK(h->state == api::kDraining);
  CHECK(h->previous == api::kUp);
  CHECK(h->monitor == "operator");
  const auto before = lab.backend("pvs-1").sessions_total;
  for (int i = 0; i < 6; ++i) CHECK(lab.fetch("boot.bin").size() == boot_size);
  std::this_thread::sleep_for(100ms);  // the relay's counters are published every 20 ms
  CHECK(lab.backend("pvs-1").sessions_total == before);
  CHECK(lab.backend("pvs-1").state == api::kDraining);
  REQUIRE(lab.h->request<api::Drain, api::BackendList>(api::admin_subject("lb", "backend.drain"), api::Drain{"pvs-1", false}, 10s));
  CHECK(lab.backend("pvs-1").state == api::kUp);
  for (int i = 0; i < 4; ++i) CHECK(lab.fetch("boot.bin").size() == boot_size);
  CHECK(dt::eventually([&] { return lab.backend("pvs-1").sessions_total > before; }, 2s));
  // An unknown name is refused with the names there are.
  auto unknown = lab.h->request<api::Drain, api::BackendList>(api::admin_subject("lb", "backend.drain"), api::Drain{"nope", true}, 10s);
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().message.find("no backend 'nope' (backends: hpa, pvs-1)") != std::string::npos);
}

TEST_CASE("failover drill: clients fetch in a loop, a backend dies, is DOWN within interval*retries+timeout, gets nothing, and is UP after restart") {
  if (!require_program("in.tftpd")) return;
  // Health and failover are the monitors' and the session table's, the same for both relay engines (each engine's
  // relaying is tested above); run once, on the engine the machine picks, since the drill's timing is load-bound.
  Lab lab;
  lab.start_hpa();
  // A probe timeout that 32 looping clients on two shared cores cannot reach by load alone.
  const int interval = 1000, timeout = 800, retries = 3;
  lab.start("method = \"round_robin\"\nmonitor = \"udp-ecv\"\ninterval_ms = " + std::to_string(interval) +
            "\nresponse_timeout_ms = " + std::to_string(timeout) + "\nretries = " + std::to_string(retries) +
            "\ndowntime_ms = 2000\n");
  REQUIRE(lab.all_in({"pvs-1", "hpa"}, api::kUp));
  const auto vip = lab.vip_port();
  auto health = lab.h->probe(api::health_subject("lb", "hpa"));

  // 32 clients loop on the bootstrap; a failed transfer is retried once, as PXE firmware does.
  std::atomic<bool> run{true};
  std::atomic<int> ok{0}, retried{0}, failed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 32; ++c)
    clients.emplace_back([&] {
      tftp::ClientOptions o;
      o.deadline = 3s;
      o.retransmit = 300ms;
      for (int i = 0; i < 100000 && run; ++i) {
        bool done = false;
        for (int attempt = 0; attempt < 2 && !done; ++attempt) {
          try {
            done = tftp::Client(o).get(vip_host, vip, "boot.bin").data.size() == boot_size;
          } catch (const std::exception&) {
          }
          if (!done && attempt == 0) ++retried;
        }
        ++(done ? ok : failed);
      }
    });
  struct Join {
    std::atomic<bool>& run;
    std::vector<std::thread>& threads;
    ~Join() {
      run = false;
      for (auto& t : threads) t.join();
    }
  } join{run, clients};

  REQUIRE(dt::eventually([&] { return ok.load() > 200; }, 30s));
  for (const auto& m : health.received()) {
    const auto b = sdk::body_of<api::BackendHealth>(m);
    INFO("before the kill: " << b->state << " " << b->reason);
    CHECK(b->state != api::kDown);  // the load alone does not fail the monitor
  }
  const auto killed = std::chrono::steady_clock::now();
  lab.stop_hpa();
  std::optional<sdk::Message> down;
  for (int i = 0; i < 10 && !down; ++i) {
    auto m = health.await(5s);
    if (!m) break;
    if (const auto b = sdk::body_of<api::BackendHealth>(*m); b && b->state == api::kDown) down = m;
  }
  REQUIRE(down);
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed);
  const auto body = sdk::body_of<api::BackendHealth>(*down);
  INFO("relay " << lab.status().find("relay")->to_json());
  INFO("DOWN after " << took.count() << " ms: " << body->reason);
  CHECK(body->reason.find("ICMP port unreachable") != std::string::npos);
  // interval*retries + timeout, plus 500 ms for scheduling on a loaded machine (the bus and the blocking pool).
  CHECK(took.count() <= interval * retries + timeout + 500);

  std::this_thread::sleep_for(100ms);  // the relay's counters are published every 20 ms
  const auto frozen = lab.backend("hpa").sessions_total;
  const auto ok_then = ok.load();
  REQUIRE(dt::eventually([&] { return ok.load() > ok_then + 200; }, 30s));
  CHECK(lab.backend("hpa").sessions_total == frozen);  // no new session went to it
  CHECK(failed.load() == 0);                            // only transfers in flight failed, and their retry worked

  lab.start_hpa();
  std::optional<sdk::Message> up;
  for (int i = 0; i < 10 && !up; ++i) {
    auto m = health.await(5s);
    if (!m) break;
    if (const auto b = sdk::body_of<api::BackendHealth>(*m); b && b->state == api::kUp) up = m;
  }
  REQUIRE(up);
  const auto ok_up = ok.load();
  REQUIRE(dt::eventually([&] { return ok.load() > ok_up + 100; }, 30s));
  CHECK(lab.backend("hpa").sessions_total > frozen);
  CHECK(lab.h->logged("backend hpa 127.0.0.1:" + std::to_string(lab.hpa_port) + ": UP -> DOWN (udp-ecv: ICMP port unreachable"));
  CHECK(lab.h->logged("backend hpa 127.0.0.1:" + std::to_string(lab.hpa_port) + ": DOWN -> UP (udp-ecv: "));
}

TEST_CASE("the dhcp request prints option 66/67 for ISC dhcpd, Kea and dnsmasq, and an unknown format is refused") {
  Lab lab;
  lab.start("monitor = \"none\"\ndiscover = false\nbackends = []\nboot_file = \"ARDBP32.BIN\"\n");
  auto kea = lab.h->request<api::DhcpRequest, api::DhcpConfig>(api::admin_subject("lb", "dhcp.config"), api::DhcpRequest{"kea"}, 10s);
  REQUIRE(kea);
  CHECK(kea->next_server == vip_host);
  CHECK(kea->boot_file == "ARDBP32.BIN");
  CHECK(kea->text.find("\"code\": 66, \"data\": \"127.0.0.2\"") != std::string::npos);
  // What `deskfarm request tftp-lb.lb.admin.dhcp.config '{"format": "dnsmasq"}'` sends.
  const auto dnsmasq = lab.h->json_request(api::admin_subject("lb", "dhcp.config"), R"({"format": "dnsmasq"})", 10s);
  REQUIRE(dnsmasq.ok);
  CHECK(dnsmasq.body.find("dhcp-option=67,\\\"ARDBP32.BIN\\\"") != std::string::npos);
  const auto bad = lab.h->json_request(api::admin_subject("lb", "dhcp.config"), R"({"format": "windows"})", 10s);
  CHECK_FALSE(bad.ok);
  CHECK(bad.body.find("is not one of isc, kea, dnsmasq") != std::string::npos);
}

TEST_CASE("malformed balancer settings are refused at their key") {
  Lab lab;
  CHECK(lab.check_error("vip = \"0.0.0.0:69\"\n").find("0.0.0.0 is not a virtual server") != std::string::npos);
  CHECK(lab.check_error("interval_ms = 1000\nresponse_timeout_ms = 1000\n").find("must be below interval_ms") !=
        std::string::npos);
  CHECK(lab.check_error("send_hex = \"0x01\"\n").find("'x' at offset 1 is not a hex digit") != std::string::npos);
  CHECK(lab.check_error("expect_sha256 = \"abc\"\n").find("64 lower-case hex digits") != std::string::npos);
  CHECK(lab.check_error("method = \"random\"\n").find("method") != std::string::npos);
  const auto relay = lab.check_error("relay = \"select\"\n");
  INFO(relay);
  CHECK(relay.find("relay") != std::string::npos);
  CHECK(relay.find("io_uring") != std::string::npos);  // the error lists the engines there are
  const auto spin = lab.check_error("busy_poll_us = 5000\n");  // a window that long is a core given away
  INFO(spin);
  CHECK(spin.find("busy_poll_us") != std::string::npos);
  const auto twice = lab.check_error("backends = [ { name = \"a\", address = \"127.0.0.1:69\" }, { name = \"a\" } ]\n");
  CHECK(twice.find("backend 'a' is listed twice") != std::string::npos);
}

namespace {
deskfarm::testing::conformance::Subject conformance_subject() {
  deskfarm::testing::conformance::Subject s;
  s.plugin = "tftp-lb";
  s.instance = "lb-1";
  s.manifest_toml = "[instances.lb-1]\nplugin = \"tftp-lb\"\nvip = \"127.0.0.2:0\"\nmonitor = \"none\"\n";
  s.options.plugin_path = {PLUGIN_DIR};
  return s;
}
}  // namespace

DESKFARM_CONFORMANCE_SUITE("tftp-lb", conformance_subject)

TEST_CASE("nginx's UDP stream proxy in front of tftpd-hpa completes no transfer, and tftp-lb in front of the same one does") {
  // scripts/setup.sh unpacks nginx and its stream module into /tmp/nginx (an installed package would start a web server).
  const std::filesystem::path nginx = "/tmp/nginx/usr/sbin/nginx";
  const std::filesystem::path stream = "/tmp/nginx/usr/lib/nginx/modules/ngx_stream_module.so";
  if (!std::filesystem::exists(nginx) || !std::filesystem::exists(stream)) {
    dt::missing("nginx with its stream module (" + stream.string() + "; scripts/setup.sh unpacks both)");
    return;
  }
  if (!require_program("in.tftpd")) return;
  Lab lab(TFTP_LB_ENGINE());
  lab.start_hpa();
  lab.start("monitor = \"none\"\ndiscover = false\n");
  REQUIRE(lab.all_in({"hpa"}, api::kUp));

  const auto port = free_udp_port();
  const auto conf = lab.dir.path() / "nginx.conf";
  dt::write_text(conf, "load_module " + stream.string() + ";\ndaemon off;\nmaster_process off;\npid " +
                           (lab.dir.path() / "nginx.pid").string() + ";\nerror_log " +
                           (lab.dir.path() / "nginx.log").string() + " info;\nevents { worker_connections 64; }\n"
                           "stream {\n  server {\n    listen 127.0.0.1:" + std::to_string(port) +
                           " udp;\n    proxy_pass 127.0.0.1:" + std::to_string(lab.hpa_port) +
                           ";\n    proxy_timeout 5s;\n  }\n}\n");
  dt::ChildProcess proxy({nginx.string(), "-p", lab.dir.path().string(), "-e", (lab.dir.path() / "nginx.log").string(),
                          "-c", conf.string()},
                         lab.dir.path() / "nginx.out");
  const auto log = [&] {
    const auto path = lab.dir.path() / "nginx.log";
    return std::filesystem::exists(path) ? dt::read_text(path) : std::string();
  };
  // Its listening sockets are open once the event loop is set up (logged at notice level).
  REQUIRE(dt::eventually([&] { return log().find("using the \"epoll\" event method") != std::string::npos; }, 10s));
  tftp::ClientOptions o;
  o.deadline = 3s;
  bool through_nginx = false;
  std::string why;
  try {
    through_nginx = tftp::Client(o).get("127.0.0.1", port, "boot.bin").data.size() == boot_size;
  } catch (const std::exception& e) {
    why = e.what();
  }
  INFO("through nginx: " << why << "; nginx log: " << log());
  // nginx did pass the request on to tftpd-hpa, whose reply then came from a new port: nginx's upstream socket
  // is connected to port 69's equivalent, so the kernel dropped the reply and the client heard nothing.
  CHECK(log().find("connected to 127.0.0.1:" + std::to_string(lab.hpa_port)) != std::string::npos);
  CHECK_FALSE(through_nginx);
  CHECK(lab.fetch("boot.bin").size() == boot_size);
}
