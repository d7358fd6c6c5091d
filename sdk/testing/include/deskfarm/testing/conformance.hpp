#pragma once
// The per-role conformance suite: checks every plugin must pass, then the checks of each role it provides.
// Framework-neutral and header-only: each check returns the problems it found (empty: passed), so any test
// framework can report them; conformance_catch.hpp turns them into Catch2 test cases.
//
// A third party runs it against its own plugin (see sdk/README.md, "Conformance suite"):
//
//   deskfarm::testing::conformance::Subject s;
//   s.plugin = "myhv";  s.instance = "hv-1";  s.roles = {"hypervisor"};
//   s.manifest_toml = "[instances.hv-1]\nplugin = \"myhv\"\nendpoint = \"127.0.0.1:0\"\n";
//   for (const auto& f : deskfarm::testing::conformance::run(s)) std::cerr << f.check << ": " << f.problem << "\n";
//
// Role checks: the roles below are skeletons that check only what every role shares (the plugin declares it
// provides the role and answers status while serving it). The issue of each role fills its function in.
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

namespace detail {

inline std::string instance_state(Harness& h, const std::string& instance) {
  const auto status = h.status();
  const auto* list = status.find("instances");
  if (!list || !list->is_array()) return "";
  for (const auto& i : list->as_array()) {
    const auto* name = i.find("name");
    const auto* state = i.find("state");
    if (name && name->is_string() && name->as_string() == instance && state && state->is_string()) return state->as_string();
  }
  return "";
}

/// Log lines at level error that name `instance` (the kernel's "instance X ..." lines and the plugin's own).
inline std::vector<std::string> error_lines(const Harness& h, const std::string& instance) {
  std::vector<std::string> out;
  for (const auto& l : h.logs()) {
    if (l.find(" error ") != std::string::npos && l.find(instance) != std::string::npos) out.push_back(l);
  }
  return out;
}

/// Runs `body`, turning an exception into a finding of `check`.
inline void guarded(Findings& out, const std::string& check, const std::function<void(Findings&)>& body) {
  try {
    body(out);
  } catch (const std::exception& e) {
    out.push_back({check, e.what()});
  }
}

}  // namespace detail

/// What every plugin must do, whatever its roles.
inline Findings check_every_plugin(const Subject& s) {
  Findings out;
  const std::string described = "the plugin loads and its descriptor and config schema pass the kernel's checks";
  detail::guarded(out, described, [&](Findings& f) {
    const auto info = Harness::describe(s.plugin, s.options.plugin_path);
    if (info.name != s.plugin) f.push_back({described, "the descriptor names the plugin '" + info.name + "'"});
    if (info.version.empty()) f.push_back({described, "the descriptor has no version"});
    if (info.summary.empty()) f.push_back({described, "the descriptor has no summary (deskfarm plugins shows it)"});
    for (const auto& k : info.config) {
      if (k.description.empty()) f.push_back({described, "config key '" + k.name + "' has no description (deskfarm describe shows it)"});
    }
  });

  const std::string lifecycle = "it starts, reports status and metrics, and stops cleanly";
  detail::guarded(out, lifecycle, [&](Findings& f) {
    Harness h(s.manifest_toml, s.options);
    h.start();
    if (detail::instance_state(h, s.instance) != "running")
      f.push_back({lifecycle, "instance " + s.instance + " is not running after start(); state '" +
                                  detail::instance_state(h, s.instance) + "'"});
    const auto fields = h.instance_status(s.instance);
    if (!fields.is_object()) f.push_back({lifecycle, "status() wrote " + fields.to_json() + ", not an object"});
    if (h.metrics_text().find("deskfarm_instances") == std::string::npos)
      f.push_back({lifecycle, "metrics_text() lacks the kernel's deskfarm_instances family"});
    h.stop();
    if (!h.logged("instance " + s.instance + " stopped")) f.push_back({lifecycle, "no log line says instance " + s.instance + " stopped"});
    for (const auto& l : detail::error_lines(h, s.instance)) f.push_back({lifecycle, "logged an error: " + l});
  });

  const std::string restart = "a second deployment on the same state_dir starts (state survives a restart)";
  detail::guarded(out, restart, [&](Findings&) {
    HarnessOptions o = s.options;
    Harness first(s.manifest_toml, o);
    o.state_dir = first.state_dir();
    first.start();
    first.stop();
    Harness second(s.manifest_toml, o);
    second.start();
    second.stop();
  });

  const std::string unknown = "an unknown request on its subjects is answered or times out; the instance keeps running";
  detail::guarded(out, unknown, [&](Findings& f) {
    Harness h(s.manifest_toml, s.options);
    h.start();
    const auto info = Harness::describe(s.plugin, s.options.plugin_path);
    std::vector<std::string> prefixes = info.provides;
    prefixes.push_back(s.plugin);
    for (const auto& prefix : prefixes) {
      const std::string subject = prefix + "." + s.instance + ".conformance-unknown";
      const auto a = h.json_request(subject, R"({"conformance":true})", std::chrono::milliseconds(500));
      if (a.ok) f.push_back({unknown, subject + " was answered as if it were a request it knows: " + a.body});
      for (const std::string bad : {"{}", "[]", "null"}) (void)h.json_request(subject, bad, std::chrono::milliseconds(200));
    }
    if (detail::instance_state(h, s.instance) != "running")
      f.push_back({unknown, "instance " + s.instance + " is no longer running after unknown requests"});
    (void)h.instance_status(s.instance);  // its executor still answers
  });
  return out;
}

/// The checks of one role: `check_role(role, subject)`. Every role shares role_declared(); the issue that
/// specifies a role adds its checks to that role's function.
inline Findings role_declared(const Subject& s, const std::string& role) {
  Findings out;
  const std::string check = "the plugin declares that it provides role " + role;
  detail::guarded(out, check, [&](Findings& f) {
    const auto info = Harness::describe(s.plugin, s.options.plugin_path);
    bool found = false;
    for (const auto& r : info.provides) found = found || r == role;
    if (!found) f.push_back({check, "plugin " + s.plugin + " does not list '" + role + "' in its provides roles"});
  });
  return out;
}

/// Hypervisor (sdk/interfaces/hypervisor): skeleton. The hypervisor issue adds: inventory answers, a VM
/// created is listed, power operations are idempotent, unknown VMs answer "not_found", events are published.
inline Findings check_hypervisor(const Subject& s) { return role_declared(s, "hypervisor"); }
/// PVS (sdk/interfaces/pvs): skeleton; plugins/pvs/tests holds the behaviour the contract must keep.
inline Findings check_pvs(const Subject& s) { return role_declared(s, "pvs"); }
/// TFTP (sdk/interfaces/tftp): skeleton.
inline Findings check_tftp(const Subject& s) { return role_declared(s, "tftp"); }

/// The role checks by role name; a role without an entry gets role_declared() only.
inline const std::map<std::string, std::function<Findings(const Subject&)>>& role_checks() {
  static const std::map<std::string, std::function<Findings(const Subject&)>> checks{
      {"hypervisor", check_hypervisor}, {"pvs", check_pvs}, {"tftp", check_tftp}};
  return checks;
}

inline Findings check_role(const Subject& s, const std::string& role) {
  const auto& checks = role_checks();
  if (auto it = checks.find(role); it != checks.end()) return it->second(s);
  return role_declared(s, role);
}

/// The whole suite: check_every_plugin, then check_role for each of the subject's roles (by default, every
/// role the plugin provides).
inline Findings run(const Subject& s) {
  Findings out = check_every_plugin(s);
  std::vector<std::string> roles = s.roles;
  if (roles.empty()) {
    try {
      roles = Harness::describe(s.plugin, s.options.plugin_path).provides;
    } catch (const std::exception&) {
      // already reported by check_every_plugin
    }
  }
  for (const auto& role : roles) {
    auto found = check_role(s, role);
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
}

}  // namespace deskfarm::testing::conformance
