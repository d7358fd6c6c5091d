#pragma once
// A vendor's face on the one simulation engine: its power-state words, which actions it knows, its task-state
// words, the shape of its ids and its error codes. The engine decides what happens; the personality says how
// the vendor would have said it.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace deskfarm::hvsim {

/// Power states every vendor maps onto (the contract's k* states).
enum class State : std::uint8_t { off, starting, running, paused, suspended, stopping };
inline constexpr std::size_t state_count = 6;
/// The contract's word for a state ("off", "running", ...).
std::string_view common_name(State s);

/// Task states of the contract: pending (queued), started, completed, failed, cancelled.
enum class TaskState : std::uint8_t { pending, started, completed, failed, cancelled };
std::string_view common_name(TaskState s);

/// Why an action was refused or failed; the personality turns it into the vendor's code and message.
enum class Failure : std::uint8_t {
  bad_power_state,    ///< the VM is in a state the action does not accept
  not_enough_memory,  ///< no host has the memory (or vCPUs) for the VM
  vm_not_found,       ///< unknown VM id
  object_not_found,   ///< unknown template, ISO, network, host or task
  not_supported,      ///< the vendor has no such action
  bad_argument,       ///< a value the action cannot take (boot order, name)
  cancelled,          ///< the task was cancelled
  not_cancellable,    ///< the task already finished
  internal,           ///< injected failure (task_failure_rate)
  host_offline,       ///< the VM's host failed under the task
  boot_failed,        ///< the firmware did not reach handover
};

/// What the vendor answers: a code ("VM_BAD_POWER_STATE", "32775", "InvalidPowerState") and a message in its shape.
struct VendorError {
  std::string code;
  std::string message;
};

struct Personality {
  std::string_view vendor;                              ///< "xen", "hyperv", "esx"
  std::array<std::string_view, state_count> states;     ///< the vendor's word per State
  std::array<std::string_view, 5> task_states;          ///< the vendor's word per TaskState
  bool has_pause = false;                               ///< pause/unpause exist (Xen, Hyper-V)
  enum class Ids : std::uint8_t { uuid, guid, moref } ids = Ids::uuid;
  std::string_view task_prefix;                         ///< "OpaqueRef:task-", "Msvm_ConcreteJob-", "task-"

  std::string_view state_name(State s) const { return states[static_cast<std::size_t>(s)]; }
  std::string_view task_state_name(TaskState s) const { return task_states[static_cast<std::size_t>(s)]; }
  /// The vendor's error for `f`; `subject` names the object (VM id, host, template), `detail` what was
  /// expected or needed.
  VendorError error(Failure f, std::string_view subject, std::string_view detail) const;
};

/// XenServer / XAPI: Halted/Running/Paused/Suspended, tasks pending/success/failure/cancelled, XAPI error codes.
const Personality& xen();
/// Hyper-V / WMI: Off/Starting/Running/Saved/Paused/Stopping, ConcreteJob states, RequestStateChange return codes.
const Personality& hyperv();
/// vSphere: poweredOff/poweredOn/suspended, TaskInfo states queued/running/success/error, vSphere faults.
const Personality& esx();
/// QEMU (real machines, plugins/hypervisor-qemu): run states shutoff/prelaunch/running/paused, libvirt error names.
const Personality& qemu();
/// By vendor name ("xen", "hyperv", "esx", "qemu"); nullptr for another.
const Personality* personality(std::string_view vendor);

}  // namespace deskfarm::hvsim
