#pragma once
// The PVS bootstrap file (ARDBP32.BIN analogue): what a device's firmware needs to find its login servers.
// Format (text, checksummed): libs/bootstrap/README.md.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace deskfarm::bootstrap {

/// Magic first token of every bootstrap file.
inline constexpr std::string_view magic = "DESKFARM-BOOTSTRAP";
/// The only format version this library writes and reads.
inline constexpr std::uint32_t format_version = 1;
/// Largest bootstrap file accepted (a firmware buffer, like ARDBP32.BIN's fixed size).
inline constexpr std::size_t max_size = 4096;
/// Login servers a bootstrap may carry (as the BDM ISO and ARDBP32.BIN do).
inline constexpr std::size_t max_login_servers = 4;

/// One login (streaming) server: an IPv4 literal or DNS name, and a TCP port.
struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  bool operator==(const Endpoint&) const = default;
};

/// How the device gets its IP address.
enum class Addressing { dhcp, static_ip };

/// Static addressing (used when addressing == static_ip); IPv4 dotted quads.
struct StaticAddress {
  std::string ip;
  std::string mask;
  std::string gateway;
  std::string dns;  ///< may be empty
  bool operator==(const StaticAddress&) const = default;
};

/// What the firmware does when every login server stays silent past login_general_timeout_ms.
enum class Recovery { reboot_to_hd, restore_network };

/// Everything a bootstrap file carries.
struct Bootstrap {
  std::uint32_t version = 1;                  ///< configuration serial; a device logs which one it booted
  std::vector<Endpoint> login_servers;        ///< 1..4, tried in this (failover) order
  Addressing addressing = Addressing::dhcp;
  StaticAddress static_address;               ///< only with Addressing::static_ip
  std::uint32_t login_polling_timeout_ms = 5000;   ///< wait per server before trying the next (1000..300000)
  std::uint32_t login_general_timeout_ms = 30000;  ///< give up on the whole list after this (1000..3600000)
  Recovery recovery = Recovery::restore_network;
  std::uint32_t recovery_time_s = 50;         ///< restore_network: wait this long, then retry (0..86400)
  bool verbose = false;
  bool interrupt_safe = false;
  bool advanced_memory = true;
  bool operator==(const Bootstrap&) const = default;
};

/// A bootstrap that cannot be written, or bytes that are not a valid bootstrap.
/// `field` names the key at fault ("" for framing), `line` is 1-based (0 = whole file), `offset` a byte offset.
class BootstrapError : public std::runtime_error {
 public:
  BootstrapError(std::string field, std::size_t line, std::size_t offset, const std::string& message);
  const std::string& field() const { return field_; }
  std::size_t line() const { return line_; }
  std::size_t offset() const { return offset_; }

 private:
  std::string field_;
  std::size_t line_;
  std::size_t offset_;
};

/// Empty when `b` can be encoded, else what is wrong, naming the field.
std::string validate(const Bootstrap& b);
/// The file's bytes; throws BootstrapError (line 0) when validate() fails.
std::string encode(const Bootstrap& b);
/// Parses and verifies a file; throws BootstrapError naming the field, line and byte offset.
Bootstrap parse(std::string_view bytes);
/// Appends the checksum line to `body` (everything up to the sha256 line); for tests and tools that craft files.
std::string seal(std::string_view body);
/// Parses "host:port" as a login server; throws BootstrapError(field) on a bad host or port.
Endpoint parse_endpoint(std::string_view text, const std::string& field = "login_server");

std::string to_string(Addressing a);
std::string to_string(Recovery r);

}  // namespace deskfarm::bootstrap
