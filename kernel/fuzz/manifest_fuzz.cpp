// Fuzzes manifest loading: TOML syntax, deployment keys, includes, overlays, count and ${ENV} expansion.
#include <cstdint>
#include <string_view>

#include "manifest.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto env = [](const std::string& name) -> std::optional<std::string> {
    if (name == "SET") return std::string("value");
    return std::nullopt;
  };
  try {
    // Includes resolve inside a folder that holds nothing, so the fuzzer never reads real files.
    deskfarm::kernel::load_manifest_text(text, "fuzz.toml", env, "/nonexistent-deskfarm-fuzz");
  } catch (const deskfarm::kernel::ValidationError&) {
  }
  return 0;
}
