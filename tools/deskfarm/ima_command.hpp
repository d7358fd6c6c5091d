#pragma once
// `deskfarm querydc [-e]` and `deskfarm queryds`: the zone data collectors of a running farm and the dynamic data
// they hold, asked through the admin endpoint of a deployment that runs an ima instance; the helpers `deskfarm
// dsmaint` shares with them.
#include <chrono>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <Poco/Exception.h>

#include "cli_common.hpp"

namespace deskfarm::cli {

/// `command` is "querydc" or "queryds"; `elect` (querydc -e) first runs an election in the zone of the first ima
/// instance. Prints tables on stdout; returns 0, 1 (a request failed or no ima instance runs) or 5 (unreachable).
int cmd_ima(const std::string& command, bool elect, const AdminTarget& target, std::chrono::milliseconds timeout);

/// One admin call through the shared client: the body, or nullopt after printing why (then `code` says failed or
/// unreachable).
template <class Call>
std::optional<std::string> admin_call(const AdminClient& admin, const std::string& what, Call call, int& code) {
  try {
    const HttpAnswer a = call();
    if (a.status == 200) return a.body;
    std::cerr << "deskfarm: " << what << " failed: " << a.body << "\n";
    code = runtime_failure;
  } catch (const Poco::Exception& e) {
    std::cerr << "deskfarm: cannot reach the admin endpoint at " << admin.address() << ": " << e.displayText() << "\n";
    code = unreachable;
  }
  return std::nullopt;
}

}  // namespace deskfarm::cli
