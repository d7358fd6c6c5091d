#pragma once
// pvs: configuration, data-store rows and the catalog (devices, vDisks, versions) kept in the data store.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <deskfarm/bootstrap/bootstrap.hpp>
#include <deskfarm/sdk/config.hpp>
#include <deskfarm/sdk/store.hpp>

namespace deskfarm::pvs {

struct ListenAddress {
  std::string host;
  std::uint16_t port = 0;
  std::string text() const { return host + ":" + std::to_string(port); }
};

enum class Mode { standard, private_image };
std::string to_string(Mode m);

struct VdiskSeed {
  std::string name;
  std::string file;  ///< relative to the store
  std::uint64_t size_mb = 0;  ///< 0 = the file must exist
  Mode mode = Mode::standard;
};

struct DeviceSeed {
  std::string mac;
  std::string vdisk;
  std::string name;
  std::string type = "production";  ///< production | test
};

/// The validated manifest of one pvs instance.
struct Options {
  std::optional<ListenAddress> tftp;  ///< nullopt = TFTP off
  std::filesystem::path tftp_root;
  std::string bootstrap_file;
  bootstrap::Bootstrap bootstrap;  ///< login_servers empty = this instance's stream address
  ListenAddress stream;
  std::size_t max_connections = 1024;
  std::filesystem::path store;
  std::filesystem::path write_cache_dir;
  std::uint64_t write_cache_ram = 0;
  std::uint64_t write_cache_disk = 0;
  std::uint32_t write_cache_block_size = 4096;
  std::int64_t refresh_s = 10;
  std::vector<VdiskSeed> vdisks;
  std::vector<DeviceSeed> devices;
};

/// Reads and checks the config; throws sdk::ConfigError naming the key.
Options parse_options(const sdk::Config& config, const std::filesystem::path& state_dir);

/// "52:54:00:12:34:56" (lower case, colons) or nullopt when `text` is not a MAC (":" or "-" separators).
std::optional<std::string> normalize_mac(std::string_view text);
/// True for names usable as vDisk names and file names ([A-Za-z0-9_.-], 1..64, no leading dot).
bool valid_vdisk_name(std::string_view name);

// ---- data store rows ----

/// Version access, in PVS order.
inline constexpr const char* kMaintenance = "maintenance";
inline constexpr const char* kTest = "test";
inline constexpr const char* kProduction = "production";

struct VersionRow {
  int number = 0;
  std::string file;  ///< relative to the store
  int parent = -1;   ///< -1: a base (raw image)
  std::string access;
  std::int64_t created_at = 0;
};

struct VdiskRow {
  std::string name;
  Mode mode = Mode::standard;
  std::uint64_t size = 0;
  std::vector<VersionRow> versions;  ///< by number
  /// Newest version whose access is production (or test too, for test devices); nullptr if none.
  const VersionRow* bootable(bool include_test) const;
  const VersionRow* maintenance() const;
  const VersionRow* find(int number) const;
};

struct DeviceRow {
  std::string mac;
  std::string vdisk;
  std::string name;
  std::string type;
};

struct Snapshot {
  std::map<std::string, VdiskRow> vdisks;
  std::map<std::string, DeviceRow> devices;
};

/// An admin action that cannot be done; the message says why and what to do.
class ActionError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Data-store access (tables pvs_vdisks, pvs_versions, pvs_devices). Call from the instance's executor.
class Catalog {
 public:
  Catalog(sdk::Store& store, std::filesystem::path store_dir) : store_(store), dir_(std::move(store_dir)) {}
  void migrate();
  /// Creates missing base files and upserts the manifest's vDisks and devices.
  void seed(const std::vector<VdiskSeed>& vdisks, const std::vector<DeviceSeed>& devices);
  Snapshot load();

  /// New maintenance version on top of the newest version; returns its number.
  int new_version(const std::string& vdisk);
  /// maintenance -> test -> production (or straight to `to`); returns the version promoted.
  int promote(const std::string& vdisk, std::optional<int> version, const std::string& to);
  /// Collapses the chain of `version` (default newest production) into a new raw base with `access`.
  int merge_base(const std::string& vdisk, std::optional<int> version, const std::string& access);
  void assign(const DeviceSeed& device);

 private:
  std::filesystem::path dir_path(const std::string& file) const { return dir_ / file; }
  sdk::Store& store_;
  std::filesystem::path dir_;
};

}  // namespace deskfarm::pvs
