// clock_bench: simulated time at farm scale. N instances with a periodic timer run for a simulated span
// under the virtual clock; prints timer events per second of real time and memory per idle instance,
// beside a baseline measured in the same run: the same count of std::function calls popped from a plain
// std::priority_queue on one thread (no strands, no pool, no idle waits).
//   clock_bench [--instances N] [--period-s S] [--span-s S] [--workers N] [--runs N] [--plugin-path DIR]
//               [--only deployment|strands|baseline]
// `deployment` runs the SDK's example `hello` plugin (count = N, clock = "virtual") through the kernel's
// Deployment, as `deskfarm run --for` would; `strands` runs bare Strands with timers on a VirtualClock.
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <queue>
#include <sstream>
#include <string>
#include <vector>

#include "../bench_cli.hpp"
#include "clock.hpp"
#include "deployment.hpp"
#include "deskfarm/testing/temp_dir.hpp"
#include "executor.hpp"
#include "log.hpp"
#include "manifest.hpp"
#include "plugin_loader.hpp"

using namespace deskfarm;
using namespace deskfarm::kernel;
using Steady = std::chrono::steady_clock;

namespace {

// Measured before the virtual clock fired a whole instant as one batch: 10,000 hello instances, 30 s
// timers, one simulated hour (1.2 M events) took 27 s with one pool round trip per timer.
constexpr double events_per_s_before = 44'000;

struct Options {
  std::size_t instances = 10'000;
  std::int64_t period_s = 30;
  std::int64_t span_s = 3600;
  unsigned workers = 2;
  int runs = 3;
  std::string plugin_path;
  std::string only;
};

struct Figures {
  double events_per_s = 0;
  double events_per_cpu_s = 0;
  std::uint64_t events = 0;
  double bytes_per_instance = 0;
  std::uint64_t first_events = 0;  // deployment: the first period alone
  double first_s = 0;
  double steady_events_per_s = 0;  // deployment: after the first period
};

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "clock_bench: %s\n", what.c_str());
  std::exit(1);
}

/// Resident set size of this process, in bytes.
std::size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t total = 0, resident = 0;
  if (!(statm >> total >> resident)) fail("cannot read /proc/self/statm (resident memory)");
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// CPU time of the whole process (all threads), in seconds: on a shared machine, events per CPU second
/// is the figure other processes disturb least.
double cpu_seconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  const auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return s(usage.ru_utime) + s(usage.ru_stime);
}

double seconds_since(Steady::time_point t0) { return std::chrono::duration<double>(Steady::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// The kernel as `deskfarm run --for` drives it: hello instances, each greeting on the bus per tick.
Figures deployment_run(const Options& o) {
  testing::TempDir scratch("deskfarm-clock-bench");
  const std::string text = "[deployment]\nname = \"clock-bench\"\nclock = \"virtual\"\nstate_dir = \"" +
                           (scratch / "var").string() + "\"\nworkers = " + std::to_string(o.workers) +
                           "\n\n[instances.\"hello-{n}\"]\nplugin = \"hello\"\ncount = " + std::to_string(o.instances) +
                           "\ninterval_s = " + std::to_string(o.period_s) + "\n";
  LogSink log(sdk::LogLevel::warning);  // one "ready" line per instance would measure the terminal
  PluginCatalog catalog({o.plugin_path});
  const std::size_t rss_before = rss_bytes();
  Deployment deployment(load_manifest_text(text, "clock-bench.toml", process_environment()), catalog, log);
  deployment.start();
  VirtualClock* clock = deployment.virtual_clock();
  if (!clock) fail("the deployment has no virtual clock");
  clock->advance(std::chrono::seconds(0));  // settles start-up work, so RSS counts idle instances
  Figures f;
  f.bytes_per_instance = static_cast<double>(rss_bytes() - rss_before) / static_cast<double>(o.instances);
  // The first tick of each instance is its first publish on its subject, where the bus builds that subject's
  // route; the rest is the steady state. Both are reported; events/s is over the whole span.
  const double cpu0 = cpu_seconds();
  const auto t0 = Steady::now();
  f.first_events = clock->advance(std::chrono::seconds(o.period_s));
  f.first_s = seconds_since(t0);
  f.events = f.first_events + clock->advance(std::chrono::seconds(o.span_s - o.period_s));
  const double total_s = seconds_since(t0);
  f.events_per_s = static_cast<double>(f.events) / total_s;
  f.events_per_cpu_s = static_cast<double>(f.events) / (cpu_seconds() - cpu0);
  f.steady_events_per_s = static_cast<double>(f.events - f.first_events) / (total_s - f.first_s);
  deployment.stop();
  return f;
}

/// The clock alone: bare strands, each with one periodic timer that bumps its own counter.
Figures strands_run(const Options& o) {
  const std::size_t rss_before = rss_bytes();
  Figures f;
  {
    Pool pool(o.workers);
    VirtualClock clock(pool, sdk::TimePoint{});
    std::vector<std::unique_ptr<Strand>> strands;
    std::vector<std::uint64_t> ticks(o.instances);  // each element written only on its own strand
    strands.reserve(o.instances);
    for (std::size_t i = 0; i < o.instances; ++i) {
      strands.push_back(std::make_unique<Strand>(pool, "s-" + std::to_string(i)));
      clock.every(std::chrono::seconds(o.period_s), *strands.back(), [&ticks, i] { ++ticks[i]; });
    }
    f.bytes_per_instance = static_cast<double>(rss_bytes() - rss_before) / static_cast<double>(o.instances);
    const double cpu0 = cpu_seconds();
    const auto t0 = Steady::now();
    f.events = clock.advance(std::chrono::seconds(o.span_s));
    f.events_per_s = static_cast<double>(f.events) / seconds_since(t0);
    f.events_per_cpu_s = static_cast<double>(f.events) / (cpu_seconds() - cpu0);
    if (!pool.wait_idle(std::chrono::seconds(10))) fail("pool did not go idle");
    const auto expected = static_cast<std::uint64_t>(o.span_s / o.period_s);
    for (auto t : ticks)
      if (t != expected) fail("a strand ticked " + std::to_string(t) + " times, expected " + std::to_string(expected));
  }
  return f;
}

/// The baseline: the same timers as (deadline, index) in a std::priority_queue, fired on one thread.
Figures baseline_run(const Options& o) {
  std::vector<std::uint64_t> ticks(o.instances);
  std::vector<std::function<void()>> tasks;
  tasks.reserve(o.instances);
  for (std::size_t i = 0; i < o.instances; ++i) tasks.emplace_back([&ticks, i] { ++ticks[i]; });
  using Slot = std::pair<std::int64_t, std::size_t>;
  std::priority_queue<Slot, std::vector<Slot>, std::greater<>> queue;
  for (std::size_t i = 0; i < o.instances; ++i) queue.emplace(o.period_s, i);
  Figures f;
  const double cpu0 = cpu_seconds();
  const auto t0 = Steady::now();
  while (!queue.empty() && queue.top().first <= o.span_s) {
    const auto [deadline, i] = queue.top();
    queue.pop();
    tasks[i]();
    ++f.events;
    queue.emplace(deadline + o.period_s, i);
  }
  f.events_per_s = static_cast<double>(f.events) / seconds_since(t0);
  f.events_per_cpu_s = static_cast<double>(f.events) / (cpu_seconds() - cpu0);
  return f;
}

/// The median rate of `o.runs` runs; memory from each run, after freed pages went back to the system
/// (malloc_trim), so one run's freed heap does not hide the next one's growth.
Figures median_of(const Options& o, const std::function<Figures()>& run) {
  std::vector<double> rates, bytes, steady, first, per_cpu;
  Figures last;
  for (int r = 0; r < o.runs; ++r) {
    ::malloc_trim(0);
    last = run();
    rates.push_back(last.events_per_s);
    bytes.push_back(last.bytes_per_instance);
    steady.push_back(last.steady_events_per_s);
    first.push_back(last.first_s);
    per_cpu.push_back(last.events_per_cpu_s);
  }
  last.events_per_cpu_s = median(per_cpu);
  last.events_per_s = median(rates);
  last.bytes_per_instance = median(bytes);
  last.steady_events_per_s = median(steady);
  last.first_s = median(first);
  return last;
}

Options parse(int argc, char** argv) {
  namespace po = boost::program_options;
  Options o;
  const auto self = std::filesystem::canonical("/proc/self/exe").parent_path();
  po::options_description options("clock_bench options");
  options.add_options()("help,h", "this text")(
      "instances", po::value<long long>()->default_value(10'000), "instances, each with one periodic timer")(
      "period-s", po::value<long long>()->default_value(30), "timer period, simulated seconds")(
      "span-s", po::value<long long>()->default_value(3600), "simulated time to run")(
      "workers", po::value<long long>()->default_value(2), "worker threads")(
      "runs", po::value<long long>()->default_value(3), "runs per measurement; the median is printed")(
      "plugin-path", po::value<std::string>()->default_value((self / ".." / "plugins").lexically_normal().string()),
      "where hello.so is")("only", po::value<std::string>(), "deployment, strands or baseline: one measurement alone");
  const auto usage = [&](const std::string& error) {
    std::fprintf(stderr, "clock_bench: %s\n", error.c_str());
    std::ostringstream text;
    text << options;
    std::fprintf(stderr, "%s", text.str().c_str());
    std::exit(2);
  };
  const auto vm = bench::parse_command_line(argc, argv, options, {}, usage);
  if (vm.count("help")) {
    std::ostringstream text;
    text << options;
    std::printf("%s", text.str().c_str());
    std::exit(0);
  }
  o.instances = static_cast<std::size_t>(bench::checked_integer(vm, "instances", 1, 1'000'000, usage));
  o.period_s = bench::checked_integer(vm, "period-s", 1, 86'400, usage);
  o.span_s = bench::checked_integer(vm, "span-s", 1, 30 * 86'400, usage);
  o.workers = static_cast<unsigned>(bench::checked_integer(vm, "workers", 1, 256, usage));
  o.runs = static_cast<int>(bench::checked_integer(vm, "runs", 1, 100, usage));
  o.plugin_path = vm["plugin-path"].as<std::string>();
  if (vm.count("only")) o.only = vm["only"].as<std::string>();
  if (!o.only.empty() && o.only != "deployment" && o.only != "strands" && o.only != "baseline")
    usage("--only must be deployment, strands or baseline");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  std::printf("clock_bench: %zu instances, %lld s timers, %lld simulated s, %u workers, median of %d runs\n",
              o.instances, static_cast<long long>(o.period_s), static_cast<long long>(o.span_s), o.workers, o.runs);
  Figures deployment, strands, baseline;
  // The kernel runs first: its memory is measured on a heap no other measurement has grown yet.
  if (o.only.empty() || o.only == "deployment") deployment = median_of(o, [&] { return deployment_run(o); });
  if (o.only.empty() || o.only == "strands") strands = median_of(o, [&] { return strands_run(o); });
  if (o.only.empty() || o.only == "baseline") baseline = median_of(o, [&] { return baseline_run(o); });
  if (baseline.events) {
    std::printf("%-11s %-34s %11.0f events/s (%llu events), %.0f per CPU s\n", "baseline",
                "priority_queue + std::function, 1 thread", baseline.events_per_s,
                static_cast<unsigned long long>(baseline.events), baseline.events_per_cpu_s);
  }
  const auto report = [&](const char* what, const char* how, const Figures& f) {
    std::printf("%-11s %-34s %11.0f events/s (%llu events), %.0f per CPU s, %.0f B per idle instance", what, how,
                f.events_per_s, static_cast<unsigned long long>(f.events), f.events_per_cpu_s, f.bytes_per_instance);
    if (baseline.events) std::printf(", %.2f x baseline", f.events_per_s / baseline.events_per_s);
    std::printf("\n");
  };
  if (strands.events) report("strands", "bare strands, virtual clock", strands);
  if (deployment.events) {
    report("deployment", "hello instances, virtual clock", deployment);
    std::printf("deployment  first period %.2f s (%llu events: each subject's first publish); after it %.0f events/s\n",
                deployment.first_s, static_cast<unsigned long long>(deployment.first_events),
                deployment.steady_events_per_s);
    std::printf("deployment vs one timer per idle wait (%.0f events/s, before batching): %.1f x\n", events_per_s_before,
                deployment.events_per_s / events_per_s_before);
  }
  return 0;
}
