#pragma once
// pvs: which export an NBD connection gets (device MAC -> vDisk version -> write cache), shared by the NBD threads.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include <deskfarm/nbd/session.hpp>
#include <deskfarm/nbd/version_chain.hpp>
#include <deskfarm/nbd/write_cache.hpp>
#include <deskfarm/interfaces/pvs/pvs.hpp>
#include <deskfarm/sdk/metrics.hpp>
#include <deskfarm/sdk/value.hpp>

#include "access.hpp"
#include "ledger.hpp"
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
  /// HA: every new session is claimed in `ledger` first (on the NBD thread, so a boot waits for the data store),
  /// and every session that ends here is handed to `released` (which must not block: it queues the row's removal).
  /// Set before the server starts; without a ledger this server assumes it is alone.
  void use_ledger(std::shared_ptr<Ledger> ledger, std::function<void(const OwnedSession&)> released) {
    ledger_ = std::move(ledger);
    ledger_released_ = std::move(released);
  }
  /// HA: `owned` is what the ledger says this server owns, read at `read_at`. Sessions begun before then that it
  /// no longer lists were ended by a peer (a boot or reset seen there): they end here too, reason "elsewhere".
  std::vector<EndedSession> reconcile(const std::set<OwnedSession>& owned, std::chrono::system_clock::time_point read_at);
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
    std::uint64_t session = 0;  // its row in the ledger
  };
  /// A new session resolve() will open once the ledger agrees.
  struct Plan {
    std::string key;
    std::string vdisk;
    int version = 0;
    const char* mode = "standard";
    std::string mac;  ///< what events name: the device's MAC, or the key for the maintenance writer
  };
  /// Caller holds mutex_: the export a connection to `requested` gets, or what to open (a new session).
  std::variant<nbd::Resolution, Plan> find_locked(const std::string& requested, std::string_view peer,
                                                  std::vector<std::shared_ptr<DeviceExport>>& drop,
                                                  std::vector<DeviceEvent>& events);
  /// Caller holds mutex_: opens `plan` (as session `session`; `takeover`: the previous server's name).
  nbd::Resolution open_locked(const Plan& plan, std::uint64_t session, const std::string& takeover,
                              std::string_view peer);
  void release_row(const std::string& key, const Live& live);
  /// Ends every session for which `ends(key, live)` holds (under the lock; events after it).
  std::vector<EndedSession> end_where(const std::function<bool(const std::string&, const Live&)>& ends,
                                      const std::string& reason);
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
  std::shared_ptr<Ledger> ledger_;
  std::function<void(const OwnedSession&)> ledger_released_;
  std::atomic<std::uint64_t> next_session_;

  mutable std::mutex mutex_;
  std::set<std::string> promoting_;  // vDisks whose maintenance version is being promoted
  bool loaded_ = false;
  Snapshot snap_;
  std::map<std::string, std::weak_ptr<nbd::Export>> layers_;
  std::map<std::string, Live> live_;  // key: MAC, or "vdisk@maintenance", or "vdisk@private"
  std::set<std::string> claiming_;     // keys whose claim is in the ledger now (resolve)
  std::condition_variable claimed_;    // a claim ended
};

/// One device's session (or the maintenance writer's, or a private image's): its write cache and version. Shared by
/// the device's connections; once revoked (the session ended) every request fails with EIO.
class DeviceExport final : public nbd::Export {
 public:
  /// `base`: what `cache` sits on; a device that has written nothing reads it directly (a boot is mostly reads, and
  /// the cache would split them into copy-on-write blocks).
  DeviceExport(std::weak_ptr<Streamer> owner, std::string key, std::shared_ptr<nbd::Export> inner,
               std::shared_ptr<nbd::WriteCache> cache, std::shared_ptr<nbd::Export> base, bool multi_conn,
               DeviceEvent info, std::shared_ptr<Ledger> ledger = nullptr, std::uint64_t session = 0);
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
  /// Before the first write of a write-cache session is acknowledged, the ledger records that it has writes (an
  /// HA peer must then never continue it from the base). 0, or EIO when the ledger cannot be told.
  int mark_dirty();
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
  std::shared_ptr<Ledger> ledger_;
  std::uint64_t session_;
  std::mutex marking_;
  std::atomic<bool> marked_{false};
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

/// A maintenance version opened read-write: a version file through its VersionWriter (reads see the writes, flushed
/// or not), or a raw base made by a merge to maintenance, written in place (nothing depends on it yet).
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
  std::mutex mutex_;
  std::unique_ptr<nbd::VersionWriter> writer_;  // a version file
  std::unique_ptr<nbd::FileExport> raw_;        // or a raw base
  std::uint64_t size_ = 0;
};

}  // namespace deskfarm::pvs
