#include "store.hpp"

#include <Poco/Data/Session.h>
#include <Poco/Data/Transaction.h>

namespace deskfarm::license {

using Poco::Data::Keywords::into;
using Poco::Data::Keywords::now;
using Poco::Data::Keywords::use;

namespace {
const std::vector<sdk::Migration> migrations = {
    {1,
     {"CREATE TABLE license_sessions (farm VARCHAR(128) NOT NULL, session_id VARCHAR(256) NOT NULL, "
      "user_name VARCHAR(256) NOT NULL, since_ms BIGINT NOT NULL, PRIMARY KEY (farm, session_id))"}},
};
}  // namespace

void migrate(sdk::Store& store) {
  auto s = store.session();
  sdk::migrate(s, "license", migrations);
}

std::vector<Change> load(sdk::Store& store) {
  auto s = store.session();
  std::vector<std::string> farms, sessions, users;
  std::vector<Poco::Int64> since;
  s << "SELECT farm, session_id, user_name, since_ms FROM license_sessions", into(farms), into(sessions), into(users),
      into(since), now;
  std::vector<Change> out;
  out.reserve(farms.size());
  for (std::size_t i = 0; i < farms.size(); ++i) out.push_back(Change{true, farms[i], users[i], sessions[i], since[i]});
  return out;
}

void record(sdk::Store& store, const std::vector<Change>& changes) {
  auto s = store.session();
  Poco::Data::Transaction tx(s);
  const std::string del = sdk::sql(s, "DELETE FROM license_sessions WHERE farm = ? AND session_id = ?");
  const std::string ins = sdk::sql(s, "INSERT INTO license_sessions (farm, session_id, user_name, since_ms) VALUES (?, ?, ?, ?)");
  for (const auto& c : changes) {
    std::string farm = c.farm, session = c.session_id, user = c.user;
    Poco::Int64 since = c.since_ms;
    s << del, use(farm), use(session), now;
    if (c.add) s << ins, use(farm), use(session), use(user), use(since), now;
  }
  tx.commit();
}

}  // namespace deskfarm::license
