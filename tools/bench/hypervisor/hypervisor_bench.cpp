// hypervisor_bench: one simulated hypervisor instance holding many VMs — memory per halted and per running VM
// (RSS deltas) and the wall time to start many of them under the virtual clock. Two layers: the engine alone
// (libs/hvsim, driven by a hand-moved clock) and the hypervisor-xen plugin in a deployment (bus requests,
// events, the kernel's virtual clock). Not a test; figures in docs/benchmarks.md.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <set>
#include <string>

#include <deskfarm/hvsim/engine.hpp>
#include <deskfarm/testing/harness.hpp>

#include "../bench_cli.hpp"

namespace {

using Clock = std::chrono::steady_clock;
namespace hv = deskfarm::interfaces::hypervisor;
namespace hvsim = deskfarm::hvsim;

std::int64_t rss_bytes() {
  std::ifstream in("/proc/self/statm");
  std::int64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * ::sysconf(_SC_PAGESIZE);
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

hvsim::EngineConfig farm(std::int64_t vms) {
  hvsim::EngineConfig c;
  c.instance = "bench";
  // Enough hosts for every VM to run: 2 GiB each.
  const std::int64_t hosts = std::max<std::int64_t>(2, vms / 500 + 1);
  for (std::int64_t i = 0; i < hosts; ++i) c.hosts.push_back({"host-" + std::to_string(i), "pool-1", 1 << 20, 1024});
  c.templates = {{"desktop", 2048, 2, "", {"network", "disk"}, true}};
  c.networks = {{"lan", "127.0.0.1:69", "ARDBP32.BIN"}};
  c.max_vms = vms;
  return c;
}

void engine_run(std::int64_t vms, std::int64_t starts) {
  hvsim::TimePoint now{std::chrono::seconds(1)};
  std::multiset<hvsim::TimePoint> wakes;
  std::uint64_t events = 0;
  hvsim::Callbacks cb;
  cb.now = [&] { return now; };
  cb.wake_at = [&](hvsim::TimePoint t) { wakes.insert(t); };
  cb.on_power = [&](const hv::PowerStateEvent&) { ++events; };
  const auto base = rss_bytes();
  hvsim::Engine e(hvsim::xen(), farm(vms), cb);
  auto t0 = Clock::now();
  const auto ids = e.seed("desktop", static_cast<std::size_t>(vms), "desktop-");
  const double seed_s = seconds_since(t0);
  const auto halted = rss_bytes();
  t0 = Clock::now();
  for (std::int64_t i = 0; i < starts; ++i) e.submit(hv::VmAction{"start", ids[static_cast<std::size_t>(i)], "", "", "", {}});
  // Bounded: one pass per wake-up the engine asked for.
  for (std::size_t guard = 0; !wakes.empty() && guard < 10'000'000; ++guard) {
    now = std::max(now, *wakes.begin());
    wakes.erase(wakes.begin());
    e.run_due();
  }
  const double start_s = seconds_since(t0);
  const auto running = rss_bytes();
  std::printf("engine: %lld VMs seeded in %.3f s, %.0f B per halted VM (RSS, ids kept by the bench included)\n",
              static_cast<long long>(vms), seed_s, static_cast<double>(halted - base) / static_cast<double>(vms));
  std::printf("engine: %lld starts (off -> starting -> running, %llu power events) in %.3f s wall, %zu running, "
              "%.0f B more per running VM\n",
              static_cast<long long>(starts), static_cast<unsigned long long>(events), start_s, e.running_count(),
              static_cast<double>(running - halted) / static_cast<double>(std::max<std::int64_t>(1, starts)));
}

void plugin_run(std::int64_t vms, std::int64_t starts, const std::string& plugin_dir) {
  const std::int64_t hosts = std::max<std::int64_t>(2, vms / 500 + 1);
  std::string host_list;
  for (std::int64_t i = 0; i < hosts; ++i)
    host_list += std::string(host_list.empty() ? "" : ", ") + "{ id = \"host-" + std::to_string(i) + "\", memory_mb = 1048576, vcpus = 1024 }";
  const std::string manifest = "[instances.hv]\nplugin = \"hypervisor-xen\"\nmax_in_progress = 0\nmax_vms = " + std::to_string(vms) +
                               "\nsave_interval_ms = 3600000\nhosts = [" + host_list + "]\n" +
                               "vms = [{ template = \"desktop\", count = " + std::to_string(vms) + " }]\n";
  deskfarm::testing::HarnessOptions o;
  o.clock = "virtual";
  if (!plugin_dir.empty()) o.plugin_path = {plugin_dir};
  deskfarm::testing::Harness h(manifest, o);
  const auto base = rss_bytes();
  auto t0 = Clock::now();
  h.start();
  const double start_instance_s = seconds_since(t0);
  const auto halted = rss_bytes();
  auto inv = h.request<deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv.inventory", {}, std::chrono::seconds(120));
  if (!inv) throw std::runtime_error("inventory: " + inv.error().message);
  std::vector<std::string> ids;
  for (std::int64_t i = 0; i < starts; ++i) ids.push_back(inv->vms[static_cast<std::size_t>(i)].id);
  inv = deskfarm::sdk::Reply<hv::Inventory>(hv::Inventory{});  // give the 100k-VM reply back before measuring
  const auto before_starts = rss_bytes();
  t0 = Clock::now();
  for (const auto& id : ids) {
    auto r = h.request<hv::VmAction, hv::Task>("hypervisor.hv.vm.action", hv::VmAction{"start", id, "", "", "", {}});
    if (!r) throw std::runtime_error("start " + id + ": " + r.error().message);
  }
  const double submit_s = seconds_since(t0);
  h.advance(std::chrono::minutes(10));  // lognormal start latency, median 4 s: all are done well within
  const double total_s = seconds_since(t0);
  const auto st = h.instance_status("hv");
  const auto running_now = st.find("vms_running")->as_integer();
  const auto running = rss_bytes();
  std::printf("plugin: %lld VMs seeded and the inventory file written at start in %.3f s, %.0f B per halted VM (RSS)\n",
              static_cast<long long>(vms), start_instance_s, static_cast<double>(halted - base) / static_cast<double>(vms));
  std::printf("plugin: %lld starts over the bus in %.3f s wall (%.3f s submitting), %lld running, %.0f B more per running VM\n",
              static_cast<long long>(starts), total_s, submit_s, static_cast<long long>(running_now),
              static_cast<double>(running - before_starts) / static_cast<double>(std::max<std::int64_t>(1, starts)));
  h.stop();
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = boost::program_options;
  po::options_description opts("hypervisor_bench [options]");
  opts.add_options()("help", "this text")("vms", po::value<long long>()->default_value(100000), "VMs in the instance")(
      "starts", po::value<long long>()->default_value(10000), "VMs started")(
      "layer", po::value<std::string>()->default_value("both"), "engine | plugin | both")(
      "plugin-path", po::value<std::string>()->default_value(""), "directory of hypervisor-xen.so (default: beside the binary)");
  auto fail = [&](const std::string& why) {
    std::cerr << "hypervisor_bench: " << why << "\n" << opts;
    std::exit(2);
  };
  const auto vm = deskfarm::bench::parse_command_line(argc, argv, opts, {}, fail);
  if (vm.count("help")) {
    std::cout << opts;
    return 0;
  }
  const auto vms = deskfarm::bench::checked_integer(vm, "vms", 1, 16777214, fail);
  const auto starts = deskfarm::bench::checked_integer(vm, "starts", 0, vms, fail);
  const auto layer = vm["layer"].as<std::string>();
  if (layer != "engine" && layer != "plugin" && layer != "both") fail("--layer must be engine, plugin or both");
  try {
    if (layer != "plugin") engine_run(vms, starts);
    if (layer != "engine") plugin_run(vms, starts, vm["plugin-path"].as<std::string>());
  } catch (const std::exception& e) {
    std::cerr << "hypervisor_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
