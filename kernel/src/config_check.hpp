#pragma once
#include <functional>
#include <string>
#include <vector>

#include <toml++/toml.h>

#include "deskfarm/sdk/config.hpp"
#include "deskfarm/sdk/value.hpp"
#include "diagnostics.hpp"

namespace deskfarm::kernel {

/// Checks a plugin's schema rows as loaded from its descriptor (names, types, defaults, ranges, nested
/// schemas); adds a diagnostic at `at` for each fault.
void check_schema(const dk_config_key* keys, std::uint32_t count, const Location& at, Diagnostics& diags,
                  const std::string& prefix = {});

/// Where a config value was written, for messages about it.
struct ValueSite {
  const Location* key;    ///< where the key was written (unknown keys)
  const Location* value;  ///< where its value was written
};

/// Names the instance and plugin in messages about a config.
struct ConfigContext {
  std::string instance;
  std::string plugin;
  std::string plugin_and_instance() const { return "plugin " + plugin + " (instance " + instance + ")"; }
};

/// Validates `table` against `keys`: every key known, of its type, in its range and choices, tables of a table
/// array checked against their own schema, required keys present; fills in defaults. Returns the values as a
/// Value table. `where(key)` locates a top-level key; nested faults are reported at their top-level value with
/// a path ("vdisks[2].size_mb").
sdk::Value check_config(const toml::table& table, const dk_config_key* keys, std::uint32_t count,
                        const std::function<ValueSite(const std::string&)>& where, const ConfigContext& context,
                        Diagnostics& diags);

/// A schema limit or a value as text: integral numbers in full, others with all their digits.
std::string number_text(double v);

/// A TOML value as an sdk::Value (dates and times as text).
sdk::Value to_value(const toml::node& node);

/// The default of a schema row as a Value: the row's TOML literal parsed, and for a table (array) with a schema
/// the keys its tables leave out filled with their own defaults, as in a manifest's tables.
sdk::Value default_value(const dk_config_key& key);

/// Replaces every secret (DK_SECRET, also inside table arrays) of `values` with its mask.
sdk::Value mask_secrets(const sdk::Value& values, const dk_config_key* keys, std::uint32_t count);

}  // namespace deskfarm::kernel
