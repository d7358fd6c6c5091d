#pragma once
// The pvs role's contract: device session events, vDisk changes, and the admin requests that every
// Provisioning Services instance serves. Subjects are built by the functions at the end.
#include <optional>
#include <string>
#include <vector>

#include <deskfarm/sdk/service.hpp>

namespace deskfarm::interfaces::pvs {

using sdk::field;

/// A device's vDisk session. A session (write cache + the version booted) lives from the device's boot until its
/// next boot, an admin reset or the idle time after its last connection closed; connections come and go within it.
/// `boot`: a new session started reading a vDisk version; `disconnect`: its last connection closed (the session and
/// its write cache are kept for a reconnect); `end`: the session ended and its write cache was discarded (`reason`);
/// `takeover`: an HA peer continues the session of a device whose server died (it had written nothing; `reason`
/// names the server it came from) with the version the device booted.
struct DeviceEvent {
  static constexpr std::string_view type_name = "deskfarm.pvs.DeviceEvent";
  static constexpr std::uint32_t type_version = 1;
  std::string kind;     ///< "boot" | "disconnect" | "end" | "takeover"
  std::string mac;      ///< the device's MAC (the NBD export name), "52:54:00:12:34:56"
  std::string vdisk;
  std::int64_t version = 0;
  std::string mode;     ///< "standard" | "private" | "maintenance"
  std::string peer;     ///< address:port the device connected from
  std::string server;   ///< the pvs instance serving it
  /// `end` only: "power" (hypervisor boot event), "bootstrap" (the firmware fetched the bootstrap again),
  /// "admin" (device.reset), "idle" (no connection for session_idle_s), "elsewhere" (an HA peer saw the device boot or
  /// reset it). `takeover`: "from <instance>".
  std::string reason;
  static constexpr auto fields() {
    return std::tuple{field("kind", &DeviceEvent::kind),       field("mac", &DeviceEvent::mac),
                      field("vdisk", &DeviceEvent::vdisk),     field("version", &DeviceEvent::version),
                      field("mode", &DeviceEvent::mode),       field("peer", &DeviceEvent::peer),
                      field("server", &DeviceEvent::server),   field("reason", &DeviceEvent::reason)};
  }
};

/// Published after an admin action changed vDisks, versions or devices in the data store; HA peers re-read.
struct VdiskChanged {
  static constexpr std::string_view type_name = "deskfarm.pvs.VdiskChanged";
  static constexpr std::uint32_t type_version = 1;
  std::string action;  ///< "version.new", "version.promote", "version.merge", "device.assign"
  std::string vdisk;
  std::string server;
  static constexpr auto fields() {
    return std::tuple{field("action", &VdiskChanged::action), field("vdisk", &VdiskChanged::vdisk),
                      field("server", &VdiskChanged::server)};
  }
};

// ---- admin requests (serve: pvs.<instance>.admin.<action>) ----

/// version.new: a new maintenance version on top of the newest one.
struct NewVersion {
  static constexpr std::string_view type_name = "deskfarm.pvs.NewVersion";
  static constexpr std::uint32_t type_version = 1;
  std::string vdisk;
  static constexpr auto fields() { return std::tuple{field("vdisk", &NewVersion::vdisk)}; }
};

/// version.promote: maintenance → test → production, or straight to `to`.
struct PromoteVersion {
  static constexpr std::string_view type_name = "deskfarm.pvs.PromoteVersion";
  static constexpr std::uint32_t type_version = 1;
  std::string vdisk;
  std::optional<std::int64_t> version;  ///< default: the maintenance (or test) version
  std::string to = "production";        ///< "test" | "production"
  static constexpr auto fields() {
    return std::tuple{field("vdisk", &PromoteVersion::vdisk), field("version", &PromoteVersion::version),
                      field("to", &PromoteVersion::to)};
  }
};

/// version.merge: collapse a version's chain into a new base image.
struct MergeVersion {
  static constexpr std::string_view type_name = "deskfarm.pvs.MergeVersion";
  static constexpr std::uint32_t type_version = 1;
  std::string vdisk;
  std::optional<std::int64_t> version;  ///< default: the newest production version
  std::string access = "production";    ///< access of the new base: "maintenance" | "test" | "production"
  static constexpr auto fields() {
    return std::tuple{field("vdisk", &MergeVersion::vdisk), field("version", &MergeVersion::version),
                      field("access", &MergeVersion::access)};
  }
};

/// device.assign: a device (by MAC) boots `vdisk`.
struct AssignDevice {
  static constexpr std::string_view type_name = "deskfarm.pvs.AssignDevice";
  static constexpr std::uint32_t type_version = 1;
  std::string mac;
  std::string vdisk;
  std::string name;
  std::string type = "production";  ///< "production" | "test"
  static constexpr auto fields() {
    return std::tuple{field("mac", &AssignDevice::mac), field("vdisk", &AssignDevice::vdisk),
                      field("name", &AssignDevice::name), field("type", &AssignDevice::type)};
  }
};

/// device.reset: end a device's session as if it had rebooted: its write cache is discarded, connections still
/// open get EIO from then on, and its next connection boots the newest version with an empty cache.
struct ResetDevice {
  static constexpr std::string_view type_name = "deskfarm.pvs.ResetDevice";
  static constexpr std::uint32_t type_version = 1;
  std::string mac;
  static constexpr auto fields() { return std::tuple{field("mac", &ResetDevice::mac)}; }
};

/// The reply to device.reset.
struct ResetReply {
  static constexpr std::string_view type_name = "deskfarm.pvs.ResetReply";
  static constexpr std::uint32_t type_version = 1;
  std::string mac;             ///< normalized
  bool ended = false;          ///< false: the device had no session (nothing to discard)
  std::string vdisk;           ///< the session that ended: its vDisk,
  std::int64_t version = 0;    ///< version,
  std::int64_t connections = 0;  ///< and the connections it still had (now failing with EIO)
  static constexpr auto fields() {
    return std::tuple{field("mac", &ResetReply::mac), field("ended", &ResetReply::ended),
                      field("vdisk", &ResetReply::vdisk), field("version", &ResetReply::version),
                      field("connections", &ResetReply::connections)};
  }
};

/// vdisk.list: no arguments (sdk::Empty).

struct VersionInfo {
  std::int64_t number = 0;
  std::string access;
  std::int64_t parent = -1;  ///< -1: a base image
  std::string file;
  static constexpr auto fields() {
    return std::tuple{field("number", &VersionInfo::number), field("access", &VersionInfo::access),
                      field("parent", &VersionInfo::parent), field("file", &VersionInfo::file)};
  }
};

struct VdiskInfo {
  std::string name;
  std::string mode;  ///< "standard" | "private"
  std::int64_t size = 0;
  std::vector<VersionInfo> versions;
  static constexpr auto fields() {
    return std::tuple{field("name", &VdiskInfo::name), field("mode", &VdiskInfo::mode), field("size", &VdiskInfo::size),
                      field("versions", &VdiskInfo::versions)};
  }
};

struct DeviceInfo {
  std::string mac;
  std::string vdisk;
  std::string name;
  std::string type;
  bool connected = false;
  static constexpr auto fields() {
    return std::tuple{field("mac", &DeviceInfo::mac), field("vdisk", &DeviceInfo::vdisk), field("name", &DeviceInfo::name),
                      field("type", &DeviceInfo::type), field("connected", &DeviceInfo::connected)};
  }
};

/// The reply to every admin request: what the action produced, and the catalog as it now stands.
struct AdminReply {
  static constexpr std::string_view type_name = "deskfarm.pvs.AdminReply";
  static constexpr std::uint32_t type_version = 1;
  std::string action;
  std::optional<std::int64_t> version;  ///< the version created, promoted or merged
  std::string mac;                      ///< the device assigned
  std::vector<VdiskInfo> vdisks;
  std::vector<DeviceInfo> devices;
  static constexpr auto fields() {
    return std::tuple{field("action", &AdminReply::action), field("version", &AdminReply::version),
                      field("mac", &AdminReply::mac), field("vdisks", &AdminReply::vdisks),
                      field("devices", &AdminReply::devices)};
  }
};

// ---- subjects ----
/// Device events: pvs.<instance>.device.<kind>.
inline std::string device_subject(std::string_view instance, std::string_view kind) {
  return "pvs." + std::string(instance) + ".device." + std::string(kind);
}
/// vDisk changes: pvs.<instance>.vdisk.changed (subscribe to pvs.*.vdisk.changed for every server).
inline std::string vdisk_changed_subject(std::string_view instance) { return "pvs." + std::string(instance) + ".vdisk.changed"; }
/// Admin requests: pvs.<instance>.admin.<action> ("version.new", "version.promote", "version.merge",
/// "device.assign", "device.reset" (ResetDevice → ResetReply), "vdisk.list").
inline std::string admin_subject(std::string_view instance, std::string_view action) {
  return "pvs." + std::string(instance) + ".admin." + std::string(action);
}

/// Endpoint names a pvs instance advertises to discovery.
inline constexpr const char* tftp_endpoint = "tftp";
inline constexpr const char* stream_endpoint = "stream";

}  // namespace deskfarm::interfaces::pvs
