// The SDK's shared library: out-of-line destructors (so type info exists once, in this library),
// config access, subject matching and schema migrations.
#include <Poco/Data/Transaction.h>
#include <Poco/JSON/Array.h>
#include <Poco/String.h>

#include "deskfarm/sdk/bus.hpp"
#include "deskfarm/sdk/clock.hpp"
#include "deskfarm/sdk/config.hpp"
#include "deskfarm/sdk/context.hpp"
#include "deskfarm/sdk/executor.hpp"
#include "deskfarm/sdk/log.hpp"
#include "deskfarm/sdk/metrics.hpp"
#include "deskfarm/sdk/plugin.hpp"
#include "deskfarm/sdk/store.hpp"

using namespace Poco::Data::Keywords;

namespace deskfarm::sdk {

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
    default: return "unknown type";
  }
}

Config::Config(Poco::JSON::Object::Ptr values)
    : values_(values ? std::move(values) : Poco::JSON::Object::Ptr(new Poco::JSON::Object)) {}

namespace {
Poco::Dynamic::Var value_of(const Poco::JSON::Object::Ptr& values, const std::string& key) {
  if (!values->has(key)) throw ConfigError(key, "config key '" + key + "' is not in this plugin's schema");
  return values->get(key);
}
}  // namespace

std::string Config::string(const std::string& key) const { return value_of(values_, key).convert<std::string>(); }
std::int64_t Config::integer(const std::string& key) const { return value_of(values_, key).convert<std::int64_t>(); }
double Config::number(const std::string& key) const { return value_of(values_, key).convert<double>(); }
bool Config::boolean(const std::string& key) const { return value_of(values_, key).convert<bool>(); }
std::vector<std::string> Config::strings(const std::string& key) const {
  std::vector<std::string> out;
  auto arr = array(key);
  for (std::size_t i = 0; arr && i < arr->size(); ++i) out.push_back(arr->get(i).convert<std::string>());
  return out;
}
Poco::JSON::Object::Ptr Config::table(const std::string& key) const {
  return value_of(values_, key).extract<Poco::JSON::Object::Ptr>();
}
Poco::JSON::Array::Ptr Config::array(const std::string& key) const {
  return value_of(values_, key).extract<Poco::JSON::Array::Ptr>();
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
