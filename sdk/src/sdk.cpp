// The SDK's shared library: out-of-line destructors (so type info exists once, in this library),
// config access, subject matching and schema migrations.
#include <algorithm>
#include <cmath>
#include <mutex>
#include <sstream>

#include <Poco/Data/Transaction.h>
#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/String.h>

#include "deskfarm/sdk/bus.hpp"
#include "deskfarm/sdk/clock.hpp"
#include "deskfarm/sdk/config.hpp"
#include "deskfarm/sdk/context.hpp"
#include "deskfarm/sdk/executor.hpp"
#include "deskfarm/sdk/lifeline.hpp"
#include "deskfarm/sdk/log.hpp"
#include "deskfarm/sdk/metrics.hpp"
#include "deskfarm/sdk/plugin.hpp"
#include "deskfarm/sdk/service.hpp"
#include "deskfarm/sdk/store.hpp"
#include "deskfarm/sdk/value.hpp"

using namespace Poco::Data::Keywords;

namespace deskfarm::sdk {

std::string error_text(const std::exception& e) {
  const auto* poco = dynamic_cast<const Poco::Exception*>(&e);
  if (!poco) return e.what();
  std::string text = poco->displayText();
  // PostgreSQL's and SQLite's words for a write on a read-only session name neither our API nor the fix.
  if (text.find("read-only transaction") != std::string::npos || text.find("readonly database") != std::string::npos)
    text += " (a write through Store::read_session(), which is read-only on the replica and on the primary alike: "
            "write through Store::session())";
  return text;
}

Executor::~Executor() = default;
Clock::~Clock() = default;
Logger::~Logger() = default;
Metrics::~Metrics() = default;
Store::~Store() = default;
Bus::~Bus() = default;
Context::~Context() = default;
Plugin::~Plugin() = default;

const char* type_name(std::uint32_t type) {
  switch (type) {
    case DK_STRING: return "string";
    case DK_INTEGER: return "integer";
    case DK_FLOAT: return "float";
    case DK_BOOLEAN: return "boolean";
    case DK_STRING_ARRAY: return "array of strings";
    case DK_TABLE: return "table";
    case DK_ARRAY: return "array";
    case DK_SECRET: return "secret";
    case DK_TABLE_ARRAY: return "array of tables";
    default: return "unknown type";
  }
}

// ---- Value ----

namespace {
[[noreturn]] void wrong_kind(const char* expected, const Value& v) {
  throw std::invalid_argument(std::string("expected ") + expected + ", found " + v.kind());
}

Poco::Dynamic::Var to_poco(const Value& v) {
  if (v.is_null()) return Poco::Dynamic::Var();
  if (v.is_bool()) return v.as_bool();
  if (v.is_integer()) return static_cast<Poco::Int64>(v.as_integer());
  if (v.is_number()) return v.as_number();
  if (v.is_string()) return v.as_string();
  if (v.is_array()) {
    Poco::JSON::Array::Ptr a = new Poco::JSON::Array;
    for (const auto& e : v.as_array()) a->add(to_poco(e));
    return a;
  }
  Poco::JSON::Object::Ptr o = new Poco::JSON::Object;
  for (const auto& [k, e] : v.as_object()) o->set(k, to_poco(e));
  return o;
}

Value from_poco(const Poco::Dynamic::Var& v) {
  if (v.isEmpty()) return Value();
  if (v.type() == typeid(Poco::JSON::Object::Ptr)) {
    Value out = Value::object();
    const auto o = v.extract<Poco::JSON::Object::Ptr>();
    for (const auto& [k, e] : *o) out.set(k, from_poco(e));
    return out;
  }
  if (v.type() == typeid(Poco::JSON::Array::Ptr)) {
    Value out = Value::array();
    const auto a = v.extract<Poco::JSON::Array::Ptr>();
    for (const auto& e : *a) out.push(from_poco(e));
    return out;
  }
  if (v.type() == typeid(bool)) return Value(v.extract<bool>());
  if (v.isString()) return Value(v.convert<std::string>());
  if (v.isInteger()) {
    if (!v.isSigned() && v.convert<Poco::UInt64>() > static_cast<Poco::UInt64>(INT64_MAX))
      throw std::invalid_argument("integer " + v.convert<std::string>() + " is too large");
    return Value(static_cast<std::int64_t>(v.convert<Poco::Int64>()));
  }
  if (v.isNumeric()) return Value(v.convert<double>());
  return Value(v.convert<std::string>());
}
}  // namespace

const char* Value::kind() const {
  static constexpr const char* names[] = {"null", "boolean", "integer", "float", "string", "array", "table"};
  return names[v_.index()];
}
bool Value::as_bool() const {
  if (!is_bool()) wrong_kind("boolean", *this);
  return std::get<bool>(v_);
}
std::int64_t Value::as_integer() const {
  if (!is_integer()) wrong_kind("integer", *this);
  return std::get<std::int64_t>(v_);
}
double Value::as_number() const {
  if (is_integer()) return static_cast<double>(std::get<std::int64_t>(v_));
  if (v_.index() != 3) wrong_kind("number", *this);
  return std::get<double>(v_);
}
const std::string& Value::as_string() const {
  if (!is_string()) wrong_kind("string", *this);
  return std::get<std::string>(v_);
}
const Value::Array& Value::as_array() const {
  if (!is_array()) wrong_kind("array", *this);
  return std::get<Array>(v_);
}
Value::Array& Value::as_array() {
  if (!is_array()) wrong_kind("array", *this);
  return std::get<Array>(v_);
}
const Value::Object& Value::as_object() const {
  if (!is_object()) wrong_kind("table", *this);
  return std::get<Object>(v_);
}
Value::Object& Value::as_object() {
  if (!is_object()) wrong_kind("table", *this);
  return std::get<Object>(v_);
}
const Value* Value::find(std::string_view key) const {
  if (!is_object()) return nullptr;
  const auto& o = std::get<Object>(v_);
  const auto it = o.find(key);
  return it == o.end() ? nullptr : &it->second;
}
Value& Value::operator[](std::string_view key) {
  if (is_null()) v_ = Object{};
  auto& o = as_object();
  auto it = o.find(key);
  if (it == o.end()) it = o.emplace(std::string(key), Value()).first;
  return it->second;
}
Value& Value::set(std::string_view key, Value value) {
  (*this)[key] = std::move(value);
  return *this;
}
Value& Value::push(Value value) {
  if (is_null()) v_ = Array{};
  as_array().push_back(std::move(value));
  return *this;
}
std::size_t Value::size() const {
  if (is_array()) return std::get<Array>(v_).size();
  if (is_object()) return std::get<Object>(v_).size();
  return 0;
}
std::string Value::to_json() const {
  if (v_.index() == 3 && !std::isfinite(std::get<double>(v_))) return "null";  // JSON has no NaN or infinity
  std::ostringstream out;
  Poco::JSON::Stringifier::condense(to_poco(*this), out);
  return out.str();
}
Value Value::parse_json(std::string_view text) {
  try {
    Poco::JSON::Parser parser;
    return from_poco(parser.parse(std::string(text)));
  } catch (const Poco::Exception& e) {
    throw std::invalid_argument("invalid JSON: " + e.displayText());
  }
}

namespace detail {
void decode_fail(std::string_view path, std::string_view expected, const Value& found) {
  throw DecodeError(std::string(path) + ": expected " + std::string(expected) + ", found " + found.kind());
}
namespace {
// Refusals are rare and come from any thread; a few distinct (type, version) pairs at most, bounded anyway
// against a peer that makes up versions.
std::mutex refusals_mutex;
std::vector<VersionRefusal> refusals;
constexpr std::size_t max_refusal_rows = 256;
}  // namespace

std::vector<VersionRefusal> version_refusals() {
  std::lock_guard lock(refusals_mutex);
  return refusals;
}

void version_mismatch(const Message& m, std::string_view type, std::uint32_t wanted) {
  {
    std::lock_guard lock(refusals_mutex);
    auto it = std::find_if(refusals.begin(), refusals.end(), [&](const VersionRefusal& r) {
      return r.type == type && r.sent == m.version && r.understood == wanted;
    });
    if (it != refusals.end()) ++it->count;
    else if (refusals.size() < max_refusal_rows) refusals.push_back({std::string(type), m.version, wanted, 1});
    else ++refusals.back().count;  // a flood of made-up versions still counts, in the last row
  }
  throw MessageError("message " + std::string(type) + " version " + std::to_string(m.version) + " on subject " + m.subject +
                     ": this plugin understands version " + std::to_string(wanted) +
                     " (rebuild one side against the same SDK interfaces)");
}
std::string bus_error_code(std::string_view error) {
  if (error.starts_with("timeout")) return "timeout";
  if (error.starts_with("no responders")) return "no_responders";
  return "bus";
}
}  // namespace detail

// ---- Lifeline ----

bool Lifeline::post(std::function<void()> task) {
  std::lock_guard lock(mutex_);
  if (!executor_) return false;
  executor_->post(std::move(task));
  return true;
}
bool Lifeline::alive() const {
  std::lock_guard lock(mutex_);
  return executor_ != nullptr;
}
void Lifeline::end() {
  std::lock_guard lock(mutex_);
  executor_ = nullptr;
}

// ---- Config ----

Config::Config(Value values) : values_(values.is_null() ? Value::object() : std::move(values)) {}

const Value& Config::value(const std::string& key) const {
  const Value* v = values_.find(key);
  if (!v) throw ConfigError(key, "config key '" + key + "' is not in this plugin's schema");
  return *v;
}
std::string Config::string(const std::string& key) const { return value(key).as_string(); }
std::int64_t Config::integer(const std::string& key) const { return value(key).as_integer(); }
double Config::number(const std::string& key) const { return value(key).as_number(); }
bool Config::boolean(const std::string& key) const { return value(key).as_bool(); }
Secret Config::secret(const std::string& key) const { return Secret(value(key).as_string()); }
std::vector<std::string> Config::strings(const std::string& key) const {
  std::vector<std::string> out;
  for (const auto& e : value(key).as_array()) out.push_back(e.as_string());
  return out;
}

Subscription& Subscription::operator=(Subscription&& other) noexcept {
  if (this != &other) {
    reset();
    cancel_ = std::exchange(other.cancel_, nullptr);
  }
  return *this;
}
Subscription::~Subscription() { reset(); }
void Subscription::reset() {
  if (auto c = std::exchange(cancel_, nullptr)) c();
}

namespace {
// Splits at the next '.'; returns the token and advances `rest` past it.
std::string_view next_token(std::string_view& rest) {
  const auto dot = rest.find('.');
  std::string_view token = rest.substr(0, dot);
  rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
  return token;
}
}  // namespace

bool subject_matches(std::string_view pattern, std::string_view subject) {
  bool subject_done = subject.empty();
  while (!pattern.empty()) {
    const std::string_view p = next_token(pattern);
    if (p == ">") return !subject_done;
    if (subject_done) return false;
    const std::string_view s = next_token(subject);
    if (p != "*" && p != s) return false;
    subject_done = subject.empty();
  }
  return subject_done;
}

std::string subject_error(std::string_view subject, bool is_pattern) {
  if (subject.empty()) return "subject is empty";
  std::string_view rest = subject;
  while (true) {
    const bool last = rest.find('.') == std::string_view::npos;
    const std::string_view token = next_token(rest);
    if (token.empty()) return "subject '" + std::string(subject) + "' has an empty token (two dots, or a dot at an end)";
    for (char c : token) {
      if (c <= ' ' || c == 0x7f) return "subject '" + std::string(subject) + "' contains a space or control character";
    }
    if (token == ">" && !last) return "'>' may only be the last token of pattern '" + std::string(subject) + "'";
    if (!is_pattern && (token == "*" || token == ">"))
      return "subject '" + std::string(subject) + "' contains a wildcard; only subscriptions may use '*' and '>'";
    if ((token.find('*') != std::string_view::npos && token != "*") || (token.find('>') != std::string_view::npos && token != ">"))
      return "wildcards must be whole tokens in '" + std::string(subject) + "'";
    if (last) return {};
  }
}

std::string sql(const Poco::Data::Session& session, std::string_view text) {
  if (Poco::icompare(session.connector(), "postgresql") != 0) return std::string(text);
  std::string out;
  int n = 0;
  char quote = 0;
  for (char c : text) {
    if (quote) {
      if (c == quote) quote = 0;
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (c == '?') {
      out += '$' + std::to_string(++n);
      continue;
    }
    out += c;
  }
  return out;
}

int migrate(Poco::Data::Session& session, std::string_view component, std::span<const Migration> migrations) {
  std::string name(component);
  int current = 0;
  try {
    session << "CREATE TABLE IF NOT EXISTS deskfarm_schema (component VARCHAR(128) PRIMARY KEY, version INTEGER NOT NULL)",
        now;
    std::vector<int> found;
    session << sql(session, "SELECT version FROM deskfarm_schema WHERE component = ?"), use(name), into(found), now;
    if (!found.empty()) current = found.front();
  } catch (const Poco::Exception& e) {
    throw std::runtime_error(name + ": cannot read the schema version: " + e.displayText());
  }
  for (const Migration& m : migrations) {
    if (m.version <= current) continue;
    Poco::Data::Transaction tx(session);
    for (const std::string& sql : m.statements) {
      try {
        session << sql, now;
      } catch (const Poco::Exception& e) {
        throw std::runtime_error(name + ": migration " + std::to_string(m.version) + " failed at \"" + sql +
                                 "\": " + e.displayText());
      }
    }
    int version = m.version;
    try {
      if (current == 0)
        session << sql(session, "INSERT INTO deskfarm_schema (component, version) VALUES (?, ?)"), use(name), use(version), now;
      else
        session << sql(session, "UPDATE deskfarm_schema SET version = ? WHERE component = ?"), use(version), use(name), now;
      tx.commit();
    } catch (const Poco::Exception& e) {
      throw std::runtime_error(name + ": cannot record schema version " + std::to_string(version) + ": " + e.displayText());
    }
    current = version;
  }
  return current;
}

}  // namespace deskfarm::sdk
