#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <Poco/JSON/Object.h>

#include "deskfarm/sdk/api.hpp"

extern "C" {
/// Types a manifest value can have, as declared in a plugin's config schema.
enum dk_value_type : std::uint32_t {
  DK_STRING = 1,
  DK_INTEGER = 2,
  DK_FLOAT = 3,  ///< accepts integers too
  DK_BOOLEAN = 4,
  DK_STRING_ARRAY = 5,
  DK_TABLE = 6,  ///< any TOML table, handed over as a JSON object
  DK_ARRAY = 7,  ///< any TOML array, handed over as a JSON array
};

/// One row of a plugin's config schema: it both validates manifests and documents the plugin.
struct dk_config_key {
  const char* key;
  std::uint32_t type;        ///< a dk_value_type
  const char* default_toml;  ///< default as a TOML literal ("5", "\"127.0.0.1:69\"", "[]"); nullptr = required
  const char* description;
};
}

namespace deskfarm::sdk {

/// Name of a dk_value_type as manifests spell it ("string", "integer", …).
DESKFARM_SDK_API const char* type_name(std::uint32_t type);

/// Thrown by a plugin constructor for a value that has the right type but is not acceptable;
/// the kernel reports it at the key's file:line:column.
class DESKFARM_SDK_API ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string key, const std::string& message) : std::runtime_error(message), key_(std::move(key)) {}
  const std::string& key() const { return key_; }

 private:
  std::string key_;
};

/// An instance's validated configuration: every schema key is present (defaults filled in) with the
/// declared type, and no other key exists.
class DESKFARM_SDK_API Config {
 public:
  explicit Config(Poco::JSON::Object::Ptr values);
  std::string string(const std::string& key) const;
  std::int64_t integer(const std::string& key) const;
  double number(const std::string& key) const;
  bool boolean(const std::string& key) const;
  std::vector<std::string> strings(const std::string& key) const;
  Poco::JSON::Object::Ptr table(const std::string& key) const;
  Poco::JSON::Array::Ptr array(const std::string& key) const;
  /// All values, as JSON.
  const Poco::JSON::Object::Ptr& json() const { return values_; }

 private:
  Poco::JSON::Object::Ptr values_;
};

}  // namespace deskfarm::sdk
