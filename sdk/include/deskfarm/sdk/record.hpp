#pragma once
#include <concepts>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "deskfarm/sdk/api.hpp"
#include "deskfarm/sdk/value.hpp"

namespace deskfarm::sdk {

/// A secret (password, token, key). It never prints: status, logs and `describe` show it masked; the
/// plugin asks for the text explicitly with reveal().
class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string text) : text_(std::move(text)) {}
  const std::string& reveal() const { return text_; }
  bool empty() const { return text_.empty(); }
  /// "" when empty, else a fixed mask that says nothing about the length.
  std::string masked() const { return text_.empty() ? std::string() : std::string("********"); }
  bool operator==(const Secret&) const = default;

 private:
  std::string text_;
};

/// A value that does not fit the field it is read into; what() names the field's path.
class DecodeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// One named member of a record.
template <class T, class M>
struct Field {
  const char* name;
  M T::*member;
};
template <class T, class M>
constexpr Field<T, M> field(const char* name, M T::*member) {
  return {name, member};
}

/// A record is a struct that lists its members once, as `static constexpr auto fields()` returning a tuple of
/// field(...). It converts to and from Value (and so to JSON) without hand-written code.
template <class T>
concept Record = requires { T::fields(); };

// ---- to_value ----
inline Value to_value(const Value& v) { return v; }
inline Value to_value(const std::string& s) { return Value(s); }
inline Value to_value(const char* s) { return Value(s); }
inline Value to_value(bool b) { return Value(b); }
inline Value to_value(double d) { return Value(d); }
inline Value to_value(const Secret& s) { return Value(s.masked()); }
template <std::integral I>
  requires(!std::same_as<I, bool>)
Value to_value(I i) {
  return Value(static_cast<std::int64_t>(i));
}
template <class E>
Value to_value(const std::vector<E>& v);
template <class E>
Value to_value(const std::optional<E>& v);
template <class E, class Less>
Value to_value(const std::map<std::string, E, Less>& m);
template <Record T>
Value to_value(const T& record);

template <class E>
Value to_value(const std::vector<E>& v) {
  Value out = Value::array();
  for (const auto& e : v) out.push(to_value(e));
  return out;
}
template <class E>
Value to_value(const std::optional<E>& v) {
  return v ? to_value(*v) : Value();
}
template <class E, class Less>
Value to_value(const std::map<std::string, E, Less>& m) {
  Value out = Value::object();
  for (const auto& [k, e] : m) out.set(k, to_value(e));
  return out;
}
template <Record T>
Value to_value(const T& record) {
  Value out = Value::object();
  std::apply([&](const auto&... f) { (out.set(f.name, to_value(record.*(f.member))), ...); }, T::fields());
  return out;
}

// ---- from_value ----
namespace detail {
[[noreturn]] DESKFARM_SDK_API void decode_fail(std::string_view path, std::string_view expected, const Value& found);
}

inline void from_value(const Value& v, Value& out, std::string_view) { out = v; }
inline void from_value(const Value& v, std::string& out, std::string_view path) {
  if (!v.is_string()) detail::decode_fail(path, "a string", v);
  out = v.as_string();
}
inline void from_value(const Value& v, Secret& out, std::string_view path) {
  if (!v.is_string()) detail::decode_fail(path, "a string", v);
  out = Secret(v.as_string());
}
inline void from_value(const Value& v, bool& out, std::string_view path) {
  if (!v.is_bool()) detail::decode_fail(path, "true or false", v);
  out = v.as_bool();
}
inline void from_value(const Value& v, double& out, std::string_view path) {
  if (!v.is_number()) detail::decode_fail(path, "a number", v);
  out = v.as_number();
}
template <std::integral I>
  requires(!std::same_as<I, bool>)
void from_value(const Value& v, I& out, std::string_view path) {
  if (!v.is_integer()) detail::decode_fail(path, "an integer", v);
  const std::int64_t i = v.as_integer();
  if constexpr (std::is_unsigned_v<I>) {
    if (i < 0 || static_cast<std::uint64_t>(i) > std::numeric_limits<I>::max())
      detail::decode_fail(path, "an integer in 0.." + std::to_string(std::numeric_limits<I>::max()), v);
  } else {
    if (i < std::numeric_limits<I>::min() || i > std::numeric_limits<I>::max())
      detail::decode_fail(path, "an integer in range", v);
  }
  out = static_cast<I>(i);
}
template <class E>
void from_value(const Value& v, std::vector<E>& out, std::string_view path);
template <class E>
void from_value(const Value& v, std::optional<E>& out, std::string_view path);
template <class E, class Less>
void from_value(const Value& v, std::map<std::string, E, Less>& out, std::string_view path);
template <Record T>
void from_value(const Value& v, T& out, std::string_view path);

template <class E>
void from_value(const Value& v, std::vector<E>& out, std::string_view path) {
  if (!v.is_array()) detail::decode_fail(path, "an array", v);
  out.clear();
  const auto& a = v.as_array();
  out.reserve(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    E e{};
    from_value(a[i], e, std::string(path) + "[" + std::to_string(i) + "]");
    out.push_back(std::move(e));
  }
}
template <class E>
void from_value(const Value& v, std::optional<E>& out, std::string_view path) {
  if (v.is_null()) {
    out.reset();
    return;
  }
  E e{};
  from_value(v, e, path);
  out = std::move(e);
}
template <class E, class Less>
void from_value(const Value& v, std::map<std::string, E, Less>& out, std::string_view path) {
  if (!v.is_object()) detail::decode_fail(path, "a table", v);
  out.clear();
  for (const auto& [k, e] : v.as_object()) from_value(e, out[k], std::string(path) + "." + k);
}
/// Reads the record's fields from an object; missing fields keep their defaults, unknown ones are ignored
/// (a newer sender within one type version may add fields).
template <Record T>
void from_value(const Value& v, T& out, std::string_view path) {
  if (!v.is_object()) detail::decode_fail(path, "a table", v);
  std::apply(
      [&](const auto&... f) {
        ((void)([&] {
           if (const Value* m = v.find(f.name)) from_value(*m, out.*(f.member), std::string(path) + "." + f.name);
         }()),
         ...);
      },
      T::fields());
}

/// Reads a whole value of type T; throws DecodeError naming the path ("root.field[2].x").
template <class T>
T from_value(const Value& v, std::string_view root = "value") {
  T out{};
  from_value(v, out, root);
  return out;
}

}  // namespace deskfarm::sdk
