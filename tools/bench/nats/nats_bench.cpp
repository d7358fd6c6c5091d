// nats_bench: the bus across processes (bus = "nats://…") between two deskfarm kernels in two processes, beside a
// bare libnats publisher/subscriber pair and a bare libnats request/reply pair, all through one local
// nats-server started (and stopped by its PID) by this run:
//   nats_bench [--messages N] [--round-trips N] [--size BYTES] [--runs N]
// Throughput: messages/s at the subscriber, first to last message, and the CPU time each side's process spends per
// message (every thread of it: the subscriber's from its first message to its last, the publisher's over its publish
// loop), which a machine shared with other work disturbs far less than a rate. Request/reply: p50 and p99 of one
// request at a time. Each figure is the median of --runs runs; the ratios compare deskfarm with bare libnats.
// The same binary plays every role in its child processes (--role …).
#include <nats/nats.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "../bench_cli.hpp"
#include "nats_bench_util.hpp"
#include "deployment.hpp"
#include "deskfarm/sdk/service.hpp"
#include "manifest.hpp"
#include "runtime.hpp"
#include <deskfarm/testing/nats.hpp>
#include <deskfarm/testing/temp_dir.hpp>

using namespace deskfarm;
using Steady = std::chrono::steady_clock;

namespace {

struct Options {
  long long messages = 1'000'000;
  long long round_trips = 5'000;
  long long size = 64;
  long long runs = 3;
  std::string role;
  std::string url;
};

using deskfarm::bench::check;
using deskfarm::bench::fail;
using deskfarm::bench::median;

/// The result line a child prints and the parent reads: "result A B".
void result(double a, double b = 0) {
  std::printf("result %.3f %.3f\n", a, b);
  std::fflush(stdout);
}
void ready() {
  std::printf("ready\n");
  std::fflush(stdout);
}

/// CPU time (user and system, every thread) this process has used so far, in microseconds.
double process_cpu_us() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 + static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

/// CPU time process `pid` has used so far, in microseconds: the sum of its threads' run time in
/// /proc/PID/task/*/schedstat (nanoseconds; /proc/PID/stat counts 10 ms ticks, too coarse for a run of 0.1 s).
/// nats-server's threads live as long as it does, so none of its time leaves with an ended thread.
double process_cpu_us(pid_t pid) {
  const std::filesystem::path tasks = "/proc/" + std::to_string(pid) + "/task";
  std::error_code error;
  double ns = 0;
  for (const auto& task : std::filesystem::directory_iterator(tasks, error)) {
    std::ifstream in(task.path() / "schedstat");
    double run_ns = 0;
    if (in >> run_ns) ns += run_ns;
  }
  if (error) fail("cannot read " + tasks.string() + ": " + error.message());
  return ns / 1e3;
}

/// p50 and p99 in microseconds.
std::pair<double, double> percentiles(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 99 / 100]};
}

// ---- bare libnats ----

natsConnection* bare_connect(const std::string& url) {
  natsConnection* nc = nullptr;
  check(natsConnection_ConnectTo(&nc, url.c_str()), "connect");
  return nc;
}

void bare_sub(const Options& o) {
  natsConnection* nc = bare_connect(o.url);
  natsSubscription* sub = nullptr;
  check(natsConnection_SubscribeSync(&sub, nc, "bench.flow"), "subscribe");
  check(natsSubscription_SetPendingLimits(sub, -1, -1), "pending limits");
  check(natsConnection_Flush(nc), "flush");
  ready();
  Steady::time_point first;
  double first_cpu = 0;
  for (long long i = 0; i < o.messages; ++i) {
    natsMsg* m = nullptr;
    check(natsSubscription_NextMsg(&m, sub, 30000), "next message");
    if (i == 0) {
      first = Steady::now();
      first_cpu = process_cpu_us();
    }
    natsMsg_Destroy(m);
  }
  const auto seconds = std::chrono::duration<double>(Steady::now() - first).count();
  result(static_cast<double>(o.messages - 1) / seconds, (process_cpu_us() - first_cpu) / static_cast<double>(o.messages - 1));
  natsSubscription_Destroy(sub);
  natsConnection_Destroy(nc);
}

void bare_pub(const Options& o) {
  natsConnection* nc = bare_connect(o.url);
  const std::string body(static_cast<std::size_t>(o.size), 'x');
  const double cpu = process_cpu_us();
  for (long long i = 0; i < o.messages; ++i) check(natsConnection_Publish(nc, "bench.flow", body.data(), static_cast<int>(body.size())), "publish");
  result(0, (process_cpu_us() - cpu) / static_cast<double>(o.messages));
  check(natsConnection_FlushTimeout(nc, 30000), "flush");
  natsConnection_Destroy(nc);
}

void bare_echo(const Options& o) {
  natsConnection* nc = bare_connect(o.url);
  natsSubscription* sub = nullptr;
  check(natsConnection_SubscribeSync(&sub, nc, "bench.echo"), "subscribe");
  check(natsConnection_Flush(nc), "flush");
  ready();
  for (long long i = 0; i < o.round_trips; ++i) {
    natsMsg* m = nullptr;
    check(natsSubscription_NextMsg(&m, sub, 30000), "next request");
    check(natsConnection_Publish(nc, natsMsg_GetReply(m), natsMsg_GetData(m), natsMsg_GetDataLength(m)), "reply");
    natsMsg_Destroy(m);
  }
  check(natsConnection_FlushTimeout(nc, 5000), "flush");
  natsSubscription_Destroy(sub);
  natsConnection_Destroy(nc);
}

void bare_req(const Options& o) {
  natsConnection* nc = bare_connect(o.url);
  const std::string body(static_cast<std::size_t>(o.size), 'x');
  std::vector<double> us;
  for (long long i = 0; i < o.round_trips; ++i) {
    const auto t0 = Steady::now();
    natsMsg* reply = nullptr;
    check(natsConnection_Request(&reply, nc, "bench.echo", body.data(), static_cast<int>(body.size()), 5000), "request");
    us.push_back(std::chrono::duration<double, std::micro>(Steady::now() - t0).count());
    natsMsg_Destroy(reply);
  }
  const auto [p50, p99] = percentiles(us);
  result(p50, p99);
  natsConnection_Destroy(nc);
}

// ---- deskfarm kernels ----

struct Kernel {
  explicit Kernel(const std::string& url)
      : catalog({}),
        deployment(kernel::load_manifest_text("[deployment]\nname = \"bench\"\nbus = \"" + url + "\"\nworkers = 2\n"
                                              "state_dir = \"" + (dir / "var").string() + "\"\n",
                                              "nats-bench.toml", kernel::process_environment()),
                   catalog, log) {
    deployment.start();
    client = &deployment.open_client("bench");
  }
  testing::TempDir dir;
  kernel::LogSink log{sdk::LogLevel::warning};
  kernel::PluginCatalog catalog;
  kernel::Deployment deployment;
  kernel::BusClient* client = nullptr;
  /// Runs `task` on the client's strand and waits for it.
  void on_strand(std::function<void()> task) {
    std::promise<void> done;
    client->strand.post([&] {
      task();
      done.set_value();
    });
    done.get_future().wait();
  }
};

void df_sub(const Options& o) {
  Kernel k(o.url);
  std::atomic<long long> n{0};
  Steady::time_point first;
  double first_cpu = 0, last_cpu = 0;
  std::promise<Steady::time_point> last;
  sdk::Subscription sub;
  k.on_strand([&] {
    sub = k.client->bus.subscribe("bench.flow", [&](const sdk::Message& m) {
      if (sdk::body_of<sdk::Text>(m)->value.size() != static_cast<std::size_t>(o.size)) fail("a message of another size");
      const auto i = n.fetch_add(1);
      if (i == 0) {
        first = Steady::now();
        first_cpu = process_cpu_us();
      }
      if (i + 1 == o.messages) {
        last_cpu = process_cpu_us();
        last.set_value(Steady::now());
      }
    }, sdk::SubscribeOptions{1 << 20, sdk::Overflow::block});
  });
  ready();
  auto done = last.get_future();
  if (done.wait_for(std::chrono::seconds(120)) != std::future_status::ready) fail("the subscriber did not get every message within 120 s");
  const auto seconds = std::chrono::duration<double>(done.get() - first).count();
  result(static_cast<double>(o.messages - 1) / seconds, (last_cpu - first_cpu) / static_cast<double>(o.messages - 1));
  k.on_strand([&] { sub.reset(); });
}

void df_pub(const Options& o) {
  Kernel k(o.url);
  const std::string body(static_cast<std::size_t>(o.size), 'x');
  const double cpu = process_cpu_us();
  k.on_strand([&] {
    for (long long i = 0; i < o.messages; ++i) sdk::publish(k.client->bus, "bench.flow", sdk::Text{body});
  });
  result(0, (process_cpu_us() - cpu) / static_cast<double>(o.messages));
  // Stopping flushes what libnats still buffers (close() in the transport).
}

void df_echo(const Options& o) {
  Kernel k(o.url);
  std::atomic<long long> n{0};
  std::promise<void> all;
  sdk::Subscription sub;
  k.on_strand([&] {
    sub = sdk::serve<sdk::Text, sdk::Text>(k.client->bus, "bench.echo", [&](const sdk::Text& t) {
      if (n.fetch_add(1) + 1 == o.round_trips) all.set_value();
      return t;
    });
  });
  ready();
  if (all.get_future().wait_for(std::chrono::seconds(120)) != std::future_status::ready) fail("the requests did not all come within 120 s");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the last reply leaves
  k.on_strand([&] { sub.reset(); });
}

void df_req(const Options& o) {
  Kernel k(o.url);
  const std::string body(static_cast<std::size_t>(o.size), 'x');
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(o.round_trips));
  std::promise<void> all;
  // One request at a time, each sent from the previous one's reply handler, on the client's strand.
  std::function<void()> next = [&] {
    const auto t0 = Steady::now();
    sdk::request<sdk::Text, sdk::Text>(k.client->bus, "bench.echo", sdk::Text{body}, std::chrono::seconds(5),
                                       [&, t0](sdk::Reply<sdk::Text> r) {
                                         if (!r) fail("request: " + r.error().message);
                                         us.push_back(std::chrono::duration<double, std::micro>(Steady::now() - t0).count());
                                         if (static_cast<long long>(us.size()) == o.round_trips) all.set_value();
                                         else next();
                                       });
  };
  k.client->strand.post(next);
  if (all.get_future().wait_for(std::chrono::seconds(120)) != std::future_status::ready) fail("the round trips took over 120 s");
  const auto [p50, p99] = percentiles(us);
  result(p50, p99);
}

// ---- the run ----

/// Runs this binary as `role` with its output in `out`.
std::unique_ptr<testing::ChildProcess> spawn(const Options& o, const std::string& role, const std::filesystem::path& out) {
  return std::make_unique<testing::ChildProcess>(
      std::vector<std::string>{std::filesystem::read_symlink("/proc/self/exe").string(), "--role", role, "--url", o.url,
                               "--messages", std::to_string(o.messages), "--round-trips", std::to_string(o.round_trips),
                               "--size", std::to_string(o.size)},
      out);
}

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// The two numbers of the "result" line in `text`, from `who`.
std::pair<double, double> result_of(const std::string& text, const std::string& who) {
  const auto at = text.find("result ");
  if (at == std::string::npos) fail("no result from " + who + ": " + text);
  double a = 0, b = 0;
  std::sscanf(text.c_str() + at, "result %lf %lf", &a, &b);
  return {a, b};
}

/// Starts `server_role` (waits for its "ready"), runs `client_role` to its end, and returns the "result" line
/// of `measured` (the server or the client); `other`, when given, gets the other one's.
std::pair<double, double> pair_run(const Options& o, const testing::TempDir& dir, const std::string& server_role,
                                   const std::string& client_role, bool server_measures,
                                   std::pair<double, double>* other = nullptr) {
  const auto server_out = dir / (server_role + ".out");
  const auto client_out = dir / (client_role + ".out");
  auto server = spawn(o, server_role, server_out);
  if (!testing::eventually([&] { return read_all(server_out).find("ready") != std::string::npos || !server->running(); },
                           std::chrono::seconds(30)) ||
      !server->running())
    fail(server_role + " did not get ready: " + read_all(server_out));
  auto client = spawn(o, client_role, client_out);
  if (client->wait(std::chrono::seconds(180)) != 0) fail(client_role + " failed: " + read_all(client_out));
  if (server->wait(std::chrono::seconds(180)) != 0) fail(server_role + " failed: " + read_all(server_out));
  if (other != nullptr) {
    *other = result_of(read_all(server_measures ? client_out : server_out), server_measures ? client_role : server_role);
  }
  return result_of(read_all(server_measures ? server_out : client_out), server_measures ? server_role : client_role);
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = boost::program_options;
  po::options_description desc("nats_bench options");
  desc.add_options()("messages", po::value<long long>()->default_value(1'000'000), "messages per throughput run")(
      "round-trips", po::value<long long>()->default_value(5'000), "requests per latency run")(
      "size", po::value<long long>()->default_value(64), "body bytes")("runs", po::value<long long>()->default_value(3), "runs per figure")(
      "role", po::value<std::string>()->default_value(""), "(internal) the part a child process plays")(
      "url", po::value<std::string>()->default_value(""), "(internal) the nats-server");
  const auto usage = [&](const std::string& error) {
    std::fprintf(stderr, "nats_bench: %s\n", error.c_str());
    std::exit(2);
  };
  const auto vm = bench::parse_command_line(argc, argv, desc, {}, usage);
  Options o;
  o.messages = bench::checked_integer(vm, "messages", 2, 100'000'000, usage);
  o.round_trips = bench::checked_integer(vm, "round-trips", 100, 10'000'000, usage);
  o.size = bench::checked_integer(vm, "size", 1, 1 << 20, usage);
  o.runs = bench::checked_integer(vm, "runs", 1, 99, usage);
  o.role = vm["role"].as<std::string>();
  o.url = vm["url"].as<std::string>();
  if (o.role == "bare-sub") bare_sub(o);
  else if (o.role == "bare-pub") bare_pub(o);
  else if (o.role == "bare-echo") bare_echo(o);
  else if (o.role == "bare-req") bare_req(o);
  else if (o.role == "df-sub") df_sub(o);
  else if (o.role == "df-pub") df_pub(o);
  else if (o.role == "df-echo") df_echo(o);
  else if (o.role == "df-req") df_req(o);
  else if (!o.role.empty()) usage("unknown --role " + o.role);
  if (!o.role.empty()) return 0;

  const auto program = testing::nats_server_program();
  if (program.empty()) fail("nats-server is not installed (scripts/setup.sh installs it)");
  testing::TempDir dir;
  testing::NatsServer server(program, dir / "nats-server.log");
  o.url = server.url();
  // Per pub/sub pair and run: the subscriber's rate and the three processes' CPU per message.
  struct Flow {
    std::vector<double> rate, sub_cpu, pub_cpu, server_cpu;
  } bare, df;
  std::vector<double> bare_p50, bare_p99, df_p50, df_p99;
  // One run of a pair; the server's CPU is taken over the whole run (start-up and subscription included: a small
  // share of it).
  const auto pub_sub = [&](const std::string& sub_role, const std::string& pub_role, Flow& flow) {
    const double server_before = process_cpu_us(server.pid());
    std::pair<double, double> pub;
    const auto sub = pair_run(o, dir, sub_role, pub_role, true, &pub);
    flow.server_cpu.push_back((process_cpu_us(server.pid()) - server_before) / static_cast<double>(o.messages));
    flow.rate.push_back(sub.first);
    flow.sub_cpu.push_back(sub.second);
    flow.pub_cpu.push_back(pub.second);
  };
  for (long long run = 0; run < o.runs; ++run) {
    pub_sub("bare-sub", "bare-pub", bare);
    pub_sub("df-sub", "df-pub", df);
    const auto b = pair_run(o, dir, "bare-echo", "bare-req", false);
    const auto d = pair_run(o, dir, "df-echo", "df-req", false);
    bare_p50.push_back(b.first);
    bare_p99.push_back(b.second);
    df_p50.push_back(d.first);
    df_p99.push_back(d.second);
  }
  std::printf("nats_bench: %lld messages of %lld bytes, %lld round trips, median of %lld runs, nats-server %s\n", o.messages,
              o.size, o.round_trips, o.runs, server.url().c_str());
  std::printf("%-34s %14s %14s %8s\n", "", "bare libnats", "deskfarm", "ratio");
  std::printf("%-34s %14.0f %14.0f %7.2fx\n", "pub/sub messages/s (2 processes)", median(bare.rate), median(df.rate),
              median(df.rate) / median(bare.rate));
  std::printf("%-34s %14.2f %14.2f %7.2fx\n", "subscriber CPU us/message (lower=b.)", median(bare.sub_cpu),
              median(df.sub_cpu), median(bare.sub_cpu) / median(df.sub_cpu));
  std::printf("%-34s %14.2f %14.2f %7.2fx\n", "publisher CPU us/message (lower=b.)", median(bare.pub_cpu),
              median(df.pub_cpu), median(bare.pub_cpu) / median(df.pub_cpu));
  std::printf("%-34s %14.2f %14.2f %7.2fx\n", "nats-server CPU us/message (lower=b.)", median(bare.server_cpu),
              median(df.server_cpu), median(bare.server_cpu) / median(df.server_cpu));
  std::printf("%-34s %14.1f %14.1f %7.2fx\n", "request/reply p50 us (lower=better)", median(bare_p50), median(df_p50),
              median(bare_p50) / median(df_p50));
  std::printf("%-34s %14.1f %14.1f %7.2fx\n", "request/reply p99 us (lower=better)", median(bare_p99), median(df_p99),
              median(bare_p99) / median(df_p99));
  server.stop();
  return 0;
}
