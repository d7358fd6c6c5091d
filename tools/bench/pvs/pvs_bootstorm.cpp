// Boot storm: N devices (MACs) each open their export and read a boot working set from one base vDisk through
// their write cache; the same load generator then runs against nbdkit --filter=cow and qemu-nbd serving the base.
//   pvs_bootstorm [--devices 500] [--concurrency 64] [--ws-mib 16] [--request-kib 256] [--base-mib 64] [--no-peers]
//   (--help lists them)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/program_options.hpp>

#include "../bench_cli.hpp"
#include <deskfarm/nbd/client.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "../pvs_storm.hpp"

using namespace deskfarm;
using deskfarm::bench::mac_of;
namespace dt = deskfarm::testing;
using Clock = std::chrono::steady_clock;
namespace po = boost::program_options;

namespace {

struct Args : bench::StormArgs {
  bool peers = true;
};

struct Result {
  std::string name;
  double total_s = 0;
  double p50_ms = 0, p99_ms = 0, max_ms = 0;
  int failures = 0;
  std::string first_error;
};

/// Every device: connect, read the working set in request-size pieces, disconnect (pvs keeps its session for a reconnect).
Result storm(const std::string& name, std::uint16_t port, const Args& a, bool per_device_export,
             const std::string& fixed_export = "") {
  std::atomic<int> next{0};
  std::vector<double> times(static_cast<std::size_t>(a.devices), -1);
  std::mutex m;
  Result r{name};
  const auto t0 = Clock::now();
  std::vector<std::thread> workers;
  for (int w = 0; w < a.concurrency; ++w) {
    workers.emplace_back([&] {
      std::vector<std::byte> buf(a.request_kib << 10);
      for (int i; (i = next.fetch_add(1)) < a.devices;) {
        const auto s = Clock::now();
        try {
          nbd::Client c("127.0.0.1", port, per_device_export ? mac_of(i) : fixed_export);
          for (std::uint64_t off = 0; off < (a.ws_mib << 20); off += buf.size()) {
            if (auto e = c.read(off, buf)) throw std::runtime_error("read error " + std::to_string(e));
          }
          c.disconnect();
          times[static_cast<std::size_t>(i)] = std::chrono::duration<double, std::milli>(Clock::now() - s).count();
        } catch (const std::exception& e) {
          std::lock_guard lock(m);
          if (r.failures++ == 0) r.first_error = e.what();
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  r.total_s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> ok;
  for (double t : times)
    if (t >= 0) ok.push_back(t);
  const auto p = bench::percentiles(std::move(ok));
  r.p50_ms = p.p50;
  r.p99_ms = p.p99;
  r.max_ms = p.max;
  return r;
}

void print(const Result& r, const Args& a) {
  const int done = a.devices - r.failures;
  std::printf("%-26s devices %4d ok %4d  total %7.2f s  %8.1f boots/s  %9.1f MiB/s  p50 %8.1f ms  p99 %8.1f ms  max %8.1f ms\n",
              r.name.c_str(), a.devices, done, r.total_s, done / r.total_s,
              static_cast<double>(done) * static_cast<double>(a.ws_mib) / r.total_s, r.p50_ms, r.p99_ms, r.max_ms);
  if (r.failures) std::printf("  %d failures, first: %s\n", r.failures, r.first_error.c_str());
}

bool wait_port(std::uint16_t port, const std::string& export_name) {
  return dt::eventually(
      [&] {
        try {
          nbd::Client c("127.0.0.1", port, export_name);
          c.disconnect();
          return true;
        } catch (const std::exception&) {
          return false;
        }
      },
      std::chrono::seconds(15));
}

std::uint16_t free_port() {
  // The kernel picks an unused port; the peer binds it right after (a small race, fine for a bench).
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

const char* synopsis = "usage: pvs_bootstorm [OPTIONS]\n";

[[noreturn]] void usage(const std::string& why, const po::options_description& options) {
  std::cerr << "pvs_bootstorm: " << why << "\n" << synopsis << options;
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  po::options_description flags("options");
  flags.add_options()
      ("help,h", "print this help and exit")
      ("no-peers", "skip the nbdkit --filter=cow and qemu-nbd runs");
  a.add_options(flags);
  const po::positional_options_description no_operands;  // every argument is a flag
  const auto vm = deskfarm::bench::parse_command_line(argc, argv, flags, no_operands, [&](const std::string& why) { usage(why, flags); });
  if (vm.count("help")) {
    std::cout << "pvs_bootstorm: boot storm against the pvs plugin, then nbdkit --filter=cow and qemu-nbd "
                 "(those found on PATH).\n"
              << synopsis << flags;
    return 0;
  }
  a.read(vm, [&](const std::string& why) { usage(why, flags); });
  a.peers = vm.count("no-peers") == 0;
  std::printf("boot storm: %d devices, %d at a time, %llu MiB working set each in %llu KiB reads, base %llu MiB\n",
              a.devices, a.concurrency, static_cast<unsigned long long>(a.ws_mib),
              static_cast<unsigned long long>(a.request_kib), static_cast<unsigned long long>(a.base_mib));
  std::vector<Result> results;
  // Stopped after its run; its directory (and the base image the peers serve) lives until the end.
  bench::PvsStorm pvs(PLUGIN_DIR, a.devices, a.base_mib << 20, "tftp = \"off\"\nstream = \"127.0.0.1:0\"\n");
  const auto base = pvs.base();
  {
    const auto port = pvs.stream_port();
    Args warm_up = a;
    warm_up.devices = std::min(a.devices, 16);
    warm_up.concurrency = 4;
    storm("warm-up", port, warm_up, true);
    results.push_back(storm("pvs (per-device cache)", port, a, true));
    print(results.back(), a);
    pvs.stop();
  }
  if (a.peers && dt::have_program("nbdkit")) {
    const auto port = free_port();
    dt::ChildProcess nbdkit({"nbdkit", "-f", "-i", "127.0.0.1", "-p", std::to_string(port), "--filter=cow", "file",
                             base.string()});
    if (wait_port(port, "")) {
      results.push_back(storm("nbdkit --filter=cow file", port, a, false));
      print(results.back(), a);
    } else {
      std::printf("nbdkit did not come up on port %u\n", port);
    }
  }
  if (a.peers && dt::have_program("qemu-nbd")) {
    const auto port = free_port();
    dt::ChildProcess qemu({"qemu-nbd", "-f", "raw", "-r", "-t", "-e", "4096", "-x", "gold", "-b", "127.0.0.1", "-p",
                           std::to_string(port), base.string()});
    if (wait_port(port, "gold")) {
      results.push_back(storm("qemu-nbd -r (shared)", port, a, false, "gold"));
      print(results.back(), a);
    } else {
      std::printf("qemu-nbd did not come up on port %u\n", port);
    }
  }
  for (std::size_t i = 1; i < results.size(); ++i)
    std::printf("pvs / %s: time ratio %.2f (below 1 = pvs faster)\n", results[i].name.c_str(),
                results[0].total_s / results[i].total_s);
  return results.empty() || results[0].failures ? 1 : 0;
}
