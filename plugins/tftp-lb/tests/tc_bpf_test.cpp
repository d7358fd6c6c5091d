// The tc-bpf engine (README "tc-bpf"): real clients through the virtual server while the established sessions are
// relayed by the BPF program on loopback; the map's counters, the idle timeout and the filter's removal, seen
// from outside (status, `tc filter show`). Needs root and BPF: elsewhere each test says why it skipped (CI may
// lack BPF, so even under CI=true this is a skip, never a silent pass).
#include <csignal>

#include "tftp_lb_lab.hpp"

using namespace tftp_lb_test;
using dt::require_program;

namespace {

/// False, with the skip marker and the reason printed, when the tc-bpf engine cannot attach here.
bool require_tc_bpf() {
  if (const auto& why = tc_bpf_unavailable()) {
    WARN(dt::skip_marker << ": the tc-bpf engine cannot attach on this machine: " << *why);
    return false;
  }
  return true;
}

/// Our filter as `tc` lists it: a line with "pref N" and the program's name.
bool filter_listed(std::uint32_t priority) {
  const auto r = dt::run_child({"tc", "filter", "show", "dev", "lo", "ingress"}, std::chrono::seconds(10));
  const std::string pref = "pref " + std::to_string(priority) + " ";
  std::size_t at = 0;
  for (int lines = 0; lines < 100000 && (at = r.out.find(pref, at)) != std::string::npos; ++lines, ++at) {
    const auto end = r.out.find('\n', at);
    if (r.out.substr(at, end - at).find("tftp_lb_ingress") != std::string::npos) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("tc-bpf: tftp and curl fetch byte-identical files, the kernel completes and relays the sessions from the backend's first reply on, and stopping removes the filter") {
  if (!require_tc_bpf() || !require_program("tftp") || !require_program("curl") || !require_program("in.tftpd") ||
      !require_program("tc"))
    return;
  Lab lab("tc-bpf");  // start() checks that tc-bpf, not a fallback, carries the test
  lab.start_hpa();
  lab.start("monitor = \"none\"\ndiscover = false\n");
  REQUIRE(lab.all_in({"hpa"}, api::kUp));
  const auto priority = static_cast<std::uint32_t>(lab.relay("tc_priority"));
  CHECK(filter_listed(priority));
  const auto want = dt::sha256_file(lab.root() / "big.bin");
  const auto port = std::to_string(lab.vip_port());
  const auto a = (lab.dir.path() / "a").string();
  auto r = dt::run_child({"tftp", "-m", "binary", vip_host, port, "-c", "get", "big.bin", a}, std::chrono::seconds(60));
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(dt::sha256_file(a) == want);
  const auto b = (lab.dir.path() / "b").string();
  // curl asks for options: tftpd-hpa's first reply is an OACK (blksize 1468), which the program reads; tftp asks
  // none, and the first reply is DATA 1.
  r = dt::run_child({"curl", "-sS", "--tftp-blksize", "1468", "-o", b,
                     "tftp://" + std::string(vip_host) + ":" + port + "/big.bin"},
                    std::chrono::seconds(60));
  REQUIRE(r.exit_code == 0);
  CHECK(dt::sha256_file(b) == want);

  // Both transfers ended (the program saw the final ACK) and their entries left the map after the linger.
  REQUIRE(dt::eventually([&] { return lab.relay("sessions_finished") == 2 && lab.relay("kernel_entries") == 0; }, 10s));
  CHECK(lab.relay("kernel_sessions") == 2);
  CHECK(lab.relay("kernel_first_replies") == 2);  // both completed by the program: it learnt the transfer IDs
  // 1 MiB in blocks of 512 (tftp) and 1,468 (curl): 2,049 and 715 DATA.
  const auto to_client = lab.relay("packets_to_client");
  const auto in_kernel = lab.relay("kernel_packets_to_client");
  INFO("to the client " << to_client << ", of them in the kernel " << in_kernel);
  CHECK(in_kernel > 0);
  // ...and user space relayed nothing to the clients (the program relayed even the first replies), and to the
  // backend only the two requests: no datagram of either transfer reached the balancer's session sockets.
  CHECK(to_client == in_kernel);
  CHECK(to_client >= 2049 + 715);
  CHECK(lab.relay("packets_to_backend") - lab.relay("kernel_packets_to_backend") == 2);
  CHECK(lab.relay("bytes_to_client") >= static_cast<std::int64_t>(2 * big_size));
  CHECK(lab.relay("wrong_tid") == 0);
  CHECK(lab.relay("kernel_install_errors") == 0);
  CHECK(lab.relay("kernel_orphans_deleted") == 0);

  lab.h.reset();  // stops the deployment: the plugin detaches its filter
  CHECK_FALSE(filter_listed(priority));
}

TEST_CASE("tc-bpf: a session idle past its timeout leaves the BPF map, and a wrong port still gets ERROR 5 from user space") {
  if (!require_tc_bpf() || !require_program("in.tftpd")) return;
  Lab lab("tc-bpf");
  lab.start_hpa();
  lab.start("monitor = \"none\"\ndiscover = false\nidle_timeout_s = 1\n");
  REQUIRE(lab.all_in({"hpa"}, api::kUp));
  Udp client;
  client.send_to(vip_host, lab.vip_port(), rrq("big.bin"));
  const auto first = client.receive(5s);
  REQUIRE(first);
  CHECK(first->host == vip_host);
  const auto tid = first->port;
  // Blocks 2..5 come through the kernel, still from the virtual server's session port.
  for (std::uint16_t block = 1; block <= 4; ++block) {
    client.send_to(vip_host, tid, ack(block));
    const auto next = client.receive(5s);
    REQUIRE(next);
    CHECK(next->host == vip_host);
    CHECK(next->port == tid);
    const auto p = tftp::parse_packet(next->bytes);
    const auto* d = std::get_if<tftp::Data>(&std::get<tftp::Packet>(p));
    REQUIRE(d);
    CHECK(d->block == block + 1);
  }
  REQUIRE(dt::eventually([&] { return lab.relay("kernel_entries") == 2; }, 5s));
  CHECK(dt::eventually([&] { return lab.relay("kernel_packets_to_client") >= 4; }, 5s));
  CHECK(lab.relay("kernel_packets_to_backend") >= 4);

  // A port the program does not know passes untouched: user space answers ERROR 5 and counts it.
  Udp other;
  other.send_to(vip_host, tid, ack(5));
  const auto e5 = other.receive(2s);
  REQUIRE(e5);
  const auto parsed = tftp::parse_packet(e5->bytes);
  const auto* error = std::get_if<tftp::Error>(&std::get<tftp::Packet>(parsed));
  REQUIRE(error);
  CHECK(error->code == tftp::ErrorCode::unknown_tid);
  CHECK(dt::eventually([&] { return lab.relay("wrong_tid") == 1; }, 2s));

  // The client goes silent: past idle_timeout_s the session is closed and its entries leave the map.
  CHECK(dt::eventually([&] { return lab.relay("sessions_idle_closed") == 1; }, 5s));
  CHECK(dt::eventually([&] { return lab.relay("kernel_entries") == 0; }, 2s));
  CHECK(lab.relay("sessions_active") == 0);
}

TEST_CASE("tc-bpf: two balancers on loopback at once each relay their own sessions in the kernel (a filter passes on what it does not know)") {
  // Each balancer's filter hangs on loopback's one clsact; the one with the lower priority sees every datagram
  // first and must let the other's go on (TC_ACT_UNSPEC), or the other's sessions never reach its program.
  if (!require_tc_bpf() || !require_program("tftp") || !require_program("in.tftpd")) return;
  Lab a("tc-bpf");
  Lab b("tc-bpf");
  a.start_hpa();
  b.start_hpa();
  a.start("monitor = \"none\"\ndiscover = false\n");
  b.start("monitor = \"none\"\ndiscover = false\n");
  REQUIRE(a.relay("tc_priority") != b.relay("tc_priority"));
  for (Lab* lab : {&a, &b}) {
    INFO("the balancer with filter priority " << lab->relay("tc_priority"));
    const auto got = (lab->dir.path() / "got").string();
    const auto r = dt::run_child({"tftp", "-m", "binary", vip_host, std::to_string(lab->vip_port()), "-c", "get", "big.bin", got},
                                 std::chrono::seconds(60));
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(dt::sha256_file(got) == dt::sha256_file(lab->root() / "big.bin"));
    CHECK(dt::eventually([&] { return lab->relay("kernel_packets_to_client") > 100; }, 5s));
  }
}

TEST_CASE("tc-bpf: a balancer killed with SIGKILL leaves its filter attached, and the next tc-bpf balancer detaches it") {
  if (!require_tc_bpf() || !require_program("in.tftpd") || !require_program("tc")) return;
  Lab lab("tc-bpf");
  lab.start_hpa();
  // The first balancer in a process of its own (vip on 127.0.0.5, so the second one's priority differs).
  const auto first_toml = lab.dir.path() / "first.toml";
  dt::write_text(first_toml, lab.manifest("monitor = \"none\"\ndiscover = false\nvip = \"127.0.0.5:0\"\n"));
  const auto first_log = lab.dir.path() / "first.log";
  std::uint32_t priority = 0;
  {
    dt::ChildProcess first({DESKFARM_BIN, "--plugin-path", PLUGIN_DIR, "run", first_toml.string()}, first_log);
    // The relay thread logs its filter's priority once it runs (after the "virtual server" line).
    REQUIRE(dt::eventually([&] { return dt::read_text(first_log).find("ingress, priority ") != std::string::npos; }, 30s));
    const auto text = dt::read_text(first_log);
    INFO(text);
    const auto at = text.find("ingress, priority ");
    REQUIRE(at != std::string::npos);
    priority = static_cast<std::uint32_t>(std::stoul(text.substr(at + 18)));
    REQUIRE(filter_listed(priority));
    first.signal(SIGKILL);
    REQUIRE(first.wait(10s) == 128 + SIGKILL);
  }
  CHECK(filter_listed(priority));  // nothing ran at the kill: the filter and its program stay in the kernel
  lab.start("monitor = \"none\"\ndiscover = false\n");  // the next tc-bpf balancer, on 127.0.0.2
  CHECK(lab.relay("tc_priority") != static_cast<std::int64_t>(priority));
  CHECK_FALSE(filter_listed(priority));
  CHECK(filter_listed(static_cast<std::uint32_t>(lab.relay("tc_priority"))));
}
