#pragma once
// The licence ledger in the deployment's data store: one row per session holding a licence, so checkouts survive
// a restart of the licence server. Every call blocks: run it on the blocking pool.
#include <vector>

#include <deskfarm/sdk/store.hpp>

#include "ledger.hpp"

namespace deskfarm::license {

/// Creates or upgrades the tables (sdk::migrate, component "license").
void migrate(sdk::Store& store);
/// Every session recorded, as changes that rebuild the ledger.
std::vector<Change> load(sdk::Store& store);
/// Records `changes` in one transaction (all or none).
void record(sdk::Store& store, const std::vector<Change>& changes);

}  // namespace deskfarm::license
