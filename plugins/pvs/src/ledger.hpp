#pragma once
// pvs: the session ledger (tables pvs_owners, pvs_sessions; created by the catalog's migrations) — which server owns each device's session (its write cache and the version it booted),
// kept in the data store that HA peers share, so that exactly one server serves a device at a time.
//
// Rules (plugins/pvs/README.md, "HA and sessions"):
// - A server opening a session claims it: a row (export, owner, session id, version, dirty) in pvs_sessions.
// - Owners prove they live by renewing a row in pvs_owners every lease/3; an owner silent for a lease is dead.
//   An owner is one run of one instance ("pvs-1#3f9c…"): a restarted server is a new owner and its old sessions,
//   whose RAM caches died with it, belong to a dead one.
// - A session held by a live owner is refused elsewhere ("connect to pvs-1"). A dead owner's session that never
//   wrote is taken over with the version it booted; one that wrote is refused until the device boots (its writes
//   are gone, serving the base would hand the OS stale blocks) or until session_idle has passed.
// - A boot (hypervisor power event, bootstrap fetched, device.reset) deletes the device's row wherever it is; the
//   owner sees the row gone at its next renewal and ends its local session.
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace Poco::Data {
class Session;
}
namespace deskfarm::sdk {
class Store;
}

namespace deskfarm::pvs {

/// What a claim found.
struct Claim {
  enum class Kind {
    granted,   ///< no session anywhere (or ours to replace): boot afresh with the version asked for
    takeover,  ///< a dead owner's clean session: continue it here with `version`
    held,      ///< a live owner serves it: refuse, name the owner
    lost,      ///< a dead owner's session with writes: refuse until the device boots
  };
  Kind kind = Kind::granted;
  int version = 0;    ///< takeover: the version the device booted
  std::string owner;  ///< held/lost/takeover: the previous owner's instance name
  std::string peer;   ///< held/lost: where the device was last seen
};

/// One session row as the owner renews it.
struct OwnedSession {
  std::string key;
  std::uint64_t session = 0;
  friend bool operator<(const OwnedSession& a, const OwnedSession& b) {
    return std::tie(a.key, a.session) < std::tie(b.key, b.session);
  }
};

/// The data-store side; calls may come from any thread and throw on a data-store error. claim() and mark_dirty()
/// are on a device's boot path, so they are group-committed: one thread of the ledger runs every claim and mark
/// waiting at that moment in one transaction (one fsync for a boot storm's worth of devices), and the caller waits
/// at most `timeout` for its outcome. The others open a store session of their own (blocking pool).
class Ledger {
 public:
  /// `owner`: this run's owner id ("<instance>#<random>"); `lease`: how long an owner may stay silent.
  Ledger(sdk::Store& store, std::string owner, std::chrono::milliseconds lease, std::chrono::milliseconds session_idle,
         std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  const std::string& owner() const { return owner_; }
  /// Renews this owner's lease and returns the sessions the store says it owns.
  std::set<OwnedSession> renew();
  /// Claims `key` (a device MAC, or "vdisk@maintenance"/"vdisk@private") for session `session`. `in_place`:
  /// writes go straight to the shared store (maintenance, private), so a dead owner's session is always taken over.
  Claim claim(const std::string& key, std::uint64_t session, const std::string& peer, const std::string& vdisk,
              int version, bool in_place);
  /// Records that `session` has written (before the first write is acknowledged).
  void mark_dirty(const std::string& key, std::uint64_t session);
  /// Forgets `session` of `key` (it ended here).
  void release(const std::string& key, std::uint64_t session);
  /// A boot of `key` (a MAC) seen here at `seen`: its session ends wherever it is, unless it began after `seen`
  /// (the device's new session, claimed while this notice waited in a queue). Returns the owner's instance, or "".
  std::string end_everywhere(const std::string& key, std::chrono::system_clock::time_point seen);
  /// A bootstrap fetched from `peer`: ends the one standard-mode session of a dead owner last seen there (several:
  /// ambiguous, none ended). Live owners judge their own sessions. Returns the MAC ended, or "".
  std::string end_dead_at(const std::string& peer);

 private:
  struct Job;
  /// Queues `step` for the next group commit and waits for its outcome.
  Claim submit(std::function<std::optional<Claim>(Poco::Data::Session&)> step);
  void commit_loop(std::stop_token stop);
  std::optional<Claim> claim_step(Poco::Data::Session& s, const std::string& key, std::uint64_t session,
                                  const std::string& peer, const std::string& vdisk, int version, bool in_place);
  std::int64_t now_ms() const;
  sdk::Store& store_;
  std::string owner_;
  std::chrono::milliseconds lease_;
  std::chrono::milliseconds session_idle_;
  std::chrono::milliseconds timeout_;
  std::mutex mutex_;
  std::condition_variable_any wake_;
  std::deque<std::shared_ptr<Job>> jobs_;
  std::jthread committer_;  // last: stopped and joined first
};

/// "pvs-1#3f9c04d1e2a7b655": an owner id for one run of `instance`.
std::string make_owner_id(const std::string& instance);
/// The instance part of an owner id.
std::string owner_instance(const std::string& owner);

}  // namespace deskfarm::pvs
