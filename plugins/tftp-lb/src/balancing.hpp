#pragma once
// The balancer's pure logic, apart from sockets and the bus so it can be tested and fuzzed alone: addresses,
// the udp-ecv send string, backend choice, the monitor's verdicts, DHCP option 66/67 text.
#include <netinet/in.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace deskfarm::tftp_lb {

/// An IPv4 "a.b.c.d:port" (port 0..65535); nullopt for anything else (names, IPv6, junk).
std::optional<sockaddr_in> parse_ipv4_endpoint(std::string_view text);
/// "a.b.c.d:port" of an address.
std::string to_string(const sockaddr_in& addr);
/// "a.b.c.d" of an address.
std::string host_of(const sockaddr_in& addr);

/// The udp-ecv probe payload: `hex` (pairs of hex digits, spaces, ':' and '-' ignored) if given, else `text`
/// as bytes, else an octet-mode RRQ for `boot_file`. nullopt (and `error` set) for bad hex or an empty result.
std::optional<std::vector<std::byte>> ecv_payload(std::string_view text, std::string_view hex,
                                                  std::string_view boot_file, std::string& error);

enum class Method { round_robin, least_sessions, source_ip };
std::optional<Method> parse_method(std::string_view name);

/// What a picker may choose from: one row per backend the relay knows.
struct Candidate {
  std::uint32_t weight = 1;   ///< 1..100
  bool eligible = false;      ///< UP and not drained
  std::uint64_t active = 0;   ///< sessions in flight
  std::uint64_t name_hash = 0;
};

/// Chooses a backend for a new session without allocating. Round robin is nginx's smooth weighted round
/// robin; least sessions compares active/weight; source IP is weighted rendezvous hashing of the client
/// address, so a UEFI client's tsize probe and its download land on the same backend, and a backend
/// going down moves only its own clients.
class Picker {
 public:
  explicit Picker(Method method) : method_(method) {}
  /// Index into `candidates`, or nullopt if none is eligible. `current_` grows with the list as needed
  /// (callers reserve it: see reserve()).
  std::optional<std::size_t> pick(std::span<const Candidate> candidates, std::uint32_t client_ip);
  void reserve(std::size_t backends) { current_.reserve(backends); }
  Method method() const { return method_; }

 private:
  Method method_;
  std::vector<std::int64_t> current_;  // smooth weighted round robin state, one per candidate
};

/// 64-bit FNV-1a of a name (stable across runs: rendezvous hashing must not move clients on restart).
std::uint64_t stable_hash(std::string_view text);

/// NetScaler's monitor verdicts for one service: `retries` probes form the window; the service goes DOWN when
/// `failure_retries` of them failed (0 = all of them), and UP again after `success_retries` successes in a row.
struct HealthRules {
  int retries = 3;
  int failure_retries = 0;
  int success_retries = 1;
};

class HealthTracker {
 public:
  explicit HealthTracker(HealthRules rules) : rules_(rules) {}
  /// Records one probe; returns the new state (true = UP) when this probe changed it.
  std::optional<bool> record(bool ok);
  bool up() const { return up_; }
  int consecutive_failures() const { return failures_in_row_; }

 private:
  HealthRules rules_;
  bool up_ = false;       // a service starts DOWN until its first probe succeeds, as NetScaler's do
  bool known_ = false;    // no verdict yet: the first probe decides alone
  std::uint32_t window_ = 0;  // last `retries` outcomes, bit 0 newest, 1 = failed
  int seen_ = 0;
  int failures_in_row_ = 0;
  int successes_in_row_ = 0;
};

/// The DHCP configuration (options 66 and 67) for `format` "isc", "kea" or "dnsmasq"; nullopt for another.
std::optional<std::string> dhcp_config(std::string_view format, std::string_view next_server, std::string_view boot_file);

}  // namespace deskfarm::tftp_lb
