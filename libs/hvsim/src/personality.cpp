// The three vendors' words. Codes follow the vendors' published APIs: XAPI error names, the WMI return codes of
// Msvm_ComputerSystem.RequestStateChange and Msvm_ConcreteJob.JobState, vSphere fault type names.
#include "deskfarm/hvsim/personality.hpp"

namespace deskfarm::hvsim {

std::string_view common_name(State s) {
  static constexpr std::array<std::string_view, state_count> names{"off", "starting", "running", "paused", "suspended", "stopping"};
  return names[static_cast<std::size_t>(s)];
}

std::string_view common_name(TaskState s) {
  static constexpr std::array<std::string_view, 5> names{"pending", "started", "completed", "failed", "cancelled"};
  return names[static_cast<std::size_t>(s)];
}

namespace {

std::string cat(std::initializer_list<std::string_view> parts) {
  std::string out;
  for (auto p : parts) out += p;
  return out;
}

VendorError xen_error(Failure f, std::string_view subject, std::string_view detail) {
  // XAPI: an error code and its parameters, printed as CODE(param, param).
  switch (f) {
    case Failure::bad_power_state: return {"VM_BAD_POWER_STATE", cat({"VM_BAD_POWER_STATE(", subject, ", ", detail, ")"})};
    case Failure::not_enough_memory: return {"HOST_NOT_ENOUGH_FREE_MEMORY", cat({"HOST_NOT_ENOUGH_FREE_MEMORY(", subject, ", ", detail, ")"})};
    case Failure::vm_not_found: return {"UUID_INVALID", cat({"UUID_INVALID(VM, ", subject, ")"})};
    case Failure::object_not_found: return {"HANDLE_INVALID", cat({"HANDLE_INVALID(", detail, ", ", subject, ")"})};
    case Failure::not_supported: return {"OPERATION_NOT_ALLOWED", cat({"OPERATION_NOT_ALLOWED(", subject, ": ", detail, ")"})};
    case Failure::bad_argument: return {"INVALID_VALUE", cat({"INVALID_VALUE(", subject, ", ", detail, ")"})};
    case Failure::cancelled: return {"TASK_CANCELLED", cat({"TASK_CANCELLED(", subject, ")"})};
    case Failure::not_cancellable: return {"OPERATION_NOT_ALLOWED", cat({"OPERATION_NOT_ALLOWED(task ", subject, " is ", detail, ")"})};
    case Failure::internal: return {"INTERNAL_ERROR", cat({"INTERNAL_ERROR(", subject, ": ", detail, ")"})};
    case Failure::host_offline: return {"HOST_OFFLINE", cat({"HOST_OFFLINE(", subject, ")"})};
    case Failure::boot_failed: return {"BOOTLOADER_FAILED", cat({"BOOTLOADER_FAILED(", subject, ", ", detail, ")"})};
  }
  return {"INTERNAL_ERROR", std::string(detail)};
}

VendorError hyperv_error(Failure f, std::string_view subject, std::string_view detail) {
  // WMI: RequestStateChange and friends return a uint32; the job's ErrorDescription says why.
  auto wmi = [&](std::string_view code, std::string_view what) {
    return VendorError{std::string(code), cat({what, " (", code, "): ", subject, detail.empty() ? "" : " — ", detail})};
  };
  switch (f) {
    case Failure::bad_power_state: return wmi("32775", "Invalid state for this operation");
    case Failure::not_enough_memory: return wmi("32778", "Out of memory");
    case Failure::vm_not_found: return wmi("32779", "Invalid object (no Msvm_ComputerSystem with this Name)");
    case Failure::object_not_found: return wmi("32773", "Invalid parameter");
    case Failure::not_supported: return wmi("32770", "Not supported");
    case Failure::bad_argument: return wmi("32773", "Invalid parameter");
    case Failure::cancelled: return wmi("32768", "Failed (job terminated by request)");
    case Failure::not_cancellable: return wmi("32775", "Invalid state for this operation");
    case Failure::internal: return wmi("32768", "Failed");
    case Failure::host_offline: return wmi("32777", "System is not available");
    case Failure::boot_failed: return wmi("32768", "Failed (the virtual machine did not boot)");
  }
  return wmi("32768", "Failed");
}

VendorError esx_error(Failure f, std::string_view subject, std::string_view detail) {
  // vSphere: a fault type and its localized message.
  switch (f) {
    case Failure::bad_power_state: return {"InvalidPowerState", cat({"The attempted operation cannot be performed in the current state (", detail, "): ", subject})};
    case Failure::not_enough_memory: return {"InsufficientResourcesFault", cat({"Insufficient resources to satisfy configured failover level or VM requirements: ", subject, " needs ", detail})};
    case Failure::vm_not_found: return {"ManagedObjectNotFound", cat({"The object 'vim.VirtualMachine:", subject, "' has already been deleted or has not been completely created"})};
    case Failure::object_not_found: return {"NotFound", cat({"The object or item referred to could not be found: ", detail, " ", subject})};
    case Failure::not_supported: return {"NotSupported", cat({"The operation is not supported on the object: ", subject, " (", detail, ")"})};
    case Failure::bad_argument: return {"InvalidArgument", cat({"A specified parameter was not correct: ", subject, " (", detail, ")"})};
    case Failure::cancelled: return {"RequestCanceled", cat({"The task was canceled by a user: ", subject})};
    case Failure::not_cancellable: return {"InvalidState", cat({"The operation is not allowed in the current state: task ", subject, " is ", detail})};
    case Failure::internal: return {"SystemError", cat({"A general system error occurred: ", subject, " (", detail, ")"})};
    case Failure::host_offline: return {"HostNotConnected", cat({"The host is not connected: ", subject})};
    case Failure::boot_failed: return {"GenericVmConfigFault", cat({"The virtual machine did not boot: ", subject, " (", detail, ")"})};
  }
  return {"SystemError", std::string(detail)};
}

VendorError qemu_error(Failure f, std::string_view subject, std::string_view detail) {
  // QEMU itself answers QMP with an error class and a description; a management layer over it (libvirt) names
  // its refusals with virErrorNumber names, which these follow.
  auto virt = [&](std::string_view code, std::string_view what) {
    return VendorError{std::string(code), cat({what, ": ", subject, detail.empty() ? "" : " (", detail, detail.empty() ? "" : ")"})};
  };
  switch (f) {
    case Failure::bad_power_state: return virt("VIR_ERR_OPERATION_INVALID", "Requested operation is not valid");
    case Failure::not_enough_memory: return virt("VIR_ERR_OPERATION_FAILED", "Not enough memory on any host");
    case Failure::vm_not_found: return virt("VIR_ERR_NO_DOMAIN", "Domain not found");
    case Failure::object_not_found: return virt("VIR_ERR_NO_NAME", "Object not found");
    case Failure::not_supported: return virt("VIR_ERR_NO_SUPPORT", "Operation not supported");
    case Failure::bad_argument: return virt("VIR_ERR_INVALID_ARG", "Invalid argument");
    case Failure::cancelled: return virt("VIR_ERR_OPERATION_ABORTED", "Operation aborted");
    case Failure::not_cancellable: return virt("VIR_ERR_OPERATION_INVALID", "Requested operation is not valid (task finished)");
    case Failure::internal: return virt("VIR_ERR_INTERNAL_ERROR", "Internal error");
    case Failure::host_offline: return virt("VIR_ERR_SYSTEM_ERROR", "The host went down");
    case Failure::boot_failed: return virt("VIR_ERR_INTERNAL_ERROR", "The domain did not boot");
  }
  return virt("VIR_ERR_INTERNAL_ERROR", "Internal error");
}

}  // namespace

VendorError Personality::error(Failure f, std::string_view subject, std::string_view detail) const {
  if (vendor == "xen") return xen_error(f, subject, detail);
  if (vendor == "hyperv") return hyperv_error(f, subject, detail);
  if (vendor == "qemu") return qemu_error(f, subject, detail);
  return esx_error(f, subject, detail);
}

const Personality& xen() {
  // XAPI has no starting/stopping power state: the domain is Running while it boots or shuts down.
  static const Personality p{"xen", {"Halted", "Running", "Running", "Paused", "Suspended", "Running"},
                             {"pending", "pending", "success", "failure", "cancelled"}, true, Personality::Ids::uuid,
                             "OpaqueRef:task-"};
  return p;
}

const Personality& hyperv() {
  // EnabledState words as Hyper-V Manager shows them; "Saved" is Hyper-V's suspend. Job states as
  // Msvm_ConcreteJob.JobState: 2 New, 4 Running, 7 Completed, 10 Exception, 8 Terminated.
  static const Personality p{"hyperv", {"Off", "Starting", "Running", "Paused", "Saved", "Stopping"},
                             {"New (2)", "Running (4)", "Completed (7)", "Exception (10)", "Terminated (8)"}, true,
                             Personality::Ids::guid, "Msvm_ConcreteJob-"};
  return p;
}

const Personality& esx() {
  // VirtualMachinePowerState has three values; a VM booting or shutting down is still poweredOn.
  static const Personality p{"esx", {"poweredOff", "poweredOn", "poweredOn", "poweredOn", "suspended", "poweredOn"},
                             {"queued", "running", "success", "error", "error"}, false, Personality::Ids::moref, "task-"};
  return p;
}

const Personality& qemu() {
  // QEMU's run states (query-status) while a process exists; "shutoff" (libvirt's word) when none does. Suspend
  // is QMP stop/cont, so a suspended VM is QEMU's "paused"; there is no separate pause.
  static const Personality p{"qemu", {"shutoff", "prelaunch", "running", "paused", "paused", "shutdown"},
                             {"queued", "running", "completed", "failed", "cancelled"}, false, Personality::Ids::uuid, "job-"};
  return p;
}

const Personality* personality(std::string_view vendor) {
  if (vendor == "xen") return &xen();
  if (vendor == "hyperv") return &hyperv();
  if (vendor == "esx") return &esx();
  if (vendor == "qemu") return &qemu();
  return nullptr;
}

}  // namespace deskfarm::hvsim
