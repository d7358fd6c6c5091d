// xml_bench: the controller's XML service against its own admin.broker, measured in the same run on one
// deployment (real clock: hypervisor-xen, ddc with xml_address, vda, directory). Each user first gets a desktop;
// then rounds of RequestAddress for the same users (an HTTP POST through nfuse::XmlClient, the directory's
// PBKDF2 check of the password, the NFuseProtocol documents, then the same brokering: the user's active session
// roams) beside rounds of admin.broker over the bus (brokering only). Prints requests/s, p50/p99 and the ratio:
// what the XML service's HTTP, XML and credential check cost on top of brokering. Not a test; figures in
// docs/benchmarks.md.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <deskfarm/interfaces/ddc/ddc.hpp>
#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/nfuse/client.hpp>
#include <deskfarm/testing/harness.hpp>

#include "../bench_cli.hpp"
#include "password.hpp"

namespace {

using Clock = std::chrono::steady_clock;
namespace ddc = deskfarm::interfaces::ddc;
namespace hv = deskfarm::interfaces::hypervisor;
namespace nf = deskfarm::nfuse;
using deskfarm::sdk::Empty;

struct Figures {
  double per_s = 0, p50 = 0, p99 = 0;
  std::int64_t ok = 0;
};

Figures figures(std::vector<double> lat, double seconds, std::int64_t ok) {
  std::sort(lat.begin(), lat.end());
  const auto pct = [&](double p) { return lat.empty() ? 0.0 : lat[std::min(lat.size() - 1, static_cast<std::size_t>(p * static_cast<double>(lat.size())))]; };
  return {static_cast<double>(lat.size()) / seconds, pct(0.5), pct(0.99), ok};
}

int run(std::int64_t users, std::int64_t rounds, std::int64_t iterations, const std::string& plugin_dir) {
  std::string accounts;
  const std::string hash = deskfarm::directory::make_hash("bench-password", iterations);  // one hash: the cost per check is the same
  for (std::int64_t i = 0; i < users; ++i)
    accounts += "  { name = \"user-" + std::to_string(i) + "\", password_hash = \"" + hash + "\" },\n";
  const std::string manifest =
      "[deployment]\nname = \"xml-bench\"\n\n"
      "[instances.hv]\nplugin = \"hypervisor-xen\"\nmax_in_progress = 0\nsave_interval_ms = 3600000\n"
      "latencies = [{ action = \"start\", distribution = \"constant\", ms = 1 }]\n"
      "hosts = [{ id = \"host-0\", memory_mb = 1048576, vcpus = 1024 }]\n"
      "vms = [{ template = \"desktop\", count = " + std::to_string(users) + ", prefix = \"desktop-\" }]\n\n"
      "[instances.ddc-1]\nplugin = \"ddc\"\nfarm_key = \"bench\"\nxml_address = \"127.0.0.1:0\"\ndirectory = \"dir\"\n"
      "groups = [{ name = \"pool\", desktops = [\"desktop-*\"], hypervisor = \"hv\" }]\n\n"
      "[instances.agents]\nplugin = \"vda\"\ncontrollers = [\"ddc-1\"]\nfarm_key = \"bench\"\n\n"
      "[instances.dir]\nplugin = \"directory\"\ndomain = \"BENCH\"\nusers = [\n" + accounts + "]\n";
  deskfarm::testing::HarnessOptions o;
  if (!plugin_dir.empty()) o.plugin_path = {plugin_dir};
  deskfarm::testing::Harness h(manifest, o);
  h.start();
  auto inv = h.request<Empty, hv::Inventory>("hypervisor.hv.inventory", {}, std::chrono::seconds(60));
  if (!inv) throw std::runtime_error("inventory: " + inv.error().message);
  for (const auto& v : inv->vms)
    if (auto r = h.request<hv::VmAction, hv::Task>("hypervisor.hv.vm.action", hv::VmAction{"start", v.id, "", "", "", {}}); !r)
      throw std::runtime_error("start " + v.id + ": " + r.error().message);
  std::int64_t registered = 0;
  for (int i = 0; i < 600 && registered < users; ++i) {  // bounded: 60 s
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto g = h.request<Empty, ddc::GroupList>("ddc.ddc-1.admin.groups", {});
    registered = g ? g->groups.at(0).registered : 0;
  }
  if (registered < users) throw std::runtime_error(std::to_string(registered) + " of " + std::to_string(users) + " desktops registered in 60 s");
  const auto address = h.instance_status("ddc-1")["xml"]["address"].as_string();
  nf::XmlClient client("127.0.0.1", static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1))));
  const auto creds = [](std::int64_t i) { return nf::Credentials{"user-" + std::to_string(i), "bench-password", "BENCH", "NT"}; };
  for (std::int64_t i = 0; i < users; ++i)  // every user gets a desktop: the rounds below roam their sessions
    if (auto a = client.ask_as<nf::AddressReply>(nf::AddressRequest{"pool", {}, creds(i), "", ""}); !a.error_id.empty())
      throw std::runtime_error("first RequestAddress of user-" + std::to_string(i) + ": " + a.error_id);

  std::vector<double> xml_lat, bus_lat;
  std::int64_t xml_ok = 0, bus_ok = 0;
  double xml_s = 0, bus_s = 0;
  for (std::int64_t round = 0; round < rounds; ++round) {  // interleaved rounds: both see the same machine load
    auto t0 = Clock::now();
    for (std::int64_t i = 0; i < users; ++i) {
      const auto t = Clock::now();
      auto a = client.ask_as<nf::AddressReply>(nf::AddressRequest{"pool", {}, creds(i), "client-" + std::to_string(round), ""});
      xml_lat.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
      xml_ok += a.error_id.empty();
    }
    xml_s += std::chrono::duration<double>(Clock::now() - t0).count();
    t0 = Clock::now();
    for (std::int64_t i = 0; i < users; ++i) {
      const auto t = Clock::now();
      auto d = h.request<ddc::BrokerRequest, ddc::BrokerDecision>("ddc.ddc-1.admin.broker",
                                                                  ddc::BrokerRequest{"user-" + std::to_string(i), "bus-" + std::to_string(round), "pool"});
      bus_lat.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
      bus_ok += d && d->outcome == "connect";
    }
    bus_s += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  const auto x = figures(xml_lat, xml_s, xml_ok), b = figures(bus_lat, bus_s, bus_ok);
  std::printf("users: %lld, rounds: %lld, PBKDF2 iterations per password check: %lld\n", static_cast<long long>(users),
              static_cast<long long>(rounds), static_cast<long long>(iterations));
  std::printf("XML service RequestAddress (HTTP, Poco client, keep-alive): %lld ok of %zu, %.0f requests/s, p50 %.3f ms, p99 %.3f ms\n",
              static_cast<long long>(x.ok), xml_lat.size(), x.per_s, x.p50, x.p99);
  std::printf("admin.broker (bus, same decisions):                       %lld ok of %zu, %.0f requests/s, p50 %.3f ms, p99 %.3f ms\n",
              static_cast<long long>(b.ok), bus_lat.size(), b.per_s, b.p50, b.p99);
  std::printf("ratio XML service / admin.broker: %.2fx the rate; anchor 25 requests/s (XenDesktop 5 logon storm): %.0fx\n", x.per_s / b.per_s,
              x.per_s / 25.0);
  h.stop();
  return x.ok == static_cast<std::int64_t>(xml_lat.size()) && b.ok == static_cast<std::int64_t>(bus_lat.size()) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = boost::program_options;
  po::options_description opts("xml_bench options");
  opts.add_options()("help", "this text")("users", po::value<long long>()->default_value(20), "users, each with a desktop")(
      "rounds", po::value<long long>()->default_value(20), "rounds of one RequestAddress and one admin.broker per user")(
      "iterations", po::value<long long>()->default_value(1000), "PBKDF2 iterations of the users' password hash (the directory's default is 600000)")(
      "plugin-dir", po::value<std::string>()->default_value(""), "where ddc.so, vda.so, hypervisor-xen.so and directory.so are");
  po::positional_options_description pos;
  auto fail = [&](const std::string& e) {
    std::cerr << "xml_bench: " << e << "\n" << opts;
    std::exit(2);
  };
  auto vm = deskfarm::bench::parse_command_line(argc, argv, opts, pos, fail);
  if (vm.count("help")) {
    std::cout << opts;
    return 0;
  }
  try {
    return run(deskfarm::bench::checked_integer(vm, "users", 1, 10000, fail), deskfarm::bench::checked_integer(vm, "rounds", 1, 100000, fail),
               deskfarm::bench::checked_integer(vm, "iterations", 1000, 10000000, fail), vm["plugin-dir"].as<std::string>());
  } catch (const std::exception& e) {
    std::cerr << "xml_bench: " << e.what() << "\n";
    return 1;
  }
}
