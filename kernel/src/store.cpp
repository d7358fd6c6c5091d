#include "store.hpp"

#include <stdexcept>

#include <Poco/Data/PostgreSQL/Connector.h>
#include <Poco/Data/SQLite/Connector.h>
#include <Poco/URI.h>

#include "redact.hpp"

namespace deskfarm::kernel {

namespace {
// libpq keyword value, quoted when it needs to be.
std::string quoted(const std::string& value) {
  if (!value.empty() && value.find_first_of(" '\\") == std::string::npos) return value;
  std::string out = "'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

// Poco's PostgreSQL connector takes "key=value" pairs, not URLs: translate, decoding %-escapes.
std::string libpq_keywords(const std::string& url) {
  Poco::URI uri;
  try {
    uri = Poco::URI(url);
  } catch (const Poco::Exception& e) {
    throw std::invalid_argument("data_store '" + redact_url(url) + "' is not a valid URL: " + e.displayText());
  }
  std::string out;
  auto add = [&](const char* key, const std::string& value) {
    if (value.empty()) return;
    if (!out.empty()) out += ' ';
    out += std::string(key) + "=" + quoted(value);
  };
  add("host", uri.getHost());
  if (uri.getPort() != 0) add("port", std::to_string(uri.getPort()));
  const std::string info = uri.getUserInfo();
  const auto colon = info.find(':');
  std::string user, password;  // URI::decode appends
  Poco::URI::decode(info.substr(0, colon), user);
  if (colon != std::string::npos) Poco::URI::decode(info.substr(colon + 1), password);
  add("user", user);
  add("password", password);
  std::string db = uri.getPath();
  if (!db.empty() && db.front() == '/') db.erase(0, 1);
  add("dbname", db);
  for (const auto& [k, v] : uri.getQueryParameters()) add(k.c_str(), v);
  if (out.empty()) throw std::invalid_argument("data_store '" + redact_url(url) + "' names no server");
  return out;
}

void register_connectors() {
  static std::once_flag once;
  std::call_once(once, [] {
    Poco::Data::SQLite::Connector::registerConnector();
    Poco::Data::PostgreSQL::Connector::registerConnector();
  });
}
}  // namespace

StoreUrl StoreUrl::parse(const std::string& url) {
  if (url.starts_with("sqlite:")) {
    std::string path = url.substr(7);
    if (path.empty()) throw std::invalid_argument("data_store 'sqlite:' needs a file path, e.g. \"sqlite:var/pilot/datastore.db\"");
    return {"sqlite", path};
  }
  if (url.starts_with("postgresql://") || url.starts_with("postgres://")) return {"postgresql", libpq_keywords(url)};
  throw std::invalid_argument("data_store '" + redact_url(url) +
                              "' is neither \"sqlite:PATH\" nor \"postgresql://user@host:port/db\"");
}

KernelStore::KernelStore(std::string url, std::string replica_url)
    : url_(std::move(url)), replica_url_(std::move(replica_url)) {
  primary_.target = StoreUrl::parse(url_);
  primary_read_ = {primary_.target, true, nullptr};
  if (replica_url_.empty()) return;
  StoreUrl replica = StoreUrl::parse(replica_url_);
  if (replica.connector != "postgresql" || primary_.target.connector != "postgresql")
    throw std::invalid_argument("data_store_replica '" + redact_url(replica_url_) +
                                "': read replicas are PostgreSQL streaming replicas of a PostgreSQL data_store; "
                                "remove data_store_replica or make both postgresql:// URLs");
  // A replica that does not answer must not hold a read for libpq's default (no limit): reads fall back instead.
  if (replica.connection.find("connect_timeout=") == std::string::npos) replica.connection += " connect_timeout=5";
  replica_ = {std::move(replica), true, nullptr};
}

Poco::Data::Session KernelStore::session() {
  try {
    std::lock_guard lock(mutex_);
    open(primary_);
    return take(primary_);
  } catch (const Poco::Exception& e) {
    // Poco's what() is only the class name; users need the reason and the store.
    throw std::runtime_error("data store " + redact_url(url_) + ": " + e.displayText());
  }
}

Poco::Data::Session KernelStore::read_session() {
  try {
    return read_on_replica_or_primary();
  } catch (const Poco::Exception& e) {
    throw std::runtime_error("data store " + redact_url(url_) + " (read session): " + e.displayText());
  }
}

Poco::Data::Session KernelStore::read_on_replica_or_primary() {
  if (!replica_url_.empty()) {
    const auto now = std::chrono::steady_clock::now();
    bool try_replica = false;
    {
      std::lock_guard lock(replica_mutex_);
      try_replica = !replica_down_ || now >= replica_retry_at_;
      if (try_replica) open(replica_);
    }
    if (try_replica) {
      // Not under a lock: a replica that hangs (connect_timeout) must not hold up writers or other readers.
      std::string why;
      try {
        auto s = take(replica_);
        // A pooled connection to a replica that stopped since looks good until used: one round trip finds out.
        s << "SELECT 1", Poco::Data::Keywords::now;
        std::lock_guard lock(replica_mutex_);
        if (replica_down_ && report_)
          report_(sdk::LogLevel::info, "read replica " + redact_url(replica_url_) + " answers again: read sessions use it");
        replica_down_ = false;
        return s;
      } catch (const Poco::Exception& e) {
        why = e.displayText();
      }
      std::lock_guard lock(replica_mutex_);
      if (!replica_down_ && report_)
        report_(sdk::LogLevel::warning, "read replica " + redact_url(replica_url_) + " does not answer (" + why +
                                            "): read sessions go to the primary, the replica is tried again every " +
                                            std::to_string(replica_retry.count()) + " s");
      replica_down_ = true;
      replica_retry_at_ = now + replica_retry;
    }
    fallbacks_.fetch_add(1);
    if (fallbacks_counter_) fallbacks_counter_->inc();
  }
  std::lock_guard lock(mutex_);
  open(primary_read_);
  return take(primary_read_);
}

// Called with the pool's mutex held: creates the pool on first use (no connection is made here).
void KernelStore::open(Pool& p) {
  if (p.pool) return;
  const bool sqlite = p.target.connector == "sqlite";
  register_connectors();
  if (sqlite) {
    const std::filesystem::path file(p.target.connection);
    if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path());
  }
  std::string connection = p.target.connection;
  // Read-only on the server, so a write through a read session fails the same way on the primary as on a
  // replica, and a plugin that writes there by mistake learns it in every deployment, not only in one with a replica.
  if (p.read_only && !sqlite) connection += " options=--default_transaction_read_only=on";  // no space: Poco splits on it
  p.pool = std::make_unique<Poco::Data::SessionPool>(p.target.connector, connection, 1, 64);
  if (sqlite && !p.read_only) {
    // Write-ahead log: readers never wait for a writer, and a commit is one fsync of the log instead of the
    // rollback journal's several. Kept in the file; PRAGMA synchronous stays FULL (a commit survives power loss).
    auto first = p.pool->get();
    first << "PRAGMA busy_timeout = 5000", Poco::Data::Keywords::now;
    std::string mode;
    first << "PRAGMA journal_mode = WAL", Poco::Data::Keywords::into(mode), Poco::Data::Keywords::now;
  }
}

Poco::Data::Session KernelStore::take(Pool& p) {
  auto s = p.pool->get();
  if (p.target.connector == "sqlite") {
    // Instances write from several workers; wait for the lock instead of failing at once.
    s << "PRAGMA busy_timeout = 5000", Poco::Data::Keywords::now;
    // The read pool's connections are its own, so query_only never reaches a writer's session.
    if (p.read_only) s << "PRAGMA query_only = ON", Poco::Data::Keywords::now;
  }
  return s;
}

std::string KernelStore::connector() const { return primary_.target.connector == "sqlite" ? "SQLite" : "PostgreSQL"; }

}  // namespace deskfarm::kernel
