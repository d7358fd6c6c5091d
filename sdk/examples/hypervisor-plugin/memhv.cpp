// memhv: a third party's hypervisor adapter, written only against the installed SDK and the hypervisor contract
// (sdk/interfaces/hypervisor). Its "hypervisor" is a table in memory: hosts with memory, one HA-protected
// template, VMs whose lifecycle runs as tasks through a throttled queue on the deployment clock. It is small on
// purpose: it shows what an adapter must do to pass the SDK's conformance suite, not how to talk to a vendor.
#include <algorithm>
#include <cstdio>
#include <deque>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/sdk/plugin.hpp>

namespace {

using namespace deskfarm::sdk;
namespace hv = deskfarm::interfaces::hypervisor;

constexpr const char* provides[] = {"hypervisor", nullptr};
constexpr const char* kTemplate = "desktop";
constexpr const char* kNetwork = "lan";
constexpr const char* kBadState = "BAD_POWER_STATE";
constexpr const char* kNoMemory = "NOT_ENOUGH_MEMORY";

struct MemhvConfig {
  std::int64_t hosts = 2;
  std::int64_t host_memory_mb = 8192;
  std::int64_t vm_memory_mb = 2048;
  std::int64_t max_in_progress = 4;
  std::int64_t action_ms = 2000;
  std::int64_t ha_restart_s = 10;
  std::string tftp_server;
  std::string boot_file;
};

constexpr auto config = schema<MemhvConfig>(
    option("hosts", &MemhvConfig::hosts, "2", "hosts in the pool, named host-1 … host-N").range(1, 64),
    option("host_memory_mb", &MemhvConfig::host_memory_mb, "8192", "memory of each host").range(256, 1 << 24),
    option("vm_memory_mb", &MemhvConfig::vm_memory_mb, "2048", "memory of a VM of the template \"desktop\"").range(64, 1 << 20),
    option("max_in_progress", &MemhvConfig::max_in_progress, "4", "actions running at once; the rest wait, pending")
        .range(1, 1000),
    option("action_ms", &MemhvConfig::action_ms, "2000", "how long every action takes (deployment time)").range(0, 3600000),
    option("ha_restart_s", &MemhvConfig::ha_restart_s, "10",
           "seconds after a host crash until its VMs run again on another host").range(0, 3600),
    option("tftp_server", &MemhvConfig::tftp_server, "\"\"", "DHCP option 66 of the network \"lan\""),
    option("boot_file", &MemhvConfig::boot_file, "\"\"", "DHCP option 67 of the network \"lan\""));

/// What survives a restart of the deployment: the VMs and the counters that keep ids and MACs unique.
struct Saved {
  std::int64_t next_vm = 1;
  std::vector<std::string> hosts_down;
  std::vector<hv::Vm> vms;
  static constexpr auto fields() {
    return std::tuple{field("next_vm", &Saved::next_vm), field("hosts_down", &Saved::hosts_down), field("vms", &Saved::vms)};
  }
};

/// A task as the queue keeps it: the request, the contract's Task and the timer that completes it.
struct Job {
  hv::VmAction request;
  hv::Task task;
  TimerId timer = 0;
};

class Memhv final : public Plugin {
 public:
  explicit Memhv(Context& ctx) : ctx_(ctx), config_(config.bind(ctx.config())) {}

  void start() override {
    file_ = ctx_.state_dir() / "inventory.json";
    load();
    const auto& me = ctx_.name();
    subs_.push_back(serve<Empty, hv::Inventory>(ctx_.bus(), hv::request_subject(me, "inventory"),
                                                [this](const Empty&) { return inventory(); }));
    subs_.push_back(serve<hv::VmAction, hv::Task>(ctx_.bus(), hv::request_subject(me, "vm.action"),
                                                  [this](const hv::VmAction& a) { return act(a); }));
    subs_.push_back(serve<hv::CancelTask, hv::Task>(ctx_.bus(), hv::request_subject(me, "task.cancel"),
                                                    [this](const hv::CancelTask& c) { return cancel(c.task); }));
    subs_.push_back(serve<hv::Fault, hv::Hosts>(ctx_.bus(), hv::request_subject(me, "fault"),
                                                [this](const hv::Fault& f) { return fault(f); }));
    ctx_.log().info("memhv pool of " + std::to_string(config_.hosts) + " hosts with " + std::to_string(vms_.size()) +
                    " VMs from " + file_.string());
  }

  void stop() override {
    subs_.clear();
    save();
  }

  void status(Value& out) const override {
    std::int64_t running = 0;
    for (const auto& [id, vm] : vms_) running += vm.power_state == hv::kRunning;
    out.set("vms", static_cast<std::int64_t>(vms_.size()));
    out.set("running", running);
    out.set("tasks_in_progress", in_progress_);
    out.set("tasks_pending", static_cast<std::int64_t>(queue_.size()));
  }

 private:
  // ---- inventory ----
  std::string host_name(std::int64_t i) const { return "host-" + std::to_string(i + 1); }

  std::int64_t used_mb(const std::string& host) const {
    std::int64_t used = 0;
    for (const auto& [id, vm] : vms_) used += vm.host == host ? vm.memory_mb : 0;
    return used;
  }

  hv::Inventory inventory() const {
    hv::Inventory inv;
    inv.vendor = "memhv";
    for (std::int64_t i = 0; i < config_.hosts; ++i) {
      const auto id = host_name(i);
      inv.hosts.push_back(hv::Host{id, "pool", config_.host_memory_mb, config_.host_memory_mb - used_mb(id), 8,
                                   !down_.contains(id)});
    }
    inv.templates = {kTemplate};
    inv.networks = {hv::Network{kNetwork, config_.tftp_server, config_.boot_file, ""}};
    for (const auto& [id, vm] : vms_) inv.vms.push_back(vm);
    inv.max_in_progress = config_.max_in_progress;
    return inv;
  }

  /// The first up host with room for `mb`, or "".
  std::string place(std::int64_t mb) const {
    for (std::int64_t i = 0; i < config_.hosts; ++i) {
      const auto id = host_name(i);
      if (!down_.contains(id) && config_.host_memory_mb - used_mb(id) >= mb) return id;
    }
    return "";
  }

  /// A locally administered unicast MAC (first octet 02) from the instance's name and the VM's number, so two
  /// adapter instances on one network do not collide.
  std::string mac_for(std::int64_t n) const {
    std::uint32_t h = 2166136261u;  // FNV-1a of the instance name
    for (unsigned char c : ctx_.name()) h = (h ^ c) * 16777619u;
    char buf[18];
    std::snprintf(buf, sizeof buf, "02:%02x:%02x:%02x:%02x:%02x", (h >> 8) & 0xff, h & 0xff,
                  static_cast<unsigned>((n >> 16) & 0xff), static_cast<unsigned>((n >> 8) & 0xff),
                  static_cast<unsigned>(n & 0xff));
    return buf;
  }

  // ---- lifecycle ----
  /// The state an action needs the VM in (the vendor refuses it otherwise).
  static const std::map<std::string, std::string>& needs() {
    static const std::map<std::string, std::string> m{{"create", ""},
                                                      {"start", hv::kOff},
                                                      {"shutdown", hv::kRunning},
                                                      {"power_off", hv::kRunning},
                                                      {"reboot", hv::kRunning},
                                                      {"suspend", hv::kRunning},
                                                      {"resume", hv::kSuspended},
                                                      {"destroy", hv::kOff}};
    return m;
  }

  hv::Vm& vm_or_throw(const std::string& id) {
    auto it = vms_.find(id);
    if (it == vms_.end())
      throw RequestError("not_found", "VM '" + id + "' is not in memhv instance " + ctx_.name() + "; list them with inventory");
    return it->second;
  }

  /// Why `action` cannot run on the VM now, or "" when it can.
  std::string refusal(const std::string& action, const std::string& vm) const {
    const auto& need = needs().at(action);
    if (need.empty()) return "";
    auto it = vms_.find(vm);
    if (it == vms_.end()) return "VM '" + vm + "' was destroyed";
    if (it->second.power_state != need)
      return action + " needs VM '" + vm + "' " + need + "; it is " + it->second.power_state;
    return "";
  }

  hv::Task act(const hv::VmAction& a) {
    if (!needs().contains(a.action))
      throw RequestError("bad_request", "memhv has no action '" + a.action + "'; it knows create, start, shutdown, power_off, "
                                        "reboot, suspend, resume, destroy");
    if (a.action == "create" && a.template_name != kTemplate)
      throw RequestError("not_found", "template '" + a.template_name + "' is not in memhv instance " + ctx_.name() +
                                          "; it has \"desktop\"");
    if (a.action != "create") vm_or_throw(a.vm);
    Job job;
    job.request = a;
    job.task.id = "task-" + std::to_string(next_task_++);
    job.task.action = a.action;
    job.task.vm = a.vm;
    if (const auto why = refusal(a.action, a.vm); !why.empty()) {
      fail(job.task, kBadState, why);
      return job.task;
    }
    job.task.state = "pending";
    const auto id = job.task.id;
    jobs_[id] = std::move(job);
    queue_.push_back(id);
    publish(ctx_.bus(), hv::task_subject(ctx_.name(), id), jobs_[id].task);
    pump();
    return jobs_[id].task;
  }

  void fail(hv::Task& t, const std::string& code, const std::string& why) {
    t.state = "failed";
    t.error_code = code;
    t.error = why;
    publish(ctx_.bus(), hv::task_subject(ctx_.name(), t.id), t);
  }

  /// Starts pending jobs while the throttle has room.
  void pump() {
    while (in_progress_ < config_.max_in_progress && !queue_.empty()) {
      const auto id = queue_.front();
      queue_.pop_front();
      auto& job = jobs_.at(id);
      if (const auto why = refusal(job.task.action, job.task.vm); !why.empty()) {
        fail(job.task, kBadState, why);
        jobs_.erase(id);
        continue;
      }
      if (job.task.action == "start" || job.task.action == "resume") {
        auto& vm = vms_.at(job.task.vm);
        const auto host = place(vm.memory_mb);
        if (host.empty()) {
          fail(job.task, kNoMemory, "no up host has " + std::to_string(vm.memory_mb) + " MB free for VM '" + vm.id + "'");
          jobs_.erase(id);
          continue;
        }
        vm.host = host;  // reserved now, so concurrent starts never overcommit a host
      }
      ++in_progress_;
      job.task.state = "started";
      publish(ctx_.bus(), hv::task_subject(ctx_.name(), id), job.task);
      job.timer = ctx_.after(std::chrono::milliseconds(config_.action_ms), [this, id] { complete(id); });
    }
  }

  void power(hv::Vm& vm, const std::string& state, const std::string& reason) {
    hv::PowerStateEvent e;
    e.vm = vm.id;
    e.mac = vm.mac;
    e.previous = vm.power_state;
    e.state = state;
    e.vendor_state = state;
    e.reason = reason;
    e.adapter = ctx_.name();
    vm.power_state = state;
    vm.vendor_state = state;
    if (state == hv::kOff || state == hv::kSuspended) vm.host.clear();
    e.host = vm.host;
    publish(ctx_.bus(), hv::power_subject(ctx_.name(), vm.id), e);
  }

  void complete(const std::string& id) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return;  // cancelled meanwhile
    auto& t = it->second.task;
    const auto& a = it->second.request;
    if (t.action == "create") {
      const auto n = next_vm_++;
      hv::Vm vm;
      vm.id = "vm-" + std::to_string(n);
      vm.name = a.name.empty() ? vm.id : a.name;
      vm.mac = mac_for(n);
      vm.power_state = vm.vendor_state = hv::kOff;
      vm.memory_mb = config_.vm_memory_mb;
      vm.vcpus = 2;
      vm.network = kNetwork;
      vm.boot_order = {"network", "disk"};
      t.vm = vm.id;
      vms_[vm.id] = std::move(vm);
    } else if (t.action == "destroy") {
      vms_.erase(t.vm);
    } else {
      auto& vm = vms_.at(t.vm);
      if (t.action == "start" || t.action == "resume") power(vm, hv::kRunning, "action");
      if (t.action == "shutdown" || t.action == "power_off") power(vm, hv::kOff, "action");
      if (t.action == "suspend") power(vm, hv::kSuspended, "action");
      if (t.action == "reboot") {
        power(vm, hv::kStarting, "action");
        power(vm, hv::kRunning, "action");
      }
    }
    t.state = "completed";
    t.progress = 1;
    publish(ctx_.bus(), hv::task_subject(ctx_.name(), id), t);
    jobs_.erase(it);
    --in_progress_;
    save();
    pump();
  }

  hv::Task cancel(const std::string& id) {
    auto it = jobs_.find(id);
    if (it == jobs_.end())
      throw RequestError("not_found", "task '" + id + "' is not pending or running in memhv instance " + ctx_.name());
    auto& job = it->second;
    if (job.task.state == "started") {
      ctx_.clock().cancel(job.timer);
      --in_progress_;
      // A started start or resume held a host: give it back, the VM stays where it was.
      if (job.task.action == "start" || job.task.action == "resume") vms_.at(job.task.vm).host.clear();
    } else {
      std::erase(queue_, id);
    }
    job.task.state = "cancelled";
    publish(ctx_.bus(), hv::task_subject(ctx_.name(), id), job.task);
    auto done = job.task;
    jobs_.erase(it);
    pump();
    return done;
  }

  // ---- faults and HA ----
  hv::Hosts fault(const hv::Fault& f) {
    bool known = false;
    for (std::int64_t i = 0; i < config_.hosts; ++i) known = known || host_name(i) == f.host;
    if (!known) throw RequestError("not_found", "host '" + f.host + "' is not in memhv instance " + ctx_.name());
    if (f.kind == "host_crash") {
      down_.insert(f.host);
      std::vector<std::string> lost;
      for (auto& [id, vm] : vms_) {
        if (vm.host != f.host || vm.power_state != hv::kRunning) continue;
        power(vm, hv::kOff, "host_failure");
        lost.push_back(id);
      }
      ctx_.log().warning("host " + f.host + " crashed: " + std::to_string(lost.size()) + " VMs off, restarting them in " +
                      std::to_string(config_.ha_restart_s) + " s");
      ctx_.after(std::chrono::seconds(config_.ha_restart_s), [this, lost] { ha_restart(lost); });
    } else if (f.kind == "host_recover") {
      down_.erase(f.host);
      ctx_.log().info("host " + f.host + " is up again");
    } else {
      throw RequestError("bad_request", "memhv injects host_crash and host_recover, not '" + f.kind + "'");
    }
    save();
    return hv::Hosts{inventory().hosts};
  }

  /// Every VM of the template is HA-protected: it runs again on a host with room.
  void ha_restart(const std::vector<std::string>& lost) {
    for (const auto& id : lost) {
      auto it = vms_.find(id);
      if (it == vms_.end() || it->second.power_state != hv::kOff) continue;
      const auto host = place(it->second.memory_mb);
      if (host.empty()) {
        ctx_.log().warning("HA cannot restart VM " + id + ": no up host has " + std::to_string(it->second.memory_mb) + " MB free");
        continue;
      }
      it->second.host = host;
      power(it->second, hv::kRunning, "ha_restart");
    }
    save();
  }

  // ---- persistence ----
  void load() {
    std::ifstream in(file_);
    if (!in) return;  // a new pool
    std::stringstream text;
    text << in.rdbuf();
    Saved s;
    try {
      s = from_value<Saved>(Value::parse_json(text.str()), file_.string());
    } catch (const std::exception& e) {
      throw std::runtime_error("memhv inventory " + file_.string() + " is unreadable (" + e.what() +
                               "); restore it or remove it to start an empty pool");
    }
    next_vm_ = s.next_vm;
    down_ = {s.hosts_down.begin(), s.hosts_down.end()};
    for (auto& vm : s.vms) {
      if (vm.power_state != hv::kRunning) vm.host.clear();  // a reservation of a task that the stop ended
      vms_[vm.id] = std::move(vm);
    }
  }

  /// Written whole to a temporary file and renamed, so a crash leaves the old inventory or the new one.
  void save() const {
    Saved s;
    s.next_vm = next_vm_;
    s.hosts_down = {down_.begin(), down_.end()};
    for (const auto& [id, vm] : vms_) s.vms.push_back(vm);
    const auto tmp = file_.string() + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << to_value(s).to_json();
      if (!out.flush()) {
        ctx_.log().warning("cannot write memhv inventory " + tmp + "; the VMs' changes are not saved");
        return;
      }
    }
    std::filesystem::rename(tmp, file_);
  }

  Context& ctx_;
  MemhvConfig config_;
  std::filesystem::path file_;
  std::map<std::string, hv::Vm> vms_;
  std::set<std::string> down_;
  std::map<std::string, Job> jobs_;
  std::deque<std::string> queue_;
  std::int64_t in_progress_ = 0;
  std::int64_t next_vm_ = 1;
  std::int64_t next_task_ = 1;
  std::vector<Subscription> subs_;
};

}  // namespace

DESKFARM_PLUGIN(Memhv, "memhv", "1.0.0", "An in-memory hypervisor adapter (the SDK's hypervisor example)", provides,
                nullptr, config)
