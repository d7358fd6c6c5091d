#pragma once
// The plugin side of every simulated hypervisor: the manifest keys (one schema for all vendors), the bus
// requests of the hypervisor contract, the inventory file, run-time faults and the firmware hook. A vendor
// plugin is this class with its Personality (plugins/hypervisor-xen/, -hyperv/, -esx/).
#include <memory>
#include <string>
#include <vector>

#include <deskfarm/sdk/plugin.hpp>

#include "deskfarm/hvsim/engine.hpp"

namespace deskfarm::hvsim {

struct HostConf {
  std::string id, pool;
  std::int64_t memory_mb = 0, vcpus = 0;
};
struct TemplateConf {
  std::string name;
  std::int64_t memory_mb = 0, vcpus = 0;
  std::string network;
  std::vector<std::string> boot_order;
  bool ha = true;
};
struct NetworkConf {
  std::string name, tftp_server, boot_file, subnet;
};
struct LatencyConf {
  std::string action, distribution;
  double ms = 0, max_ms = 0, sigma = 0;
};
struct SeedConf {
  std::string template_name, prefix;
  std::int64_t count = 0;
};
struct FaultConf {
  std::string kind, host;
  double value = 0;
  std::int64_t at_s = 0;
};

struct AdapterConfig {
  std::string url, username;
  sdk::Secret password;
  std::vector<HostConf> hosts;
  std::vector<TemplateConf> templates;
  std::vector<NetworkConf> networks;
  std::vector<std::string> isos;
  std::vector<LatencyConf> latencies;
  std::int64_t max_in_progress = 0, max_per_minute = 0, max_vms = 0;
  bool ha = true;
  std::int64_t seed = 1;
  double task_failure_rate = 0, slow_storage = 1;
  std::vector<FaultConf> faults;
  std::vector<SeedConf> vms;
  std::string mac_prefix;
  std::string state_dir;
  std::int64_t save_interval_ms = 1000;
  bool firmware = false;
};

inline constexpr auto host_schema = sdk::schema<HostConf>(
    sdk::option("id", &HostConf::id, nullptr, "host id, unique in the instance"),
    sdk::option("pool", &HostConf::pool, "\"pool-1\"", "resource pool (cluster) the host belongs to"),
    sdk::option("memory_mb", &HostConf::memory_mb, "65536", "memory the host gives VMs").range(1, 1e9),
    sdk::option("vcpus", &HostConf::vcpus, "32", "vCPUs the host gives VMs (no overcommit)").range(1, 65535));

inline constexpr auto template_schema = sdk::schema<TemplateConf>(
    sdk::option("name", &TemplateConf::name, nullptr, "template name, unique in the instance"),
    sdk::option("memory_mb", &TemplateConf::memory_mb, "2048", "memory of a VM made from it").range(1, 4294967295.0),
    sdk::option("vcpus", &TemplateConf::vcpus, "2", "vCPUs of a VM made from it").range(1, 65535),
    sdk::option("network", &TemplateConf::network, "\"\"", "network of its VMs; \"\" = the first of networks"),
    sdk::option("boot_order", &TemplateConf::boot_order, "[\"network\", \"disk\"]", "1 to 3 of network, cdrom, disk"),
    sdk::option("ha", &TemplateConf::ha, "true", "its VMs are HA-protected (restarted elsewhere when their host fails)"));

inline constexpr auto network_schema = sdk::schema<NetworkConf>(
    sdk::option("name", &NetworkConf::name, nullptr, "network name, unique in the instance"),
    sdk::option("tftp_server", &NetworkConf::tftp_server, "\"\"", "DHCP option 66: \"host\" or \"host:port\" of the TFTP server; \"\" = none"),
    sdk::option("boot_file", &NetworkConf::boot_file, "\"\"", "DHCP option 67: the bootstrap file name; \"\" = none"),
    sdk::option("subnet", &NetworkConf::subnet, "\"\"", "IPv4 range its VMs lease addresses from, in order (\"10.1.0.0/16\"); \"\" = VMs have no address"));

inline constexpr auto latency_schema = sdk::schema<LatencyConf>(
    sdk::option("action", &LatencyConf::action, nullptr,
                "create|start|shutdown|power_off|reboot|suspend|resume|destroy|attach_iso|eject_iso|set_boot_order|pause|unpause|ha_restart")
        .one_of("create|start|shutdown|power_off|reboot|suspend|resume|destroy|attach_iso|eject_iso|set_boot_order|pause|unpause|ha_restart"),
    sdk::option("distribution", &LatencyConf::distribution, "\"lognormal\"", "constant: ms; uniform: ms..max_ms; lognormal: median ms, sigma")
        .one_of("constant|uniform|lognormal"),
    sdk::option("ms", &LatencyConf::ms, nullptr, "milliseconds: the constant, the uniform minimum or the lognormal median").range(0, 3600e3),
    sdk::option("max_ms", &LatencyConf::max_ms, "0", "uniform: the maximum (at least ms)").range(0, 3600e3),
    sdk::option("sigma", &LatencyConf::sigma, "0.3", "lognormal: the spread (sigma of the underlying normal)").range(0, 3));

inline constexpr auto seed_schema = sdk::schema<SeedConf>(
    sdk::option("template", &SeedConf::template_name, nullptr, "template the VMs are made from"),
    sdk::option("count", &SeedConf::count, "1", "how many").range(1, 16777214),
    sdk::option("prefix", &SeedConf::prefix, "\"desktop-\"", "VM names are PREFIX1, PREFIX2, ..."));

inline constexpr auto fault_schema = sdk::schema<FaultConf>(
    sdk::option("kind", &FaultConf::kind, nullptr, "host_crash|host_recover|task_failure_rate|slow_storage")
        .one_of("host_crash|host_recover|task_failure_rate|slow_storage"),
    sdk::option("host", &FaultConf::host, "\"\"", "the host of host_crash and host_recover"),
    sdk::option("value", &FaultConf::value, "0", "the rate (0..1) or the factor (1..1000)").range(0, 1000),
    sdk::option("at_s", &FaultConf::at_s, "0", "seconds after start (deployment clock)").range(0, 31536000));

inline constexpr auto adapter_schema = sdk::schema<AdapterConfig>(
    sdk::option("url", &AdapterConfig::url, "\"\"", "the management endpoint this adapter stands for (shown in status; the simulation needs none)"),
    sdk::option("username", &AdapterConfig::username, "\"\"", "account on the management endpoint"),
    sdk::option("password", &AdapterConfig::password, "\"\"", "its password: a secret, give it as \"${ENV_VAR}\""),
    sdk::option("hosts", &AdapterConfig::hosts,
                "[{ id = \"host-1\" }, { id = \"host-2\" }]", "hosts and their capacity",
                host_schema),
    sdk::option("templates", &AdapterConfig::templates, "[{ name = \"desktop\" }]", "templates VMs are created from", template_schema),
    sdk::option("networks", &AdapterConfig::networks,
                "[{ name = \"lan\", tftp_server = \"127.0.0.1:69\", boot_file = \"ARDBP32.BIN\" }]",
                "networks with their DHCP options 66/67 and address range", network_schema),
    sdk::option("isos", &AdapterConfig::isos, "[]", "the ISO library (names a VM's CD-ROM can take)"),
    sdk::option("latencies", &AdapterConfig::latencies, "[]", "per-action latency distributions overriding the defaults",
                latency_schema),
    sdk::option("max_in_progress", &AdapterConfig::max_in_progress, "10", "actions started at once on this connection; 0 = unlimited")
        .range(0, 100000),
    sdk::option("max_per_minute", &AdapterConfig::max_per_minute, "0", "actions started per minute; 0 = unlimited").range(0, 10000000),
    sdk::option("max_vms", &AdapterConfig::max_vms, "200000", "VMs this instance may hold").range(1, 16777214),
    sdk::option("ha", &AdapterConfig::ha, "true", "pool HA: restart protected VMs of a failed host on the remaining hosts"),
    sdk::option("seed", &AdapterConfig::seed, "1", "seed of the latency and failure draws").range(0, 9.0e15),
    sdk::option("task_failure_rate", &AdapterConfig::task_failure_rate, "0", "share of tasks that fail with the vendor's internal error")
        .range(0, 1),
    sdk::option("slow_storage", &AdapterConfig::slow_storage, "1", "disk-bound actions (create, start, reboot, suspend, resume, destroy) take this many times longer")
        .range(1, 1000),
    sdk::option("faults", &AdapterConfig::faults, "[]", "faults injected after start", fault_schema),
    sdk::option("vms", &AdapterConfig::vms, "[]", "VMs created (off) when the instance has no inventory file yet", seed_schema),
    sdk::option("mac_prefix", &AdapterConfig::mac_prefix, "\"\"",
                "first 3 to 5 octets of VM MACs (\"52:54:00\"), then the VM's number from 1 (5 octets: at most 254 VMs); \"\" = 3 locally administered octets from the instance name"),
    sdk::option("state_dir", &AdapterConfig::state_dir, "\"\"", "directory of the inventory file INSTANCE.inventory; \"\" = the instance's state directory"),
    sdk::option("save_interval_ms", &AdapterConfig::save_interval_ms, "1000", "write a changed inventory at most this often (and at stop)")
        .range(10, 3600000),
    sdk::option("firmware", &AdapterConfig::firmware, "false",
                "real firmware: a VM booting from a network with options 66/67 fetches its bootstrap over TFTP and streams its vDisk before it runs"));

/// Every row of `base` (the schema of a base struct of T), then `opts`: a backend whose config adds keys to the
/// adapters' (`constexpr auto config = hvsim::extend_schema<QemuConfig>(hvsim::adapter_schema, sdk::option(...));`),
/// so a manifest written for one vendor runs on it unchanged.
template <class T, class B, class... BaseOpts, class... Opts>
constexpr sdk::Schema<T, BaseOpts..., Opts...> extend_schema(const sdk::Schema<B, BaseOpts...>& base, Opts... opts) {
  static_assert(std::is_base_of_v<B, T>, "extend_schema<T>: T must derive from the struct of the base schema");
  return std::apply([&](const auto&... b) { return sdk::Schema<T, BaseOpts..., Opts...>{{b.row..., opts.row...}, {b..., opts...}}; },
                    base.options);
}

/// Builds the engine's configuration; throws sdk::ConfigError at the key of a bad value.
EngineConfig engine_config(const AdapterConfig& c, const std::string& instance);

class Adapter : public sdk::Plugin {
 public:
  Adapter(sdk::Context& ctx, const Personality& vendor);
  ~Adapter() override;
  /// What the schema cannot say: duplicate ids, templates no host can hold, unknown hosts in faults.
  static void validate(const sdk::Config& config);

  void start() override;
  void stop() override;
  void status(sdk::Value& out) const override;

  Engine& engine() { return *engine_; }

 protected:
  // A real backend (hypervisor-qemu) overrides these four; the simulated vendors leave them alone. All run on
  // the instance's executor.
  /// True: every started task goes to work() instead of a latency timer.
  virtual bool real() const { return false; }
  /// Does the work of a started task; ends it with engine().work_finished() later (not from inside work()).
  virtual void work(const WorkTicket&) {}
  /// At stop, before the inventory is saved: release the machines (the VMs they end are reported off).
  virtual void stop_machines() {}
  /// Adds the backend's own fields to status().
  virtual void machines_status(sdk::Value&) const {}
  sdk::Context& context() const { return ctx_; }
  const AdapterConfig& adapter_config() const { return config_; }

 private:
  void wake_at(TimePoint t);
  void apply(const std::string& kind, const std::string& host, double value);
  void save();
  void boot(const BootTicket& ticket);

  sdk::Context& ctx_;
  const Personality& vendor_;
  AdapterConfig config_;
  std::filesystem::path file_;
  std::unique_ptr<Engine> engine_;
  std::vector<sdk::Subscription> served_;
  sdk::TimerId timer_ = 0;
  TimePoint timer_at_{};
  sdk::TimerId saver_ = 0;
  sdk::Counter* tasks_ok_ = nullptr;
  sdk::Counter* tasks_failed_ = nullptr;
  sdk::Counter* power_events_ = nullptr;
  sdk::Gauge* vms_ = nullptr;
  sdk::Gauge* running_ = nullptr;
  sdk::Gauge* queued_ = nullptr;
};

}  // namespace deskfarm::hvsim
