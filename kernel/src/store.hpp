#pragma once
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

#include <Poco/Data/SessionPool.h>

#include "deskfarm/sdk/store.hpp"

namespace deskfarm::kernel {

/// A data store location parsed from the manifest: "sqlite:PATH" or "postgresql://…" (a libpq URI).
struct StoreUrl {
  std::string connector;   ///< Poco connector key: "sqlite" or "postgresql"
  std::string connection;  ///< what the connector opens
  /// Throws std::invalid_argument naming what is wrong.
  static StoreUrl parse(const std::string& url);
};

/// The deployment's data store, opened on first use so deployments that store nothing create no file.
class KernelStore final : public sdk::Store {
 public:
  explicit KernelStore(std::string url);
  Poco::Data::Session session() override;
  std::string connector() const override;
  const std::string& url() const { return url_; }

 private:
  Poco::Data::Session open_session();
  std::string url_;
  StoreUrl parsed_;
  std::mutex mutex_;
  std::unique_ptr<Poco::Data::SessionPool> pool_;
};

}  // namespace deskfarm::kernel
