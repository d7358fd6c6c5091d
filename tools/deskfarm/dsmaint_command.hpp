#pragma once
// `deskfarm dsmaint refreshlhc|recreatelhc`: the local host caches of a running farm's ima servers, refreshed from
// the data store or rebuilt, through the admin endpoint.
#include <chrono>
#include <string>

#include "cli_common.hpp"

namespace deskfarm::cli {

/// `action` is "refreshlhc" or "recreatelhc"; `instance` names one ima instance ("": every running one). Prints
/// each cache and its servers; returns 0, 1 (a refresh failed, or no such ima instance), 2 (unknown action) or 5
/// (unreachable).
int cmd_dsmaint(const std::string& action, const std::string& instance, const AdminTarget& target,
                std::chrono::milliseconds timeout);

}  // namespace deskfarm::cli
