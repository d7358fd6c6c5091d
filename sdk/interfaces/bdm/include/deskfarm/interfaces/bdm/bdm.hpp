#pragma once
// The bdm role's contract: a Boot Device Manager instance writes a bootable ISO that sends desktops to their login
// servers, and tells where it is (for a hypervisor adapter's ISO library).
#include <cstdint>
#include <string>
#include <vector>

#include <deskfarm/sdk/service.hpp>

namespace deskfarm::interfaces::bdm {

using sdk::field;

/// Reply of `iso.build`: the image the instance wrote (and its status shows).
struct IsoImage {
  static constexpr std::string_view type_name = "deskfarm.bdm.IsoImage";
  static constexpr std::uint32_t type_version = 1;
  std::string path;                      ///< absolute path of the ISO (in the instance's state directory)
  std::int64_t size = 0;                 ///< bytes
  std::string sha256;                    ///< lower-case hex of the whole image
  std::int64_t bootstrap_version = 0;    ///< the configuration serial the image carries
  std::vector<std::string> login_servers;  ///< "host:port", failover order
  static constexpr auto fields() {
    return std::tuple{field("path", &IsoImage::path), field("size", &IsoImage::size),
                      field("sha256", &IsoImage::sha256), field("bootstrap_version", &IsoImage::bootstrap_version),
                      field("login_servers", &IsoImage::login_servers)};
  }
};

/// Admin requests: bdm.<instance>.admin.<action>: "iso.build" (sdk::Empty → IsoImage) writes the image again (same
/// configuration, same bytes) and answers where it is.
inline std::string admin_subject(std::string_view instance, std::string_view action) {
  return "bdm." + std::string(instance) + ".admin." + std::string(action);
}

}  // namespace deskfarm::interfaces::bdm
