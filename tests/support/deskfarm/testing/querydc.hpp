#pragma once
// `deskfarm querydc` as end-to-end tests read it.
#include <chrono>
#include <filesystem>
#include <string>

#include <deskfarm/testing/process.hpp>

namespace deskfarm::testing {

/// The collector of `zone` that `bin querydc MANIFEST` prints; "" when the command fails or names none.
inline std::string zone_collector(const std::string& bin, const std::filesystem::path& manifest, const std::string& zone) {
  auto r = run_child({bin, "querydc", manifest.string()}, std::chrono::seconds(10));
  const auto at = r.out.find("\n" + zone + " ");
  if (r.exit_code != 0 || at == std::string::npos) return "";
  auto rest = r.out.substr(at + zone.size() + 2);
  const auto from = rest.find_first_not_of(' ');
  if (from == std::string::npos) return "";
  rest = rest.substr(from);
  return rest.substr(0, rest.find(' '));
}

}  // namespace deskfarm::testing
