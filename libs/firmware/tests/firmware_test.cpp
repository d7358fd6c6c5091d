// The simulated firmware against a real pvs (TFTP + NBD on loopback) and against servers that fail on purpose.
#include <poll.h>

#include <atomic>
#include <mutex>
#include <thread>

#include <catch2/catch.hpp>

#include <deskfarm/bdm/iso.hpp>
#include <deskfarm/bootstrap/bootstrap.hpp>
#include <deskfarm/firmware/firmware.hpp>
#include <deskfarm/nbd/protocol.hpp>
#include <deskfarm/nbd/unique_fd.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/tftp/server.hpp>

#include "pvs_lab.hpp"

namespace {

using namespace std::chrono_literals;
using namespace deskfarm;
namespace fw = deskfarm::firmware;
namespace dt = deskfarm::testing;
using pvs_test::Lab;
using pvs_test::free_port;
using Clock = std::chrono::steady_clock;

std::vector<std::string> names(const fw::BootResult& r) {
  std::vector<std::string> out;
  for (const auto& s : r.steps) out.push_back(s.name + ":" + s.state);
  return out;
}

std::string dump(const fw::BootResult& r) {
  std::string out;
  for (const auto& s : r.steps) out += "  " + s.name + " " + s.state + " (" + std::to_string(s.took.count()) + " us): " + s.detail + "\n";
  return out;
}

fw::BootPlan plan_for(std::uint16_t tftp_port, const std::string& file = "ARDBP32.BIN") {
  fw::BootPlan p;
  p.mac = pvs_test::mac_a;
  p.boot_order = {"network"};
  p.tftp_server = "127.0.0.1:" + std::to_string(tftp_port);
  p.boot_file = file;
  p.working_set_bytes = 1 << 20;
  p.read_request_bytes = 128 << 10;
  p.tftp_timeout = 200ms;
  p.tftp_retries = 2;
  return p;
}

/// A bootstrap naming `servers`, with the shortest login timeouts the format allows.
bootstrap::Bootstrap quick_bootstrap(std::vector<std::uint16_t> ports, bootstrap::Recovery recovery) {
  bootstrap::Bootstrap b;
  for (auto port : ports) b.login_servers.push_back({"127.0.0.1", port});
  b.login_polling_timeout_ms = 1000;
  b.login_general_timeout_ms = 1000;
  b.recovery = recovery;
  b.recovery_time_s = 1;
  return b;
}

/// Our own TFTP server on 127.0.0.1 serving a temp directory (files written by the test).
struct TftpDir {
  dt::TempDir dir{"firmware-tftp"};
  std::mutex log_mutex;
  std::vector<std::string> log_lines;  // written by the server's thread
  std::unique_ptr<tftp::Server> server;  // declared last: stopped before the log it writes to is destroyed
  explicit TftpDir(const std::string& name, const std::string& content) {
    dt::write_text(dir / name, content);
    tftp::ServerOptions o;
    o.address = "127.0.0.1";
    o.root = dir.path();
    o.log = [this](std::string_view line) {
      std::lock_guard lock(log_mutex);
      log_lines.emplace_back(line);
    };
    server = std::make_unique<tftp::Server>(o);
    server->start();
  }
  std::uint16_t port() const { return server->bound_port(); }
  std::string log() {
    std::lock_guard lock(log_mutex);
    std::string all;
    for (const auto& l : log_lines) all += l + "\n";
    return all;
  }
};

/// Binds `fd` to 127.0.0.1 on a port the kernel picks (listening if `listen`) and returns that port.
std::uint16_t bind_loopback(int fd, bool listen) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  if (listen) ::listen(fd, 8);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

/// A UDP socket that answers every datagram with junk that is no TFTP packet, until destroyed (bounded: 30 s).
class GarbageTftp {
 public:
  GarbageTftp() : port_(bind_loopback(fd_.get(), false)) {
    thread_ = std::thread([this] {
      const unsigned char junk[] = {0xde, 0xad, 0xbe, 0xef, 0x00, 0x42};
      for (int i = 0; i < 600 && !done_; ++i) {
        pollfd p{fd_.get(), POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        std::byte buf[2048];
        sockaddr_storage from{};
        socklen_t flen = sizeof from;
        if (::recvfrom(fd_.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &flen) < 0) continue;
        ++answered_;
        ::sendto(fd_.get(), junk, sizeof junk, 0, reinterpret_cast<sockaddr*>(&from), flen);
      }
    });
  }
  ~GarbageTftp() {
    done_ = true;
    thread_.join();
  }
  std::uint16_t port() const { return port_; }
  int answered() const { return answered_; }

 private:
  nbd::UniqueFd fd_{::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
  std::uint16_t port_ = 0;
  std::atomic<bool> done_{false};
  std::atomic<int> answered_{0};
  std::thread thread_;
};

/// An NBD server for one connection: negotiates any export (size 8 MiB), answers `full_reads` reads, then sends
/// half of the next read's payload and closes the connection. Every wait is bounded (5 s).
class ClosingNbd {
 public:
  explicit ClosingNbd(int full_reads) : full_reads_(full_reads), port_(bind_loopback(listen_.get(), true)) {
    thread_ = std::thread([this] { serve(); });
  }
  ~ClosingNbd() { thread_.join(); }
  std::uint16_t port() const { return port_; }
  int reads_seen() const { return reads_; }

 private:
  static void put(std::vector<std::byte>& out, std::uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i) out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
  }
  static std::uint64_t get(const std::vector<std::byte>& b, std::size_t off, int n) {
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<std::uint8_t>(b[off + static_cast<std::size_t>(i)]);
    return v;
  }
  bool recv_n(int fd, std::vector<std::byte>& out, std::size_t n) {
    out.assign(n, std::byte{});
    for (std::size_t done = 0; done < n;) {
      const ssize_t r = ::recv(fd, out.data() + done, n - done, 0);
      if (r <= 0) return false;
      done += static_cast<std::size_t>(r);
    }
    return true;
  }
  static void send_all(int fd, const std::vector<std::byte>& b) { (void)::send(fd, b.data(), b.size(), MSG_NOSIGNAL); }

  void serve() {
    pollfd p{listen_.get(), POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return;
    nbd::UniqueFd c(::accept(listen_.get(), nullptr, nullptr));
    if (!c) return;
    timeval tv{5, 0};
    ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    namespace proto = nbd::proto;
    std::vector<std::byte> out, in;
    put(out, proto::kNbdMagic, 8);
    put(out, proto::kOptMagic, 8);
    put(out, proto::kFlagFixedNewstyle | proto::kFlagNoZeroes, 2);
    send_all(c.get(), out);
    if (!recv_n(c.get(), in, 4) || !recv_n(c.get(), in, 16)) return;
    const auto option = get(in, 8, 4);
    if (!recv_n(c.get(), in, get(in, 12, 4))) return;
    out.clear();
    put(out, proto::kOptReplyMagic, 8);
    put(out, option, 4);
    put(out, proto::kRepInfo, 4);
    put(out, 12, 4);
    put(out, proto::kInfoExport, 2);
    put(out, 8 << 20, 8);
    put(out, proto::kTxHasFlags | proto::kTxReadOnly, 2);
    put(out, proto::kOptReplyMagic, 8);
    put(out, option, 4);
    put(out, proto::kRepAck, 4);
    put(out, 0, 4);
    send_all(c.get(), out);
    for (int i = 0; i <= full_reads_; ++i) {
      if (!recv_n(c.get(), in, 28)) return;
      ++reads_;
      const auto length = get(in, 24, 4);
      out.clear();
      put(out, proto::kSimpleReplyMagic, 4);
      put(out, 0, 4);
      put(out, get(in, 8, 8), 8);
      out.resize(out.size() + (i < full_reads_ ? length : length / 2));
      send_all(c.get(), out);
    }
    // Leaving closes the connection in the middle of the last read's payload.
  }

  nbd::UniqueFd listen_{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  int full_reads_;
  std::uint16_t port_ = 0;
  std::atomic<int> reads_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("firmware boots a registered device from a real pvs: TFTP bootstrap, NBD login and working set") {
  Lab lab;
  // The shortest login timeouts pvs writes into its bootstrap, so the refused-login section ends in 1 s.
  lab.start("login_polling_timeout_ms = 1000\nlogin_general_timeout_ms = 1000\nrecovery = \"reboot_to_hd\"\n");
  auto plan = plan_for(lab.tftp_port());
  std::vector<fw::Step> seen;
  const auto r = fw::boot(plan, {}, [&](const fw::Step& s) { seen.push_back(s); });
  INFO(dump(r));
  REQUIRE(r.ok);
  CHECK(names(r) == std::vector<std::string>{"dhcp:ok", "tftp:ok", "bootstrap:ok", "login:ok", "stream:ok", "handover:ok"});
  CHECK(r.failed_step.empty());
  CHECK(r.login_server == "127.0.0.1:" + std::to_string(lab.stream_port()));
  CHECK(r.bytes_read == plan.working_set_bytes);
  CHECK(r.bootstrap_version == 1);
  CHECK(r.recovery.empty());
  CHECK_THAT(r.steps[1].detail, Catch::Contains("blksize 1408") && Catch::Contains("tsize"));
  CHECK_THAT(r.steps[4].detail, Catch::Contains("8 reads"));
  // on_step saw every step, in order, with start times that do not go back.
  REQUIRE(seen.size() == r.steps.size());
  for (std::size_t i = 0; i < seen.size(); ++i) {
    CHECK(seen[i].name == r.steps[i].name);
    if (i > 0) CHECK(seen[i].at >= seen[i - 1].at);
  }
  // pvs served both: one bootstrap download and at least the working set over NBD.
  CHECK(dt::eventually([&] {
    const auto st = lab.status();
    return Lab::integer(*st.find("tftp"), "rrq") >= 1 &&
           Lab::integer(*st.find("nbd"), "bytes_read") >= static_cast<std::int64_t>(plan.working_set_bytes);
  }, 10s));

  SECTION("cdrom with an ISO and a diskless disk fail with their reason and fall through to the network") {
    plan.boot_order = {"cdrom", "disk", "network"};
    plan.iso_path = "/isos/installer.iso";
    const auto again = fw::boot(plan, {});
    INFO(dump(again));
    REQUIRE(again.ok);
    REQUIRE(again.steps.size() == 8);
    CHECK(names(again)[0] == "cdrom:failed");
    CHECK_THAT(again.steps[0].detail, Catch::StartsWith("cdrom boot: ISO /isos/installer.iso has no readable boot record /bdm.bst"));
    CHECK(names(again)[1] == "disk:failed");
    CHECK_THAT(again.steps[1].detail, Catch::StartsWith("no bootable disk"));
    CHECK(names(again).back() == "handover:ok");
  }
  SECTION("an unregistered MAC is refused by the only login server: all login servers down") {
    plan.mac = "52:54:00:99:99:99";
    const auto refused = fw::boot(plan, {});
    INFO(dump(refused));
    CHECK_FALSE(refused.ok);
    CHECK(refused.failed_step == "login");
    CHECK_THAT(refused.reason, Catch::StartsWith("all login servers down") && Catch::Contains("52:54:00:99:99:99"));
    CHECK(refused.recovery == "reboot_to_hd");  // as the manifest told pvs to write into the bootstrap
    CHECK(names(refused).back() == "recovery:ok");
  }
}

TEST_CASE("firmware fails over to the next login server when the first is a dead port") {
  Lab lab;
  lab.start();
  const auto dead = free_port();
  TftpDir tftp("boot.bin", bootstrap::encode(quick_bootstrap({dead, lab.stream_port()}, bootstrap::Recovery::reboot_to_hd)));
  const auto r = fw::boot(plan_for(tftp.port(), "boot.bin"), {});
  INFO(dump(r));
  REQUIRE(r.ok);
  CHECK(r.login_server == "127.0.0.1:" + std::to_string(lab.stream_port()));
  const auto& login = r.steps.at(3);
  CHECK(login.name == "login");
  CHECK_THAT(login.detail, Catch::Contains("failed over from") && Catch::Contains("127.0.0.1:" + std::to_string(dead)));
  CHECK(login.took < 1s);  // a refused connection is not waited on for the polling timeout
}

TEST_CASE("firmware sends from the plan's source address, its own machine's IP") {
  Lab lab;
  lab.start();
  TftpDir tftp("boot.bin", bootstrap::encode(quick_bootstrap({lab.stream_port()}, bootstrap::Recovery::reboot_to_hd)));
  auto plan = plan_for(tftp.port(), "boot.bin");
  plan.source_address = "127.0.0.7";
  const auto r = fw::boot(plan, {});
  INFO(dump(r));
  CHECK(r.ok);
  CHECK_THAT(tftp.log(), Catch::Contains("RRQ boot.bin from 127.0.0.7:"));
  plan.source_address = "192.0.2.1";  // TEST-NET: not an address of this machine
  const auto refused = fw::boot(plan, {});
  CHECK(refused.failed_step == "tftp");
  CHECK_THAT(refused.reason, Catch::Contains("cannot bind to 192.0.2.1"));
}

TEST_CASE("firmware reports a silent TFTP server by its address after the plan's tries") {
  const auto dead = free_port();
  auto plan = plan_for(dead);
  const auto t0 = Clock::now();
  const auto r = fw::boot(plan, {});
  const auto took = Clock::now() - t0;
  INFO(dump(r));
  CHECK_FALSE(r.ok);
  CHECK(r.failed_step == "tftp");
  CHECK_THAT(r.reason, Catch::Contains("127.0.0.1:" + std::to_string(dead)) && Catch::Contains("no answer after 3 tries"));
  CHECK(names(r) == std::vector<std::string>{"dhcp:ok", "tftp:failed"});
  CHECK(r.recovery.empty());  // no bootstrap, so no recovery option to follow
  CHECK(took >= 3 * plan.tftp_timeout);
  CHECK(took < 3 * plan.tftp_timeout + 2s);
}

TEST_CASE("firmware survives a TFTP server that answers garbage and says so") {
  GarbageTftp junk;
  const auto r = fw::boot(plan_for(junk.port()), {});
  INFO(dump(r));
  CHECK_FALSE(r.ok);
  CHECK(r.failed_step == "tftp");
  CHECK_THAT(r.reason, Catch::Contains("malformed datagrams ignored"));
  CHECK(junk.answered() >= 3);
}

TEST_CASE("firmware reports the TFTP server's error packet") {
  TftpDir tftp("other.bin", "x");
  const auto r = fw::boot(plan_for(tftp.port(), "missing.bin"), {});
  INFO(dump(r));
  CHECK(r.failed_step == "tftp");
  CHECK_THAT(r.reason, Catch::Contains("ERROR 1 'file not found'") && Catch::Contains("missing.bin"));
}

TEST_CASE("firmware refuses a bootstrap whose checksum is wrong, and the rest of the boot order still runs") {
  auto text = bootstrap::encode(quick_bootstrap({free_port()}, bootstrap::Recovery::reboot_to_hd));
  const auto at = text.find("recovery_time_s = 1");
  REQUIRE(at != std::string::npos);
  text.replace(at, 19, "recovery_time_s = 9");  // same length, still valid text: only the checksum can tell
  TftpDir tftp("boot.bin", text);
  auto plan = plan_for(tftp.port(), "boot.bin");
  plan.boot_order = {"network", "disk"};
  const auto r = fw::boot(plan, {});
  INFO(dump(r));
  CHECK_FALSE(r.ok);
  CHECK(names(r) == std::vector<std::string>{"dhcp:ok", "tftp:ok", "bootstrap:failed", "disk:failed"});
  CHECK(r.failed_step == "bootstrap");
  CHECK_THAT(r.reason, Catch::Contains("checksum mismatch"));
  CHECK(r.recovery.empty());
}

TEST_CASE("firmware reports an NBD server that closes in the middle of a read") {
  ClosingNbd nbd(2);
  TftpDir tftp("boot.bin", bootstrap::encode(quick_bootstrap({nbd.port()}, bootstrap::Recovery::reboot_to_hd)));
  const auto r = fw::boot(plan_for(tftp.port(), "boot.bin"), {});
  INFO(dump(r));
  CHECK_FALSE(r.ok);
  CHECK(r.failed_step == "stream");
  CHECK_THAT(r.reason, Catch::Contains("closed the connection") && Catch::Contains("offset " + std::to_string(2 * (128 << 10))));
  CHECK(r.bytes_read == 2 * (128 << 10));
  CHECK(r.recovery == "reboot_to_hd");
  CHECK(nbd.reads_seen() == 3);
}

TEST_CASE("firmware recovery: reboot_to_hd ends the boot, restore_network waits and retries up to max_recoveries") {
  const auto dead = free_port();
  SECTION("reboot_to_hd") {
    TftpDir tftp("boot.bin", bootstrap::encode(quick_bootstrap({dead}, bootstrap::Recovery::reboot_to_hd)));
    auto plan = plan_for(tftp.port(), "boot.bin");
    plan.boot_order = {"network", "disk"};
    const auto r = fw::boot(plan, {});
    INFO(dump(r));
    CHECK_FALSE(r.ok);
    CHECK(r.recovery == "reboot_to_hd");
    CHECK(r.failed_step == "login");
    CHECK_THAT(r.reason, Catch::StartsWith("all login servers down after 1000 ms") && Catch::Contains(std::to_string(dead)));
    // The boot ends with the recovery: the disk in the boot order is not tried by the firmware.
    CHECK(names(r) == std::vector<std::string>{"dhcp:ok", "tftp:ok", "bootstrap:ok", "login:failed", "recovery:ok"});
    CHECK(r.steps[3].took >= 900ms);
  }
  SECTION("restore_network") {
    TftpDir tftp("boot.bin", bootstrap::encode(quick_bootstrap({dead}, bootstrap::Recovery::restore_network)));
    auto plan = plan_for(tftp.port(), "boot.bin");
    plan.max_recoveries = 1;
    const auto r = fw::boot(plan, {});
    INFO(dump(r));
    CHECK_FALSE(r.ok);
    CHECK(r.recovery == "restore_network");
    CHECK(r.recoveries == 1);
    CHECK(names(r) == std::vector<std::string>{"dhcp:ok", "tftp:ok", "bootstrap:ok", "login:failed", "recovery:ok",
                                               "dhcp:ok", "tftp:ok", "bootstrap:ok", "login:failed", "recovery:failed"});
    CHECK(r.steps[4].took >= 1s);  // recovery_time_s = 1
    CHECK_THAT(r.steps.back().detail, Catch::Contains("gave up after 1 retries"));
    CHECK(r.failed_step == "login");
  }
}

TEST_CASE("firmware restore_network runs the whole network boot again: a bootstrap fixed during the wait boots") {
  Lab lab;
  lab.start();
  TftpDir tftp("boot.bin", bootstrap::encode(quick_bootstrap({free_port()}, bootstrap::Recovery::restore_network)));
  auto plan = plan_for(tftp.port(), "boot.bin");
  // When the first login fails, the operator points the bootstrap at the live server (a new file, renamed into place).
  const auto fixed = bootstrap::encode(quick_bootstrap({lab.stream_port()}, bootstrap::Recovery::restore_network));
  const auto r = fw::boot(plan, {}, [&](const fw::Step& s) {
    if (s.name == "login" && s.state == "failed") {
      dt::write_text(tftp.dir / "boot.bin.new", fixed);
      std::filesystem::rename(tftp.dir / "boot.bin.new", tftp.dir / "boot.bin");
    }
  });
  INFO(dump(r));
  REQUIRE(r.ok);
  CHECK(names(r) == std::vector<std::string>{"dhcp:ok", "tftp:ok", "bootstrap:ok", "login:failed", "recovery:ok", "dhcp:ok",
                                             "tftp:ok", "bootstrap:ok", "login:ok", "stream:ok", "handover:ok"});
  CHECK(r.recovery == "restore_network");
  CHECK(r.recoveries == 1);
  CHECK(r.failed_step.empty());
  CHECK(r.login_server == "127.0.0.1:" + std::to_string(lab.stream_port()));
}

TEST_CASE("firmware returns promptly when stopped, whatever it waits on") {
  std::stop_source source;
  fw::BootPlan plan;
  std::string expected_step;
  std::unique_ptr<TftpDir> tftp;
  // A TCP port that accepts connections (backlog) but never speaks NBD: the login waits on its greeting.
  nbd::UniqueFd mute(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  auto slow = quick_bootstrap({bind_loopback(mute.get(), true)}, bootstrap::Recovery::restore_network);
  slow.login_polling_timeout_ms = 60000;
  slow.login_general_timeout_ms = 60000;
  SECTION("a silent TFTP server with a long timeout") {
    plan = plan_for(free_port());
    plan.tftp_timeout = 10s;
    expected_step = "tftp";
  }
  SECTION("a login server that never sends its NBD greeting") {
    tftp = std::make_unique<TftpDir>("boot.bin", bootstrap::encode(slow));
    plan = plan_for(tftp->port(), "boot.bin");
    expected_step = "login";
  }
  SECTION("the restore_network wait") {
    auto b = quick_bootstrap({free_port()}, bootstrap::Recovery::restore_network);
    b.recovery_time_s = 60;
    tftp = std::make_unique<TftpDir>("boot.bin", bootstrap::encode(b));
    plan = plan_for(tftp->port(), "boot.bin");
    expected_step = "recovery";
  }
  // The stop comes after the wait has begun (the recovery case: after the 1 s login timeout).
  const auto delay = expected_step == "recovery" ? 1500ms : 300ms;
  std::jthread stopper([&source, delay](std::stop_token own) {
    const auto until = Clock::now() + delay;
    while (Clock::now() < until && !own.stop_requested()) std::this_thread::sleep_for(10ms);
    source.request_stop();
  });
  const auto t0 = Clock::now();
  const auto r = fw::boot(plan, source.get_token());
  const auto took = Clock::now() - t0;
  INFO(dump(r));
  CHECK_FALSE(r.ok);
  CHECK(r.failed_step == expected_step);
  CHECK(r.reason == "stopped");
  CHECK(took < delay + 1s);
}

TEST_CASE("firmware without a network in the boot order reports each device's reason") {
  fw::BootPlan plan;
  plan.mac = pvs_test::mac_a;
  plan.boot_order = {"cdrom", "disk", "floppy"};
  const auto r = fw::boot(plan, {});
  INFO(dump(r));
  CHECK_FALSE(r.ok);
  CHECK(names(r) == std::vector<std::string>{"cdrom:failed", "disk:failed", "boot:failed"});
  CHECK(r.failed_step == "cdrom");
  CHECK(r.reason == "cdrom boot: no ISO in the virtual CD-ROM");
  CHECK_THAT(r.steps[2].detail, Catch::Contains("unknown boot device 'floppy'"));
  plan.boot_order.clear();
  CHECK_THAT(fw::boot(plan, {}).reason, Catch::Contains("boot order is empty"));
}

TEST_CASE("firmware reads DHCP option 66 as host or host:port and refuses the rest") {
  CHECK(fw::parse_tftp_server("10.0.0.5") == std::pair<std::string, std::uint16_t>{"10.0.0.5", 69});
  CHECK(fw::parse_tftp_server("10.0.0.5:6969") == std::pair<std::string, std::uint16_t>{"10.0.0.5", 6969});
  CHECK(fw::parse_tftp_server("[::1]:70") == std::pair<std::string, std::uint16_t>{"::1", 70});
  CHECK(fw::parse_tftp_server("pvs.farm") == std::pair<std::string, std::uint16_t>{"pvs.farm", 69});
  for (const char* bad : {"", ":69", "10.0.0.5:0", "10.0.0.5:70000", "10.0.0.5:x", "::1", "[::1", "[::1]x"}) {
    INFO(bad);
    CHECK_THROWS_WITH(fw::parse_tftp_server(bad), Catch::Contains("DHCP option 66"));
  }
  fw::BootPlan plan;
  plan.mac = pvs_test::mac_a;
  plan.boot_order = {"network"};
  plan.tftp_server = "10.0.0.5:x";
  plan.boot_file = "ARDBP32.BIN";
  const auto r = fw::boot(plan, {});
  CHECK(r.failed_step == "dhcp");
  CHECK_THAT(r.reason, Catch::Contains("'10.0.0.5:x' has a bad port"));
}

TEST_CASE("firmware boots from a BDM ISO in the CD-ROM: the ISO's login servers, no DHCP or TFTP") {
  if (!std::filesystem::exists(deskfarm::bdm::default_ipxe_iso)) {
    dt::missing(std::string(deskfarm::bdm::default_ipxe_iso) + " is missing (Debian package ipxe; scripts/setup.sh)");
    return;
  }
  Lab lab;
  lab.start("");
  dt::TempDir dir{"firmware-cdrom"};
  // The ISO lists a dead port first, then the lab's streaming port: the firmware fails over as the record says.
  deskfarm::bdm::IsoOptions o;
  o.source_date_epoch = 0;
  o.bootstrap.version = 42;
  o.bootstrap.login_servers = {{"127.0.0.1", free_port()}, {"127.0.0.1", lab.stream_port()}};
  o.bootstrap.login_polling_timeout_ms = 1000;
  o.bootstrap.login_general_timeout_ms = 5000;
  const auto iso = dir / "bdm.iso";
  deskfarm::bdm::build_iso(o, iso);

  auto plan = plan_for(1);  // option 66 points nowhere: a CD-ROM boot never asks TFTP
  plan.boot_order = {"cdrom", "network"};
  plan.iso_path = iso.string();
  const auto r = fw::boot(plan, {});
  INFO(dump(r));
  REQUIRE(r.ok);
  CHECK(names(r) == std::vector<std::string>{"cdrom:ok", "bootstrap:ok", "login:ok", "stream:ok", "handover:ok"});
  CHECK(r.bootstrap_version == 42);
  CHECK(r.login_server == "127.0.0.1:" + std::to_string(lab.stream_port()));
  CHECK_THAT(r.steps[2].detail, Catch::Contains("failed over from"));
  CHECK(r.bytes_read == plan.working_set_bytes);
  CHECK(Lab::integer(*lab.status().find("tftp"), "rrq") == 0);
}
