#include "ledger.hpp"

#include <future>
#include <random>
#include <thread>

#include <Poco/Data/Session.h>
#include <Poco/Data/Statement.h>
#include <Poco/Exception.h>

#include <deskfarm/sdk/store.hpp>

namespace deskfarm::pvs {

using namespace Poco::Data::Keywords;

namespace {

/// Runs `step` until it returns a value: a racing peer's INSERT or UPDATE makes it return nullopt (try again);
/// a busy store throws (try again, then give up with the store's message).
template <class F>
auto until_settled(F&& step) {
  for (int attempt = 1;; ++attempt) {
    try {
      if (auto r = step()) return *r;
    } catch (const Poco::Exception&) {
      if (attempt >= 5) throw;
    }
    if (attempt >= 5) throw std::runtime_error("pvs: the session ledger kept changing under five claims in a row");
    std::this_thread::sleep_for(std::chrono::milliseconds(10 * attempt));
  }
}

}  // namespace

Ledger::Ledger(sdk::Store& store, std::string owner, std::chrono::milliseconds lease,
               std::chrono::milliseconds session_idle, std::chrono::milliseconds timeout)
    : store_(store),
      owner_(std::move(owner)),
      lease_(lease),
      session_idle_(session_idle),
      timeout_(timeout),
      committer_([this](std::stop_token stop) { commit_loop(stop); }) {}

Ledger::~Ledger() {
  committer_.request_stop();
  wake_.notify_all();
}

/// A claim or mark waiting for the committer. Shared with the caller, who may stop waiting (timeout): the job owns
/// everything it touches.
struct Ledger::Job {
  std::function<std::optional<Claim>(Poco::Data::Session&)> step;  // nullopt: a racing peer changed the row
  std::promise<Claim> outcome;
};

Claim Ledger::submit(std::function<std::optional<Claim>(Poco::Data::Session&)> step) {
  auto job = std::make_shared<Job>();
  job->step = std::move(step);
  auto outcome = job->outcome.get_future();
  {
    std::lock_guard lock(mutex_);
    jobs_.push_back(job);
  }
  wake_.notify_one();
  if (outcome.wait_for(timeout_) != std::future_status::ready)
    throw std::runtime_error("the data store did not answer within " + std::to_string(timeout_.count()) + " ms");
  return outcome.get();
}

void Ledger::commit_loop(std::stop_token stop) {
  for (;;) {
    std::deque<std::shared_ptr<Job>> batch;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, stop, [&] { return !jobs_.empty(); });
      if (stop.stop_requested()) return;  // waiting callers time out; nothing of theirs is touched
      batch.swap(jobs_);
    }
    std::vector<std::optional<Claim>> results(batch.size());
    std::exception_ptr failed;
    try {
      auto s = store_.session();
      // SQLite: take the write lock up front, so the read-then-write of a claim cannot deadlock with another writer.
      const bool sqlite = store_.connector() == "SQLite";
      if (sqlite) s << "BEGIN IMMEDIATE", Poco::Data::Keywords::now;
      else s.begin();
      try {
        for (std::size_t i = 0; i < batch.size(); ++i)
          for (int attempt = 0; attempt < 3 && !results[i]; ++attempt) results[i] = batch[i]->step(s);
        if (sqlite) s << "COMMIT", Poco::Data::Keywords::now;
        else s.commit();
      } catch (...) {
        try {
          if (sqlite) s << "ROLLBACK", Poco::Data::Keywords::now;
          else s.rollback();
        } catch (...) {
          // Nothing began or the connection is gone: the store rolled back itself.
        }
        throw;
      }
    } catch (...) {
      failed = std::current_exception();
    }
    if (!failed) {
      for (std::size_t i = 0; i < batch.size(); ++i) {
        if (results[i]) batch[i]->outcome.set_value(*results[i]);
        else batch[i]->outcome.set_exception(std::make_exception_ptr(
            std::runtime_error("the session ledger kept changing under three claims in a row")));
      }
      continue;
    }
    // The transaction failed (a busy store, a peer's row inserted first): each job alone, retried.
    for (auto& job : batch) {
      try {
        job->outcome.set_value(until_settled([&] {
          auto s = store_.session();
          return job->step(s);
        }));
      } catch (...) {
        job->outcome.set_exception(std::current_exception());
      }
    }
  }
}

std::string make_owner_id(const std::string& instance) {
  std::random_device rd;
  const std::uint64_t r = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(r));
  return instance + "#" + hex;
}

std::string owner_instance(const std::string& owner) { return owner.substr(0, owner.rfind('#')); }

std::int64_t Ledger::now_ms() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::set<OwnedSession> Ledger::renew() {
  auto s = store_.session();
  std::int64_t now = now_ms();
  std::string owner = owner_;
  Poco::Data::Statement up(s);
  up << sdk::sql(s, "UPDATE pvs_owners SET renewed_ms = ? WHERE owner = ?"), use(now), use(owner);
  if (up.execute() == 0)
    s << sdk::sql(s, "INSERT INTO pvs_owners (owner, renewed_ms) VALUES (?, ?)"), use(owner), use(now), Poco::Data::Keywords::now;
  // Owners dead for ten leases with no session left are history.
  std::int64_t long_ago = now - 10 * lease_.count();
  s << sdk::sql(s, "DELETE FROM pvs_owners WHERE renewed_ms < ? AND owner NOT IN (SELECT owner FROM pvs_sessions)"),
      use(long_ago), Poco::Data::Keywords::now;
  std::vector<std::string> keys;
  std::vector<std::int64_t> ids;
  s << sdk::sql(s, "SELECT export, session FROM pvs_sessions WHERE owner = ?"), use(owner), into(keys), into(ids),
      Poco::Data::Keywords::now;
  std::set<OwnedSession> out;
  for (std::size_t i = 0; i < keys.size(); ++i) out.insert({keys[i], static_cast<std::uint64_t>(ids[i])});
  return out;
}

Claim Ledger::claim(const std::string& key, std::uint64_t session, const std::string& peer, const std::string& vdisk,
                    int version, bool in_place) {
  return submit([this, key, session, peer, vdisk, version, in_place](Poco::Data::Session& s) {
    return claim_step(s, key, session, peer, vdisk, version, in_place);
  });
}

std::optional<Claim> Ledger::claim_step(Poco::Data::Session& s, const std::string& key, std::uint64_t session,
                                        const std::string& peer, const std::string& vdisk, int version, bool in_place) {
  std::int64_t now = now_ms();
  std::string k = key, me = owner_, p = peer, vd = vdisk;
  auto id = static_cast<std::int64_t>(session);
  std::vector<std::string> owners, peers;
  std::vector<std::int64_t> sessions, versions, dirty, since;
  s << sdk::sql(s, "SELECT owner, session, peer, version, dirty, since_ms FROM pvs_sessions WHERE export = ?"), use(k),
      into(owners), into(sessions), into(peers), into(versions), into(dirty), into(since), Poco::Data::Keywords::now;
  if (owners.empty()) {
    Poco::Data::Statement ins(s);
    ins << sdk::sql(s, "INSERT INTO pvs_sessions (export, owner, session, peer, vdisk, version, dirty, since_ms) "
                       "VALUES (?, ?, ?, ?, ?, ?, 0, ?)"),
        use(k), use(me), use(id), use(p), use(vd), use(version), use(now);
    ins.execute();  // a peer inserting first makes this throw: the job is retried on its own
    return Claim{Claim::Kind::granted, version, {}, {}};
  }
  std::string old_owner = owners[0];
  std::int64_t old_session = sessions[0];
  auto replace = [&](int with_version) {
    Poco::Data::Statement up(s);
    up << sdk::sql(s, "UPDATE pvs_sessions SET owner = ?, session = ?, peer = ?, vdisk = ?, version = ?, dirty = 0, "
                      "since_ms = ? WHERE export = ? AND owner = ? AND session = ?"),
        use(me), use(id), use(p), use(vd), use(with_version), use(now), use(k), use(old_owner), use(old_session);
    return up.execute() == 1;
  };
  // Ours: a session this run ended whose row has not gone yet (its release is queued). Boot afresh.
  if (old_owner == owner_) {
    if (!replace(version)) return std::nullopt;
    return Claim{Claim::Kind::granted, version, {}, {}};
  }
  std::vector<std::int64_t> renewed;
  s << sdk::sql(s, "SELECT renewed_ms FROM pvs_owners WHERE owner = ?"), use(old_owner), into(renewed),
      Poco::Data::Keywords::now;
  const std::int64_t last_sign = renewed.empty() ? since[0] : renewed[0];
  const std::string was = owner_instance(old_owner);
  if (now - last_sign < lease_.count()) return Claim{Claim::Kind::held, 0, was, peers[0]};
  if (in_place) {
    if (!replace(version)) return std::nullopt;
    return Claim{Claim::Kind::takeover, version, was, peers[0]};
  }
  if (dirty[0] != 0) {
    // Its writes died with its owner's RAM. Past session_idle the device is taken to have rebooted meanwhile.
    if (now - last_sign < session_idle_.count()) return Claim{Claim::Kind::lost, 0, was, peers[0]};
    if (!replace(version)) return std::nullopt;
    return Claim{Claim::Kind::granted, version, was, peers[0]};
  }
  const int booted = static_cast<int>(versions[0]);
  if (!replace(booted)) return std::nullopt;
  return Claim{Claim::Kind::takeover, booted, was, peers[0]};
}

void Ledger::mark_dirty(const std::string& key, std::uint64_t session) {
  const Claim c = submit([key, session](Poco::Data::Session& s) -> std::optional<Claim> {
    std::string k = key;
    auto id = static_cast<std::int64_t>(session);
    Poco::Data::Statement up(s);
    up << sdk::sql(s, "UPDATE pvs_sessions SET dirty = 1 WHERE export = ? AND session = ?"), use(k), use(id);
    return Claim{up.execute() == 1 ? Claim::Kind::granted : Claim::Kind::held};
  });
  if (c.kind != Claim::Kind::granted)
    throw std::runtime_error("pvs: session of " + key + " is no longer this server's (ended by a boot or reset "
                             "seen elsewhere)");
}

void Ledger::release(const std::string& key, std::uint64_t session) {
  auto s = store_.session();
  std::string k = key;
  auto id = static_cast<std::int64_t>(session);
  s << sdk::sql(s, "DELETE FROM pvs_sessions WHERE export = ? AND session = ?"), use(k), use(id),
      Poco::Data::Keywords::now;
}

std::string Ledger::end_everywhere(const std::string& key, std::chrono::system_clock::time_point seen) {
  auto s = store_.session();
  std::string k = key;
  std::int64_t at = std::chrono::duration_cast<std::chrono::milliseconds>(seen.time_since_epoch()).count();
  std::vector<std::string> owners;
  std::vector<std::int64_t> ids;
  s << sdk::sql(s, "SELECT owner, session FROM pvs_sessions WHERE export = ? AND since_ms <= ?"), use(k), use(at),
      into(owners), into(ids), Poco::Data::Keywords::now;
  if (owners.empty()) return "";
  s << sdk::sql(s, "DELETE FROM pvs_sessions WHERE export = ? AND session = ?"), use(k), use(ids[0]),
      Poco::Data::Keywords::now;
  return owner_instance(owners[0]);
}

std::string Ledger::end_dead_at(const std::string& peer) {
  auto s = store_.session();
  std::string p = peer;
  std::int64_t alive_since = now_ms() - lease_.count();
  std::vector<std::string> keys;
  std::vector<std::int64_t> ids;
  s << sdk::sql(s, "SELECT export, session FROM pvs_sessions WHERE peer = ? AND export NOT LIKE '%@%' AND owner NOT IN "
                   "(SELECT owner FROM pvs_owners WHERE renewed_ms >= ?)"),
      use(p), use(alive_since), into(keys), into(ids), Poco::Data::Keywords::now;
  if (keys.size() != 1) return "";
  std::string k = keys[0];
  s << sdk::sql(s, "DELETE FROM pvs_sessions WHERE export = ? AND session = ?"), use(k), use(ids[0]),
      Poco::Data::Keywords::now;
  return k;
}

}  // namespace deskfarm::pvs
