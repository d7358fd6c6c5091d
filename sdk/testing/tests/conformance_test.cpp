// The conformance suite's generic part, run against plugins that pass it and one that does not.
#include <catch2/catch.hpp>

#include <deskfarm/testing/conformance_catch.hpp>

namespace {

namespace conformance = deskfarm::testing::conformance;

conformance::Subject subject(std::string plugin, std::string instance, std::string body = "") {
  conformance::Subject s;
  s.plugin = plugin;
  s.instance = instance;
  s.manifest_toml = "[instances." + instance + "]\nplugin = \"" + plugin + "\"\n" + body;
  s.options.plugin_path = {PLUGIN_DIR, FIXTURE_PLUGIN_DIR};
  return s;
}

conformance::Subject hello() { return subject("hello", "greeter", "interval_s = 5\n"); }
conformance::Subject adder() { return subject("fixture_service", "adder"); }

bool has_check(const conformance::Findings& findings, const std::string& words) {
  for (const auto& f : findings) {
    if (f.check.find(words) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

DESKFARM_CONFORMANCE_SUITE("hello (the SDK example)", hello)
DESKFARM_CONFORMANCE_SUITE("fixture_service", adder)

TEST_CASE("the conformance suite reports a plugin that fails to start and a role it does not provide") {
  const auto findings = conformance::run(subject("fixture_throwing_start", "boom"));
  CHECK(has_check(findings, "it starts"));
  CHECK(has_check(findings, "second deployment"));
  CHECK(!has_check(findings, "descriptor and config schema"));
  auto s = hello();
  s.roles = {"hypervisor"};
  const auto roles = conformance::run(s);
  REQUIRE(roles.size() == 1);
  CHECK_THAT(roles[0].problem, Catch::Contains("does not list 'hypervisor'"));
}
