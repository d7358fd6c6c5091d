#pragma once
// pvs: which export an NBD connection gets (device MAC -> vDisk version -> write cache), shared by the NBD threads.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <deskfarm/nbd/session.hpp>
#include <deskfarm/nbd/version_chain.hpp>
#include <deskfarm/nbd/write_cache.hpp>
#include <deskfarm/interfaces/pvs/pvs.hpp>
#include <deskfarm/sdk/metrics.hpp>
#include <deskfarm/sdk/value.hpp>

#include "access.hpp"
#include "model.hpp"

namespace deskfarm::pvs {

/// A device booting or going away, reported from an NBD thread: the pvs contract's event, whose `mac` is the
/// export name (a device MAC, or "vdisk@maintenance" for the maintenance writer).
using DeviceEvent = interfaces::pvs::DeviceEvent;

struct StreamerMetrics {
  sdk::Counter* boots = nullptr;
  sdk::Counter* disconnects = nullptr;
  sdk::Counter* ended = nullptr;
  sdk::Counter* unknown = nullptr;
  sdk::Counter* refused = nullptr;
  sdk::Counter* denied = nullptr;  ///< refused by the address rules (AccessPolicy)
};

class DeviceExport;

/// A session that end_session() ended.
struct EndedSession {
  std::string mac;
  std::string vdisk;
  int version = 0;
  std::size_t connections = 0;  ///< still open when it ended: they get EIO from then on
};

/// Thread-safe: resolve() and list() run on NBD connection threads, update() and status on the executor.
///
/// Sessions: a standard-mode device's session (its write cache and the version it booted) starts at its first I/O
/// and outlives its connections: a reconnect gets the same cache and version. It ends only by end_session() (a boot
/// seen by the plugin, or an admin reset) or when it had no connection for `session_idle`. Private images and the
/// maintenance writer write in place, so their sessions simply end with their last connection.
class Streamer : public std::enable_shared_from_this<Streamer> {
 public:
  /// `server`: the instance name, written into every DeviceEvent.
  Streamer(std::string server, std::filesystem::path store_dir, nbd::WriteCacheOptions cache, StreamerMetrics metrics,
           std::chrono::milliseconds session_idle = std::chrono::hours(1), AccessPolicy access = {});

  /// Replaces the catalog view; sessions already running keep the version they booted. Until the first
  /// update every connection is refused as "still loading".
  void update(Snapshot snapshot);
  Snapshot snapshot() const;
  /// NBD resolver: a device MAC or "vdisk@maintenance"; a peer the AccessPolicy refuses gets `denied`.
  nbd::Resolution resolve(std::string_view name, std::string_view peer);
  std::vector<nbd::ExportEntry> list(std::string_view peer) const;
  /// Where boot/disconnect events go (called on NBD threads); set before the server starts.
  void on_event(std::function<void(const DeviceEvent&)> sink) { sink_ = std::move(sink); }
  /// Names of vDisk files a running session uses (refuses merges that would pull them away; informative).
  void status(sdk::Value& out) const;
  /// The catalog as the admin replies show it: vDisks with their versions, devices and whether each is connected.
  void describe(interfaces::pvs::AdminReply& out) const;
  std::size_t active() const;
  std::uint64_t cache_bytes() const;

  /// Ends the sessions of device `mac` (a normalized MAC): its write cache is discarded, its open connections fail
  /// with EIO, and its next connection boots afresh. `reason` goes into the `end` event.
  std::vector<EndedSession> end_session(const std::string& mac, const std::string& reason);
  /// The firmware at `host` fetched the bootstrap: it is booting. Ends the session of the one device last seen at
  /// `host`; returns how many devices were seen there (more than one: none is ended, the address is ambiguous).
  std::size_t bootstrap_from(const std::string& host, std::vector<EndedSession>& ended);
  /// Ends the sessions that had no connection for `session_idle`; returns them.
  std::vector<EndedSession> sweep_idle();
  /// Promoting a maintenance version: refuses (false, `why`) while its writer is connected, else refuses new
  /// writers of `vdisk` until end_promote(), so none connects between the check and the new catalog view.
  bool begin_promote(const std::string& vdisk, std::string& why);
  void end_promote(const std::string& vdisk);

 private:
  friend class DeviceExport;
  friend class ConnectionExport;
  struct Live {
    std::weak_ptr<DeviceExport> export_;
    DeviceEvent info;
    std::chrono::system_clock::time_point since;
    std::shared_ptr<DeviceExport> held;  // standard mode after its first I/O: the session outlives its connections
    std::size_t connections = 0;
    std::chrono::steady_clock::time_point idle_since;  // when `connections` last dropped to 0
  };
  /// Caller holds mutex_: one more connection of live_[key], which refers to `device`.
  nbd::Resolution connect(const std::string& key, std::shared_ptr<DeviceExport> device, std::string_view peer);
  void closed(const std::string& key, const DeviceExport* which, bool used);
  void hold(const std::string& key, const DeviceExport* which);
  /// Caller holds mutex_: ends live_[it] (revokes, forgets); `drop` keeps the export to destroy after the lock.
  EndedSession end_locked(std::map<std::string, Live>::iterator it, const std::string& reason,
                          std::vector<std::shared_ptr<DeviceExport>>& drop, std::vector<DeviceEvent>& events);
  std::shared_ptr<nbd::Export> layer(const std::string& file);  // shared read-only chain per version file
  void released(const std::string& key, const DeviceExport* which);
  void emit(const DeviceEvent& e) const;
  DeviceEvent boot_event(const std::string& key, const std::string& vdisk, int version, const char* mode,
                         std::string_view peer) const {
    return DeviceEvent{"boot", key, vdisk, version, mode, std::string(peer), server_};
  }
  std::vector<interfaces::pvs::VdiskInfo> vdisk_infos() const;  // caller holds mutex_

  AccessPolicy access_;
  std::filesystem::path dir_;
  nbd::WriteCacheOptions cache_;
  StreamerMetrics metrics_;
  std::function<void(const DeviceEvent&)> sink_;
  std::string server_;
  std::chrono::milliseconds session_idle_;

  mutable std::mutex mutex_;
  std::set<std::string> promoting_;  // vDisks whose maintenance version is being promoted
  bool loaded_ = false;
  Snapshot snap_;
  std::map<std::string, std::weak_ptr<nbd::Export>> layers_;
  std::map<std::string, Live> live_;  // key: MAC, or "vdisk@maintenance", or "vdisk@private"
};

/// One device's session (or the maintenance writer's, or a private image's): its write cache and version. Shared by
/// the device's connections; once revoked (the session ended) every request fails with EIO.
class DeviceExport final : public nbd::Export {
 public:
  /// `base`: what `cache` sits on; a device that has written nothing reads it directly (a boot is mostly reads, and
  /// the cache would split them into copy-on-write blocks).
  DeviceExport(std::weak_ptr<Streamer> owner, std::string key, std::shared_ptr<nbd::Export> inner,
               std::shared_ptr<nbd::WriteCache> cache, std::shared_ptr<nbd::Export> base, bool multi_conn,
               DeviceEvent info);
  ~DeviceExport() override;
  std::uint64_t size() const override { return inner_->size(); }
  bool read_only() const override { return inner_->read_only(); }
  int read(std::uint64_t off, std::span<std::byte> out) override;
  int write(std::uint64_t off, std::span<const std::byte> in) override;
  int flush() override;
  int write_zeroes(std::uint64_t off, std::uint64_t length) override;
  bool multi_conn_safe() const override { return multi_conn_; }
  const nbd::WriteCache* cache() const { return cache_.get(); }
  void revoke() { revoked_.store(true); }
  bool booted() const { return booted_.load(); }
  const DeviceEvent& info() const { return info_; }

 private:
  void touch();
  std::weak_ptr<Streamer> owner_;
  std::string key_;
  std::shared_ptr<nbd::Export> inner_;
  std::shared_ptr<nbd::WriteCache> cache_;
  std::shared_ptr<nbd::Export> base_;
  std::atomic<bool> dirty_{false};  // set before the first write is forwarded; from then on reads see the cache
  bool multi_conn_;
  DeviceEvent info_;
  std::atomic<bool> booted_{false};
  std::atomic<bool> revoked_{false};
};

/// One NBD connection to a device's session: counts the connection in and out, so the session knows when the device
/// has none (a `disconnect` event, then the idle clock) without ending on it.
class ConnectionExport final : public nbd::Export {
 public:
  ConnectionExport(std::weak_ptr<Streamer> owner, std::string key, std::shared_ptr<DeviceExport> device)
      : owner_(std::move(owner)), key_(std::move(key)), device_(std::move(device)) {}
  ~ConnectionExport() override;
  std::uint64_t size() const override { return device_->size(); }
  bool read_only() const override { return device_->read_only(); }
  int read(std::uint64_t off, std::span<std::byte> out) override;
  int write(std::uint64_t off, std::span<const std::byte> in) override;
  int flush() override;
  int write_zeroes(std::uint64_t off, std::uint64_t length) override;
  bool multi_conn_safe() const override { return device_->multi_conn_safe(); }

 private:
  std::weak_ptr<Streamer> owner_;
  std::string key_;
  std::shared_ptr<DeviceExport> device_;
  std::atomic<bool> used_{false};  // NBD_OPT_INFO resolves without I/O: a look, not a connection of the device
};

/// A maintenance version opened read-write: writes go to the version file, reads see them.
class MaintenanceExport final : public nbd::Export {
 public:
  explicit MaintenanceExport(const std::filesystem::path& version_file);
  std::uint64_t size() const override { return size_; }
  bool read_only() const override { return false; }
  int read(std::uint64_t off, std::span<std::byte> out) override;
  int write(std::uint64_t off, std::span<const std::byte> in) override;
  int flush() override;
  bool multi_conn_safe() const override { return false; }

 private:
  std::filesystem::path file_;
  std::mutex mutex_;
  std::unique_ptr<nbd::VersionWriter> writer_;
  std::unique_ptr<nbd::ChainExport> view_;  // reopened after writes: ChainExport reads the bitmap once
  bool stale_ = false;
  std::uint64_t size_ = 0;
};

}  // namespace deskfarm::pvs
