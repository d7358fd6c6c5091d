#pragma once
// What the pvs boot-storm benchmarks share: device MACs, a pvs deployment in this process with N devices on
// one base vDisk, and percentiles of the boot times.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/net.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include <boost/program_options.hpp>

#include "bench_cli.hpp"
#include "deployment.hpp"

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

/// A running pvs instance "pvs-1" with `devices` devices (mac_of(0..)) on the base vDisk "gold" of `base_bytes`,
/// started in this process from a manifest in a temp dir; `extra` adds keys to the instance (e.g. `tftp = ...`).
class PvsStorm {
 public:
  PvsStorm(const std::string& plugin_dir, int devices, std::uint64_t base_bytes, const std::string& extra)
      : dir_("pvs-bench"), catalog_({plugin_dir}) {
    const auto store = dir_.path() / "vdisks";
    std::filesystem::create_directories(store);
    testing::write_file(store / "gold.img", testing::pattern(base_bytes, 3));
    std::string toml = "[deployment]\nname = \"bench\"\nstate_dir = \"" + (dir_.path() / "var").string() +
                       "\"\ndata_store = \"sqlite:" + (dir_.path() / "ds.db").string() +
                       "\"\n[instances.pvs-1]\nplugin = \"pvs\"\nstore = \"" + store.string() +
                       "\"\nmax_connections = 4096\n" + extra + "\nvdisks = [ { name = \"gold\" } ]\ndevices = [\n";
    for (int i = 0; i < devices; ++i) toml += "  { mac = \"" + mac_of(i) + "\", vdisk = \"gold\" },\n";
    toml += "]\n";
    testing::write_text(dir_ / "bench.toml", toml);
    deployment_ = std::make_unique<kernel::Deployment>(kernel::load_manifest(dir_ / "bench.toml"), catalog_, log_);
    deployment_->start();
    // Devices are refused until the catalog has loaded from the data store (after start(), off the executor).
    const bool loaded = testing::eventually([&] {
      status_ = sdk::Value::object();
      deployment_->run_on("pvs-1", [&](sdk::Plugin& p, sdk::Context&) { p.status(status_); });
      return status_.find("catalog") && status_.find("catalog")->as_string() == "loaded";
    }, std::chrono::seconds(30));
    if (!loaded) throw std::runtime_error("pvs-1 did not load its catalog from the data store within 30 s");
  }
  ~PvsStorm() { stop(); }
  PvsStorm(const PvsStorm&) = delete;
  PvsStorm& operator=(const PvsStorm&) = delete;

  std::uint16_t port(const std::string& key) const { return static_cast<std::uint16_t>(status_.find(key)->as_integer()); }
  std::uint16_t stream_port() const { return port("stream_port"); }
  std::uint16_t tftp_port() const { return port("tftp_port"); }
  const std::filesystem::path& dir() const { return dir_.path(); }
  std::filesystem::path base() const { return dir_.path() / "vdisks" / "gold.img"; }
  void stop() {
    if (deployment_) deployment_->stop();
    deployment_.reset();
  }

 private:
  testing::TempDir dir_;
  // Warnings are expected (every device boots from 127.0.0.1, so pvs cannot tell them apart by address).
  kernel::LogSink log_{sdk::LogLevel::error};
  kernel::PluginCatalog catalog_;
  std::unique_ptr<kernel::Deployment> deployment_;
  sdk::Value status_ = sdk::Value::object();
};

}  // namespace deskfarm::bench
