#pragma once
// The licence ledger: which users hold a licence of which farm, through which sessions. Pure and in memory (the
// plugin keeps it on its executor and writes every change to the data store, store.hpp); one licence per user
// per farm however many sessions, taken at the first session and given back with the last.
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <deskfarm/interfaces/license/license.hpp>

namespace deskfarm::license {

namespace api = deskfarm::interfaces::license;

/// One change to a farm's sessions, as the data store records it.
struct Change {
  bool add = true;  ///< false: the session ended
  std::string farm;
  std::string user;
  std::string session_id;
  std::int64_t since_ms = 0;
};

class Ledger {
 public:
  /// Declares a farm with `total` licences (from the manifest); sessions loaded for a farm not declared stay
  /// counted under a total of 0, so no new user of it is granted.
  void set_farm(const std::string& farm, std::int64_t total);
  /// Decides a checkout and records it; the changes the data store must record are appended to `changes`
  /// (none for a refusal or a session already checked out).
  api::CheckoutReply checkout(const api::Checkout& req, std::int64_t now_ms, std::vector<Change>& changes);
  /// Ends a session (any farm when req.farm is empty); an unknown session is no error (known = false).
  api::CheckinReply checkin(const api::Checkin& req, std::vector<Change>& changes);
  /// Applies a recorded change (loading the data store) or its inverse (undoing one the store refused).
  void apply(const Change& c);
  void undo(const Change& c);
  std::vector<api::FarmLicenses> farms() const;
  std::int64_t in_use(const std::string& farm) const;
  bool has_farm(const std::string& farm) const { return farms_.contains(farm); }

 private:
  struct Farm {
    std::int64_t total = 0;
    std::map<std::string, std::set<std::string>> users;  // user → sessions
    std::map<std::string, std::string> sessions;         // session id → user
    std::int64_t refused = 0;
  };
  void add(Farm& f, const std::string& user, const std::string& session);
  void remove(Farm& f, const std::string& session);
  std::map<std::string, Farm> farms_;
};

}  // namespace deskfarm::license
