#pragma once
// The farm's static data in the data store (table ima_servers) and each server's local host cache of it: an
// SQLite file of its own that keeps the server working while the data store is unreachable. Every call opens its
// own sessions and blocks: call them on the blocking pool (the plugin's start() only for a corrupt cache, when it
// cannot serve without a rebuild anyway).
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <Poco/Data/Session.h>

#include <deskfarm/interfaces/ima/ima.hpp>

namespace deskfarm::ima {

/// Creates or updates the ima tables of the data store (sdk::migrate, component "ima").
void migrate_store(Poco::Data::Session& store);
/// Inserts or replaces one server's record (one transaction).
void write_server(Poco::Data::Session& store, const interfaces::ima::Server& server, std::int64_t now_ms);
/// Every server record of `farm`, sorted by instance.
std::vector<interfaces::ima::Server> read_farm(Poco::Data::Session& store, const std::string& farm);

/// What a cache file holds.
struct CacheContent {
  std::vector<interfaces::ima::Server> servers;
  std::int64_t refreshed_ms = 0;  ///< the last good refresh (deployment time, ms since the epoch); 0: never
  std::int64_t created_ms = 0;    ///< when the file was made (the age of a cache never refreshed counts from here)
};

/// A cache file that is not an SQLite database or lacks the cache's schema.
class CorruptCache : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class LocalHostCache {
 public:
  explicit LocalHostCache(std::filesystem::path file);
  const std::filesystem::path& file() const { return file_; }
  /// Reads the file, creating an empty cache (created_ms = now_ms) when there is none; throws CorruptCache.
  CacheContent open(std::int64_t now_ms) const;
  /// Replaces the servers and the refresh time in one transaction.
  void replace(const std::vector<interfaces::ima::Server>& servers, std::int64_t refreshed_ms) const;
  /// Deletes the file (and its journal) and writes a new one holding `servers`.
  void recreate(const std::vector<interfaces::ima::Server>& servers, std::int64_t refreshed_ms) const;

 private:
  Poco::Data::Session session() const;
  void create(Poco::Data::Session& s, std::int64_t now_ms) const;
  std::filesystem::path file_;
};

}  // namespace deskfarm::ima
