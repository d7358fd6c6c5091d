// One QEMU process: see machine.hpp.
#include "machine.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace deskfarm::qemu {

namespace {

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "ended (status " + std::to_string(status) + ")";
}

std::string boot_letter_devices(const std::vector<std::string>& order, const std::string& device) {
  for (std::size_t i = 0; i < order.size(); ++i)
    if (order[i] == device) return ",bootindex=" + std::to_string(i + 1);
  return "";
}

}  // namespace

std::vector<std::string> qemu_arguments(const MachineSpec& s) {
  std::vector<std::string> a = {
      "-name", s.name.empty() ? s.vm : s.name, "-uuid", s.vm, "-machine", "pc", "-accel", s.accel,
      "-m", std::to_string(s.memory_mb), "-smp", std::to_string(s.vcpus),
      // No display: the serial console is the VM's screen (iPXE writes there only without graphics), kept in a file.
      "-nographic", "-serial", "file:" + (s.dir / "serial.log").string(), "-monitor", "none",
      "-qmp", "unix:" + s.qmp_socket.string() + ",server=on,wait=off",
      // Only the devices of the boot order are tried, in its order (bootindex below).
      "-boot", "strict=on",
      // QEMU user networking: the host's loopback is 10.0.2.2 to the guest.
      "-netdev", "user,id=net0", "-device", "e1000,netdev=net0,mac=" + s.mac + boot_letter_devices(s.boot_order, "network"),
      "-drive", "if=none,id=cd0,media=cdrom,readonly=on" + (s.iso.empty() ? std::string() : ",format=raw,file=" + s.iso.string()),
      "-device", "ide-cd,drive=cd0,id=cdrom0,bus=ide.1" + boot_letter_devices(s.boot_order, "cdrom")};
  // With a boot partition, "disk" in the boot order is that image (first hard disk, BIOS 0x80), and the VM's own
  // disk is the second (0x81), found by whatever the partition boots (the BDM script sanboots 0x81). snapshot=on:
  // every VM shares the image, and what a guest writes to it goes to a temporary file that QEMU drops at exit.
  std::string disk_place = "bus=ide.0" + boot_letter_devices(s.boot_order, "disk");
  if (!s.boot_partition.empty()) {
    a.insert(a.end(), {"-drive", "if=none,id=boot0,format=raw,snapshot=on,file=" + s.boot_partition.string(), "-device",
                       "ide-hd,drive=boot0,id=boot0dev,bus=ide.0,unit=0" + boot_letter_devices(s.boot_order, "disk")});
    disk_place = "bus=ide.0,unit=1";
  }
  if (!s.nbd_host.empty()) {
    // QEMU's own NBD client reads the vDisk a provisioning server streams; the export is the device's MAC.
    a.insert(a.end(), {"-drive", "if=none,id=disk0,driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=" + s.nbd_host +
                                     ",file.server.port=" + s.nbd_port + ",file.export=" + s.mac,
                       "-device", "ide-hd,drive=disk0,id=disk0dev," + disk_place});
  } else if (!s.disk.empty()) {
    a.insert(a.end(), {"-drive", "if=none,id=disk0,format=qcow2,file=" + s.disk.string(), "-device",
                       "ide-hd,drive=disk0,id=disk0dev," + disk_place});
  }
  a.insert(a.end(), s.extra_args.begin(), s.extra_args.end());
  return a;
}

Machine::Machine(MachineSpec spec, std::chrono::milliseconds timeout, std::stop_token stop) : spec_(std::move(spec)) {
  std::filesystem::create_directories(spec_.dir);
  std::filesystem::remove(spec_.qmp_socket);
  const auto log = spec_.dir / "qemu.log";
  std::vector<std::string> args = {spec_.qemu};
  const auto rest = qemu_arguments(spec_);
  args.insert(args.end(), rest.begin(), rest.end());
  std::vector<char*> argv;
  for (auto& x : args) argv.push_back(x.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  const int rc = posix_spawnp(&pid_, spec_.qemu.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    pid_ = -1;
    throw std::runtime_error("cannot run " + spec_.qemu + ": " + std::strerror(rc) + "; install qemu-system-x86 or set qemu");
  }
  // Bounded by `timeout`: wait for QEMU's QMP socket while the process lives, then connect.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (auto e = exited())
      throw std::runtime_error(spec_.qemu + " (pid " + std::to_string(pid_) + ") " + *e + " before answering QMP: " + last_log_line());
    if (stop.stop_requested()) {
      kill();
      throw std::runtime_error("the adapter stopped while " + spec_.qemu + " was starting");
    }
    if (struct stat st{}; ::stat(spec_.qmp_socket.c_str(), &st) == 0) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      kill();
      throw std::runtime_error(spec_.qemu + " created no QMP socket within " + std::to_string(timeout.count()) + " ms: " + last_log_line());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  try {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    qmp_ = std::make_unique<Qmp>(spec_.qmp_socket, std::max(left, std::chrono::milliseconds(200)));
  } catch (const std::exception& e) {
    kill();
    throw std::runtime_error(std::string(e.what()) + "; QEMU said: " + last_log_line());
  }
}

Machine::~Machine() {
  kill();
  // The socket's name is this process's alone (see the adapter's spec_of): no successor listens there.
  std::error_code ec;
  std::filesystem::remove(spec_.qmp_socket, ec);
}

Poco::Dynamic::Var Machine::execute(const std::string& command, Poco::JSON::Object::Ptr arguments, std::chrono::milliseconds timeout) {
  std::lock_guard lock(qmp_mutex_);
  if (!qmp_) throw QmpError("connection", "no QMP connection");
  return qmp_->execute(command, std::move(arguments), timeout);
}

std::vector<QmpEvent> Machine::poll_events() {
  std::unique_lock lock(qmp_mutex_, std::try_to_lock);
  if (!lock || !qmp_) return {};
  try {
    return qmp_->events(std::chrono::milliseconds(0));
  } catch (const QmpError&) {
    return {};  // QEMU closed the socket: its exit tells the rest
  }
}

std::optional<std::string> Machine::exited() {
  std::lock_guard lock(process_mutex_);
  if (exit_ || pid_ <= 0) return exit_;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) exit_ = describe_status(status);
  else if (r < 0) exit_ = "is gone (" + std::string(std::strerror(errno)) + ")";
  return exit_;
}

bool Machine::wait_exit(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {  // bounded by the deadline
    if (exited()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void Machine::kill() {
  if (pid_ <= 0 || exited()) return;
  ::kill(pid_, SIGKILL);
  // SIGKILL cannot be caught: the process ends promptly; 5 s bounds a machine stuck in uninterruptible I/O.
  wait_exit(std::chrono::seconds(5));
}

std::string Machine::last_log_line() const {
  std::ifstream in(spec_.dir / "qemu.log");
  std::string line, last;
  for (int i = 0; i < 10000 && std::getline(in, line); ++i)
    if (!line.empty()) last = line;
  return last.empty() ? "(nothing in " + (spec_.dir / "qemu.log").string() + ")" : last;
}

}  // namespace deskfarm::qemu
