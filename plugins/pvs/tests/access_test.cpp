// The streaming port against a hostile network: export listing off by default, devices bound to their addresses,
// maintenance only from maintenance_from, descriptor limits.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <fstream>
#include <sstream>

#include <deskfarm/nbd/unique_fd.hpp>

#include <deskfarm/nbd/protocol.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>

#include "pvs_lab.hpp"

using namespace pvs_test;
using namespace std::chrono_literals;
using deskfarm::nbd::ClientError;

namespace {

std::string all(const dt::ChildResult& r) { return r.out + r.err; }

constexpr std::size_t lab_patch_size = 64 << 10;

/// The default instance with device A bound to `ip` (devices[].ip) and `extra` keys.
std::string with_device_ip(const Lab& lab, const std::string& ip, const std::string& extra = "") {
  auto instance = lab.one(extra);
  const std::string desk_a = "name = \"desk-a\"";
  instance.replace(instance.find(desk_a), desk_a.size(), desk_a + ", ip = \"" + ip + "\"");
  return instance;
}

/// The message of the refusal `export_name` gets when opened from `source`, or "" if it was served.
std::string refusal(Lab& lab, const std::string& export_name, const std::string& source) {
  try {
    nbd::Client c("127.0.0.1", lab.stream_port(), export_name, nbd::ClientOptions{.bind_address = source});
    return "";
  } catch (const ClientError& e) {
    return e.what();
  }
}

/// Connects to 127.0.0.1:port and waits (at most 5 s) for the server's greeting; the socket if it came, else none (the
/// server closed it, or left it in the backlog).
nbd::UniqueFd greeted(std::uint16_t port) {
  nbd::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return {};
  timeval tv{5, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char hello[18];
  std::size_t got = 0;
  while (got < sizeof hello) {
    const ssize_t n = ::recv(fd.get(), hello + got, sizeof hello - got, 0);
    if (n <= 0) return {};
    got += static_cast<std::size_t>(n);
  }
  return fd;
}

/// "Max open files" soft limit of process `pid`, from /proc/PID/limits; -1 if not found.
long open_files_limit(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/limits");
  for (std::string line; std::getline(in, line);)
    if (line.starts_with("Max open files")) return std::stol(line.substr(26));
  return -1;
}

bool warned(Lab& lab, const std::string& a, const std::string& b) {
  for (const auto& l : lab.h->logs())
    if (l.find("warn") != std::string::npos && l.find(a) != std::string::npos && l.find(b) != std::string::npos)
      return true;
  return false;
}

}  // namespace

TEST_CASE("export listing is off by default (NBD_REP_ERR_POLICY), and list_exports lists what the asker may open") {
  if (!dt::require_program("nbdinfo")) return;
  Lab lab;
  SECTION("default") {
    lab.start();
    const auto list = dt::run_child({"nbdinfo", "--list", "nbd://127.0.0.1:" + std::to_string(lab.stream_port())}, 30s);
    INFO(all(list));
    CHECK(list.exit_code != 0);
    CHECK(all(list).find(mac_a) == std::string::npos);
    // libnbd reports any error reply to LIST as ENOTSUP; the reply type itself (ERR_POLICY) is checked in libs/nbd.
    CHECK_THAT(all(list), Catch::Contains("server replied with error to list request"));
    nbd::Client probe("127.0.0.1", lab.stream_port(), mac_a);  // naming a device still works
    CHECK(probe.size() == base_size);
  }
  SECTION("list_exports = true, device A bound to another address") {
    lab.start_instances(with_device_ip(lab, "127.0.0.9", "list_exports = true\n"));
    const auto list = dt::run_child({"nbdinfo", "--list", "nbd://127.0.0.1:" + std::to_string(lab.stream_port())}, 30s);
    INFO(all(list));
    REQUIRE(list.exit_code == 0);
    CHECK(all(list).find(mac_b) != std::string::npos);
    CHECK(all(list).find(mac_a) == std::string::npos);  // not openable from 127.0.0.1: not listed there
  }
}

TEST_CASE("a device bound by ip or device_subnets is refused from another address with a policy error and a warning") {
  Lab lab;
  SECTION("devices[].ip") {
    lab.start_instances(with_device_ip(lab, "127.0.0.1"));
    const auto refused = refusal(lab, mac_a, "127.0.0.2");
    CHECK_THAT(refused, Catch::Contains("0x80000002") && Catch::Contains("may only connect from 127.0.0.1"));
    CHECK(refusal(lab, mac_a, "127.0.0.1").empty());
    CHECK(refusal(lab, mac_b, "127.0.0.2").empty());  // no ip, no device_subnets: any address
    CHECK(dt::eventually([&] { return warned(lab, mac_a, "127.0.0.2"); }, 5s));
  }
  SECTION("device_subnets, IPv4 and IPv6") {
    lab.start("device_subnets = [\"127.0.0.1/32\", \"fd00::/64\"]\n");
    CHECK_THAT(refusal(lab, mac_b, "127.0.0.2"), Catch::Contains("0x80000002") && Catch::Contains("outside device_subnets"));
    // An unknown MAC from outside gets the same answer as a known one: the port does not confirm which MACs exist.
    CHECK_THAT(refusal(lab, "52:54:00:ff:ff:ff", "127.0.0.2"), Catch::Contains("outside device_subnets"));
    nbd::Client b("127.0.0.1", lab.stream_port(), mac_b, nbd::ClientOptions{.bind_address = "127.0.0.1"});
    std::vector<std::byte> buf(4096);
    CHECK(b.read(0, buf) == 0);
    CHECK(dt::eventually([&] { return warned(lab, mac_b, "127.0.0.2"); }, 5s));
  }
  CHECK(lab.status().find("nbd")->find("active") != nullptr);
}

TEST_CASE("VDISK@maintenance is opened only from maintenance_from") {
  Lab lab;
  lab.start("maintenance_from = [\"127.0.0.1\"]\n");
  REQUIRE(lab.admin("version.new", api::NewVersion{"gold"}).ok());
  CHECK_THAT(refusal(lab, "gold@maintenance", "127.0.0.2"),
             Catch::Contains("0x80000002") && Catch::Contains("maintenance access is not allowed from 127.0.0.2"));
  CHECK(dt::eventually([&] { return warned(lab, "gold@maintenance", "127.0.0.2"); }, 5s));
  nbd::Client m("127.0.0.1", lab.stream_port(), "gold@maintenance", nbd::ClientOptions{.bind_address = "127.0.0.1"});
  CHECK(m.write(0, std::vector<std::byte>(4096, std::byte{0x42})) == 0);
}

TEST_CASE("address keys are checked at their key") {
  Lab lab;
  CHECK_THAT(lab.check_error(lab.one("device_subnets = [\"10.1.2.3/8\"]\n")),
             Catch::Contains("device_subnets[0] '10.1.2.3/8' is not an IPv4 or IPv6 network"));
  CHECK_THAT(lab.check_error(lab.one("maintenance_from = [\"localhost\"]\n")),
             Catch::Contains("maintenance_from[0] 'localhost'"));
  CHECK_THAT(lab.check_error(with_device_ip(lab, "10.0.0.0/24")), Catch::Contains("devices[0].ip '10.0.0.0/24'"));
}

TEST_CASE("under a low descriptor limit pvs raises it, sizes max_connections to it and refuses beyond with a warning") {
  if (!dt::require_program("prlimit")) return;
  Lab lab;  // only for its directory, base image and manifest text
  const auto port = free_port();
  auto instance = lab.one("write_cache_ram_mb = 0\nwrite_cache_dir = \"" + (lab.dir.path() / "wc").string() + "\"\n");
  const std::string any_port = "stream = \"127.0.0.1:0\"";
  instance.replace(instance.find(any_port), any_port.size(), "stream = \"127.0.0.1:" + std::to_string(port) + "\"");
  dt::write_text(lab.dir / "lab.toml", lab.manifest(instance));
  const auto log = lab.dir / "run.log";
  // Soft 64 (what `ulimit -n 64` leaves), hard 256: the server may raise it to 256, no further.
  dt::ChildProcess run({"prlimit", "--nofile=64:256", DESKFARM_BIN, "--plugin-path", PLUGIN_DIR, "run",
                        (lab.dir / "lab.toml").string()}, log);
  REQUIRE(dt::eventually([&] { return dt::read_text(log).find("catalog loaded") != std::string::npos; }, 30s));
  CHECK(open_files_limit(run.pid()) == 256);

  nbd::Client b("127.0.0.1", port, mac_b);  // a device connected before the port fills up
  std::vector<nbd::UniqueFd> held;
  bool refused = false;
  for (int i = 0; i < 200 && !refused; ++i) {
    if (auto fd = greeted(port)) held.push_back(std::move(fd));
    else refused = true;
  }
  INFO(held.size() << " connections taken besides device B's");
  CHECK(refused);
  CHECK(held.size() + 1 < 128);  // two descriptors per connection fit in 256 with room to spare
  CHECK(held.size() >= 20);
  // Every connection taken can still do its work: device B's first write opens its overflow file.
  CHECK(b.write(0, std::vector<std::byte>(64 << 10, std::byte{0x5b})) == 0);
  std::vector<std::byte> back(64 << 10);
  CHECK(b.read(0, back) == 0);
  CHECK(back == std::vector<std::byte>(64 << 10, std::byte{0x5b}));
  CHECK(dt::eventually([&] {
    const auto text = dt::read_text(log);
    return text.find("warn") != std::string::npos && text.find("connections already open (max_connections)") != std::string::npos;
  }, 5s));
  run.signal(SIGTERM);
  CHECK(run.wait(15s) == 0);
}

TEST_CASE("with stream_tls on, VDISK@maintenance is refused in plain text and written over TLS, devices stream either way") {
  if (!dt::require_program("nbdinfo") || !dt::require_program("nbdcopy")) return;
  Lab lab;
  const auto keys = lab.dir.path() / "keys.psk";
  dt::write_text(keys, "admin:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n");
  lab.start("stream_tls = \"on\"\ntls_psk_file = \"" + keys.string() + "\"\n");
  REQUIRE(lab.admin("version.new", api::NewVersion{"gold"}).ok());
  const auto plain = refusal(lab, "gold@maintenance", "127.0.0.1");
  CHECK_THAT(plain, Catch::Contains("0x80000005") && Catch::Contains("only over TLS"));
  // nbdcopy writes a 64 KiB patch into the maintenance version over TLS with the pre-shared key.
  const auto patch = lab.dir.path() / "patch.img";
  dt::write_file(patch, dt::pattern(lab_patch_size, 77));
  const auto url = "nbds://admin@127.0.0.1:" + std::to_string(lab.stream_port()) + "/gold@maintenance?tls-psk-file=" +
                   keys.string();
  const auto copy = dt::run_child({"nbdcopy", patch.string(), url});
  INFO(all(copy));
  REQUIRE(copy.exit_code == 0);
  const auto size = dt::run_child({"nbdinfo", "--size", url});
  CHECK(size.out == std::to_string(base_size) + "\n");
  // Devices still stream in plain text (their firmware speaks no TLS); only the golden image's writer must. The
  // version written over TLS is what a device boots once promoted.
  REQUIRE(dt::eventually([&] { return lab.admin("version.promote", api::PromoteVersion{"gold"}).ok(); }));
  auto a = lab.connect(mac_a);
  CHECK(read_all(a, 0, lab_patch_size) == dt::pattern(lab_patch_size, 77));
  CHECK_THAT(lab.start_error("stream_tls = \"require\"\n"), Catch::Contains("stream_tls") && Catch::Contains("tls_psk_file"));
}
