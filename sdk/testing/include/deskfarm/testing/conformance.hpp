#pragma once
// The per-role conformance suite: checks every plugin must pass, then the checks of each role it provides.
// Framework-neutral: each check returns the problems it found (empty: passed), so any test framework can report
// them; conformance_catch.hpp turns them into Catch2 test cases. The checks are compiled into the test kit
// (libdeskfarm-testing).
//
// A third party runs it against its own plugin (see sdk/README.md, "Conformance suite"):
//
//   deskfarm::testing::conformance::Subject s;
//   s.plugin = "myhv";  s.instance = "hv-1";  s.roles = {"hypervisor"};
//   s.manifest_toml = "[instances.hv-1]\nplugin = \"myhv\"\nendpoint = \"127.0.0.1:0\"\n";
//   for (const auto& f : deskfarm::testing::conformance::run(s)) std::cerr << f.check << ": " << f.problem << "\n";
//
// Role checks: check_hypervisor drives an adapter through the hypervisor contract (see its comment for what the
// subject's manifest must give); the other roles are skeletons that check only that the plugin declares the
// role. The issue of each role fills its function in.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <deskfarm/testing/harness.hpp>

namespace deskfarm::testing::conformance {

/// The plugin under test: a manifest with (at least) one instance of it, and which roles to check.
struct Subject {
  std::string plugin;         ///< the plugin's name (NAME.so)
  std::string instance;       ///< the instance of it in manifest_toml
  std::string manifest_toml;  ///< everything it needs to start: its config, and instances of the roles it requires
  std::vector<std::string> roles;  ///< roles to check; empty: every role the plugin provides
  HarnessOptions options;     ///< plugin_path etc.
};

/// One failed check: which, and what is wrong.
struct Finding {
  std::string check;
  std::string problem;
};
using Findings = std::vector<Finding>;

/// What every plugin must do, whatever its roles.
DESKFARM_TESTING_API Findings check_every_plugin(const Subject& s);

/// The checks of one role: `check_role(role, subject)`. Every role shares role_declared(); the issue that
/// specifies a role adds its checks to that role's function.
DESKFARM_TESTING_API Findings role_declared(const Subject& s, const std::string& role);

/// Hypervisor (sdk/interfaces/hypervisor): the contract every adapter keeps, on the virtual clock. The
/// subject's manifest gives the instance at least two up hosts, a first template that is HA-protected and fits a
/// host, hosts small enough that 256 VMs of that template do not fit, and a throttle (max_in_progress > 0).
DESKFARM_TESTING_API Findings check_hypervisor(const Subject& s);
/// PVS (sdk/interfaces/pvs): skeleton; plugins/pvs/tests holds the behaviour the contract must keep.
DESKFARM_TESTING_API Findings check_pvs(const Subject& s);
/// TFTP (sdk/interfaces/tftp): skeleton.
DESKFARM_TESTING_API Findings check_tftp(const Subject& s);

/// The role checks by role name; a role without an entry gets role_declared() only.
DESKFARM_TESTING_API const std::map<std::string, std::function<Findings(const Subject&)>>& role_checks();
DESKFARM_TESTING_API Findings check_role(const Subject& s, const std::string& role);

/// The whole suite: check_every_plugin, then check_role for each of the subject's roles (by default, every
/// role the plugin provides).
DESKFARM_TESTING_API Findings run(const Subject& s);

}  // namespace deskfarm::testing::conformance
