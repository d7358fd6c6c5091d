// The controller and its agents as an operator runs them: the real `deskfarm` binary on a manifest with a
// simulated XenServer pool (no firmware), two controllers and the desktop agents, on the real clock; requests
// through `deskfarm request`.
#include <csignal>

#include <catch2/catch.hpp>

#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

namespace {
using namespace std::chrono_literals;
using namespace deskfarm::testing;
const std::string bin = DESKFARM_BIN;
}  // namespace

TEST_CASE("a farm of a hypervisor, two controllers and agents: desktops start, register and are brokered") {
  TempDir dir;
  const auto file = dir / "farm.toml";
  const std::string group =
      "groups = [{ name = \"pool\", kind = \"pooled-random\", desktops = [\"desktop-*\"], hypervisor = \"hv\", "
      "idle_peak = 3, idle_business = 3, idle_off_hours = 3 }]\npool_interval_s = 1\nfarm_key = \"e2e-key\"\n";
  write_text(file, "[deployment]\nname = \"farm\"\nstate_dir = \"" + (dir / "var").string() + "\"\nadmin = \"127.0.0.1:0\"\n\n"
                   "[instances.hv]\nplugin = \"hypervisor-xen\"\nvms = [{ template = \"desktop\", count = 4, prefix = \"desktop-\" }]\n"
                   "latencies = [{ action = \"start\", distribution = \"constant\", ms = 100 }]\n\n"
                   "[instances.ddc-1]\nplugin = \"ddc\"\n" + group + "\n[instances.ddc-2]\nplugin = \"ddc\"\n" + group +
                   "\n[instances.agents]\nplugin = \"vda\"\ncontrollers = [\"ddc-1\", \"ddc-2\"]\nfarm_key = \"e2e-key\"\n");
  REQUIRE(run_child({bin, "check", file.string()}, 20s).exit_code == 0);
  ChildProcess run({bin, "run", file.string()}, dir / "run.log");
  // The pool master starts three desktops (its idle target); their agents register with either controller.
  REQUIRE(eventually([&] {
    auto g = run_child({bin, "request", "ddc.ddc-2.admin.groups", "{}", file.string()}, 10s);
    return g.exit_code == 0 && g.out.find("\"idle\":3") != std::string::npos;
  }, 30s));
  auto d = run_child({bin, "request", "ddc.ddc-2.admin.broker", R"({"user":"alice","endpoint":"laptop"})", file.string()}, 10s);
  INFO(d.out << d.err);
  CHECK(d.exit_code == 0);
  CHECK(d.out.find("\"outcome\":\"connect\"") != std::string::npos);
  CHECK(d.out.find("idle in group pool") != std::string::npos);
  auto desks = run_child({bin, "request", "ddc.ddc-1.admin.desktops", R"({"user":"alice"})", file.string()}, 10s);
  CHECK(desks.out.find("\"session_state\":\"active\"") != std::string::npos);
  auto status = run_child({bin, "status", file.string()}, 10s);
  CHECK(status.out.find("\"master\": true") != std::string::npos);
  CHECK(run.terminate(15s) == 0);
  const auto log = read_text(dir / "run.log");
  CHECK(log.find("pool pool (") != std::string::npos);
  CHECK(log.find(" error ") == std::string::npos);
}
