// ima_bench: how fast a zone elects and how many changes per second reach another zone's ZDC.
//   ima_bench --plugin-dir DIR [--changes N] [--elections N] [--window-ms MS]
// Election convergence: a manual election (ima.<instance>.admin.elect) from call to the answer, which comes when
// the round is over, minus the election window (the time a round waits for candidates by design); zone a has
// three servers. Forwarding: N reports to a member of zone a (pipelined requests), each sent at once to its ZDC
// and forwarded to zone b's ZDC, timed until zone b's ZDC holds the last one. Both in one process (in-process
// bus) and with zone b (and one server of zone a) in a second process through a local nats-server. Peers in the
// same run: a bare libnats request/reply round trip (an election is at least one), and bare libnats pub/sub
// messages/s of the same size as a change, publisher and subscriber in two processes.
#include <nats/nats.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <deskfarm/interfaces/ima/ima.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/nats.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "../bench_cli.hpp"
#include "../nats/nats_bench_util.hpp"

namespace {

using Steady = std::chrono::steady_clock;
namespace api = deskfarm::interfaces::ima;
using deskfarm::sdk::Empty;
using deskfarm::testing::Harness;

struct Options {
  long long changes = 20'000;
  long long elections = 20;
  long long window_ms = 20;
  std::string plugin_dir;
  std::string role;
  std::string url;
};

using deskfarm::bench::check;
using deskfarm::bench::fail;
using deskfarm::bench::median;

std::string server(const std::string& name, const std::string& zone, long long host_id, const Options& o) {
  return "[instances." + name + "]\nplugin = \"ima\"\nfarm = \"bench\"\nzone = \"" + zone + "\"\nhost_id = " +
         std::to_string(host_id) + "\nelection_window_ms = " + std::to_string(o.window_ms) + "\n\n";
}

std::unique_ptr<Harness> deployment(const Options& o, const std::string& instances, const std::string& bus = "") {
  deskfarm::testing::HarnessOptions h;
  h.plugin_path = {o.plugin_dir};
  std::string toml = "[deployment]\nname = \"ima-bench\"\nworkers = 2\n" + (bus.empty() ? "" : "bus = \"" + bus + "\"\n") + "\n" + instances;
  auto d = std::make_unique<Harness>(toml, h);
  d->start();
  return d;
}

/// Waits (real time, at most 30 s) until every server named agrees on `zdc` for zone a and zone b is known.
void settle(Harness& h, const std::vector<std::string>& zone_a, const std::string& zdc) {
  const auto end = Steady::now() + std::chrono::seconds(30);
  for (;;) {
    bool all = true;
    for (const auto& s : zone_a) {
      auto r = h.request<Empty, api::Collectors>(api::subject(s, "admin.querydc"), {});
      all = all && r && r->collectors.size() == 2 && r->collectors.front().instance == zdc;
    }
    if (all) return;
    if (Steady::now() > end) fail("zone a did not settle on " + zdc + " with zone b known within 30 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

/// Median milliseconds of a manual election beyond the window.
double elections(Harness& h, const Options& o) {
  std::vector<double> ms;
  for (long long i = 0; i < o.elections; ++i) {
    const auto t0 = Steady::now();
    auto r = h.request<Empty, api::Collectors>(api::subject("a1", "admin.elect"), {}, std::chrono::seconds(30));
    if (!r) fail("elect: " + r.error().message);
    ms.push_back(std::chrono::duration<double, std::milli>(Steady::now() - t0).count() - static_cast<double>(o.window_ms));
  }
  return median(ms);
}

/// Changes/s from member a2 until zone b's ZDC b1 holds the last one.
double forwarding(Harness& h, const Options& o) {
  auto seq_at_b = [&] {
    auto d = h.request<Empty, api::DynamicData>(api::subject("b1", "admin.queryds"), {});
    if (d)
      for (const auto& c : d->records)
        if (c.instance == "a2") return c.seq;
    return std::int64_t{-1};
  };
  auto own = h.request<api::Report, api::Change>(api::subject("a2", "admin.report"), api::Report{0, 0});
  if (!own) fail("report: " + own.error().message);
  const auto last = own->seq + o.changes;
  const auto t0 = Steady::now();
  h.with_bus([&, n = o.changes](deskfarm::sdk::Bus& bus) {
    for (long long i = 1; i <= n; ++i)
      deskfarm::sdk::request<api::Report, api::Change>(bus, api::subject("a2", "report"), api::Report{i, static_cast<double>(i % 10000)},
                                                       std::chrono::seconds(120), [](deskfarm::sdk::Reply<api::Change>) {});
  });
  const auto end = t0 + std::chrono::seconds(120);
  while (seq_at_b() < last) {
    if (Steady::now() > end) fail("zone b's ZDC did not get every change within 120 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return static_cast<double>(o.changes) / std::chrono::duration<double>(Steady::now() - t0).count();
}

// ---- bare libnats peers ----

double bare_round_trip_ms(const std::string& url) {
  natsConnection *a = nullptr, *b = nullptr;
  check(natsConnection_ConnectTo(&a, url.c_str()), "connect");
  check(natsConnection_ConnectTo(&b, url.c_str()), "connect");
  natsSubscription* sub = nullptr;
  check(natsConnection_Subscribe(&sub, b, "bench.echo", [](natsConnection* nc, natsSubscription*, natsMsg* m, void*) {
          natsConnection_Publish(nc, natsMsg_GetReply(m), natsMsg_GetData(m), natsMsg_GetDataLength(m));
          natsMsg_Destroy(m);
        }, nullptr), "subscribe");
  check(natsConnection_Flush(b), "flush");
  std::vector<double> ms;
  for (int i = 0; i < 2000; ++i) {
    const auto t0 = Steady::now();
    natsMsg* reply = nullptr;
    check(natsConnection_RequestString(&reply, a, "bench.echo", "x", 5000), "request");
    natsMsg_Destroy(reply);
    ms.push_back(std::chrono::duration<double, std::milli>(Steady::now() - t0).count());
  }
  natsSubscription_Destroy(sub);
  natsConnection_Destroy(a);
  natsConnection_Destroy(b);
  return median(ms);
}

/// The subscriber side of the bare pub/sub peer, in a child process: prints its messages/s.
void bare_sub(const Options& o) {
  natsConnection* nc = nullptr;
  check(natsConnection_ConnectTo(&nc, o.url.c_str()), "connect");
  natsSubscription* sub = nullptr;
  check(natsConnection_SubscribeSync(&sub, nc, "bench.flow"), "subscribe");
  check(natsSubscription_SetPendingLimits(sub, -1, -1), "pending limits");
  check(natsConnection_Flush(nc), "flush");
  std::printf("ready\n");
  std::fflush(stdout);
  Steady::time_point first;
  for (long long i = 0; i < o.changes; ++i) {
    natsMsg* m = nullptr;
    check(natsSubscription_NextMsg(&m, sub, 60000), "next message");
    if (i == 0) first = Steady::now();
    natsMsg_Destroy(m);
  }
  std::printf("result %.1f\n", static_cast<double>(o.changes - 1) / std::chrono::duration<double>(Steady::now() - first).count());
  natsConnection_Destroy(nc);
}

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::unique_ptr<deskfarm::testing::ChildProcess> spawn(const Options& o, const std::string& role, const std::filesystem::path& out) {
  auto c = std::make_unique<deskfarm::testing::ChildProcess>(
      std::vector<std::string>{std::filesystem::read_symlink("/proc/self/exe").string(), "--role", role, "--url", o.url,
                               "--changes", std::to_string(o.changes), "--window-ms", std::to_string(o.window_ms),
                               "--plugin-dir", o.plugin_dir},
      out);
  if (!deskfarm::testing::eventually([&] { return read_all(out).find("ready") != std::string::npos || !c->running(); },
                                     std::chrono::seconds(30)) || !c->running())
    fail(role + " did not get ready: " + read_all(out));
  return c;
}

double bare_pubsub(const Options& o, const deskfarm::testing::TempDir& dir, std::size_t size) {
  const auto out = dir / "bare-sub.out";
  auto sub = spawn(o, "bare-sub", out);
  natsConnection* nc = nullptr;
  check(natsConnection_ConnectTo(&nc, o.url.c_str()), "connect");
  const std::string body(size, 'x');
  for (long long i = 0; i < o.changes; ++i) check(natsConnection_Publish(nc, "bench.flow", body.data(), static_cast<int>(body.size())), "publish");
  check(natsConnection_FlushTimeout(nc, 30000), "flush");
  natsConnection_Destroy(nc);
  if (sub->wait(std::chrono::seconds(120)) != 0) fail("bare-sub failed: " + read_all(out));
  const auto text = read_all(out);
  const auto at = text.find("result ");
  if (at == std::string::npos) fail("no result from bare-sub: " + text);
  return std::stod(text.substr(at + 7));
}

/// The second process of the NATS runs: zone b's ZDC b1 and zone a's a3, until SIGTERM.
void remote_zone(const Options& o) {
  auto h = deployment(o, server("b1", "b", 1, o) + server("a3", "a", 3, o), o.url);
  std::printf("ready\n");
  std::fflush(stdout);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  int sig = 0;
  sigwait(&set, &sig);
  h->stop();
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = boost::program_options;
  po::options_description desc("ima_bench options");
  desc.add_options()("changes", po::value<long long>()->default_value(20'000), "changes per forwarding run")(
      "elections", po::value<long long>()->default_value(20), "manual elections per convergence run")(
      "window-ms", po::value<long long>()->default_value(20), "election_window_ms of every server")(
      "plugin-dir", po::value<std::string>()->default_value("build/plugins"), "where ima.so is")(
      "role", po::value<std::string>()->default_value(""), "(internal) the part a child process plays")(
      "url", po::value<std::string>()->default_value(""), "(internal) the nats-server");
  const auto usage = [&](const std::string& error) {
    std::fprintf(stderr, "ima_bench: %s\n", error.c_str());
    std::exit(2);
  };
  const auto vm = deskfarm::bench::parse_command_line(argc, argv, desc, {}, usage);
  Options o;
  o.changes = deskfarm::bench::checked_integer(vm, "changes", 2, 10'000'000, usage);
  o.elections = deskfarm::bench::checked_integer(vm, "elections", 1, 10'000, usage);
  o.window_ms = deskfarm::bench::checked_integer(vm, "window-ms", 1, 60'000, usage);
  o.plugin_dir = std::filesystem::absolute(vm["plugin-dir"].as<std::string>()).string();
  o.role = vm["role"].as<std::string>();
  o.url = vm["url"].as<std::string>();
  if (o.role == "remote-zone") return remote_zone(o), 0;
  if (o.role == "bare-sub") return bare_sub(o), 0;
  if (!o.role.empty()) usage("unknown --role " + o.role);

  const auto program = deskfarm::testing::nats_server_program();
  if (program.empty()) fail("nats-server is not installed (scripts/setup.sh installs it)");
  deskfarm::testing::TempDir dir;
  deskfarm::testing::NatsServer nats(program, dir / "nats-server.log");
  o.url = nats.url();
  const std::size_t change_bytes =
      deskfarm::sdk::encode_body(api::Change{"bench", "a", "a2", 2, 1764000000000000, 12345, 12, 3456, false, "2026-11-29T20:00:00Z"}).size();

  double local_elect = 0, local_rate = 0, nats_elect = 0, nats_rate = 0;
  {
    auto h = deployment(o, server("a1", "a", 9, o) + server("a2", "a", 2, o) + server("a3", "a", 3, o) + server("b1", "b", 1, o));
    settle(*h, {"a1", "a2", "a3"}, "a1");
    local_elect = elections(*h, o);
    local_rate = forwarding(*h, o);
  }
  {
    auto remote = spawn(o, "remote-zone", dir / "remote-zone.out");
    auto h = deployment(o, server("a1", "a", 9, o) + server("a2", "a", 2, o), o.url);
    settle(*h, {"a1", "a2", "a3"}, "a1");
    nats_elect = elections(*h, o);
    nats_rate = forwarding(*h, o);
    h->stop();
    remote->signal(SIGTERM);
    if (remote->wait(std::chrono::seconds(30)) != 0) fail("the remote zone's process failed: " + read_all(dir / "remote-zone.out"));
  }
  const double rtt = bare_round_trip_ms(o.url);
  const double bare_rate = bare_pubsub(o, dir, change_bytes);
  std::printf("ima_bench: zone a of 3 servers, zone b of 1; %lld elections (window %lld ms), %lld changes of %zu bytes; nats-server %s\n",
              o.elections, o.window_ms, o.changes, change_bytes, o.url.c_str());
  std::printf("%-52s %12s %12s\n", "", "in process", "2 processes");
  std::printf("%-52s %12.2f %12.2f\n", "election beyond the window, median ms", local_elect, nats_elect);
  std::printf("%-52s %12.0f %12.0f\n", "changes/s, member -> ZDC -> other zone's ZDC", local_rate, nats_rate);
  std::printf("peers: bare libnats request/reply %.3f ms (election over NATS = %.1f round trips);\n", rtt, nats_elect / rtt);
  std::printf("       bare libnats pub/sub %.0f messages/s of %zu bytes, 2 processes (ima over NATS = %.3fx, in process = %.3fx)\n",
              bare_rate, change_bytes, nats_rate / bare_rate, local_rate / bare_rate);
  nats.stop();
  return 0;
}
