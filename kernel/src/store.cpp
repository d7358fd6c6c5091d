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

KernelStore::KernelStore(std::string url) : url_(std::move(url)), parsed_(StoreUrl::parse(url_)) {}

Poco::Data::Session KernelStore::session() {
  try {
    return open_session();
  } catch (const Poco::Exception& e) {
    // Poco's what() is only the class name; users need the reason and the store.
    throw std::runtime_error("data store " + redact_url(url_) + ": " + e.displayText());
  }
}

Poco::Data::Session KernelStore::open_session() {
  std::lock_guard lock(mutex_);
  if (!pool_) {
    register_connectors();
    if (parsed_.connector == "sqlite") {
      const std::filesystem::path file(parsed_.connection);
      if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path());
    }
    pool_ = std::make_unique<Poco::Data::SessionPool>(parsed_.connector, parsed_.connection, 1, 64);
    if (parsed_.connector == "sqlite") {
      // Write-ahead log: readers never wait for a writer, and a commit is one fsync of the log instead of the
      // rollback journal's several. Kept in the file; PRAGMA synchronous stays FULL (a commit survives power loss).
      auto first = pool_->get();
      first << "PRAGMA busy_timeout = 5000", Poco::Data::Keywords::now;
      std::string mode;
      first << "PRAGMA journal_mode = WAL", Poco::Data::Keywords::into(mode), Poco::Data::Keywords::now;
    }
  }
  auto s = pool_->get();
  if (parsed_.connector == "sqlite") {
    // Instances write from several workers; wait for the lock instead of failing at once.
    s << "PRAGMA busy_timeout = 5000", Poco::Data::Keywords::now;
  }
  return s;
}

std::string KernelStore::connector() const { return parsed_.connector == "sqlite" ? "SQLite" : "PostgreSQL"; }

}  // namespace deskfarm::kernel
