#pragma once
// The hypervisor role's contract: inventory, VM lifecycle as asynchronous tasks, power-state events that carry
// the VM's MAC (so pvs can tell a boot from a reconnect). Every adapter (Xen, Hyper-V, ESX, QEMU, a third
// party's) serves these requests and publishes these events; vendor states map onto PowerState and the vendor's
// own state name travels beside it.
#include <optional>
#include <string>
#include <vector>

#include <deskfarm/sdk/service.hpp>

namespace deskfarm::interfaces::hypervisor {

using sdk::field;

/// Power states common to every vendor; `vendor_state` keeps the vendor's word ("Halted", "poweredOn", "Saved").
inline constexpr const char* kOff = "off";
inline constexpr const char* kStarting = "starting";
inline constexpr const char* kRunning = "running";
inline constexpr const char* kPaused = "paused";
inline constexpr const char* kSuspended = "suspended";
inline constexpr const char* kStopping = "stopping";

struct Network {
  std::string name;
  std::string tftp_server;  ///< DHCP option 66
  std::string boot_file;    ///< DHCP option 67
  /// The network's IPv4 range ("10.1.0.0/16"), "" = none: its VMs lease addresses from it in order (the first
  /// host address first, a destroyed VM's back to the lowest free), so a desktop has an address to register.
  std::string subnet;
  static constexpr auto fields() {
    return std::tuple{field("name", &Network::name), field("tftp_server", &Network::tftp_server),
                      field("boot_file", &Network::boot_file), field("subnet", &Network::subnet)};
  }
};

struct Host {
  std::string id;
  std::string pool;
  std::int64_t memory_mb = 0;
  std::int64_t free_memory_mb = 0;
  std::int64_t vcpus = 0;
  bool up = true;
  static constexpr auto fields() {
    return std::tuple{field("id", &Host::id), field("pool", &Host::pool), field("memory_mb", &Host::memory_mb),
                      field("free_memory_mb", &Host::free_memory_mb), field("vcpus", &Host::vcpus), field("up", &Host::up)};
  }
};

struct Vm {
  std::string id;
  std::string name;
  std::string mac;
  std::string host;  ///< "" while off
  std::string power_state;   ///< one of the k* states above
  std::string vendor_state;  ///< the vendor's own name for it
  std::int64_t memory_mb = 0;
  std::int64_t vcpus = 0;
  std::string network;
  std::string iso;                     ///< attached to the virtual CD-ROM, "" = none
  std::vector<std::string> boot_order;  ///< "network", "cdrom", "disk"
  std::string address;  ///< its lease on its network's subnet ("10.1.0.7"); "" = the network has none
  static constexpr auto fields() {
    return std::tuple{field("id", &Vm::id),           field("name", &Vm::name),
                      field("mac", &Vm::mac),         field("host", &Vm::host),
                      field("power_state", &Vm::power_state), field("vendor_state", &Vm::vendor_state),
                      field("memory_mb", &Vm::memory_mb),     field("vcpus", &Vm::vcpus),
                      field("network", &Vm::network), field("iso", &Vm::iso),
                      field("boot_order", &Vm::boot_order), field("address", &Vm::address)};
  }
};

/// inventory: no arguments (sdk::Empty) → Inventory.
struct Inventory {
  static constexpr std::string_view type_name = "deskfarm.hypervisor.Inventory";
  static constexpr std::uint32_t type_version = 1;
  std::string vendor;  ///< "xen", "hyperv", "esx", …
  std::vector<Host> hosts;
  std::vector<std::string> templates;
  std::vector<std::string> isos;
  std::vector<Network> networks;
  std::vector<Vm> vms;
  std::int64_t max_in_progress = 0;  ///< the connection's throttle: actions started at once (0 = unknown/unlimited)
  std::int64_t max_per_minute = 0;   ///< actions started per minute (0 = unlimited)
  static constexpr auto fields() {
    return std::tuple{field("vendor", &Inventory::vendor), field("hosts", &Inventory::hosts),
                      field("templates", &Inventory::templates), field("isos", &Inventory::isos),
                      field("networks", &Inventory::networks), field("vms", &Inventory::vms),
                      field("max_in_progress", &Inventory::max_in_progress),
                      field("max_per_minute", &Inventory::max_per_minute)};
  }
};

/// A lifecycle action on a VM, queued and throttled per connection. `action`: "create" (from `template_name`,
/// with `name`), "start", "shutdown" (clean), "power_off" (hard), "reboot", "suspend", "resume", "destroy",
/// "attach_iso" (`iso`), "eject_iso", "set_boot_order" (`boot_order`); "pause", "unpause" where the vendor has a
/// paused state. An action the vendor refuses in the VM's state fails with the vendor's error and changes nothing.
struct VmAction {
  static constexpr std::string_view type_name = "deskfarm.hypervisor.VmAction";
  static constexpr std::uint32_t type_version = 1;
  std::string action;
  std::string vm;  ///< VM id ("" for create)
  std::string template_name;
  std::string name;
  std::string iso;
  std::vector<std::string> boot_order;
  static constexpr auto fields() {
    return std::tuple{field("action", &VmAction::action),  field("vm", &VmAction::vm),
                      field("template", &VmAction::template_name), field("name", &VmAction::name),
                      field("iso", &VmAction::iso), field("boot_order", &VmAction::boot_order)};
  }
};

/// A task: the reply to a VmAction, and its progress events. States: "pending", "started", "completed",
/// "failed", "cancelled". A failed task carries the vendor's error code ("VM_BAD_POWER_STATE",
/// "InvalidPowerState", a WMI return code) and message. The reply is the task as it stands ("started" when the
/// queue had room, "failed" at once when the VM's state refuses the action); a create's task names its new VM
/// from "completed" on.
struct Task {
  static constexpr std::string_view type_name = "deskfarm.hypervisor.Task";
  static constexpr std::uint32_t type_version = 1;
  std::string id;
  std::string action;
  std::string vm;
  std::string state;
  double progress = 0;  ///< 0..1
  std::string error_code;
  std::string error;
  std::string vendor_state;  ///< the vendor's word for `state` ("success", "Completed (7)", "queued"); optional
  static constexpr auto fields() {
    return std::tuple{field("id", &Task::id),       field("action", &Task::action), field("vm", &Task::vm),
                      field("state", &Task::state), field("progress", &Task::progress),
                      field("error_code", &Task::error_code), field("error", &Task::error),
                      field("vendor_state", &Task::vendor_state)};
  }
};

/// cancel: a pending or started task.
struct CancelTask {
  static constexpr std::string_view type_name = "deskfarm.hypervisor.CancelTask";
  static constexpr std::uint32_t type_version = 1;
  std::string task;
  static constexpr auto fields() { return std::tuple{field("task", &CancelTask::task)}; }
};

/// Published on every power-state change. `reason`: "action" (a task), "host_failure", "ha_restart",
/// "guest" (the guest shut itself down or rebooted).
struct PowerStateEvent {
  static constexpr std::string_view type_name = "deskfarm.hypervisor.PowerStateEvent";
  static constexpr std::uint32_t type_version = 1;
  std::string vm;
  std::string mac;
  std::string previous;
  std::string state;
  std::string vendor_state;
  std::string host;
  std::string reason;
  std::string adapter;  ///< the adapter instance
  static constexpr auto fields() {
    return std::tuple{field("vm", &PowerStateEvent::vm),         field("mac", &PowerStateEvent::mac),
                      field("previous", &PowerStateEvent::previous), field("state", &PowerStateEvent::state),
                      field("vendor_state", &PowerStateEvent::vendor_state), field("host", &PowerStateEvent::host),
                      field("reason", &PowerStateEvent::reason),     field("adapter", &PowerStateEvent::adapter)};
  }
  /// True when this event starts a fresh boot of the VM (pvs ends the device's previous session).
  bool is_boot() const { return state == kStarting || (state == kRunning && previous == kOff); }
};

/// fault: injects a fault at run time (the manifest's `faults` do the same at start). `kind`: "host_crash"
/// (`host`: its VMs go off, HA-protected ones restart on the remaining hosts), "host_recover" (`host`),
/// "task_failure_rate" (`value` 0..1: that share of tasks fails with the vendor's internal error),
/// "slow_storage" (`value` >= 1: disk-bound actions take that many times longer). Reply: the hosts after it.
struct Fault {
  static constexpr std::string_view type_name = "deskfarm.hypervisor.Fault";
  static constexpr std::uint32_t type_version = 1;
  std::string kind;
  std::string host;
  double value = 0;
  static constexpr auto fields() {
    return std::tuple{field("kind", &Fault::kind), field("host", &Fault::host), field("value", &Fault::value)};
  }
};

/// network.boot: sets a network's DHCP options 66/67, as an operator does on the DHCP server of a real network
/// (a TFTP load balancer points them at its virtual server). Reply: the network as it now stands. Adapters keep
/// the values until the deployment stops; the manifest's values return at the next start.
struct NetworkBoot {
  static constexpr std::string_view type_name = "deskfarm.hypervisor.NetworkBoot";
  static constexpr std::uint32_t type_version = 1;
  std::string network;
  std::string tftp_server;  ///< option 66: "host" or "host:port"
  std::string boot_file;    ///< option 67
  static constexpr auto fields() {
    return std::tuple{field("network", &NetworkBoot::network), field("tftp_server", &NetworkBoot::tftp_server),
                      field("boot_file", &NetworkBoot::boot_file)};
  }
};

/// The reply to network.boot.
struct NetworkReply {
  static constexpr std::string_view type_name = "deskfarm.hypervisor.NetworkReply";
  static constexpr std::uint32_t type_version = 1;
  Network network;
  static constexpr auto fields() { return std::tuple{field("network", &NetworkReply::network)}; }
};

/// The reply to a Fault: every host as it now stands.
struct Hosts {
  static constexpr std::string_view type_name = "deskfarm.hypervisor.Hosts";
  static constexpr std::uint32_t type_version = 1;
  std::vector<Host> hosts;
  static constexpr auto fields() { return std::tuple{field("hosts", &Hosts::hosts)}; }
};

/// One step of a VM's firmware boot (with real firmware enabled): "dhcp", "tftp", "bootstrap", "login",
/// "stream", "handover", "recovery"; `state` "ok" or "failed" with `detail` saying why. Published on
/// hypervisor.<instance>.vm.<vm>.boot in the order the firmware took them.
struct BootProgress {
  static constexpr std::string_view type_name = "deskfarm.hypervisor.BootProgress";
  static constexpr std::uint32_t type_version = 1;
  std::string vm;
  std::string mac;
  std::string task;
  std::string step;
  std::string state;
  std::string at;          ///< ISO 8601 UTC wall time of the step
  std::int64_t took_us = 0;
  std::string detail;
  std::string adapter;
  static constexpr auto fields() {
    return std::tuple{field("vm", &BootProgress::vm),         field("mac", &BootProgress::mac),
                      field("task", &BootProgress::task),     field("step", &BootProgress::step),
                      field("state", &BootProgress::state),   field("at", &BootProgress::at),
                      field("took_us", &BootProgress::took_us), field("detail", &BootProgress::detail),
                      field("adapter", &BootProgress::adapter)};
  }
};

// ---- subjects ----
/// Requests: hypervisor.<instance>.inventory (Empty → Inventory), hypervisor.<instance>.vm.action
/// (VmAction → Task), hypervisor.<instance>.task.cancel (CancelTask → Task), hypervisor.<instance>.fault
/// (Fault → Hosts), hypervisor.<instance>.network.boot (NetworkBoot → NetworkReply).
inline std::string request_subject(std::string_view instance, std::string_view what) {
  return "hypervisor." + std::string(instance) + "." + std::string(what);
}
/// Power-state events: hypervisor.<instance>.vm.<vm>.power (subscribe to hypervisor.*.vm.*.power).
inline std::string power_subject(std::string_view instance, std::string_view vm) {
  return "hypervisor." + std::string(instance) + ".vm." + std::string(vm) + ".power";
}
/// Task progress: hypervisor.<instance>.task.<id>.
inline std::string task_subject(std::string_view instance, std::string_view task) {
  return "hypervisor." + std::string(instance) + ".task." + std::string(task);
}
inline constexpr const char* all_power_events = "hypervisor.*.vm.*.power";
/// Firmware boot steps: hypervisor.<instance>.vm.<vm>.boot.
inline std::string boot_subject(std::string_view instance, std::string_view vm) {
  return "hypervisor." + std::string(instance) + ".vm." + std::string(vm) + ".boot";
}

}  // namespace deskfarm::interfaces::hypervisor
