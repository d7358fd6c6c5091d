#pragma once
// Discovery: which instances provide a role, and how to reach them.
#include <map>
#include <string>
#include <vector>

#include "deskfarm/sdk/record.hpp"

namespace deskfarm::sdk {

/// One instance of the deployment as others see it. `endpoints` are what it advertised while starting
/// (for pvs: "tftp" → "127.0.0.1:6969", "stream" → "127.0.0.1:10809").
struct InstanceInfo {
  static constexpr std::string_view type_name = "deskfarm.kernel.InstanceInfo";
  static constexpr std::uint32_t type_version = 1;
  std::string name;
  std::string plugin;
  std::vector<std::string> roles;
  std::map<std::string, std::string> endpoints;
  std::string state;  ///< "running" once up; "stopped" in a down event
  static constexpr auto fields() {
    return std::tuple{field("name", &InstanceInfo::name), field("plugin", &InstanceInfo::plugin),
                      field("roles", &InstanceInfo::roles), field("endpoints", &InstanceInfo::endpoints),
                      field("state", &InstanceInfo::state)};
  }
};

/// The kernel publishes an InstanceInfo on `kernel.instance.up` after an instance's start() returned and on
/// `kernel.instance.down` before its stop() runs.
inline constexpr const char* instance_up_subject = "kernel.instance.up";
inline constexpr const char* instance_down_subject = "kernel.instance.down";

}  // namespace deskfarm::sdk
