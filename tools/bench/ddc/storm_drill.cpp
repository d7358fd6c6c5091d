// storm_drill: the controller-kill drill. Two `deskfarm run` processes share one nats-server: A runs the simulated
// XenServer pool, the licence server, the desktop agents and controller ddc-1; B runs controller ddc-2 only (same
// farm, same farm key). N desktops start and register (spread over both controllers by the agents' ListOfDDCs
// order). Then two logon storms (`deskfarm storm`'s engine, through A's admin endpoint): one as the baseline, and
// one during which B is killed with SIGKILL halfway through the arrivals. Reported: how long until every agent is
// registered with the survivor, sessions dropped, desktops in use that lost their owner, the storm's p50/p99
// before and after the kill, and the ratios against the baseline measured in the same run. Not a test; figures
// in docs/benchmarks.md.
//
// Real clock: the two processes' clocks must agree (heartbeats, the farm key's replay window), and a virtual clock
// runs per process, so the drill shortens the heartbeat (heartbeat_s, deregister_after_s) instead.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <deskfarm/interfaces/ddc/ddc.hpp>
#include <deskfarm/sdk/record.hpp>
#include <deskfarm/sdk/value.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/nats.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "../bench_cli.hpp"
#include "storm.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace ddc = deskfarm::interfaces::ddc;
namespace storm = deskfarm::cli::storm;
using deskfarm::cli::AdminClient;
using deskfarm::sdk::Value;
using deskfarm::testing::ChildProcess;
using deskfarm::testing::TempDir;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

/// eventually() with a pause of its own between polls: each poll here reads a whole /status.
template <class F>
bool poll_until(F done, std::chrono::milliseconds limit, std::chrono::milliseconds every) {
  const auto end = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(every);
  }
  return true;
}

struct DrillArgs {
  long long desktops = 10000, users = 2000, heartbeat_s = 5;
  double rate = 200;
  std::string session = "6s", deskfarm, plugin_dir;
};

std::string group_keys(const DrillArgs& a) {
  const auto n = std::to_string(a.desktops);
  return "groups = [{ name = \"pool\", kind = \"pooled-random\", desktops = [\"desktop-*\"], hypervisor = \"hv\", idle_peak = " + n +
         ", idle_business = " + n + ", idle_off_hours = " + n + " }]\npool_interval_s = 1\nmax_starts_per_tick = " + n +
         "\nfarm_key = \"drill\"\nlicense = \"lic\"\nheartbeat_s = " + std::to_string(a.heartbeat_s) +
         "\nderegister_after_s = " + std::to_string(2 * a.heartbeat_s) + "\nrequest_timeout_ms = 2000\n";
}

std::string deployment(const TempDir& dir, const std::string& name, const std::string& nats) {
  return "[deployment]\nname = \"" + name + "\"\nstate_dir = \"" + (dir / name).string() + "\"\nadmin = \"127.0.0.1:0\"\nbus = \"" + nats +
         "\"\n\n";
}

std::string process_a(const TempDir& dir, const std::string& nats, const DrillArgs& a) {
  const std::int64_t hosts = std::max<std::int64_t>(2, a.desktops / 500 + 1);
  std::string host_list;
  for (std::int64_t i = 0; i < hosts; ++i)
    host_list += std::string(host_list.empty() ? "" : ", ") + "{ id = \"host-" + std::to_string(i) + "\", memory_mb = 1048576, vcpus = 1024 }";
  return deployment(dir, "drill-a", nats) + "[instances.hv]\nplugin = \"hypervisor-xen\"\nmax_in_progress = 0\nsave_interval_ms = 3600000\nmax_vms = " +
         std::to_string(a.desktops) + "\nhosts = [" + host_list + "]\nvms = [{ template = \"desktop\", count = " + std::to_string(a.desktops) +
         ", prefix = \"desktop-\" }]\nlatencies = [{ action = \"start\", distribution = \"constant\", ms = 1 }]\n\n"
         "[instances.lic]\nplugin = \"license\"\nfarms = [{ name = \"farm\", licenses = " + std::to_string(a.users * 2) + " }]\n\n"
         "[instances.ddc-1]\nplugin = \"ddc\"\n" + group_keys(a) +
         "\n[instances.agents]\nplugin = \"vda\"\ncontrollers = [\"ddc-1\", \"ddc-2\"]\nfarm_key = \"drill\"\nrequest_timeout_ms = 2000\nretry_s = 1\n";
}

std::string process_b(const TempDir& dir, const std::string& nats, const DrillArgs& a) {
  return deployment(dir, "drill-b", nats) + "[instances.ddc-2]\nplugin = \"ddc\"\n" + group_keys(a);
}

std::string admin_address(const TempDir& dir, const std::string& name) {
  std::ifstream in(dir / name / "admin.address");
  std::string a;
  in >> a;
  return a;
}

/// The agents' own count of registrations per controller (vda's status), from A's /status.
std::map<std::string, std::int64_t> agents_per_controller(const AdminClient& admin) {
  std::map<std::string, std::int64_t> out;
  try {
    const auto st = Value::parse_json(admin.get("/status", 10s).body);
    for (const auto& i : st.find("instances")->as_array()) {
      if (i.find("name")->as_string() != "agents") continue;
      if (const Value* per = i.find("fields") ? i.find("fields")->find("per_controller") : nullptr)
        for (const auto& [c, n] : per->as_object()) out[c] = n.as_integer();
    }
  } catch (const std::exception&) {
  }
  return out;
}

/// Desktops with a session (active or disconnected) whose owner in the survivor's view is not a registered ddc-1.
std::int64_t orphaned_sessions(const AdminClient& admin, std::int64_t& with_session) {
  const auto a = admin.request(ddc::subject("ddc-1", "admin.desktops"), "{}", 30s);
  const auto list = deskfarm::sdk::from_value<ddc::DesktopList>(Value::parse_json(a.body), "DesktopList");
  std::int64_t orphans = 0;
  with_session = 0;
  for (const auto& d : list.desktops) {
    if (d.session_state == ddc::kNoSession && d.assigned_to.empty()) continue;
    ++with_session;
    if (d.registration != ddc::kRegistered || d.controller != "ddc-1") ++orphans;
  }
  return orphans;
}

storm::Latency window(const storm::Summary& s, double from_ms, double to_ms) {
  std::vector<double> ms;
  for (const auto& x : s.samples)
    if (x.at_ms >= from_ms && x.at_ms < to_ms && (x.outcome == "connect" || x.outcome == "starting" || x.outcome == "refused"))
      ms.push_back(x.latency_ms);
  return storm::latency_of(ms);
}

storm::Options storm_options(const DrillArgs& a, std::int64_t first_user) {
  storm::Options o;
  o.users = a.users;
  o.rate_per_s = a.rate;
  o.session = std::chrono::duration_cast<storm::Millis>(deskfarm::cli::parse_duration(a.session, "--session"));
  o.away = 2s;
  o.disconnect_ratio = 0.2;
  o.reconnect_ratio = 0.5;
  o.controllers = {"ddc-1", "ddc-2"};
  o.first_user = first_user;
  o.request_timeout = 5s;
  return o;
}

void print_storm(const char* what, const storm::Summary& s) {
  std::printf("%s: %lld users, %lld brokered, %lld refused, %lld failed, %lld unfinished; %lld decisions (%.0f/s), p50 %.2f ms, p99 %.2f ms; "
              "%lld retried on the other controller; sessions: %lld disconnected, %lld reconnected, %lld lost; licences peak %lld, end %lld\n",
              what, static_cast<long long>(s.users), static_cast<long long>(s.brokered), static_cast<long long>(s.refused),
              static_cast<long long>(s.failed), static_cast<long long>(s.unfinished), static_cast<long long>(s.decisions), s.decisions_per_s(),
              s.broker.p50, s.broker.p99, static_cast<long long>(s.retries_elsewhere), static_cast<long long>(s.disconnected),
              static_cast<long long>(s.reconnected), static_cast<long long>(s.sessions_lost), static_cast<long long>(s.licenses_peak),
              static_cast<long long>(s.licenses_end));
  for (const auto& [kind, n] : s.errors) std::printf("  error %s x%lld: %s\n", kind.c_str(), static_cast<long long>(n), s.error_examples.at(kind).c_str());
}

int run(const DrillArgs& a) {
  const auto nats_program = deskfarm::testing::nats_server_program();
  if (nats_program.empty()) throw std::runtime_error("no nats-server (install the nats-server package, or set DESKFARM_NATS_SERVER)");
  TempDir dir;
  deskfarm::testing::NatsServer nats(nats_program, dir / "nats.log");
  deskfarm::testing::write_text(dir / "a.toml", process_a(dir, nats.url(), a));
  deskfarm::testing::write_text(dir / "b.toml", process_b(dir, nats.url(), a));
  std::vector<std::string> path;
  if (!a.plugin_dir.empty()) path = {"--plugin-path", a.plugin_dir};
  const auto argv = [&](const char* file) {
    std::vector<std::string> v{a.deskfarm, "run", (dir / file).string(), "--log-level", "warning"};
    v.insert(v.end(), path.begin(), path.end());
    return v;
  };
  // B first: ddc-1 (in A) is the pool master either way (the first controller by name).
  auto b = std::make_unique<ChildProcess>(argv("b.toml"), dir / "b.log");
  ChildProcess proc_a(argv("a.toml"), dir / "a.log");
  if (!deskfarm::testing::eventually([&] { return !admin_address(dir, "drill-a").empty(); }, 60s))
    throw std::runtime_error("process A did not start; see its log");
  AdminClient admin({admin_address(dir, "drill-a"), ""});

  const auto t0 = Clock::now();
  std::map<std::string, std::int64_t> per;
  const bool registered = poll_until([&] {
    per = agents_per_controller(admin);
    std::int64_t sum = 0;
    for (const auto& [c, n] : per) sum += n;
    return sum >= a.desktops;
  }, std::chrono::seconds(600), 500ms);
  std::printf("registration: %lld desktops started by the pool service and registered in %.1f s (ddc-1 %lld, ddc-2 %lld)%s\n",
              a.desktops, seconds_since(t0), static_cast<long long>(per["ddc-1"]), static_cast<long long>(per["ddc-2"]),
              registered ? "" : " — NOT all registered within 600 s");
  if (!registered) return 1;

  std::ostringstream quiet;
  const auto baseline = storm::run(storm_options(a, 1), admin, quiet, false);
  print_storm("baseline storm (both controllers)", baseline);

  // The drill storm: kill B halfway through the arrivals, from this thread, while the storm runs on another.
  const double half_ms = static_cast<double>(a.users) * 1000.0 / a.rate / 2;
  storm::Summary drill;
  std::thread runner([&] { drill = storm::run(storm_options(a, 1000001), admin, quiet, false); });
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<long long>(half_ms)));
  const auto killed = Clock::now();
  b->signal(SIGKILL);
  b->wait(10s);
  b.reset();
  double failover_s = -1;
  std::int64_t orphans = -1, with_session = 0, orphans_after = -1;
  // Every agent with the survivor: bounded by 10 heartbeats.
  if (poll_until([&] {
        per = agents_per_controller(admin);
        return per["ddc-1"] >= a.desktops;
      }, std::chrono::seconds(10 * a.heartbeat_s), 200ms)) {
    failover_s = seconds_since(killed);
    orphans = orphaned_sessions(admin, with_session);
  }
  runner.join();
  // Once the storm is over and every session ended, nothing may still point at the dead controller.
  std::int64_t left = 0;
  orphans_after = orphaned_sessions(admin, left);
  print_storm("drill storm (ddc-2's process killed halfway)", drill);
  const auto before = window(drill, 0, half_ms), after = window(drill, half_ms, 1e12);
  std::printf("failover: every agent registered with ddc-1 %.2f s after the kill (heartbeat %lld s; within one heartbeat + retry: %s)\n",
              failover_s, a.heartbeat_s, failover_s >= 0 && failover_s <= static_cast<double>(a.heartbeat_s) + 2 ? "yes" : "NO");
  std::printf("sessions dropped: %lld (lost as the users saw them); desktops with a session whose owner was lost: %lld of %lld at failover, "
              "%lld after the storm\n",
              static_cast<long long>(drill.sessions_lost), static_cast<long long>(orphans), static_cast<long long>(with_session),
              static_cast<long long>(orphans_after));
  std::printf("brokering before the kill: p50 %.2f ms, p99 %.2f ms (%zu decisions); after: p50 %.2f ms, p99 %.2f ms (%zu decisions)\n",
              before.p50, before.p99, before.count, after.p50, after.p99, after.count);
  const auto ratio = [](double x, double y) { return y > 0 ? x / y : 0.0; };
  std::printf("ratios vs the baseline storm (same run): p50 %.2fx, p99 %.2fx, decisions/s %.2fx; after the kill p99 %.2fx\n",
              ratio(drill.broker.p50, baseline.broker.p50), ratio(drill.broker.p99, baseline.broker.p99),
              ratio(drill.decisions_per_s(), baseline.decisions_per_s()), ratio(after.p99, baseline.broker.p99));
  proc_a.signal(SIGTERM);
  proc_a.wait(60s);
  const bool good = failover_s >= 0 && drill.sessions_lost == 0 && orphans == 0 && orphans_after == 0 && !baseline.failed_any();
  return good ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each figure as it is measured, also into a file
  namespace po = boost::program_options;
  DrillArgs a;
  po::options_description opts("storm_drill options");
  opts.add_options()("help", "this text")
      ("desktops", po::value(&a.desktops)->default_value(a.desktops), "desktops started and registered, 2..100000")
      ("users", po::value(&a.users)->default_value(a.users), "users per storm, 1..100000")
      ("rate", po::value(&a.rate)->default_value(a.rate), "arrivals per second")
      ("session", po::value(&a.session)->default_value(a.session), "session length")
      ("heartbeat", po::value(&a.heartbeat_s)->default_value(a.heartbeat_s), "the controllers' heartbeat_s (deregistration after twice that)")
      ("deskfarm", po::value(&a.deskfarm)->default_value("build/bin/deskfarm"), "the deskfarm binary")
      ("plugin-dir", po::value(&a.plugin_dir)->default_value(""), "where ddc.so, vda.so, license.so and hypervisor-xen.so are");
  po::positional_options_description pos;
  auto fail = [&](const std::string& e) {
    std::cerr << "storm_drill: " << e << "\n" << opts;
    std::exit(2);
  };
  auto vm = deskfarm::bench::parse_command_line(argc, argv, opts, pos, fail);
  if (vm.count("help")) {
    std::cout << opts;
    return 0;
  }
  if (a.desktops < 2 || a.desktops > 100000 || a.users < 1 || a.users > 100000 || !(a.rate > 0) || a.heartbeat_s < 1)
    fail("--desktops 2..100000, --users 1..100000, --rate > 0, --heartbeat >= 1");
  try {
    return run(a);
  } catch (const std::exception& e) {
    std::cerr << "storm_drill: " << e.what() << "\n";
    return 1;
  }
}
