#pragma once
// The manifest keys that describe a bootstrap record. pvs (the TFTP bootstrap) and bdm (the boot record on the ISO)
// take the same keys under the same names; both map them onto a Bootstrap here, once.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <deskfarm/bootstrap/bootstrap.hpp>

namespace deskfarm::bootstrap {

/// The values of the bootstrap keys as a plugin's config schema binds them (a plugin's config struct derives from
/// this, so its schema rows bind these members directly).
struct Keys {
  std::vector<std::string> login_servers;  ///< "host:port", failover order
  std::int64_t bootstrap_version = 1;
  std::int64_t login_polling_timeout_ms = 5000;
  std::int64_t login_general_timeout_ms = 30000;
  std::string recovery = "restore_network";  ///< restore_network | reboot_to_hd
  std::int64_t recovery_time_s = 50;
  std::string addressing = "dhcp";  ///< dhcp | static
  std::string static_ip, static_mask, static_gateway, static_dns;
  bool verbose = false;
  bool interrupt_safe = false;
  bool advanced_memory = true;
};

/// A bootstrap key with a value no record can carry; `key()` is the manifest key, what() says why.
class KeyError : public std::runtime_error {
 public:
  KeyError(std::string key, const std::string& message) : std::runtime_error(message), key_(std::move(key)) {}
  const std::string& key() const { return key_; }

 private:
  std::string key_;
};

/// The record the keys describe, checked as validate() checks a record. An empty login_servers is allowed (the
/// caller fills it in or refuses it); everything else that is wrong throws KeyError naming the manifest key.
Bootstrap from_keys(const Keys& keys);

}  // namespace deskfarm::bootstrap
