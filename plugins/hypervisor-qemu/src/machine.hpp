#pragma once
// One qemu-system-x86_64 process and its QMP connection. The process is this object's: the destructor ends it by
// its PID, so a machine can never outlive the plugin that made it.
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "qmp.hpp"

namespace deskfarm::qemu {

struct MachineSpec {
  std::string vm;    ///< the inventory's id (also QEMU's -uuid)
  std::string name;
  std::string mac;
  std::int64_t memory_mb = 128;
  std::int64_t vcpus = 1;
  std::filesystem::path dir;                 ///< the VM's directory: serial.log, qemu.log, the disk
  std::filesystem::path qmp_socket;          ///< short enough for a Unix socket (108 bytes), one per QEMU process
  std::string qemu = "qemu-system-x86_64";
  std::string accel = "tcg";                 ///< "kvm" or "tcg"
  std::filesystem::path disk;                ///< a qcow2 file; "" = no disk (or the NBD one below)
  std::string nbd_host;                      ///< set: the disk is the NBD export named by the VM's MAC (pvs streaming)
  std::string nbd_port;
  std::filesystem::path boot_partition;      ///< set: a raw image on the first hard disk, the disk above second
  std::filesystem::path iso;                 ///< "" = an empty CD-ROM drive
  std::vector<std::string> boot_order;       ///< network, cdrom, disk
  std::vector<std::string> extra_args;
};

/// The command line of a machine (without the program name): devices, boot order, serial log, QMP.
std::vector<std::string> qemu_arguments(const MachineSpec& spec);

class Machine {
 public:
  /// Starts QEMU and connects QMP within `timeout`. Throws std::runtime_error with QEMU's own message (its log)
  /// when it fails to start, exits, or never answers; no process is left behind.
  Machine(MachineSpec spec, std::chrono::milliseconds timeout, std::stop_token stop);
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  pid_t pid() const { return pid_; }
  const MachineSpec& spec() const { return spec_; }

  /// A QMP command (thread-safe); throws QmpError.
  Poco::Dynamic::Var execute(const std::string& command, Poco::JSON::Object::Ptr arguments, std::chrono::milliseconds timeout);
  /// Events so far (thread-safe, never blocks on a command in flight: then none).
  std::vector<QmpEvent> poll_events();
  /// The process's exit description ("exited with status 0", "killed by signal 9") once it ended; reaps it.
  std::optional<std::string> exited();
  /// Waits up to `timeout` for the process to end by itself; true when it did.
  bool wait_exit(std::chrono::milliseconds timeout);
  /// SIGKILL by PID and reap (bounded); a no-op once it ended.
  void kill();
  /// The last line QEMU wrote to its log (its own error message), "" if none.
  std::string last_log_line() const;

  /// Set before an exit this adapter asked for (shutdown, power off): the monitor does not report it.
  bool expected_exit = false;  // touched on the executor only
  bool busy = false;           // an action of this adapter is in flight (executor only)
  bool guest_shutdown = false; // a SHUTDOWN event with guest = true came (executor only)

 private:
  MachineSpec spec_;
  pid_t pid_ = -1;
  std::mutex process_mutex_;
  std::optional<std::string> exit_;
  std::mutex qmp_mutex_;
  std::unique_ptr<Qmp> qmp_;
};

}  // namespace deskfarm::qemu
