// hypervisor-qemu: real qemu-system-x86_64 machines behind the hypervisor contract. The inventory, task queue,
// throttle, power-state bookkeeping and inventory file are libs/hvsim's (Adapter with a real backend); this file
// does each task's work on a QEMU process over QMP and reports what the machines do by themselves.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string_view>
#include <thread>
#include <utility>

#include <Poco/JSON/Object.h>

#include <deskfarm/hvsim/adapter.hpp>

#include "machine.hpp"

namespace deskfarm::qemu {

namespace hv = deskfarm::interfaces::hypervisor;
using hvsim::Action;
using hvsim::State;

struct ImageConf {
  std::string template_name, path, format, boot_partition;
};

struct QemuConfig : hvsim::AdapterConfig {
  std::string qemu, qemu_img, accel;
  std::vector<ImageConf> images;
  std::int64_t shutdown_timeout_s = 30, qmp_timeout_ms = 10000;
  std::vector<std::string> extra_args;
};

inline constexpr auto image_schema = sdk::schema<ImageConf>(
    sdk::option("template", &ImageConf::template_name, nullptr, "the template whose VMs get a disk on this image"),
    sdk::option("path", &ImageConf::path, nullptr,
                "the base image; each VM's disk is a qcow2 overlay on it (qemu-img create -b), made at its first start; "
                "\"nbd://HOST:PORT\": each VM's disk is the NBD export named by its MAC there (a pvs streaming service)"),
    sdk::option("format", &ImageConf::format, "\"qcow2\"", "the base image's format").one_of("qcow2|raw"),
    sdk::option("boot_partition", &ImageConf::boot_partition, "\"\"",
                "a raw boot-partition image (bdm format = \"partition\") on each VM's first hard disk, written to a "
                "throw-away snapshot; the VM's disk (path) becomes the second (BIOS 0x81). \"\" = none"));

constexpr auto qemu_schema = hvsim::extend_schema<QemuConfig>(
    hvsim::adapter_schema,
    sdk::option("qemu", &QemuConfig::qemu, "\"qemu-system-x86_64\"", "the QEMU program (looked up in PATH)"),
    sdk::option("qemu_img", &QemuConfig::qemu_img, "\"qemu-img\"", "the qemu-img program that makes disk overlays"),
    sdk::option("accel", &QemuConfig::accel, "\"auto\"", "auto: KVM when /dev/kvm opens and the CPU has vmx or svm, else TCG (software emulation); kvm; tcg")
        .one_of("auto|kvm|tcg"),
    sdk::option("images", &QemuConfig::images, "[]", "disk images of templates (a template without one gives diskless VMs)", image_schema),
    sdk::option("shutdown_timeout_s", &QemuConfig::shutdown_timeout_s, "30",
                "a clean shutdown (ACPI power button) waits this long for the guest, then powers off").range(1, 3600),
    sdk::option("qmp_timeout_ms", &QemuConfig::qmp_timeout_ms, "10000", "QEMU must answer QMP within this (start and every command)")
        .range(100, 600000),
    sdk::option("extra_args", &QemuConfig::extra_args, "[]", "arguments added to every QEMU command line"));

namespace {

constexpr const char* provides[] = {"hypervisor", nullptr};

/// "nbd://HOST:PORT" → {HOST, PORT}; nullopt for a file path.
std::optional<std::pair<std::string, std::string>> nbd_server(const std::string& path) {
  constexpr std::string_view scheme = "nbd://";
  if (!path.starts_with(scheme)) return std::nullopt;
  const auto rest = path.substr(scheme.size());
  const auto colon = rest.rfind(':');
  if (colon == std::string::npos) return std::pair{rest, std::string()};
  return std::pair{rest.substr(0, colon), rest.substr(colon + 1)};
}

/// Why `accel = "auto"` does not take KVM on this machine, or empty when it does. /dev/kvm must open, and the CPU
/// must show hardware virtualisation (vmx or svm among /proc/cpuinfo's flags): a /dev/kvm without it (a nested,
/// paravirtual KVM such as PVM) runs only guest kernels built for it, and SeaBIOS's boot of ISOLINUX hangs there.
std::string kvm_unusable_reason() {
  const int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return std::string("/dev/kvm does not open (") + std::strerror(errno) + ")";
  ::close(fd);
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (!line.starts_with("flags")) continue;
    std::istringstream flags(line.substr(std::min(line.size(), line.find(':') + 1)));
    for (std::string flag; flags >> flag;)
      if (flag == "vmx" || flag == "svm") return {};
    break;
  }
  return "/dev/kvm opens but the CPU shows no hardware virtualisation (no vmx or svm flag): a paravirtual KVM runs "
         "only guests built for it";
}

/// Runs a program to its end (qemu-img); throws with its output when it fails. Bounded: qemu-img create is quick.
void run_program(const std::vector<std::string>& args, const std::filesystem::path& log) {
  std::string cmd;
  for (const auto& a : args) {
    std::string quoted = "'";
    for (char c : a) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    cmd += quoted + "' ";
  }
  cmd += "> '" + log.string() + "' 2>&1 < /dev/null";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    std::ifstream in(log);
    std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    throw std::runtime_error(args.front() + " failed (" + std::to_string(rc) + "): " + out);
  }
}

}  // namespace

class Qemu final : public hvsim::Adapter {
 public:
  explicit Qemu(sdk::Context& ctx) : Adapter(ctx, hvsim::qemu()), config_(qemu_schema.bind(ctx.config())) {
    if (config_.accel == "auto") {
      auto_reason_ = kvm_unusable_reason();
      accel_ = auto_reason_.empty() ? "kvm" : "tcg";
    } else {
      accel_ = config_.accel;
    }
  }
  ~Qemu() override { end_monitor(); }

  static void validate(const sdk::Config& config) {
    Adapter::validate(config);
    const auto c = qemu_schema.bind(config);
    // What only a simulation can do: a real machine has its own firmware and its own failures.
    if (!c.faults.empty()) throw sdk::ConfigError("faults", "a real machine takes no simulated faults; remove faults (end a QEMU process to see a VM fail)");
    if (c.firmware) throw sdk::ConfigError("firmware", "QEMU VMs boot with their own firmware (SeaBIOS, iPXE); set firmware = false");
    if (c.task_failure_rate > 0) throw sdk::ConfigError("task_failure_rate", "a real machine fails by itself; set task_failure_rate = 0");
    for (const auto& i : c.images) {
      if (std::none_of(c.templates.begin(), c.templates.end(), [&](auto& t) { return t.name == i.template_name; }))
        throw sdk::ConfigError("images", "template '" + i.template_name + "' is not in templates");
      if (auto nbd = nbd_server(i.path)) {
        if (nbd->first.empty() || nbd->second.empty() || nbd->second.find_first_not_of("0123456789") != std::string::npos)
          throw sdk::ConfigError("images", "'" + i.path + "' of template '" + i.template_name + "' is not nbd://HOST:PORT");
        continue;
      }
      if (!std::filesystem::exists(i.path))
        throw sdk::ConfigError("images", "image '" + i.path + "' of template '" + i.template_name + "' does not exist");
    }
  }

  void start() override {
    Adapter::start();
    machines_dir_ = context().state_dir() / "machines";
    std::filesystem::create_directories(machines_dir_);
    // The deployment stopped every machine it ran; a VM the inventory file still shows on is off now.
    for (const auto& vm : engine().inventory().vms)
      if (vm.power_state != hv::kOff) engine().observed(vm.id, State::off, "host_failure", "the deployment restarted");
    monitor_ = std::jthread([this, line = context().lifeline()](std::stop_token stop) { monitor(stop, line); });
    context().log().info("QEMU with " + accel_ + (auto_reason_.empty() ? "" : " (" + auto_reason_ + ")") + ", machines in " +
                         machines_dir_.string());
  }

 protected:
  bool real() const override { return true; }

  void work(const hvsim::WorkTicket& w) override {
    const auto num = w.task;
    auto finish = [this, num](sdk::Reply<sdk::Empty> r) {
      engine().work_finished(num, static_cast<bool>(r), r ? "" : r.error().message);
    };
    auto machine = find(w.vm);
    const auto timeout = std::chrono::milliseconds(config_.qmp_timeout_ms);
    switch (w.action) {
      case Action::create:
      case Action::set_boot_order:
        // Inventory only: a VM's disk is made at its first start, a boot order applies at the next start.
        return context().run_blocking([](std::stop_token) {}, finish);
      case Action::start: {
        auto spec = spec_of(w);
        auto image = image_of(w.template_name);
        context().run_blocking(
            [spec, image, timeout, img = config_.qemu_img](std::stop_token stop) {
              // Checked at each start, not at validation: a bdm instance of the same deployment writes it at its start.
              if (!spec.boot_partition.empty() && !std::filesystem::is_regular_file(spec.boot_partition))
                throw std::runtime_error("boot_partition '" + spec.boot_partition.string() + "' of template '" +
                                         image->template_name + "' does not exist: build it (deskfarm bdm build " +
                                         "--format partition, or a bdm instance with format = \"partition\")");
              if (image && !spec.disk.empty() && !std::filesystem::exists(spec.disk)) {
                std::filesystem::create_directories(spec.dir);
                const auto tmp = spec.disk.string() + ".tmp";
                run_program({img, "create", "-q", "-f", "qcow2", "-b", std::filesystem::absolute(image->path).string(), "-F",
                             image->format, tmp},
                            spec.dir / "qemu-img.log");
                std::filesystem::rename(tmp, spec.disk);
              }
              return std::make_shared<Machine>(spec, timeout, stop);
            },
            [this, num, vm = w.vm, id = w.task_id](sdk::Reply<std::shared_ptr<Machine>> r) {
              const auto task = engine().task(id);
              if (r && (!task || task->state != "started")) {
                // Cancelled or powered off while QEMU came up: the VM is off again, so its machine goes (by PID).
                context().log().info("VM " + vm + ": task " + id + " ended " + (task ? task->state : "") +
                                     " while QEMU (pid " + std::to_string((*r)->pid()) + ") started; stopping it");
                return;
              }
              if (r) {
                context().log().info("VM " + vm + ": QEMU pid " + std::to_string((*r)->pid()) + " runs, serial console in " +
                                     ((*r)->spec().dir / "serial.log").string());
                std::lock_guard lock(machines_mutex_);
                machines_[vm] = *r;
              } else {
                context().log().warning("VM " + vm + " did not start: " + r.error().message);
              }
              engine().work_finished(num, static_cast<bool>(r), r ? "" : r.error().message);
            });
        return;
      }
      case Action::shutdown:
      case Action::power_off: {
        if (!machine) return context().run_blocking([](std::stop_token) {}, finish);
        machine->expected_exit = true;
        const bool clean = w.action == Action::shutdown;
        const auto grace = std::chrono::seconds(config_.shutdown_timeout_s);
        context().run_blocking(
            [machine, clean, grace, timeout](std::stop_token) {
              if (clean) {
                try {
                  machine->execute("system_powerdown", nullptr, timeout);
                } catch (const QmpError&) {
                  // Already gone or not answering: the power-off below ends it either way.
                }
                if (machine->wait_exit(std::chrono::duration_cast<std::chrono::milliseconds>(grace))) return;
              }
              machine->kill();
            },
            [this, num, vm = w.vm](sdk::Reply<sdk::Empty> r) {
              forget(vm);
              engine().work_finished(num, static_cast<bool>(r), r ? "" : r.error().message);
            });
        return;
      }
      case Action::reboot: return command(w, machine, "system_reset", nullptr);
      case Action::suspend: return command(w, machine, "stop", nullptr);
      case Action::resume: return command(w, machine, "cont", nullptr);
      case Action::attach_iso: {
        if (!machine) return context().run_blocking([](std::stop_token) {}, finish);
        Poco::JSON::Object::Ptr args = new Poco::JSON::Object;
        args->set("id", "cdrom0");
        args->set("filename", std::filesystem::absolute(w.iso).string());
        args->set("format", "raw");
        args->set("read-only-mode", "read-only");
        return command(w, machine, "blockdev-change-medium", args);
      }
      case Action::eject_iso: {
        if (!machine) return context().run_blocking([](std::stop_token) {}, finish);
        Poco::JSON::Object::Ptr args = new Poco::JSON::Object;
        args->set("id", "cdrom0");
        args->set("force", true);
        return command(w, machine, "eject", args);
      }
      case Action::destroy: {
        auto dir = machines_dir_ / w.vm;
        forget(w.vm);
        return context().run_blocking(
            [dir](std::stop_token) {
              // Bounded retries: a file QEMU still held a moment ago can make one pass fail on a loaded machine.
              std::error_code ec;
              for (int i = 0; i < 5; ++i) {
                std::filesystem::remove_all(dir, ec);
                if (!ec) return;
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
              }
              throw std::runtime_error("cannot remove the VM's directory " + dir.string() + ": " + ec.message());
            },
            finish);
      }
      case Action::pause:
      case Action::unpause:
      case Action::ha_restart: break;
    }
    context().run_blocking([](std::stop_token) {}, finish);
  }

  void stop_machines() override {
    end_monitor();
    std::map<std::string, std::shared_ptr<Machine>> all;
    {
      std::lock_guard lock(machines_mutex_);
      all.swap(machines_);
    }
    for (auto& [vm, m] : all) {
      m->expected_exit = true;
      m->kill();
      context().log().info("VM " + vm + ": QEMU (pid " + std::to_string(m->pid()) + ") stopped with the deployment");
      engine().observed(vm, State::off, "host_failure", "the deployment stopped");
    }
  }

  void machines_status(sdk::Value& out) const override {
    out.set("accel", accel_);
    out.set("machines_dir", machines_dir_.string());
    auto list = sdk::Value::array();
    std::lock_guard lock(machines_mutex_);
    for (const auto& [vm, m] : machines_) {
      auto v = sdk::Value::object();
      v.set("vm", vm).set("pid", static_cast<std::int64_t>(m->pid())).set("serial_log", (m->spec().dir / "serial.log").string());
      list.push(std::move(v));
    }
    out.set("machines", std::move(list));
  }

 private:
  std::optional<ImageConf> image_of(const std::string& template_name) const {
    for (const auto& i : config_.images)
      if (i.template_name == template_name) return i;
    return std::nullopt;
  }

  MachineSpec spec_of(const hvsim::WorkTicket& w) const {
    MachineSpec s;
    s.vm = w.vm;
    s.name = w.vm;
    s.mac = w.mac;
    s.memory_mb = w.memory_mb;
    s.vcpus = w.vcpus;
    s.dir = machines_dir_ / w.vm;
    // A Unix socket path holds 108 bytes: a deep state directory gets its socket in the temporary directory.
    // Each QEMU process gets its own socket name: a dead machine's cleanup can never touch its successor's socket.
    const auto socket = "qmp-" + std::to_string(++starts_) + ".sock";
    s.qmp_socket = s.dir / socket;
    if (s.qmp_socket.string().size() > 100)
      s.qmp_socket = std::filesystem::temp_directory_path() / ("deskfarm-" + std::to_string(::getpid()) + "-" + w.vm + "-" + socket);
    s.qemu = config_.qemu;
    s.accel = accel_;
    if (auto image = image_of(w.template_name)) {
      if (auto nbd = nbd_server(image->path)) s.nbd_host = nbd->first, s.nbd_port = nbd->second;
      else s.disk = s.dir / "disk.qcow2";
    }
    if (auto image = image_of(w.template_name); image && !image->boot_partition.empty())
      s.boot_partition = std::filesystem::absolute(image->boot_partition);
    if (!w.iso.empty()) s.iso = std::filesystem::absolute(w.iso);
    s.boot_order = w.boot_order;
    s.extra_args = config_.extra_args;
    return s;
  }

  std::shared_ptr<Machine> find(const std::string& vm) const {
    std::lock_guard lock(machines_mutex_);
    auto it = machines_.find(vm);
    return it == machines_.end() ? nullptr : it->second;
  }

  void forget(const std::string& vm) {
    std::shared_ptr<Machine> gone;  // destroyed outside the lock: its destructor kills the process
    std::lock_guard lock(machines_mutex_);
    if (auto it = machines_.find(vm); it != machines_.end()) gone = std::move(it->second), machines_.erase(it);
  }

  /// A QMP command as a task's work; the events it causes are this adapter's own (busy), not the guest's.
  void command(const hvsim::WorkTicket& w, const std::shared_ptr<Machine>& machine, std::string name, Poco::JSON::Object::Ptr args) {
    const auto num = w.task;
    if (!machine) {
      return context().run_blocking([](std::stop_token) {}, [this, num, vm = w.vm](sdk::Reply<sdk::Empty>) {
        engine().work_finished(num, false, "VM " + vm + " has no QEMU process");
      });
    }
    machine->busy = true;
    const auto timeout = std::chrono::milliseconds(config_.qmp_timeout_ms);
    context().run_blocking([machine, name, args, timeout](std::stop_token) { machine->execute(name, args, timeout); },
                           [this, num, machine](sdk::Reply<sdk::Empty> r) {
                             drain(machine);  // the events of this command are its own
                             machine->busy = false;
                             engine().work_finished(num, static_cast<bool>(r), r ? "" : r.error().message);
                           });
  }

  void drain(const std::shared_ptr<Machine>& m) {
    for (const auto& e : m->poll_events()) note(m, e, true);
  }

  /// An event of QEMU on the executor. `own`: caused by this adapter's command (only logged).
  void note(const std::shared_ptr<Machine>& m, const QmpEvent& e, bool own) {
    const auto& vm = m->spec().vm;
    const bool guest = e.data && e.data->has("guest") && e.data->getValue<bool>("guest");
    if (e.name == "SHUTDOWN" && guest) m->guest_shutdown = true;
    if (own || m->busy || m->expected_exit) return;
    const auto now = engine().vm(vm);
    if (!now) return;
    if (e.name == "RESET" && guest && now->power_state == hv::kRunning) {
      context().log().info("VM " + vm + ": the guest reset itself");
      engine().observed(vm, State::starting, "guest", "the guest reset");
      engine().observed(vm, State::running, "guest", "the guest reset");
    } else if (e.name == "STOP" && now->power_state == hv::kRunning) {
      engine().observed(vm, State::suspended, "guest", "QEMU stopped the VM");
    } else if (e.name == "RESUME" && now->power_state == hv::kSuspended) {
      engine().observed(vm, State::running, "guest", "QEMU resumed the VM");
    }
  }

  /// The plugin's own thread: every 100 ms it reads each machine's events and notices processes that ended,
  /// and hands both to the executor.
  void monitor(std::stop_token stop, std::shared_ptr<sdk::Lifeline> line) {
    while (!stop.stop_requested()) {  // bounded by stop(): end_monitor() requests the stop and joins
      std::vector<std::shared_ptr<Machine>> all;
      {
        std::lock_guard lock(machines_mutex_);
        for (auto& [vm, m] : machines_) all.push_back(m);
      }
      for (auto& m : all) {
        auto events = m->poll_events();
        auto exit = m->exited();
        if (events.empty() && !exit) continue;
        line->post([this, m, events = std::move(events), exit] {
          for (const auto& e : events) note(m, e, false);
          if (exit) ended(m, *exit);
        });
      }
      std::unique_lock<std::mutex> wait_lock(sleep_mutex_);
      wake_.wait_for(wait_lock, stop, std::chrono::milliseconds(100), [] { return false; });
    }
  }

  void ended(const std::shared_ptr<Machine>& m, const std::string& how) {
    const auto& vm = m->spec().vm;
    if (find(vm) != m || m->expected_exit) return;  // a shutdown or power-off of this adapter: its task reports it
    forget(vm);
    const auto reason = m->guest_shutdown ? "guest" : "host_failure";
    const auto detail = "QEMU (pid " + std::to_string(m->pid()) + ") " + how + (m->guest_shutdown ? " after the guest shut down" : "");
    context().log().warning("VM " + vm + ": " + detail);
    engine().observed(vm, State::off, reason, detail);
  }

  void end_monitor() {
    if (monitor_.joinable()) {
      monitor_.request_stop();
      monitor_.join();
    }
  }

  QemuConfig config_;
  std::string accel_;
  std::string auto_reason_;  ///< why accel = "auto" took TCG, for the log
  std::filesystem::path machines_dir_;
  mutable std::mutex machines_mutex_;
  std::map<std::string, std::shared_ptr<Machine>> machines_;
  std::mutex sleep_mutex_;
  std::condition_variable_any wake_;
  std::jthread monitor_;
  mutable std::atomic<std::uint64_t> starts_{0};  ///< QEMU processes started: names each one's QMP socket
};

}  // namespace deskfarm::qemu

DESKFARM_PLUGIN(deskfarm::qemu::Qemu, "hypervisor-qemu", "1.0.0",
                "QEMU: real qemu-system-x86_64 virtual machines (KVM where the CPU and /dev/kvm allow it, else TCG) driven over QMP", deskfarm::qemu::provides,
                nullptr, deskfarm::qemu::qemu_schema)
