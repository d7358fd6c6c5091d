#pragma once
// pvs: configuration, data-store rows and the catalog (devices, vDisks, versions) kept in the data store.
#include <cstdint>
#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

#include <deskfarm/bootstrap/bootstrap.hpp>
#include <deskfarm/bootstrap/keys.hpp>
#include <deskfarm/nbd/tls.hpp>
#include <deskfarm/sdk/config.hpp>
#include <deskfarm/sdk/store.hpp>

#include "access.hpp"

namespace deskfarm::pvs {

struct ListenAddress {
  std::string host;
  std::uint16_t port = 0;
  std::string text() const { return host + ":" + std::to_string(port); }
};

enum class Mode { standard, private_image };
std::string to_string(Mode m);
Mode mode_of(const std::string& text);  ///< "private" or else standard

/// One `vdisks` table of the manifest (bound by the nested config schema), seeded into the data store.
struct VdiskSeed {
  std::string name;
  std::string file;           ///< relative to the store; "" in the manifest = "<name>.img"
  std::uint64_t size_mb = 0;  ///< 0 = the file must exist
  std::string mode = "standard";
};

/// One `devices` table of the manifest (bound by the nested config schema), seeded into the data store.
struct DeviceSeed {
  std::string mac;
  std::string vdisk;
  std::string name;
  std::string type = "production";  ///< production | test
  std::string ip;                   ///< the one address it may stream from; "" = any allowed by device_subnets
};

/// The manifest keys of one pvs instance, as the config schema (pvs_plugin.cpp) binds them.
/// The bootstrap keys (bootstrap::Keys, shared with bdm) and pvs's own.
struct PvsConfig : bootstrap::Keys {
  std::string tftp;
  std::string tftp_root;
  std::string bootstrap_file;
  std::string stream;
  std::int64_t max_connections = 0;
  bool list_exports = false;
  std::string stream_tls = "off";
  std::string tls_certificate;
  std::string tls_key;
  std::string tls_client_ca;
  std::string tls_psk_file;
  std::vector<std::string> device_subnets;
  std::vector<std::string> maintenance_from;
  std::string store;
  std::string write_cache_dir;
  std::int64_t write_cache_ram_mb = 64;
  std::int64_t write_cache_disk_mb = 0;
  std::int64_t write_cache_block_size = 4096;
  std::int64_t refresh_s = 10;
  std::int64_t session_idle_s = 3600;
  std::int64_t lease_s = 15;
  std::int64_t stream_idle_timeout_s = 600;
  std::int64_t stream_keepalive_s = 30;
  std::vector<VdiskSeed> vdisks;
  std::vector<DeviceSeed> devices;
};

/// What the instance runs with: the bound config with addresses parsed, paths resolved, MACs normalised.
struct Options {
  std::optional<ListenAddress> tftp;  ///< nullopt = TFTP off
  std::filesystem::path tftp_root;
  std::string bootstrap_file;
  bootstrap::Bootstrap bootstrap;  ///< login_servers empty = this instance's stream address
  ListenAddress stream;
  std::size_t max_connections = 0;  ///< 0 = sized to the descriptor limit
  bool list_exports = false;
  /// "off", "on" (STARTTLS offered; maintenance exports only over TLS) or "require" (every connection).
  std::string stream_tls = "off";
  nbd::TlsOptions tls;  ///< paths resolved; checked (files read) when the instance is created
  AccessPolicy access;
  std::filesystem::path store;
  std::filesystem::path write_cache_dir;
  std::uint64_t write_cache_ram = 0;
  std::uint64_t write_cache_disk = 0;
  std::uint32_t write_cache_block_size = 4096;
  std::int64_t refresh_s = 10;
  std::chrono::seconds session_idle{3600};
  std::chrono::seconds lease{15};
  std::chrono::seconds stream_idle_timeout{600};
  std::chrono::seconds stream_keepalive{30};
  std::vector<VdiskSeed> vdisks;  ///< `file` filled in
  std::vector<DeviceSeed> devices;  ///< `mac` normalised
};

/// Derives the Options from a bound config, checking what the schema cannot (address and MAC syntax, vDisk
/// names, a power-of-two block size, static addressing, the bootstrap's limits); throws sdk::ConfigError
/// naming the key. Ranges and choices were checked by the kernel already. Touches no file: `deskfarm check`
/// runs it through the plugin's validate() with an empty `state_dir`.
Options make_options(const PvsConfig& config, const std::filesystem::path& state_dir);
/// Refuses a vDisk without size_mb whose image is not in the store (at construction, not at check: the
/// store is a directory of the machine that runs the deployment).
void require_images(const Options& options);

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

/// Data-store access (tables pvs_vdisks, pvs_versions, pvs_devices). Every call opens its own session, so a
/// Catalog may live on a blocking-pool thread; the plugin runs its calls one at a time (see pvs_plugin.cpp).
class Catalog {
 public:
  Catalog(sdk::Store& store, std::filesystem::path store_dir) : store_(store), dir_(std::move(store_dir)) {}
  void migrate();
  /// Creates missing base files and upserts the manifest's vDisks and devices.
  void seed(const std::vector<VdiskSeed>& vdisks, const std::vector<DeviceSeed>& devices);
  /// One vDisk of seed(): its row (mode updated) and, when new, its base version 0; one transaction.
  void seed_vdisk(const VdiskSeed& v, std::uint64_t size);
  Snapshot load();

  /// New maintenance version on top of the newest version; returns its number.
  int new_version(const std::string& vdisk);
  /// maintenance -> test -> production (or straight to `to`); returns the version promoted.
  int promote(const std::string& vdisk, std::optional<int> version, const std::string& to);
  /// Collapses the chain of `version` (default newest production) into a new raw base with `access`.
  /// Reads the whole chain: run it off the executor. Gives up (nothing written to the store) once `stop` is requested.
  int merge_base(const std::string& vdisk, std::optional<int> version, const std::string& access,
                 std::stop_token stop = {});
  void assign(const DeviceSeed& device);

 private:
  std::filesystem::path dir_path(const std::string& file) const { return dir_ / file; }
  sdk::Store& store_;
  std::filesystem::path dir_;
};

}  // namespace deskfarm::pvs
