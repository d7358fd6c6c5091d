#include "lhc.hpp"

#include <mutex>

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Transaction.h>
#include <Poco/Exception.h>

#include <deskfarm/sdk/store.hpp>

namespace deskfarm::ima {

using namespace Poco::Data::Keywords;
namespace api = interfaces::ima;

namespace {

const std::vector<sdk::Migration> migrations = {
    {1,
     {"CREATE TABLE ima_servers (farm VARCHAR(64) NOT NULL, instance VARCHAR(128) NOT NULL, zone VARCHAR(64) NOT NULL, "
      "host_id BIGINT NOT NULL, preference VARCHAR(16) NOT NULL, version VARCHAR(64) NOT NULL, updated_ms BIGINT NOT NULL, "
      "PRIMARY KEY (farm, instance))"}},
};

constexpr const char* kCacheSchema = "1";

/// Columns read into parallel vectors (Poco binds vectors of plain types to a whole result set at once).
struct Columns {
  std::vector<std::string> farm, instance, zone, preference, version;
  std::vector<Poco::Int64> host_id;
  std::vector<api::Server> servers() const {
    std::vector<api::Server> out;
    out.reserve(instance.size());
    for (std::size_t i = 0; i < instance.size(); ++i)
      out.push_back(api::Server{farm[i], instance[i], zone[i], host_id[i], preference[i], version[i]});
    return out;
  }
};

std::string message(const std::exception& e) {
  if (auto* p = dynamic_cast<const Poco::Exception*>(&e)) return p->displayText();
  return e.what();
}

}  // namespace

void migrate_store(Poco::Data::Session& store) {
  // Servers started together migrate the same store at once: the loser retries and finds the table in place.
  for (int attempt = 1;; ++attempt) {
    try {
      sdk::migrate(store, "ima", migrations);
      return;
    } catch (const std::exception&) {
      if (attempt == 3) throw;
    }
  }
}

void write_server(Poco::Data::Session& store, const api::Server& server, std::int64_t now_ms) {
  std::string farm = server.farm, instance = server.instance, zone = server.zone, preference = server.preference,
              version = server.version;
  Poco::Int64 host_id = server.host_id, updated = now_ms;
  Poco::Data::Transaction tx(store);
  store << sdk::sql(store, "DELETE FROM ima_servers WHERE farm = ? AND instance = ?"), use(farm), use(instance), now;
  store << sdk::sql(store,
                    "INSERT INTO ima_servers (farm, instance, zone, host_id, preference, version, updated_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)"),
      use(farm), use(instance), use(zone), use(host_id), use(preference), use(version), use(updated), now;
  tx.commit();
}

std::vector<api::Server> read_farm(Poco::Data::Session& store, const std::string& farm) {
  Columns c;
  std::string f = farm;
  store << sdk::sql(store,
                    "SELECT farm, instance, zone, host_id, preference, version FROM ima_servers WHERE farm = ? "
                    "ORDER BY instance"),
      use(f), into(c.farm), into(c.instance), into(c.zone), into(c.host_id), into(c.preference), into(c.version), now;
  return c.servers();
}

LocalHostCache::LocalHostCache(std::filesystem::path file) : file_(std::move(file)) {}

Poco::Data::Session LocalHostCache::session() const {
  static std::once_flag once;
  std::call_once(once, [] { Poco::Data::SQLite::Connector::registerConnector(); });
  if (file_.has_parent_path()) std::filesystem::create_directories(file_.parent_path());
  return Poco::Data::Session("SQLite", file_.string());
}

void LocalHostCache::create(Poco::Data::Session& s, std::int64_t now_ms) const {
  Poco::Data::Transaction tx(s);
  s << "CREATE TABLE lhc_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", now;
  s << "CREATE TABLE lhc_servers (farm TEXT NOT NULL, instance TEXT PRIMARY KEY, zone TEXT NOT NULL, "
       "host_id INTEGER NOT NULL, preference TEXT NOT NULL, version TEXT NOT NULL)",
      now;
  std::string created = std::to_string(now_ms);
  s << "INSERT INTO lhc_meta (key, value) VALUES ('schema', ?), ('created_ms', ?), ('refreshed_ms', '0')",
      bind(std::string(kCacheSchema)), use(created), now;
  tx.commit();
}

CacheContent LocalHostCache::open(std::int64_t now_ms) const {
  const bool existed = std::filesystem::exists(file_);
  try {
    auto s = session();
    if (!existed) create(s, now_ms);
    std::vector<std::string> keys, values;
    s << "SELECT key, value FROM lhc_meta", into(keys), into(values), now;
    CacheContent out;
    std::string schema;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == "schema") schema = values[i];
      else if (keys[i] == "created_ms") out.created_ms = std::stoll(values[i]);
      else if (keys[i] == "refreshed_ms") out.refreshed_ms = std::stoll(values[i]);
    }
    if (schema != kCacheSchema)
      throw CorruptCache("schema '" + schema + "' where the cache has '" + kCacheSchema + "'");
    Columns c;
    s << "SELECT farm, instance, zone, host_id, preference, version FROM lhc_servers ORDER BY instance", into(c.farm),
        into(c.instance), into(c.zone), into(c.host_id), into(c.preference), into(c.version), now;
    out.servers = c.servers();
    return out;
  } catch (const CorruptCache&) {
    throw;
  } catch (const std::exception& e) {
    // Not SQLite ("file is not a database"), a table missing, a value that is no number: all mean the same here.
    throw CorruptCache(message(e));
  }
}

void LocalHostCache::replace(const std::vector<api::Server>& servers, std::int64_t refreshed_ms) const {
  auto s = session();
  Poco::Data::Transaction tx(s);
  s << "DELETE FROM lhc_servers", now;
  Columns c;
  for (const auto& v : servers) {
    c.farm.push_back(v.farm);
    c.instance.push_back(v.instance);
    c.zone.push_back(v.zone);
    c.host_id.push_back(v.host_id);
    c.preference.push_back(v.preference);
    c.version.push_back(v.version);
  }
  if (!servers.empty())  // one statement, executed once per row from the bound vectors
    s << "INSERT INTO lhc_servers (farm, instance, zone, host_id, preference, version) VALUES (?, ?, ?, ?, ?, ?)",
        use(c.farm), use(c.instance), use(c.zone), use(c.host_id), use(c.preference), use(c.version), now;
  std::string refreshed = std::to_string(refreshed_ms);
  s << "UPDATE lhc_meta SET value = ? WHERE key = 'refreshed_ms'", use(refreshed), now;
  tx.commit();
}

void LocalHostCache::recreate(const std::vector<api::Server>& servers, std::int64_t refreshed_ms) const {
  for (const char* suffix : {"", "-journal", "-wal", "-shm"}) std::filesystem::remove(file_.string() + suffix);
  {
    auto s = session();
    create(s, refreshed_ms);
  }
  replace(servers, refreshed_ms);
}

}  // namespace deskfarm::ima
