#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "deskfarm/sdk/api.hpp"

namespace deskfarm::sdk {

/// A JSON-shaped value owned by the SDK: configuration values, status fields, and the wire form of typed
/// messages all use it, so no third-party type appears in the plugin ABI. Objects keep their keys sorted.
class DESKFARM_SDK_API Value {
 public:
  using Array = std::vector<Value>;
  using Object = std::map<std::string, Value, std::less<>>;

  Value() = default;
  Value(std::nullptr_t) {}
  Value(bool b) : v_(b) {}
  Value(int i) : v_(static_cast<std::int64_t>(i)) {}
  Value(unsigned i) : v_(static_cast<std::int64_t>(i)) {}
  Value(long i) : v_(static_cast<std::int64_t>(i)) {}
  Value(unsigned long i) : v_(static_cast<std::int64_t>(i)) {}
  Value(long long i) : v_(static_cast<std::int64_t>(i)) {}
  Value(unsigned long long i) : v_(static_cast<std::int64_t>(i)) {}
  Value(double d) : v_(d) {}
  Value(const char* s) : v_(std::string(s)) {}
  Value(std::string_view s) : v_(std::string(s)) {}
  Value(std::string s) : v_(std::move(s)) {}
  Value(Array a) : v_(std::move(a)) {}
  Value(Object o) : v_(std::move(o)) {}
  static Value array() { return Value(Array{}); }
  static Value object() { return Value(Object{}); }

  bool is_null() const { return v_.index() == 0; }
  bool is_bool() const { return v_.index() == 1; }
  bool is_integer() const { return v_.index() == 2; }
  bool is_number() const { return v_.index() == 2 || v_.index() == 3; }  ///< integer or float
  bool is_string() const { return v_.index() == 4; }
  bool is_array() const { return v_.index() == 5; }
  bool is_object() const { return v_.index() == 6; }
  /// "null", "boolean", "integer", "float", "string", "array" or "table".
  const char* kind() const;

  /// Typed access; throws std::invalid_argument naming the expected and found kinds.
  bool as_bool() const;
  std::int64_t as_integer() const;
  double as_number() const;  ///< integers convert
  const std::string& as_string() const;
  const Array& as_array() const;
  Array& as_array();
  const Object& as_object() const;
  Object& as_object();

  /// The member `key` of an object, or nullptr (also when this is not an object).
  const Value* find(std::string_view key) const;
  /// Member access on an object; a null value becomes an empty object first.
  Value& operator[](std::string_view key);
  /// Sets a member (a null value becomes an object first); returns *this for chaining.
  Value& set(std::string_view key, Value value);
  /// Appends to an array (a null value becomes an array first).
  Value& push(Value value);
  std::size_t size() const;  ///< members or elements; 0 for scalars

  bool operator==(const Value& other) const = default;

  /// Compact JSON text (UTF-8; control characters escaped).
  std::string to_json() const;
  /// Parses JSON text; throws std::invalid_argument with the line and column of the first error.
  static Value parse_json(std::string_view text);

 private:
  std::variant<std::monostate, bool, std::int64_t, double, std::string, Array, Object> v_;
};

}  // namespace deskfarm::sdk
