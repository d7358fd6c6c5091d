#pragma once
// What the pvs boot-storm benchmarks share: a pvs deployment in this process with N devices on one base vDisk
// (and, from storm.hpp, device MACs and addresses, the storm flags and percentiles).
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

#include "deployment.hpp"
#include "storm.hpp"

namespace deskfarm::bench {

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
