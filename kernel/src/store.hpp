#pragma once
#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include <Poco/Data/SessionPool.h>

#include "deskfarm/sdk/log.hpp"
#include "deskfarm/sdk/metrics.hpp"
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
/// Writes and consistent reads go to the primary (`data_store`); read sessions go to the read replica
/// (`data_store_replica`, PostgreSQL only) while it answers, else to a read-only pool on the primary.
class KernelStore final : public sdk::Store {
 public:
  /// How long a replica that failed is left alone before a read session tries it again.
  static constexpr std::chrono::seconds replica_retry{5};
  using Report = std::function<void(sdk::LogLevel, const std::string&)>;

  explicit KernelStore(std::string url, std::string replica_url = {});
  Poco::Data::Session session() override;
  Poco::Data::Session read_session() override;
  std::string connector() const override;
  const std::string& url() const { return url_; }
  /// Where a replica going down or coming back is reported (one line each), and the counter of read sessions the
  /// primary answered because the replica did not. Set before any session is taken.
  void observe(Report report, sdk::Counter* fallbacks) {
    report_ = std::move(report);
    fallbacks_counter_ = fallbacks;
  }
  /// Read sessions answered by the primary because the replica was down.
  std::uint64_t replica_fallbacks() const { return fallbacks_.load(); }

 private:
  /// One lazily opened pool of sessions on one server.
  struct Pool {
    StoreUrl target;
    bool read_only = false;
    std::unique_ptr<Poco::Data::SessionPool> pool;
  };
  void open(Pool& p);
  Poco::Data::Session take(Pool& p);
  Poco::Data::Session read_on_replica_or_primary();
  std::string url_;
  std::string replica_url_;
  std::mutex mutex_;  // guards the creation of the primary's pools
  Pool primary_;
  Pool primary_read_;
  std::mutex replica_mutex_;  // guards the replica's pool creation and its state below
  Pool replica_;
  bool replica_down_ = false;
  std::chrono::steady_clock::time_point replica_retry_at_{};
  Report report_;
  sdk::Counter* fallbacks_counter_ = nullptr;
  std::atomic<std::uint64_t> fallbacks_{0};
};

}  // namespace deskfarm::kernel
