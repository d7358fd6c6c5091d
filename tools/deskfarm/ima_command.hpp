#pragma once
// `deskfarm querydc [-e]` and `deskfarm queryds`: the zone data collectors of a running farm and the dynamic data
// they hold, asked through the admin endpoint of a deployment that runs an ima instance.
#include <chrono>
#include <string>

#include "cli_common.hpp"

namespace deskfarm::cli {

/// `command` is "querydc" or "queryds"; `elect` (querydc -e) first runs an election in the zone of the first ima
/// instance. Prints tables on stdout; returns 0, 1 (a request failed or no ima instance runs) or 5 (unreachable).
int cmd_ima(const std::string& command, bool elect, const AdminTarget& target, std::chrono::milliseconds timeout);

}  // namespace deskfarm::cli
