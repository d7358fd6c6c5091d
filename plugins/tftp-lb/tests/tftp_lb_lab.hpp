#pragma once
// A balancer in this process in front of two real backends: a pvs instance's TFTP service (found through
// discovery) and Debian's tftpd-hpa (in.tftpd, a foreign server listed by address), both serving one directory.
// The virtual server listens on 127.0.0.2 and the backends on 127.0.0.1, so a test can tell them apart.

#include <optional>
#include <string>

#include <catch2/catch.hpp>

#include <deskfarm/interfaces/tftp/tftp.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/net.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>
#include <deskfarm/tftp/client.hpp>
#include <deskfarm/tftp/packet.hpp>

#include "tc_bpf.hpp"

namespace tftp_lb_test {

using namespace deskfarm;
using namespace std::chrono_literals;
namespace dt = deskfarm::testing;
namespace api = deskfarm::interfaces::tftp;

inline constexpr const char* vip_host = "127.0.0.2";
inline constexpr std::size_t boot_size = 3000;      // 6 blocks of 512: the last one short
inline constexpr std::size_t big_size = 1 << 20;

/// A raw UDP client on 127.0.0.4 (neither the virtual server's address nor the backends').
struct Udp : dt::UdpSocket {
  explicit Udp(const char* host = "127.0.0.4") : dt::UdpSocket(host) {}
};
inline std::uint16_t free_udp_port() { return dt::free_port(SOCK_DGRAM); }

inline std::vector<std::byte> rrq(const std::string& file) {
  std::vector<std::byte> out;
  tftp::Request r;
  r.filename = file;
  r.mode = "octet";
  tftp::encode_request(out, r);
  return out;
}
inline std::vector<std::byte> ack(std::uint16_t block) {
  std::vector<std::byte> out;
  tftp::encode_ack(out, block);
  return out;
}

/// The relay engines a test that moves datagrams runs with, one run each (Catch2 GENERATE).
#define TFTP_LB_ENGINE() GENERATE(as<std::string>{}, "io_uring", "epoll")

/// Why the tc-bpf engine cannot load and attach here (not root, no BPF, no clsact on lo); nullopt when it can.
/// Probed once per process by attaching the real program to lo and detaching it again.
inline const std::optional<std::string>& tc_bpf_unavailable() {
  static const std::optional<std::string> why = []() -> std::optional<std::string> {
    sockaddr_in vip{};
    vip.sin_family = AF_INET;
    vip.sin_addr.s_addr = htonl(0x7f000009);  // 127.0.0.9:1, a priority no balancer of the tests uses
    vip.sin_port = htons(1);
    std::string reason;
    if (tftp_lb::TcBpf::open(vip, 1, {}, reason)) return std::nullopt;
    return reason;
  }();
  return why;
}
/// The engines plus tc-bpf where it can attach: for the tests of what a transfer looks like from outside, which
/// must hold whichever way the datagrams go. Where it cannot, tc_bpf_test.cpp reports the skip and why.
inline std::vector<std::string> engines_with_tc_bpf() {
  std::vector<std::string> e{"io_uring", "epoll"};
  if (!tc_bpf_unavailable()) e.emplace_back("tc-bpf");
  return e;
}
#define TFTP_LB_ENGINE_OR_TC_BPF() GENERATE(from_range(engines_with_tc_bpf()))

struct Lab {
  /// The balancer's `relay` key: a test that moves datagrams sets it from TFTP_LB_ENGINE(), and start() checks
  /// that this engine, not a fallback, carried the test.
  explicit Lab(std::string relay_engine = "auto") : engine(std::move(relay_engine)) {
    std::filesystem::create_directories(root());
    dt::write_file(root() / "boot.bin", dt::pattern(boot_size, 11));
    dt::write_file(root() / "big.bin", dt::pattern(big_size, 12));
  }
  std::string engine;
  dt::TempDir dir{"tftp-lb-test"};
  std::uint16_t hpa_port = free_udp_port();
  std::unique_ptr<dt::ChildProcess> hpa;
  std::unique_ptr<dt::Harness> h;

  std::filesystem::path root() const { return dir.path() / "root"; }

  /// Starts in.tftpd on hpa_port (the same port after a restart) and waits until it answers.
  void start_hpa() {
    hpa = std::make_unique<dt::ChildProcess>(std::vector<std::string>{"/usr/sbin/in.tftpd", "-L", "-u", "root", "-s",
                                                                      root().string(), "-a",
                                                                      "127.0.0.1:" + std::to_string(hpa_port)},
                                             dir.path() / "hpa.log");
    tftp::ClientOptions o;
    o.deadline = 500ms;
    REQUIRE(dt::eventually(
        [&] {
          try {
            return tftp::Client(o).get("127.0.0.1", hpa_port, "boot.bin").data.size() == boot_size;
          } catch (const std::exception&) {
            return false;
          }
        },
        10s));
  }
  /// Kills in.tftpd by its PID and reaps it.
  void stop_hpa() { hpa.reset(); }

  /// pvs-1 serves the lab's root as its extra TFTP files; the balancer "lb" lists "hpa" by address, asks for
  /// boot.bin and listens on vip_host, unless `extra` (more balancer keys) sets backends, boot_file or vip.
  std::string manifest(const std::string& extra) const {
    return "[deployment]\nname = \"lb-lab\"\nstate_dir = \"" + (dir.path() / "var").string() +
           "\"\ndata_store = \"sqlite:" + (dir.path() / "ds.db").string() +
           "\"\n\n[instances.pvs-1]\nplugin = \"pvs\"\ntftp = \"127.0.0.1:0\"\nstream = \"127.0.0.1:0\"\ntftp_root = \"" +
           root().string() + "\"\n\n[instances.lb]\nplugin = \"tftp-lb\"\n" +
           (extra.find("vip =") == std::string::npos ? "vip = \"" + std::string(vip_host) + ":0\"\n" : "") +
           (extra.find("boot_file =") == std::string::npos ? "boot_file = \"boot.bin\"\n" : "") +
           (extra.find("relay =") == std::string::npos ? "relay = \"" + engine + "\"\n" : "") +
           (extra.find("backends =") == std::string::npos
                ? "backends = [ { name = \"hpa\", address = \"127.0.0.1:" + std::to_string(hpa_port) + "\" } ]\n"
                : "") +
           extra;
  }
  std::unique_ptr<dt::Harness> harness(const std::string& extra) const {
    dt::HarnessOptions o;
    o.plugin_path = {PLUGIN_DIR};
    o.source_name = "lb.toml";
    return std::make_unique<dt::Harness>(manifest(extra), o);
  }
  void start(const std::string& extra) {
    h = harness(extra);
    h->start();
    if (engine != "auto") {
      const auto s = status();
      INFO("status " << s.to_json());
      REQUIRE(s.find("relay_engine"));
      REQUIRE(s.find("relay_engine")->as_string() == engine);
    }
  }
  std::string check_error(const std::string& extra) const {
    try {
      (void)harness(extra);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  }

  sdk::Value status() { return h->instance_status("lb"); }
  std::uint16_t vip_port() {
    const auto vip = status().find("vip")->as_string();
    return static_cast<std::uint16_t>(std::stoi(vip.substr(vip.rfind(':') + 1)));
  }
  std::int64_t relay(const std::string& key) {
    const auto s = status();
    const auto* r = s.find("relay");
    REQUIRE(r);
    const auto* f = r->find(key);
    INFO("relay field " << key << " in " << s.to_json());
    REQUIRE(f);
    return f->as_integer();
  }
  api::BackendList backends() {
    auto r = h->request<sdk::Empty, api::BackendList>(api::admin_subject("lb", "backend.list"), sdk::Empty{}, 10s);
    REQUIRE(r);
    return *r;
  }
  api::BackendView backend(const std::string& name) {
    for (const auto& b : backends().backends)
      if (b.name == name) return b;
    FAIL("no backend " << name);
    return {};
  }
  /// Waits until every named backend is in `state`.
  bool all_in(std::initializer_list<const char*> names, const char* state, std::chrono::milliseconds within = 10s) {
    return dt::eventually(
        [&] {
          for (const char* n : names) {
            bool ok = false;
            for (const auto& b : backends().backends) ok = ok || (b.name == n && b.state == state);
            if (!ok) return false;
          }
          return true;
        },
        within);
  }
  /// Downloads through the virtual server with our own client.
  std::vector<std::byte> fetch(const std::string& file) {
    tftp::ClientOptions o;
    o.deadline = 10s;
    return tftp::Client(o).get(vip_host, vip_port(), file).data;
  }
};

}  // namespace tftp_lb_test
