#pragma once
// A simulated PC firmware that boots over the real network: DHCP options 66/67 → TFTP bootstrap → login to a
// pvs streaming server (NBD, export = MAC) → working set read → handover. Steps and failures: README.md.
#include <chrono>
#include <cstdint>
#include <functional>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

namespace deskfarm::firmware {

/// What the VM's configuration gives its firmware: boot order, the network's DHCP options, its MAC and ISO.
struct BootPlan {
  std::string mac;                        ///< "52:54:00:00:01:01" — also the NBD export name
  std::vector<std::string> boot_order;    ///< "network", "cdrom", "disk" (first that works wins)
  std::string tftp_server;                ///< DHCP option 66: "host" or "host:port" (default port 69)
  std::string boot_file;                  ///< DHCP option 67
  std::string iso_path;                   ///< ISO on the virtual CD-ROM ("" = none): a BDM ISO's boot record (/bdm.bst) replaces TFTP
  std::uint64_t working_set_bytes = 4u << 20;   ///< read from the vDisk after login
  std::uint32_t read_request_bytes = 256u << 10;
  std::uint32_t tftp_blksize = 1408;
  std::chrono::milliseconds tftp_timeout{1000};  ///< resend interval of the RRQ / ACK
  int tftp_retries = 3;                   ///< resends of one packet without an answer before the tftp step fails
  int max_recoveries = 1;                 ///< bound on restore_network retries
  /// The machine's own IP: TFTP and NBD leave from it ("" = the kernel picks). Give each simulated PC its own
  /// (127.x.y.z on loopback): pvs tells devices apart by address when a bootstrap download means a reboot.
  std::string source_address;
};

/// One state transition of a boot, reported in order.
struct Step {
  std::string name;     ///< "dhcp", "tftp", "bootstrap", "login", "stream", "handover", "recovery", "cdrom", "disk", "boot"
  std::string state;    ///< "ok" | "failed"
  std::chrono::system_clock::time_point at;  ///< when the step began
  std::chrono::microseconds took{0};
  std::string detail;   ///< what happened / why it failed ("... no answer after 4 tries ...", "checksum mismatch ...")
};

/// How a boot ended.
struct BootResult {
  bool ok = false;
  std::vector<Step> steps;
  std::string failed_step, reason;        ///< the first failure (the primary boot device's), when !ok
  std::string login_server;               ///< host:port that served the vDisk
  std::string recovery;                   ///< "" | "reboot_to_hd" | "restore_network" (what the bootstrap said to do)
  std::uint32_t bootstrap_version = 0;    ///< configuration serial of the bootstrap last parsed (0 = none)
  std::uint64_t bytes_read = 0;           ///< vDisk bytes read by the last stream step
  int recoveries = 0;                     ///< restore_network waits done
};

/// Boots once. Blocking; bounded in time by the plan's and the bootstrap's timeouts (and recovery_time_s ×
/// max_recoveries); returns within about 100 ms of a stop request with the step in progress failed "stopped".
/// `on_step` is called on this thread after each step, in order; an exception from it is not caught.
BootResult boot(const BootPlan& plan, std::stop_token stop, const std::function<void(const Step&)>& on_step = {});

/// "host[:port]" of DHCP option 66 as host and port (default 69); IPv6 as "[::1]:69". Throws std::invalid_argument.
std::pair<std::string, std::uint16_t> parse_tftp_server(const std::string& option66);

}  // namespace deskfarm::firmware
