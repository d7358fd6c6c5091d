#include "ledger.hpp"

namespace deskfarm::license {

void Ledger::set_farm(const std::string& farm, std::int64_t total) { farms_[farm].total = total; }

void Ledger::add(Farm& f, const std::string& user, const std::string& session) {
  f.sessions[session] = user;
  f.users[user].insert(session);
}

void Ledger::remove(Farm& f, const std::string& session) {
  const auto s = f.sessions.find(session);
  if (s == f.sessions.end()) return;
  const auto u = f.users.find(s->second);
  if (u != f.users.end()) {
    u->second.erase(session);
    if (u->second.empty()) f.users.erase(u);
  }
  f.sessions.erase(s);
}

api::CheckoutReply Ledger::checkout(const api::Checkout& req, std::int64_t now_ms, std::vector<Change>& changes) {
  api::CheckoutReply r;
  const auto it = farms_.find(req.farm);
  if (it == farms_.end()) {
    r.code = api::kUnknownFarm;
    r.reason = "farm '" + req.farm + "' has no licences on this licence server; add it to the server's farms";
    return r;
  }
  Farm& f = it->second;
  r.total = f.total;
  const auto known = f.sessions.find(req.session_id);
  if (known != f.sessions.end()) {
    if (known->second != req.user) {
      r.code = api::kSessionConflict;
      r.reason = "session '" + req.session_id + "' of farm '" + req.farm + "' is checked out to user '" + known->second +
                 "', not '" + req.user + "'; give each session a farm-wide unique id";
      r.in_use = static_cast<std::int64_t>(f.users.size());
      return r;
    }
    r.granted = true;  // the same checkout again (a retried request): nothing changes
    r.in_use = static_cast<std::int64_t>(f.users.size());
    return r;
  }
  const bool holds = f.users.contains(req.user);
  if (!holds && static_cast<std::int64_t>(f.users.size()) >= f.total) {
    ++f.refused;
    r.code = api::kNoLicenses;
    r.reason = "farm '" + req.farm + "': all " + std::to_string(f.total) + " licences are in use by other users; user '" +
               req.user + "' gets one when another user's last session logs off, or add licences";
    r.in_use = static_cast<std::int64_t>(f.users.size());
    return r;
  }
  add(f, req.user, req.session_id);
  changes.push_back(Change{true, req.farm, req.user, req.session_id, now_ms});
  r.granted = true;
  r.new_license = !holds;
  r.in_use = static_cast<std::int64_t>(f.users.size());
  return r;
}

api::CheckinReply Ledger::checkin(const api::Checkin& req, std::vector<Change>& changes) {
  api::CheckinReply r;
  for (auto& [name, f] : farms_) {
    if (!req.farm.empty() && name != req.farm) continue;
    const auto s = f.sessions.find(req.session_id);
    if (s == f.sessions.end()) continue;
    const std::string user = s->second;
    changes.push_back(Change{false, name, user, req.session_id, 0});
    remove(f, req.session_id);
    const auto u = f.users.find(user);
    r.known = true;
    r.sessions_left = u == f.users.end() ? 0 : static_cast<std::int64_t>(u->second.size());
    r.released = r.sessions_left == 0;
    r.in_use = static_cast<std::int64_t>(f.users.size());
    return r;
  }
  if (const auto f = farms_.find(req.farm); f != farms_.end()) r.in_use = static_cast<std::int64_t>(f->second.users.size());
  return r;
}

void Ledger::apply(const Change& c) {
  Farm& f = farms_[c.farm];
  if (c.add) {
    remove(f, c.session_id);
    add(f, c.user, c.session_id);
  } else {
    remove(f, c.session_id);
  }
}

void Ledger::undo(const Change& c) {
  Change inverse = c;
  inverse.add = !c.add;
  apply(inverse);
}

std::vector<api::FarmLicenses> Ledger::farms() const {
  std::vector<api::FarmLicenses> out;
  for (const auto& [name, f] : farms_)
    out.push_back(api::FarmLicenses{name, f.total, static_cast<std::int64_t>(f.users.size()),
                                    static_cast<std::int64_t>(f.sessions.size()), f.refused});
  return out;
}

std::int64_t Ledger::in_use(const std::string& farm) const {
  const auto f = farms_.find(farm);
  return f == farms_.end() ? 0 : static_cast<std::int64_t>(f->second.users.size());
}

}  // namespace deskfarm::license
