#pragma once
// What every boot-storm benchmark shares, with no kernel inside: device MACs and loopback addresses, the storm's
// flags, and percentiles of the boot times.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include <deskfarm/testing/net.hpp>

#include "bench_cli.hpp"

namespace deskfarm::bench {

using testing::mac_of;

/// A loopback address of its own for device `i` (127.0.0.2 onwards), so pvs sees as many machines as devices.
inline std::string source_of(int i) {
  const auto j = static_cast<std::uint32_t>(i) % ((1u << 24) - 3) + 2;
  return "127." + std::to_string((j >> 16) & 0xff) + "." + std::to_string((j >> 8) & 0xff) + "." + std::to_string(j & 0xff);
}

/// p50, p99 and max of a set of times in ms (zeros when empty).
struct Percentiles {
  double p50 = 0, p99 = 0, max = 0;
};
inline Percentiles percentiles(std::vector<double> ms) {
  Percentiles p;
  if (ms.empty()) return p;
  std::sort(ms.begin(), ms.end());
  p.p50 = ms[ms.size() / 2];
  p.p99 = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
  p.max = ms.back();
  return p;
}

/// The flags every boot storm takes: how many devices, how many at a time, and what each reads.
struct StormArgs {
  int devices = 500;
  int concurrency = 64;
  std::uint64_t ws_mib = 16;
  std::uint64_t request_kib = 256;
  std::uint64_t base_mib = 64;

  /// Declares --devices, --concurrency, --ws-mib, --request-kib and --base-mib with these values as defaults.
  void add_options(boost::program_options::options_description& flags) const {
    namespace po = boost::program_options;
    flags.add_options()
        ("devices", po::value<long long>()->value_name("N")->default_value(devices),
         "devices (MACs) that boot, each registered in the pvs manifest with its own export and write cache; 1..16777216")
        ("concurrency", po::value<long long>()->value_name("N")->default_value(concurrency), "devices booting at a time, at least 1")
        ("ws-mib", po::value<long long>()->value_name("MIB")->default_value(static_cast<long long>(ws_mib)),
         "boot working set each device reads, in MiB")
        ("request-kib", po::value<long long>()->value_name("KIB")->default_value(static_cast<long long>(request_kib)),
         "size of each read, in KiB, 1..32768")
        ("base-mib", po::value<long long>()->value_name("MIB")->default_value(static_cast<long long>(base_mib)),
         "size of the base vDisk in MiB (raised to --ws-mib if smaller)");
  }
  /// Reads them back, range-checked; a bad value goes to `fail` (which prints usage and exits).
  void read(const boost::program_options::variables_map& vm, const std::function<void(const std::string&)>& fail) {
    constexpr long long mib_limit = 1 << 20;  // 1 TiB: keeps the byte counts far from overflow
    devices = static_cast<int>(checked_integer(vm, "devices", 1, 1 << 24, fail));
    concurrency = static_cast<int>(checked_integer(vm, "concurrency", 1, 1 << 16, fail));
    ws_mib = static_cast<std::uint64_t>(checked_integer(vm, "ws-mib", 0, mib_limit, fail));
    request_kib = static_cast<std::uint64_t>(checked_integer(vm, "request-kib", 1, 32 << 10, fail));
    base_mib = std::max(static_cast<std::uint64_t>(checked_integer(vm, "base-mib", 0, mib_limit, fail)), ws_mib);
  }
};

}  // namespace deskfarm::bench
