#pragma once
// The TFTP name under which a login server (pvs) serves a device's iPXE boot script, and which the Boot Device
// Manager's iPXE asks for: the name carries what the device reports about itself (its MAC, its boot record's
// version), because under NAT (QEMU user networking, a TFTP load balancer) the sender's address names no device.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace deskfarm::bootstrap {

/// What a device's request name says.
struct BootScriptRequest {
  std::uint32_t version = 0;  ///< the boot record's version (the BDM image's bootstrap version)
  std::string mac;            ///< "52:54:00:12:34:56": lower case, colons
};

/// "deskfarm/v<version>/<mac>/boot.ipxe"; `mac` is written as given (the ISO passes iPXE's
/// "${net0/mac:hexhyp}", which iPXE expands to "52-54-00-12-34-56").
std::string boot_script_name(std::uint32_t version, std::string_view mac);

/// The request a name made by boot_script_name() carries (MAC with ':' or '-', any case; the name's case is
/// ignored, as TFTP servers on Windows ignore it); nullopt for any other name.
std::optional<BootScriptRequest> parse_boot_script_name(std::string_view name);

}  // namespace deskfarm::bootstrap
