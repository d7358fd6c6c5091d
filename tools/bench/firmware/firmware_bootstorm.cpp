// Boot storm with real firmware: N simulated PCs (libs/firmware) boot against one pvs on loopback — DHCP options
// 66/67, the bootstrap over TFTP, login over NBD (export = MAC), the working set read — C at a time.
//   firmware_bootstorm [--devices 500] [--concurrency 64] [--ws-mib 4] [--request-kib 256] [--base-mib 16]
//                      [--blksize 1408] [--timeout-s 600] [--same-address]   (--help lists them)
// A live progress line goes to stderr; the result (boots/s, p50/p99 boot time and per step) to stdout.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <boost/program_options.hpp>

#include <deskfarm/firmware/firmware.hpp>

#include "../bench_cli.hpp"
#include "../pvs_storm.hpp"
#include "firmware_storm.hpp"

using namespace deskfarm;
using Clock = std::chrono::steady_clock;
namespace po = boost::program_options;

namespace {

struct Args : bench::StormArgs {
  Args() {
    ws_mib = 4;  // what a BootPlan reads by default
    base_mib = 16;
  }
  std::uint32_t blksize = 1408;
  int timeout_s = 600;
};

const char* synopsis = "usage: firmware_bootstorm [OPTIONS]\n";

[[noreturn]] void usage(const std::string& why, const po::options_description& options) {
  std::cerr << "firmware_bootstorm: " << why << "\n" << synopsis << options;
  std::exit(2);
}

/// Boot times and per-step times (ms) of the devices that booted, and the failures.
struct Storm {
  std::vector<double> boot_ms;
  std::map<std::string, std::vector<double>> step_ms;
  int failures = 0;
  std::string first_failure;
  int recovered = 0;  ///< boots that needed a restore_network retry
  std::string first_recovery;
  double total_s = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Args a;
  po::options_description flags("options");
  flags.add_options()
      ("help,h", "print this help and exit")
      ("blksize", po::value<long long>()->value_name("BYTES")->default_value(a.blksize),
       "TFTP blksize the firmware asks for, 8..65464")
      ("timeout-s", po::value<long long>()->value_name("S")->default_value(a.timeout_s),
       "stop every boot still running after this many seconds (they fail \"stopped\"), 1..86400")
      ("same-address", "every firmware sends from 127.0.0.1 (default: each its own 127.x.y.z, as real PCs have)");
  a.add_options(flags);
  const po::positional_options_description no_operands;
  const auto vm = bench::parse_command_line(argc, argv, flags, no_operands, [&](const std::string& why) { usage(why, flags); });
  if (vm.count("help")) {
    std::cout << "firmware_bootstorm: N simulated firmwares boot against one pvs over TFTP and NBD on loopback.\n"
              << synopsis << flags;
    return 0;
  }
  const auto fail = [&](const std::string& why) { usage(why, flags); };
  a.read(vm, fail);
  a.base_mib = std::max<std::uint64_t>(a.base_mib, 1);
  a.blksize = static_cast<std::uint32_t>(bench::checked_integer(vm, "blksize", 8, 65464, fail));
  a.timeout_s = static_cast<int>(bench::checked_integer(vm, "timeout-s", 1, 86400, fail));
  const bool own_addresses = vm.count("same-address") == 0;

  std::printf("firmware boot storm: %d devices, %d at a time, %llu MiB working set in %llu KiB reads, base %llu MiB, "
              "TFTP blksize %u, %s, %u hardware threads\n",
              a.devices, a.concurrency, static_cast<unsigned long long>(a.ws_mib),
              static_cast<unsigned long long>(a.request_kib), static_cast<unsigned long long>(a.base_mib), a.blksize,
              own_addresses ? "one 127.x.y.z per device" : "all from 127.0.0.1", std::thread::hardware_concurrency());
  std::fflush(stdout);
  bench::PvsStorm pvs(PLUGIN_DIR, a.devices, a.base_mib << 20, "tftp = \"127.0.0.1:0\"\nstream = \"127.0.0.1:0\"\n");

  firmware::BootPlan base_plan;
  base_plan.boot_order = {"network"};
  base_plan.tftp_server = "127.0.0.1:" + std::to_string(pvs.tftp_port());
  base_plan.boot_file = "ARDBP32.BIN";
  base_plan.working_set_bytes = a.ws_mib << 20;
  base_plan.read_request_bytes = static_cast<std::uint32_t>(a.request_kib << 10);
  base_plan.tftp_blksize = a.blksize;

  Storm s;
  const auto plan_of = [&](int i) {
    auto plan = base_plan;
    plan.mac = bench::mac_of(i);
    if (own_addresses) plan.source_address = bench::source_of(i);
    return plan;
  };
  const auto record = [&](const firmware::BootPlan& plan, const firmware::BootResult& r, double ms) {
    if (r.recoveries > 0 && s.recovered++ == 0) {
      const auto failed_step = std::find_if(r.steps.begin(), r.steps.end(), [](const auto& st) { return st.state == "failed"; });
      if (failed_step != r.steps.end()) s.first_recovery = plan.mac + ": " + failed_step->name + ": " + failed_step->detail;
    }
    if (r.ok) {
      s.boot_ms.push_back(ms);
      for (const auto& step : r.steps) s.step_ms[step.name].push_back(static_cast<double>(step.took.count()) / 1000.0);
    } else if (s.failures++ == 0) {
      s.first_failure = plan.mac + ": " + r.failed_step + ": " + r.reason;
    }
  };
  // Past --timeout-s the boots still running are stopped and the devices not started are reported.
  const auto storm = bench::direct_firmware_storm("firmware", a.devices, a.concurrency,
                                                  Clock::now() + std::chrono::seconds(a.timeout_s), plan_of, record);
  s.total_s = storm.total_s;
  pvs.stop();

  const auto boot = bench::percentiles(s.boot_ms);
  std::printf("devices %d ok %d  total %.2f s  %.1f boots/s  %.1f MiB/s  boot p50 %.1f ms  p99 %.1f ms  max %.1f ms\n",
              a.devices, storm.booted, s.total_s, storm.booted / s.total_s,
              static_cast<double>(storm.booted) * static_cast<double>(a.ws_mib) / s.total_s, boot.p50, boot.p99, boot.max);
  for (const char* name : {"tftp", "bootstrap", "login", "stream"}) {
    const auto p = bench::percentiles(s.step_ms[name]);
    std::printf("  step %-9s p50 %8.2f ms  p99 %8.2f ms  max %8.2f ms\n", name, p.p50, p.p99, p.max);
  }
  if (s.recovered) std::printf("  %d boots needed a restore_network retry, first: %s\n", s.recovered, s.first_recovery.c_str());
  if (s.failures) std::printf("  %d failures, first: %s\n", s.failures, s.first_failure.c_str());
  const int not_started = storm.not_started;
  if (not_started > 0) std::printf("  %d devices not started before --timeout-s\n", not_started);
  return s.failures || not_started ? 1 : 0;
}
