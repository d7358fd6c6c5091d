#pragma once
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <Poco/Data/Session.h>

#include "deskfarm/sdk/api.hpp"

namespace deskfarm::sdk {

/// One step of a plugin's schema: applied once, in version order, inside a transaction.
struct Migration {
  int version;
  std::vector<std::string> statements;
};

/// The deployment's data store (the IMA data store): SQLite by default, PostgreSQL for real farms.
class DESKFARM_SDK_API Store {
 public:
  virtual ~Store();
  /// A session from the deployment's pool; use it on your executor, then let it go.
  virtual Poco::Data::Session session() = 0;
  /// A read-only session for reads that may be slightly stale: on the deployment's read replica
  /// (`data_store_replica`) when one is configured and answers, on the primary otherwise (a replica that is down is
  /// logged once and counted in deskfarm_store_replica_fallbacks_total). Never for a read that must see a write just
  /// made: that read goes through session(). Every write through it fails, on the primary too (error_text says so).
  virtual Poco::Data::Session read_session() = 0;
  /// "SQLite" or "PostgreSQL".
  virtual std::string connector() const = 0;
};

/// Writes `sql`'s `?` placeholders in the session's own style: unchanged for SQLite, `$1, $2, …` for
/// PostgreSQL (whose Poco connector does not translate them). `?` inside quoted literals is left alone.
DESKFARM_SDK_API std::string sql(const Poco::Data::Session& session, std::string_view text);

/// Brings `component`'s tables up to the newest migration; records versions in deskfarm_schema.
/// Returns the version now in force. Throws with the failing statement on error (nothing half-applied).
DESKFARM_SDK_API int migrate(Poco::Data::Session& session, std::string_view component,
                             std::span<const Migration> migrations);

}  // namespace deskfarm::sdk
