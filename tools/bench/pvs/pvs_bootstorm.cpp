// Boot storm: N devices (MACs) each open their export, read a boot working set from one base vDisk through
// their write cache, write K KiB of their own and FLUSH; P % of them drop their connection mid-boot and reopen it.
// Then every device reads back what it wrote. The same storm runs without drops on other devices of the same
// server, for the ratio. With --writes-kib 0 the same load generator also runs against nbdkit --filter=cow and
// qemu-nbd serving the base (one shared export each, so they cannot take per-device writes).
//   pvs_bootstorm [--devices 500] [--concurrency 64] [--ws-mib 16] [--request-kib 256] [--base-mib 64]
//                 [--writes-kib 1024] [--drop-percent 10] [--no-peers]   (--help lists them)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "../bench_cli.hpp"
#include <deskfarm/nbd/client.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/reconnect_storm.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "../pvs_storm.hpp"

using namespace deskfarm;
using deskfarm::bench::mac_of;
namespace dt = deskfarm::testing;
namespace po = boost::program_options;

namespace {

struct Args : bench::StormArgs {
  bool peers = true;
  std::uint64_t writes_kib = 1024;
  int drop_percent = 10;
};

struct Result {
  std::string name;
  int devices = 0;
  double total_s = 0;
  double p50_ms = 0, p99_ms = 0, max_ms = 0;
  int failures = 0;
  std::string first_error;
  int dropped = 0;
  std::uint64_t lost_after_drop = 0, mismatches = 0;
};

/// Every device: connect, read the working set in request-size pieces, write `writes_kib` KiB and FLUSH (dropping
/// and reopening the connection half-way if it is one of the `drop_percent` %), disconnect; then every device
/// reads back what it wrote (pvs keeps its session for a reconnect). Devices first_device.. on export `export_of`.
Result storm(const std::string& name, std::uint16_t port, const Args& a, int first_device, std::uint64_t writes_kib,
             int drop_percent, std::function<std::string(int)> export_of) {
  dt::ReconnectStorm s;
  s.port = port;
  s.export_of = std::move(export_of);
  s.first_device = first_device;
  s.devices = a.devices;
  s.concurrency = a.concurrency;
  s.ws_bytes = a.ws_mib << 20;
  s.request_bytes = a.request_kib << 10;
  s.write_bytes = writes_kib << 10;
  s.disk_bytes = a.base_mib << 20;
  s.drop_percent = drop_percent;
  const auto o = dt::run_reconnect_storm(s);
  Result r{name, a.devices, o.boot_s};
  std::vector<double> ok;
  for (const auto& d : o.devices)
    if (d.boot_ms >= 0) ok.push_back(d.boot_ms);
  const auto p = bench::percentiles(std::move(ok));
  r.p50_ms = p.p50;
  r.p99_ms = p.p99;
  r.max_ms = p.max;
  r.failures = o.failures;
  r.first_error = o.first_error;
  r.dropped = o.dropped;
  r.lost_after_drop = o.lost_after_drop;
  r.mismatches = o.mismatches;
  return r;
}

void print(const Result& r, const Args& a) {
  const int done = r.devices - r.failures;
  std::printf("%-26s devices %4d ok %4d dropped %3d  total %7.2f s  %8.1f boots/s  %9.1f MiB/s read  p50 %8.1f ms  "
              "p99 %8.1f ms  max %8.1f ms\n",
              r.name.c_str(), r.devices, done, r.dropped, r.total_s, done / r.total_s,
              static_cast<double>(done) * static_cast<double>(a.ws_mib) / r.total_s, r.p50_ms, r.p99_ms, r.max_ms);
  if (r.failures) std::printf("  %d failures, first: %s\n", r.failures, r.first_error.c_str());
  if (r.mismatches || r.lost_after_drop) {
    // Data loss is the one result that must never be missed in a long log.
    const auto line = "!!! " + r.name + ": DATA MISMATCH: " + std::to_string(r.mismatches) +
                      " written pieces read back wrong at the end, " + std::to_string(r.lost_after_drop) +
                      " lost right after a reconnect !!!\n";
    std::fputs(line.c_str(), stdout);
    std::fputs(line.c_str(), stderr);
  }
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
      ("writes-kib", po::value<long long>()->value_name("KIB")->default_value(static_cast<long long>(a.writes_kib)),
       "each device writes this much of its own pattern during its boot (16 KiB pieces at its own offsets), FLUSHes, "
       "and reads it all back at the end; 0 = a read-only boot")
      ("drop-percent", po::value<long long>()->value_name("P")->default_value(a.drop_percent),
       "this share of devices (chosen evenly) closes its connection without NBD_CMD_DISC after half of its writes, "
       "reopens its export and continues; 0..100. With P > 0 the same storm also runs without drops, for the ratio")
      ("no-peers", "skip the nbdkit --filter=cow and qemu-nbd runs (they run only with --writes-kib 0)");
  a.add_options(flags);
  const po::positional_options_description no_operands;  // every argument is a flag
  const auto fail = [&](const std::string& why) { usage(why, flags); };
  const auto vm = deskfarm::bench::parse_command_line(argc, argv, flags, no_operands, fail);
  if (vm.count("help")) {
    std::cout << "pvs_bootstorm: boot storm with reconnects against the pvs plugin; read-only, also against nbdkit "
                 "--filter=cow and qemu-nbd (those found on PATH).\n"
              << synopsis << flags;
    return 0;
  }
  a.read(vm, fail);
  a.peers = vm.count("no-peers") == 0;
  a.writes_kib = static_cast<std::uint64_t>(bench::checked_integer(vm, "writes-kib", 0, 1 << 30, fail));
  a.drop_percent = static_cast<int>(bench::checked_integer(vm, "drop-percent", 0, 100, fail));
  constexpr auto piece_kib = dt::ReconnectStorm::write_piece >> 10;
  if ((a.writes_kib + piece_kib - 1) / piece_kib > (a.base_mib << 20) / dt::ReconnectStorm::write_piece)
    fail("--writes-kib " + std::to_string(a.writes_kib) + " does not fit on a " + std::to_string(a.base_mib) +
         " MiB base (--base-mib) in " + std::to_string(piece_kib) + " KiB pieces");
  const bool with_drops = a.drop_percent > 0;
  // The run with drops uses devices of its own, so no device finds the other run's writes in its session.
  const int registered = with_drops ? 2 * a.devices : a.devices;
  if (registered > (1 << 24)) fail("--devices with --drop-percent > 0 may be at most 8388608 (two runs of devices)");
  std::printf("boot storm: %d devices, %d at a time, %llu MiB working set each in %llu KiB reads, %llu KiB written "
              "each, %d %% dropping mid-boot, base %llu MiB\n",
              a.devices, a.concurrency, static_cast<unsigned long long>(a.ws_mib),
              static_cast<unsigned long long>(a.request_kib), static_cast<unsigned long long>(a.writes_kib),
              a.drop_percent, static_cast<unsigned long long>(a.base_mib));
  std::vector<Result> results;
  // Stopped after its runs; its directory (and the base image the peers serve) lives until the end.
  bench::PvsStorm pvs(PLUGIN_DIR, registered, a.base_mib << 20, "tftp = \"off\"\nstream = \"127.0.0.1:0\"\n");
  const auto base = pvs.base();
  bool lost = false;
  {
    const auto port = pvs.stream_port();
    Args warm_up = a;
    warm_up.devices = std::min(a.devices, 16);
    warm_up.concurrency = 4;
    // Read-only, so the devices it uses start the timed run with empty caches.
    storm("warm-up", port, warm_up, 0, 0, 0, mac_of);
    results.push_back(storm("pvs, no drops", port, a, 0, a.writes_kib, 0, mac_of));
    print(results.back(), a);
    if (with_drops) {
      const auto name = "pvs, " + std::to_string(a.drop_percent) + " % dropping";
      const auto& off = results.back();
      const auto on = storm(name, port, a, a.devices, a.writes_kib, a.drop_percent, mac_of);
      print(on, a);
      const int off_ok = off.devices - off.failures, on_ok = on.devices - on.failures;
      std::printf("with / without drops: boots/s %.2f, p50 %.2f, p99 %.2f (boots/s below 1 = drops cost throughput)\n",
                  (on_ok / on.total_s) / (off_ok / off.total_s), on.p50_ms / off.p50_ms, on.p99_ms / off.p99_ms);
      lost = on.mismatches || on.lost_after_drop || on.failures;
    }
    lost = lost || results[0].mismatches || results[0].failures;
    pvs.stop();
  }
  if (a.peers && a.writes_kib > 0) {
    std::printf("nbdkit and qemu-nbd skipped: each serves one shared export, so devices' writes would land on each "
                "other's; run with --writes-kib 0 to compare read-only boots\n");
  }
  const auto fixed = [](const std::string& name) { return [name](int) { return name; }; };
  if (a.peers && a.writes_kib == 0 && dt::have_program("nbdkit")) {
    const auto port = dt::free_port();
    dt::ChildProcess nbdkit({"nbdkit", "-f", "-i", "127.0.0.1", "-p", std::to_string(port), "--filter=cow", "file",
                             base.string()});
    if (wait_port(port, "")) {
      results.push_back(storm("nbdkit --filter=cow file", port, a, 0, 0, 0, fixed("")));
      print(results.back(), a);
    } else {
      std::printf("nbdkit did not come up on port %u\n", port);
    }
  }
  if (a.peers && a.writes_kib == 0 && dt::have_program("qemu-nbd")) {
    const auto port = dt::free_port();
    dt::ChildProcess qemu({"qemu-nbd", "-f", "raw", "-r", "-t", "-e", "4096", "-x", "gold", "-b", "127.0.0.1", "-p",
                           std::to_string(port), base.string()});
    if (wait_port(port, "gold")) {
      results.push_back(storm("qemu-nbd -r (shared)", port, a, 0, 0, 0, fixed("gold")));
      print(results.back(), a);
    } else {
      std::printf("qemu-nbd did not come up on port %u\n", port);
    }
  }
  for (std::size_t i = 1; i < results.size(); ++i)
    std::printf("pvs / %s: time ratio %.2f (below 1 = pvs faster)\n", results[i].name.c_str(),
                results[0].total_s / results[i].total_s);
  return lost ? 1 : 0;
}
