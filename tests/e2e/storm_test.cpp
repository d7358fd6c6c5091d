// `deskfarm storm` as an operator runs it: a deployment (simulated XenServer pool, two controllers, the desktop
// agents, a licence server) started by the real binary on the real clock, then the storm against its admin
// endpoint; the assertions read the storm's JSON summary.
#include <csignal>

#include <catch2/catch.hpp>

#include <deskfarm/sdk/value.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

namespace {
using namespace std::chrono_literals;
using namespace deskfarm::testing;
using deskfarm::sdk::Value;
const std::string bin = DESKFARM_BIN;

/// A farm of `desktops` desktops (the pool service keeps 40 idle), two controllers and `licenses` licences.
std::string farm_toml(const TempDir& dir, int desktops, int licenses) {
  const std::string group =
      "groups = [{ name = \"pool\", kind = \"pooled-random\", desktops = [\"desktop-*\"], hypervisor = \"hv\", "
      "idle_peak = 40, idle_business = 40, idle_off_hours = 40 }]\npool_interval_s = 1\nmax_starts_per_tick = 50\n"
      "farm_key = \"storm-key\"\nlicense = \"lic\"\n";
  return "[deployment]\nname = \"farm\"\nstate_dir = \"" + (dir / "var").string() + "\"\nadmin = \"127.0.0.1:0\"\n\n"
         "[instances.hv]\nplugin = \"hypervisor-xen\"\nmax_vms = " + std::to_string(desktops) + "\n"
         "hosts = [{ id = \"host-1\", memory_mb = 1048576, vcpus = 1024 }]\n"
         "vms = [{ template = \"desktop\", count = " + std::to_string(desktops) + ", prefix = \"desktop-\" }]\n"
         "latencies = [{ action = \"start\", distribution = \"constant\", ms = 50 }]\n\n"
         "[instances.lic]\nplugin = \"license\"\nfarms = [{ name = \"farm\", licenses = " + std::to_string(licenses) + " }]\n\n"
         "[instances.ddc-1]\nplugin = \"ddc\"\n" + group + "\n[instances.ddc-2]\nplugin = \"ddc\"\n" + group +
         "\n[instances.agents]\nplugin = \"vda\"\ncontrollers = [\"ddc-1\", \"ddc-2\"]\nfarm_key = \"storm-key\"\n";
}

/// The farm running as a child process, stopped by its PID (SIGTERM) at the end of the test.
struct RunningFarm {
  RunningFarm(const TempDir& dir, int desktops, int licenses) : file(dir / "farm.toml") {
    write_text(file, farm_toml(dir, desktops, licenses));
    run = std::make_unique<ChildProcess>(std::vector<std::string>{bin, "run", file.string()}, dir / "run.log");
    // Ready when the pool service has its idle desktops registered.
    ready = eventually([&] {
      auto g = run_child({bin, "request", "ddc.ddc-1.admin.groups", "{}", file.string()}, 10s);
      return g.exit_code == 0 && g.out.find("\"idle\":40") != std::string::npos;
    }, 60s);
  }
  ~RunningFarm() {
    run->terminate(20s);
  }
  std::int64_t figure(const Value& summary, const char* name) const {
    const Value* v = summary.find(name);
    return v && v->is_integer() ? v->as_integer() : -999;
  }
  std::filesystem::path file;
  std::unique_ptr<ChildProcess> run;
  bool ready = false;
};

}  // namespace

TEST_CASE("a logon storm of 200 users: each brokered through one of two controllers, licences back to 0 after it") {
  TempDir dir;
  RunningFarm farm(dir, 260, 300);
  REQUIRE(farm.ready);
  auto r = run_child({bin, "storm", farm.file.string(), "--users", "200", "--rate", "100/s", "--session", "1s", "--away", "500ms",
                      "--disconnect-ratio", "0.2", "--reconnect-ratio", "0.5", "--json", "-"},
                     120s);
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  const auto s = Value::parse_json(r.out);
  CHECK(farm.figure(s, "users") == 200);
  CHECK(farm.figure(s, "brokered") == 200);
  CHECK(farm.figure(s, "refused") == 0);
  CHECK(farm.figure(s, "failed") == 0);
  CHECK(farm.figure(s, "unfinished") == 0);
  CHECK(farm.figure(s, "decisions") >= 200);
  CHECK(farm.figure(s, "disconnected") > 0);
  CHECK(farm.figure(s, "reconnected") > 0);
  CHECK(farm.figure(s, "sessions_lost") == 0);
  CHECK(farm.figure(s, "licenses_peak") > 0);
  CHECK(farm.figure(s, "licenses_peak") <= 200);
  CHECK(farm.figure(s, "licenses_end") == 0);
  CHECK(farm.figure(s, "licenses_total") == 300);
  CHECK(farm.figure(s, "pool_starts") >= 40);  // at least the idle target, started by the pool service
  CHECK(s.find("controllers")->size() == 2);
  CHECK(s.find("broker_p99_ms")->as_number() > 0);
  // Not a terminal: the progress line comes once a second.
  CHECK(r.err.find("200/200 arrived") != std::string::npos);
}

TEST_CASE("a storm with fewer licences than users: the refusals are counted by reason, and fail it only when not expected") {
  TempDir dir;
  RunningFarm farm(dir, 260, 50);
  REQUIRE(farm.ready);
  // 200 users in 2 s, each holding 3 s: more users at once than the 50 licences.
  auto r = run_child({bin, "storm", farm.file.string(), "--users", "200", "--rate", "100/s", "--session", "3s", "--disconnect-ratio", "0",
                      "--json", "-"},
                     120s);
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  const auto s = Value::parse_json(r.out);
  const auto refused = farm.figure(s, "refused");
  CHECK(refused > 0);
  CHECK(farm.figure(s, "brokered") + refused == 200);
  CHECK(s.find("refusals")->find("no_license") != nullptr);
  CHECK(s.find("refusals")->find("no_license")->as_integer() == refused);
  CHECK(farm.figure(s, "licenses_peak") <= 50);
  CHECK(farm.figure(s, "licenses_end") == 0);
  CHECK(farm.figure(s, "failed") == 0);

  // The same storm when no refusal is expected: the users refused a licence fail it (exit 1), named in the text.
  auto strict = run_child({bin, "storm", farm.file.string(), "--users", "200", "--rate", "100/s", "--session", "3s", "--disconnect-ratio",
                           "0", "--first-user", "1001", "--expect-refusals", "maintenance"},
                          120s);
  INFO(strict.out << strict.err);
  CHECK(strict.exit_code == 1);
  CHECK(strict.out.find("refused_no_license=") != std::string::npos);
}

TEST_CASE("deskfarm storm says what is wrong with its options and with an unreachable deployment") {
  TempDir dir;
  write_text(dir / "farm.toml", farm_toml(dir, 4, 4));
  auto bad_rate = run_child({bin, "storm", (dir / "farm.toml").string(), "--rate", "lots"}, 20s);
  CHECK(bad_rate.exit_code == 2);
  CHECK(bad_rate.err.find("--rate 'lots'") != std::string::npos);
  auto not_running = run_child({bin, "storm", (dir / "farm.toml").string()}, 20s);
  CHECK(not_running.exit_code == 5);
  CHECK(not_running.err.find("is not running") != std::string::npos);
  auto help = run_child({bin, "storm", "--help"}, 20s);
  CHECK(help.exit_code == 0);
  CHECK(help.out.find("--disconnect-ratio") != std::string::npos);
}
