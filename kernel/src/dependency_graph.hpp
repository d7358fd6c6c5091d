#pragma once
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "diagnostics.hpp"

namespace deskfarm::kernel {

/// One instance as the dependency graph sees it.
struct DependencyNode {
  std::string name;
  std::string plugin;
  Location where;
  std::vector<std::pair<std::string, Location>> requires_instances;  ///< explicit `requires`, with positions
  std::vector<std::string> provides;                                ///< roles the plugin provides
  std::vector<std::string> requires_roles;                          ///< roles the plugin needs
  bool plugin_loaded = true;  ///< false when the plugin could not be loaded: its roles are unknown
};

/// The start order (indices into `nodes`): every instance after the ones it requires, directly or
/// through a role another instance provides; otherwise stable by manifest position. Unknown
/// instances, self-requirements, missing roles and cycles (named as a path) go to `diags`.
std::vector<std::size_t> dependency_order(const std::vector<DependencyNode>& nodes, Diagnostics& diags);

}  // namespace deskfarm::kernel
