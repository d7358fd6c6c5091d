#pragma once
#include <memory>

#include <Poco/Dynamic/Var.h>
#include <toml++/toml.h>

#include "deskfarm/sdk/config.hpp"
#include "deskfarm/sdk/plugin.hpp"
#include "diagnostics.hpp"
#include "manifest.hpp"

namespace deskfarm::kernel {

/// Checks an instance's manifest keys against its plugin's config schema: every key known and of its
/// type, every required key present. Problems go to `diags` at the key's position; the result holds the
/// valid values with the schema's defaults filled in.
std::unique_ptr<sdk::Config> validate_config(const InstanceSpec& spec, const dk_plugin_descriptor& plugin, Diagnostics& diags);

/// Converts a validated TOML value to JSON (strings, numbers, booleans, arrays, tables; dates as text).
Poco::Dynamic::Var to_json(const toml::node& node);

}  // namespace deskfarm::kernel
