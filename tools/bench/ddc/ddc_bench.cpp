// ddc_bench: N desktops boot to registered under the virtual clock with two controllers (hypervisor-xen, ddc x2,
// vda), then a logon storm of brokering decisions through both controllers: decisions/s, latency p50/p99 (a
// request's round trip from the bench's bus client), memory per registered desktop (RSS delta: agents and both
// controllers' views). Ratios are printed against the anchor: Citrix's XenDesktop 5 scalability test (20,000
// desktops registered in 10 minutes; a 20,000-user logon storm at 25 requests/s). Not a test; figures in
// docs/benchmarks.md.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <deskfarm/interfaces/ddc/ddc.hpp>
#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/process.hpp>

#include "../bench_cli.hpp"

namespace {

using Clock = std::chrono::steady_clock;
namespace ddc = deskfarm::interfaces::ddc;
namespace hv = deskfarm::interfaces::hypervisor;
using deskfarm::sdk::Empty;

std::int64_t rss_bytes() { return static_cast<std::int64_t>(deskfarm::testing::resident_bytes()); }
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::int64_t registered(deskfarm::testing::Harness& h, const std::string& controller) {
  auto g = h.request<Empty, ddc::GroupList>("ddc." + controller + ".admin.groups", {}, std::chrono::seconds(60));
  if (!g) throw std::runtime_error("groups: " + g.error().message);
  return g->groups.at(0).registered;
}

int run(std::int64_t desktops, std::int64_t decisions, bool kill_halfway, const std::string& plugin_dir) {
  const std::int64_t hosts = std::max<std::int64_t>(2, desktops / 500 + 1);
  std::string host_list;
  for (std::int64_t i = 0; i < hosts; ++i)
    host_list += std::string(host_list.empty() ? "" : ", ") + "{ id = \"host-" + std::to_string(i) + "\", memory_mb = 1048576, vcpus = 1024 }";
  const std::string group = "groups = [{ name = \"pool\", kind = \"pooled-random\", desktops = [\"desktop-*\"], hypervisor = \"hv\" }]\n"
                            "pool_interval_s = 60\nfarm_key = \"bench\"\n";
  const std::string manifest =
      "[deployment]\nname = \"bench\"\nclock = \"virtual\"\nclock_start = 2026-01-05T07:00:00Z\n\n"
      "[instances.hv]\nplugin = \"hypervisor-xen\"\nmax_in_progress = 0\nsave_interval_ms = 3600000\nmax_vms = " + std::to_string(desktops) +
      "\nhosts = [" + host_list + "]\nvms = [{ template = \"desktop\", count = " + std::to_string(desktops) + ", prefix = \"desktop-\" }]\n\n"
      "[instances.ddc-1]\nplugin = \"ddc\"\n" + group + "\n[instances.ddc-2]\nplugin = \"ddc\"\n" + group +
      "\n[instances.agents]\nplugin = \"vda\"\ncontrollers = [\"ddc-1\", \"ddc-2\"]\nfarm_key = \"bench\"\n";
  deskfarm::testing::HarnessOptions o;
  if (!plugin_dir.empty()) o.plugin_path = {plugin_dir};
  deskfarm::testing::Harness h(manifest, o);
  h.start();
  auto inv = h.request<Empty, hv::Inventory>("hypervisor.hv.inventory", {}, std::chrono::seconds(120));
  if (!inv) throw std::runtime_error("inventory: " + inv.error().message);
  std::vector<std::string> ids;
  for (const auto& v : inv->vms) ids.push_back(v.id);
  inv = deskfarm::sdk::Reply<hv::Inventory>(hv::Inventory{});
  const auto base = rss_bytes();
  const auto t0 = Clock::now();
  const auto v0 = h.now();
  for (const auto& id : ids) {
    auto r = h.request<hv::VmAction, hv::Task>("hypervisor.hv.vm.action", hv::VmAction{"start", id, "", "", "", {}});
    if (!r) throw std::runtime_error("start " + id + ": " + r.error().message);
  }
  // Bounded: 10 virtual minutes in 10 s steps (the anchor's window).
  std::int64_t reg = 0;
  for (int step = 0; step < 60 && reg < desktops; ++step) {
    h.advance(std::chrono::seconds(10));
    reg = registered(h, "ddc-1");
  }
  const double boot_wall = seconds_since(t0);
  const double boot_virtual = std::chrono::duration<double>(h.now() - v0).count();
  const auto after = rss_bytes();
  const auto st1 = h.instance_status("ddc-1"), st2 = h.instance_status("ddc-2");
  std::printf("desktops: %lld of %lld registered (ddc-1 holds %lld, ddc-2 %lld) in %.0f s virtual, %.2f s wall\n",
              static_cast<long long>(reg), static_cast<long long>(desktops), static_cast<long long>(st1.find("registered")->as_integer()),
              static_cast<long long>(st2.find("registered")->as_integer()), boot_virtual, boot_wall);
  std::printf("memory: %.0f B per registered desktop (RSS delta: VM running, agent, both controllers' views)\n",
              static_cast<double>(after - base) / static_cast<double>(std::max<std::int64_t>(1, reg)));
  std::printf("registration rate: %.0f desktops/s of wall time; anchor 33/s (20,000 in 10 min): %.1fx\n", static_cast<double>(reg) / boot_wall,
              static_cast<double>(reg) / boot_wall / (20000.0 / 600.0));
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(decisions));
  std::int64_t connected = 0;
  const auto s0 = Clock::now();
  bool killed = false;
  double failover_wall = 0;
  for (std::int64_t i = 0; i < decisions; ++i) {
    if (kill_halfway && !killed && i == decisions / 2) {
      // ddc-1 dies: its agents register with ddc-2 within one heartbeat (30 s of virtual time), sessions kept.
      const auto k0 = Clock::now();
      h.run_on("ddc-1", [](deskfarm::sdk::Plugin& p, deskfarm::sdk::Context&) { p.stop(); });
      h.advance(std::chrono::seconds(31));
      failover_wall = seconds_since(k0);
      killed = true;
      const auto st = h.instance_status("ddc-2");
      std::printf("failover: ddc-1 stopped after %lld decisions; ddc-2 holds %lld registrations 31 s later (%.2f s wall)\n",
                  static_cast<long long>(i), static_cast<long long>(st.find("registered")->as_integer()), failover_wall);
    }
    const auto t = Clock::now();
    auto d = h.request<ddc::BrokerRequest, ddc::BrokerDecision>(i % 2 || killed ? "ddc.ddc-2.admin.broker" : "ddc.ddc-1.admin.broker",
                                                                ddc::BrokerRequest{"user-" + std::to_string(i), "client-" + std::to_string(i), ""});
    lat.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
    if (d && d->outcome == "connect") ++connected;
  }
  const double storm = seconds_since(s0) - failover_wall;
  std::sort(lat.begin(), lat.end());
  const auto pct = [&](double p) { return lat.empty() ? 0.0 : lat[std::min(lat.size() - 1, static_cast<std::size_t>(p * static_cast<double>(lat.size())))]; };
  std::printf("brokering: %lld decisions (%lld connected) in %.2f s: %.0f decisions/s, p50 %.3f ms, p99 %.3f ms; anchor 25 requests/s: %.0fx\n",
              static_cast<long long>(decisions), static_cast<long long>(connected), storm, static_cast<double>(decisions) / storm, pct(0.5),
              pct(0.99), static_cast<double>(decisions) / storm / 25.0);
  h.stop();
  return reg == desktops && connected == decisions ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = boost::program_options;
  po::options_description opts("ddc_bench options");
  opts.add_options()("help", "this text")("desktops", po::value<long long>()->default_value(20000), "desktops to boot and register")(
      "decisions", po::value<long long>()->default_value(10000), "brokering decisions (one user each)")(
      "kill-halfway", "stop ddc-1 after half the decisions; the rest go to ddc-2")(
      "plugin-dir", po::value<std::string>()->default_value(""), "where ddc.so, vda.so and hypervisor-xen.so are");
  po::positional_options_description pos;
  auto fail = [&](const std::string& e) {
    std::cerr << "ddc_bench: " << e << "\n" << opts;
    std::exit(2);
  };
  auto vm = deskfarm::bench::parse_command_line(argc, argv, opts, pos, fail);
  if (vm.count("help")) {
    std::cout << opts;
    return 0;
  }
  const auto n = deskfarm::bench::checked_integer(vm, "desktops", 1, 200000, fail);
  const auto d = deskfarm::bench::checked_integer(vm, "decisions", 0, 1000000, fail);
  try {
    return run(n, std::min(d, n), vm.count("kill-halfway") > 0, vm["plugin-dir"].as<std::string>());
  } catch (const std::exception& e) {
    std::cerr << "ddc_bench: " << e.what() << "\n";
    return 1;
  }
}
