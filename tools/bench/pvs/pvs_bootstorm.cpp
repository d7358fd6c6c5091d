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

#include "deployment.hpp"

using namespace deskfarm;
namespace dt = deskfarm::testing;
using Clock = std::chrono::steady_clock;
namespace po = boost::program_options;

namespace {

struct Args {
  int devices = 500;
  int concurrency = 64;
  std::uint64_t ws_mib = 16;
  std::uint64_t request_kib = 256;
  std::uint64_t base_mib = 64;
  bool peers = true;
};

std::string mac_of(int i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "52:54:00:%02x:%02x:%02x", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
  return buf;
}

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
  std::sort(ok.begin(), ok.end());
  if (!ok.empty()) {
    r.p50_ms = ok[ok.size() / 2];
    r.p99_ms = ok[std::min(ok.size() - 1, ok.size() * 99 / 100)];
    r.max_ms = ok.back();
  }
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

// Integer flags are read as long long and range-checked here: po alone would read "--ws-mib=-1" as 2^64-1.
long long checked(const po::variables_map& vm, const std::string& flag, long long low, long long high,
                  const po::options_description& options) {
  return deskfarm::bench::checked_integer(vm, flag, low, high, [&](const std::string& why) { usage(why, options); });
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  po::options_description flags("options");
  flags.add_options()
      ("help,h", "print this help and exit")
      ("devices", po::value<long long>()->value_name("N")->default_value(a.devices),
       "devices (MACs) that boot, each with its own export and write cache; 1..16777216")
      ("concurrency", po::value<long long>()->value_name("N")->default_value(a.concurrency), "devices booting at a time, at least 1")
      ("ws-mib", po::value<long long>()->value_name("MIB")->default_value(static_cast<long long>(a.ws_mib)),
       "boot working set each device reads, in MiB")
      ("request-kib", po::value<long long>()->value_name("KIB")->default_value(static_cast<long long>(a.request_kib)),
       "size of each read, in KiB, 1..32768")
      ("base-mib", po::value<long long>()->value_name("MIB")->default_value(static_cast<long long>(a.base_mib)),
       "size of the base vDisk in MiB (raised to --ws-mib if smaller)")
      ("no-peers", "skip the nbdkit --filter=cow and qemu-nbd runs");
  const po::positional_options_description no_operands;  // every argument is a flag
  const auto vm = deskfarm::bench::parse_command_line(argc, argv, flags, no_operands, [&](const std::string& why) { usage(why, flags); });
  if (vm.count("help")) {
    std::cout << "pvs_bootstorm: boot storm against the pvs plugin, then nbdkit --filter=cow and qemu-nbd "
                 "(those found on PATH).\n"
              << synopsis << flags;
    return 0;
  }
  constexpr long long mib_limit = 1 << 20;  // 1 TiB: keeps the byte counts far from overflow
  a.devices = static_cast<int>(checked(vm, "devices", 1, 1 << 24, flags));
  a.concurrency = static_cast<int>(checked(vm, "concurrency", 1, std::numeric_limits<int>::max(), flags));
  a.ws_mib = static_cast<std::uint64_t>(checked(vm, "ws-mib", 0, mib_limit, flags));
  a.request_kib = static_cast<std::uint64_t>(checked(vm, "request-kib", 1, 32 << 10, flags));
  a.base_mib = static_cast<std::uint64_t>(checked(vm, "base-mib", 0, mib_limit, flags));
  a.peers = vm.count("no-peers") == 0;
  a.base_mib = std::max(a.base_mib, a.ws_mib);
  dt::TempDir dir("pvs-bench");
  const auto store = dir.path() / "vdisks";
  std::filesystem::create_directories(store);
  dt::write_file(store / "gold.img", dt::pattern(a.base_mib << 20, 3));

  std::string toml = "[deployment]\nname = \"bench\"\nstate_dir = \"" + (dir.path() / "var").string() +
                     "\"\ndata_store = \"sqlite:" + (dir.path() / "ds.db").string() +
                     "\"\n[instances.pvs-1]\nplugin = \"pvs\"\ntftp = \"off\"\nstream = \"127.0.0.1:0\"\nstore = \"" +
                     store.string() + "\"\nmax_connections = 4096\nvdisks = [ { name = \"gold\" } ]\ndevices = [\n";
  for (int i = 0; i < a.devices; ++i) toml += "  { mac = \"" + mac_of(i) + "\", vdisk = \"gold\" },\n";
  toml += "]\n";
  dt::write_text(dir / "bench.toml", toml);

  std::printf("boot storm: %d devices, %d at a time, %llu MiB working set each in %llu KiB reads, base %llu MiB\n",
              a.devices, a.concurrency, static_cast<unsigned long long>(a.ws_mib),
              static_cast<unsigned long long>(a.request_kib), static_cast<unsigned long long>(a.base_mib));
  kernel::LogSink log(sdk::LogLevel::warning);
  kernel::PluginCatalog catalog({PLUGIN_DIR});
  std::vector<Result> results;
  {
    kernel::Deployment d(kernel::load_manifest(dir / "bench.toml"), catalog, log);
    d.start();
    std::uint16_t port = 0;
    // Devices are refused until the catalog has loaded from the data store (after start(), off the executor).
    const bool loaded = dt::eventually([&] {
      sdk::Value o = sdk::Value::object();
      d.run_on("pvs-1", [&](sdk::Plugin& p, sdk::Context&) { p.status(o); });
      port = static_cast<std::uint16_t>(o.find("stream_port")->as_integer());
      return o.find("catalog") && o.find("catalog")->as_string() == "loaded";
    }, std::chrono::seconds(30));
    if (!loaded) throw std::runtime_error("pvs-1 did not load its catalog from the data store within 30 s");
    storm("warm-up", port, Args{.devices = std::min(a.devices, 16), .concurrency = 4, .ws_mib = a.ws_mib,
                                .request_kib = a.request_kib}, true);
    results.push_back(storm("pvs (per-device cache)", port, a, true));
    print(results.back(), a);
    d.stop();
  }
  if (a.peers && dt::have_program("nbdkit")) {
    const auto port = free_port();
    dt::ChildProcess nbdkit({"nbdkit", "-f", "-i", "127.0.0.1", "-p", std::to_string(port), "--filter=cow", "file",
                             (store / "gold.img").string()});
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
                           std::to_string(port), (store / "gold.img").string()});
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
