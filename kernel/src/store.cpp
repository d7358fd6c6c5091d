#include "store.hpp"

#include <stdexcept>

#include <Poco/Data/PostgreSQL/Connector.h>
#include <Poco/Data/SQLite/Connector.h>

namespace deskfarm::kernel {

namespace {
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
  if (url.starts_with("postgresql://") || url.starts_with("postgres://")) return {"postgresql", url};
  throw std::invalid_argument("data_store '" + url +
                              "' is neither \"sqlite:PATH\" nor \"postgresql://user@host:port/db\"");
}

KernelStore::KernelStore(std::string url) : url_(std::move(url)), parsed_(StoreUrl::parse(url_)) {}

Poco::Data::Session KernelStore::session() {
  std::lock_guard lock(mutex_);
  if (!pool_) {
    register_connectors();
    if (parsed_.connector == "sqlite") {
      const std::filesystem::path file(parsed_.connection);
      if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path());
    }
    pool_ = std::make_unique<Poco::Data::SessionPool>(parsed_.connector, parsed_.connection, 1, 64);
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
