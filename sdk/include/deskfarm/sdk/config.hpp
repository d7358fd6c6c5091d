#pragma once
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "deskfarm/sdk/api.hpp"
#include "deskfarm/sdk/record.hpp"
#include "deskfarm/sdk/value.hpp"

extern "C" {
/// Types a manifest value can have, as declared in a plugin's config schema.
enum dk_value_type : std::uint32_t {
  DK_STRING = 1,
  DK_INTEGER = 2,
  DK_FLOAT = 3,  ///< accepts integers too
  DK_BOOLEAN = 4,
  DK_STRING_ARRAY = 5,
  DK_TABLE = 6,        ///< any TOML table (or, with `fields`, a table with that schema)
  DK_ARRAY = 7,        ///< any TOML array
  DK_SECRET = 8,       ///< a string that is never shown: masked in logs, errors, `describe` and /status
  DK_TABLE_ARRAY = 9,  ///< an array of tables, each checked against `fields`
};

/// Bits of dk_config_key::flags.
enum dk_key_flags : std::uint32_t {
  DK_HAS_RANGE = 1,  ///< integers and floats must lie in [min, max]
};

/// One row of a plugin's config schema: it validates manifests (in `deskfarm check`, before anything starts)
/// and documents the plugin (`deskfarm describe`). Build rows with sdk::option(), not by hand.
struct dk_config_key {
  const char* key;
  std::uint32_t type;        ///< a dk_value_type
  std::uint32_t flags;       ///< dk_key_flags
  const char* default_toml;  ///< default as a TOML literal ("5", "\"127.0.0.1:69\"", "[]"); nullptr = required
  const char* description;
  double min;                    ///< with DK_HAS_RANGE
  double max;                    ///< with DK_HAS_RANGE
  const char* one_of;            ///< allowed strings separated by '|' ("standard|private"), or nullptr
  const dk_config_key* fields;   ///< schema of each table (DK_TABLE, DK_TABLE_ARRAY), or nullptr
  std::uint32_t field_count;
};
}

namespace deskfarm::sdk {

/// Name of a dk_value_type as manifests spell it ("string", "integer", …).
DESKFARM_SDK_API const char* type_name(std::uint32_t type);

/// Thrown by a plugin's validate() or constructor for a value that has the right type but is not
/// acceptable; the kernel reports it at the key's file:line:column.
class DESKFARM_SDK_API ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string key, const std::string& message) : std::runtime_error(message), key_(std::move(key)) {}
  const std::string& key() const { return key_; }

 private:
  std::string key_;
};

/// An instance's validated configuration: every schema key is present (defaults filled in) with the
/// declared type, range and choices, and no other key exists.
class DESKFARM_SDK_API Config {
 public:
  explicit Config(Value values);
  std::string string(const std::string& key) const;
  std::int64_t integer(const std::string& key) const;
  double number(const std::string& key) const;
  bool boolean(const std::string& key) const;
  std::vector<std::string> strings(const std::string& key) const;
  Secret secret(const std::string& key) const;
  /// The raw value of a key (tables and arrays).
  const Value& value(const std::string& key) const;
  /// All values, as one table.
  const Value& values() const { return values_; }

 private:
  Value values_;
};

// ---- schemas bound to the plugin's own struct ----

namespace detail {
template <class M>
struct is_vector : std::false_type {};
template <class E>
struct is_vector<std::vector<E>> : std::true_type {};

template <class M>
constexpr std::uint32_t value_type_of(const char* default_toml) {
  if constexpr (std::is_same_v<M, std::string>) return DK_STRING;
  else if constexpr (std::is_same_v<M, Secret>) return DK_SECRET;
  else if constexpr (std::is_same_v<M, bool>) return DK_BOOLEAN;
  else if constexpr (std::is_integral_v<M>) return DK_INTEGER;
  else if constexpr (std::is_floating_point_v<M>) return DK_FLOAT;
  else if constexpr (std::is_same_v<M, std::vector<std::string>>) return DK_STRING_ARRAY;
  else if constexpr (std::is_same_v<M, Value>) return default_toml && default_toml[0] == '[' ? DK_ARRAY : DK_TABLE;
  else static_assert(sizeof(M) == 0, "sdk::option: unsupported member type (use string, Secret, bool, integers, double, "
                                     "vector<string>, Value, or vector<Struct> with a nested schema)");
}
}  // namespace detail

/// A schema row bound to member `member` of the plugin's config struct T.
template <class T, class M>
struct Option {
  dk_config_key row;
  M T::*member;
  /// Integers and floats outside [lo, hi] are refused at the value's file:line:column.
  constexpr Option range(double lo, double hi) const {
    Option o = *this;
    o.row.flags |= DK_HAS_RANGE;
    o.row.min = lo;
    o.row.max = hi;
    return o;
  }
  /// A string must be one of `choices`, separated by '|' ("standard|private").
  constexpr Option one_of(const char* choices) const {
    Option o = *this;
    o.row.one_of = choices;
    return o;
  }
  void bind(const Value& values, T& out) const { from_value(*values.find(row.key), out.*member, row.key); }
};

/// A schema row for an array of tables bound to `std::vector<E> T::*`, each table checked against `elements`.
template <class T, class E, class S>
struct TableArrayOption {
  dk_config_key row;
  std::vector<E> T::*member;
  const S* elements;
  void bind(const Value& values, T& out) const {
    auto& list = out.*member;
    list.clear();
    const auto& a = values.find(row.key)->as_array();
    for (const auto& v : a) list.push_back(elements->bind(v));
  }
};

/// A key of type M bound to `member`; `default_toml` is a TOML literal, nullptr for a required key.
template <class T, class M>
constexpr Option<T, M> option(const char* key, M T::*member, const char* default_toml, const char* description) {
  return {dk_config_key{key, detail::value_type_of<M>(default_toml), 0, default_toml, description, 0, 0, nullptr, nullptr, 0},
          member};
}

/// An array of tables bound to `std::vector<E> T::*`; `elements` is the schema of E (a namespace-scope constexpr).
template <class T, class E, class S>
constexpr TableArrayOption<T, E, S> option(const char* key, std::vector<E> T::*member, const char* default_toml,
                                           const char* description, const S& elements) {
  return {dk_config_key{key, DK_TABLE_ARRAY, 0, default_toml, description, 0, 0, nullptr, elements.keys.data(),
                        static_cast<std::uint32_t>(elements.keys.size())},
          member, &elements};
}

/// A plugin's config schema: the rows the kernel validates and documents, and the binding into T.
template <class T, class... Opts>
struct Schema {
  using type = T;
  std::array<dk_config_key, sizeof...(Opts)> keys;
  std::tuple<Opts...> options;
  /// The struct with every key's value (the kernel has validated types, ranges and choices already).
  T bind(const Value& values) const {
    T out{};
    std::apply([&](const auto&... o) { (o.bind(values, out), ...); }, options);
    return out;
  }
  T bind(const Config& config) const { return bind(config.values()); }
};

/// Builds a schema from option(...) rows: `constexpr auto schema = sdk::schema<MyConfig>(option(...), ...);`
template <class T, class... Opts>
constexpr Schema<T, Opts...> schema(Opts... opts) {
  return {{opts.row...}, {opts...}};
}

}  // namespace deskfarm::sdk
