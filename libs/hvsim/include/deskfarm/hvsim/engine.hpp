#pragma once
// One hypervisor simulation for every vendor: hosts in pools with capacity and placement, templates, an ISO
// library, networks with DHCP options 66/67, VMs with deterministic MACs, lifecycle actions as asynchronous
// tasks through a throttled per-connection queue, latencies drawn from seeded distributions, fault injection
// (host crash with HA restart, task failure rate, slow storage), a boot hook for real firmware, and an
// inventory file that survives a restart. A network with a subnet leases each of its VMs an address, in order. The vendor's words come from its Personality.
//
// The engine owns no thread and no timer: whoever drives it gives it the time (`Callbacks::now`), is asked to
// call run_due() at a time (`Callbacks::wake_at`), and receives its events. One thread at a time (the plugin's
// executor). A VM costs about 64 bytes while off, a few more while running.
#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <queue>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/net/subnet.hpp>

#include "deskfarm/hvsim/personality.hpp"

namespace deskfarm::hvsim {

namespace hv = deskfarm::interfaces::hypervisor;
using TimePoint = std::chrono::time_point<std::chrono::system_clock, std::chrono::nanoseconds>;

enum class Action : std::uint8_t {
  create, start, shutdown, power_off, reboot, suspend, resume, destroy, attach_iso, eject_iso, set_boot_order,
  pause, unpause, ha_restart
};
inline constexpr std::size_t action_count = 14;
std::string_view action_name(Action a);
/// The action named `name` ("power_off"); nullopt for an unknown one. "ha_restart" is not requestable.
std::optional<Action> action_of(std::string_view name);

/// A latency distribution in milliseconds: constant (`a`), uniform [a, b], lognormal (median `a`, sigma `b`).
struct Latency {
  enum class Kind : std::uint8_t { constant, uniform, lognormal } kind = Kind::constant;
  double a = 0;
  double b = 0;
  std::chrono::nanoseconds draw(std::mt19937_64& rng) const;
};
/// "constant" | "uniform" | "lognormal"; nullopt for another.
std::optional<Latency::Kind> latency_kind(std::string_view name);

struct HostSpec {
  std::string id;
  std::string pool;
  std::int64_t memory_mb = 0;
  std::int64_t vcpus = 0;
};
struct TemplateSpec {
  std::string name;
  std::int64_t memory_mb = 0;
  std::int64_t vcpus = 1;
  std::string network;                  ///< "" = the first network
  std::vector<std::string> boot_order;  ///< default ["network", "disk"]
  bool ha = true;                       ///< HA-protected: restarted elsewhere when its host fails
};

struct EngineConfig {
  std::string instance;  ///< seeds ids and MACs (two instances give different MACs)
  /// First 3 to 5 octets of every VM's MAC ("52:54:00"); the rest holds the VM's number (1, 2, ...), so a
  /// 5-octet prefix leaves room for 254 VMs. Empty: 3 octets derived from `instance` alone (locally
  /// administered), so swapping the vendor plugin keeps every VM's MAC.
  std::string mac_prefix;
  std::vector<HostSpec> hosts;
  std::vector<TemplateSpec> templates;
  std::vector<hv::Network> networks;
  std::vector<std::string> isos;
  std::map<Action, Latency> latencies;  ///< overrides of the defaults (default_latency)
  std::int64_t max_in_progress = 0;     ///< 0 = unlimited
  std::int64_t max_per_minute = 0;      ///< 0 = unlimited
  std::int64_t max_vms = 200000;
  bool ha = true;                       ///< pool HA on
  std::uint64_t seed = 1;
  double task_failure_rate = 0;
  double storage_factor = 1;
  std::size_t task_history = 1024;      ///< finished tasks kept for lookups and cancel answers
};

/// The engine's default for `a` (vendors take seconds to start a VM, sub-second to eject an ISO).
Latency default_latency(Action a);

/// Thrown for a request that names something unknown or impossible; carries the vendor's code.
class Refused : public std::runtime_error {
 public:
  explicit Refused(VendorError e) : std::runtime_error(e.message), code_(std::move(e.code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

/// A boot the engine hands to real firmware: call Engine::boot_finished(task, ...) when it ends, or for an HA
/// restart (task 0: no task asked for it) Engine::ha_boot_finished(vm, ...).
struct BootTicket {
  std::uint64_t task = 0;  ///< 0: an HA restart
  std::string task_id;
  std::string vm;
  std::string mac;
  std::vector<std::string> boot_order;
  std::string tftp_server;  ///< the VM network's option 66
  std::string boot_file;    ///< option 67
  std::string iso;          ///< attached ISO ("" = none)
};

/// A started task handed to a real backend (Callbacks::on_work): what the machine must do. Call
/// Engine::work_finished(task, ...) when it is done.
struct WorkTicket {
  std::uint64_t task = 0;
  std::string task_id;
  Action action = Action::start;
  std::string vm;   ///< "" for create (the VM gets its id when the task completes)
  std::string mac;  ///< "" for create
  std::string template_name;            ///< the VM's template (create: the one asked for)
  std::int64_t memory_mb = 0;
  std::int64_t vcpus = 0;
  std::string iso;                      ///< attach_iso: the ISO to insert; otherwise the VM's ("" = none)
  std::vector<std::string> boot_order;  ///< set_boot_order: the new order; otherwise the VM's
};

struct Callbacks {
  std::function<TimePoint()> now;
  /// Call run_due() at (or soon after) this time; a later request may name an earlier time.
  std::function<void(TimePoint)> wake_at;
  std::function<void(const hv::PowerStateEvent&)> on_power;
  std::function<void(const hv::Task&)> on_task;
  /// Set: starts whose VM boots from a network with options 66/67 wait here until boot_finished().
  std::function<void(const BootTicket&)> on_boot;
  std::function<void(const std::string&)> log;  ///< one line per noteworthy event (host failure, HA restart)
  /// Set: a real backend does the work of every started task instead of a latency timer (hypervisor-qemu);
  /// it calls work_finished() later, never from inside on_work.
  std::function<void(const WorkTicket&)> on_work;
};

struct QueueStats {
  std::size_t pending = 0;
  std::size_t in_progress = 0;
  std::size_t started_last_minute = 0;
  std::uint64_t completed = 0, failed = 0, cancelled = 0;
};

class Engine {
 public:
  /// Throws std::invalid_argument naming a bad value (no host, duplicate ids, a template bigger than any host).
  Engine(const Personality& vendor, EngineConfig config, Callbacks callbacks);

  /// Queues an action; the reply is its task (pending, or failed at once with the vendor's error when the VM's
  /// state refuses it). Throws Refused for an unknown VM, template, ISO or action, or a bad argument.
  hv::Task submit(const hv::VmAction& action);
  /// Cancels a pending or started task (the VM returns to where it was); Refused for an unknown or finished one.
  hv::Task cancel(const std::string& task_id);
  /// Runs everything due by now().
  void run_due();

  /// Fault injection. Refused for an unknown host.
  void crash_host(const std::string& host);
  void recover_host(const std::string& host);
  void set_task_failure_rate(double rate);
  /// Sets a network's options 66/67 (the next boots take them). Refused for an unknown network.
  hv::Network set_network_boot(const std::string& network, const std::string& tftp_server, const std::string& boot_file);
  void set_storage_factor(double factor);

  /// The end of a boot handed to on_boot: handover (ok) makes the VM running, anything else fails its task
  /// with the vendor's boot error (reason kept) and powers it off. Unknown or cancelled tasks are ignored.
  void boot_finished(std::uint64_t task, bool ok, const std::string& reason);
  /// The end of an HA restart's boot (a ticket with task 0): handover makes the VM running (reason ha_restart),
  /// anything else powers it off and frees its host. Ignored when the VM is no longer waiting for that boot.
  void ha_boot_finished(const std::string& vm, bool ok, const std::string& reason);
  /// The end of a task handed to on_work: ok completes it (the state change of its action), anything else
  /// fails it with the vendor's internal error and `reason`, the VM back where the task found it. Unknown,
  /// cancelled or finished tasks are ignored.
  void work_finished(std::uint64_t task, bool ok, const std::string& reason);
  /// The machine behind `vm` changed state by itself (the guest powered off or reset, its process died): a task
  /// in flight on it fails with `detail`, and the VM takes state `s` with `reason` ("guest", "host_failure").
  /// An unknown VM is ignored.
  void observed(const std::string& vm, State s, const std::string& reason, const std::string& detail);
  /// True while `task` waits for its firmware.
  bool booting(std::uint64_t task) const;

  /// Adds `count` VMs from a template at once, off (seeding and benchmarks; no tasks, no events). Returns their ids.
  std::vector<std::string> seed(const std::string& template_name, std::size_t count, const std::string& name_prefix);

  hv::Inventory inventory() const;
  std::optional<hv::Vm> vm(const std::string& id) const;
  std::optional<hv::Task> task(const std::string& id) const;
  std::vector<hv::Host> hosts() const;
  QueueStats stats() const;
  std::size_t vm_count() const { return live_vms_; }
  std::size_t running_count() const;
  const Personality& vendor() const { return vendor_; }

  /// Writes the inventory to `file` atomically (a temporary beside it, fsync, rename).
  void save(const std::filesystem::path& file) const;
  /// Replaces the VMs with those in `file`; throws std::runtime_error("FILE:LINE: what; how to fix") for a
  /// corrupt one. VMs caught mid-transition are settled (starting → running, stopping → off).
  void load(const std::filesystem::path& file);
  /// A change since the last save()/load().
  bool dirty() const { return dirty_; }

 private:
  struct VmRec {
    std::string name;
    std::uint32_t memory_mb = 0;
    std::uint16_t vcpus = 0;
    std::uint16_t template_idx = 0;
    std::uint16_t network = 0;
    std::int16_t iso = -1;
    std::int16_t host = -1;
    std::uint8_t boot_order = 0;  ///< 3 devices x 2 bits (1 network, 2 cdrom, 3 disk)
    State state = State::off;
    bool alive = false;
    bool ha = false;
    std::uint8_t ha_stage = 0;  ///< 1 waiting for HA restart, 2 restarting, 3 booting through its firmware
    std::uint32_t lease = 0;    ///< host number in its network's subnet (address = subnet.host(lease)); 0 = none
    std::uint64_t task = 0;     ///< the started task acting on it
  };
  /// A network's subnet and its leases: host numbers 1..room, the lowest free one first, so the same history of
  /// creates and destroys gives every VM the same address.
  struct LeasePool {
    std::optional<net::Subnet> subnet;  ///< nullopt: the network has no subnet
    std::uint32_t room = 0;          ///< host numbers 1..room (subnet->host_count()); 0 = the network has no subnet
    std::uint32_t next = 1;          ///< the lowest number never handed out
    std::set<std::uint32_t> freed;   ///< numbers below `next` free again (their VMs were destroyed)
    std::size_t creating = 0;        ///< create tasks queued or running for the network: each will take a number
    std::size_t free() const { return room == 0 ? 0 : room - (next - 1) + freed.size(); }
  };
  struct HostRec {
    HostSpec spec;
    std::int64_t used_memory = 0;
    std::int64_t used_vcpus = 0;
    bool up = true;
  };
  struct TaskRec {
    std::uint64_t num = 0;
    Action action = Action::start;
    std::uint32_t vm = 0;
    TaskState state = TaskState::pending;
    double progress = 0;
    std::string error_code, error;
    // arguments
    std::uint16_t template_idx = 0;
    std::string name;
    std::int16_t iso = -1;
    std::uint8_t boot_order = 0;
    // while started
    State before = State::off;
    std::uint64_t timer = 0;
    bool booting = false;
  };
  enum class EvKind : std::uint8_t { task_done, ha_restart, ha_running, throttle };
  struct Event {
    TimePoint at;
    std::uint64_t seq;
    EvKind kind;
    std::uint64_t ref;
    bool operator>(const Event& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };

  std::string vm_id(std::uint32_t index) const;
  std::optional<std::uint32_t> vm_index(std::string_view id) const;
  std::string mac_of(std::uint32_t index) const;
  std::string task_id(std::uint64_t num) const;
  std::optional<std::uint64_t> task_num(std::string_view id) const;
  hv::Vm vm_view(std::uint32_t index) const;
  hv::Task task_view(const TaskRec& t) const;
  Refused refused(Failure f, std::string_view subject, std::string_view detail) const;

  static bool accepts(Action a, State s);
  std::string expected_states(Action a) const;
  std::int16_t place(const VmRec& vm, std::int16_t avoid) const;
  void reserve(VmRec& vm, std::int16_t host);
  void release(VmRec& vm);
  void set_state(std::uint32_t index, State s, std::string_view reason);
  std::chrono::nanoseconds latency(Action a);
  void schedule(TimePoint at, EvKind kind, std::uint64_t ref, std::uint64_t* seq_out = nullptr);
  void arm();
  void pump();
  void begin(TaskRec& t);
  void complete(std::uint64_t num);
  void finish(TaskRec& t, TaskState s, std::optional<VendorError> error = std::nullopt);
  void fail(std::uint64_t num, Failure f, std::string_view detail, bool revert);
  void revert(TaskRec& t);
  bool wants_firmware(const VmRec& vm) const;
  void hand_to_firmware(TaskRec& t);
  BootTicket ticket(std::uint32_t vm, std::uint64_t task) const;
  void hand_to_backend(TaskRec& t);
  std::uint32_t new_vm(std::uint16_t template_idx, std::string name);
  std::uint16_t network_of(std::uint16_t template_idx) const;
  /// A lease on network `net` (0 when it has no subnet); the caller made sure one is free.
  std::uint32_t take_lease(std::uint16_t net);
  void release_lease(VmRec& vm);
  std::string address_of(const VmRec& vm) const;
  /// Counts a create task in or out of its network's `creating` (each takes a lease when it completes): called
  /// where create tasks enter and leave tasks_.
  void count_create(const TaskRec& t, bool queued);
  std::uint8_t encode_boot_order(const std::vector<std::string>& order, std::string_view subject) const;
  static std::vector<std::string> decode_boot_order(std::uint8_t packed);
  std::int16_t host_index(std::string_view id) const;
  std::optional<std::uint16_t> template_index(std::string_view name) const;
  std::int16_t iso_index(std::string_view name) const;

  const Personality& vendor_;
  EngineConfig config_;
  Callbacks cb_;
  std::array<Latency, action_count> latency_{};
  std::mt19937_64 rng_;
  std::string id_prefix_;
  std::uint8_t mac_prefix_[5]{};
  std::size_t mac_octets_ = 3;   ///< octets of mac_prefix_ in use
  std::uint32_t mac_room_ = 0;   ///< VM indexes the MAC's free octets hold

  std::vector<VmRec> vms_;
  std::size_t live_vms_ = 0;
  std::vector<HostRec> hosts_;
  std::vector<LeasePool> leases_;  ///< one per network, in config_.networks order
  std::unordered_map<std::uint64_t, TaskRec> tasks_;
  std::deque<hv::Task> finished_;
  std::deque<std::uint64_t> queue_;
  std::deque<TimePoint> window_;
  std::size_t in_progress_ = 0;
  std::uint64_t next_task_ = 1;
  std::uint64_t seq_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events_;
  std::optional<TimePoint> armed_;
  QueueStats counts_;
  mutable bool dirty_ = false;  ///< cleared by save(), which does not change the inventory
};

}  // namespace deskfarm::hvsim
