#include "config_check.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <sstream>

#include "manifest.hpp"

namespace deskfarm::kernel {

namespace {

std::vector<std::string> split_choices(const char* one_of) {
  std::vector<std::string> out;
  std::string_view rest = one_of ? one_of : "";
  while (!rest.empty()) {
    const auto bar = rest.find('|');
    out.emplace_back(rest.substr(0, bar));
    if (bar == std::string_view::npos) break;
    rest = rest.substr(bar + 1);
  }
  return out;
}

bool fits(const toml::node& n, std::uint32_t type) {
  if (type == DK_SECRET) return n.is_string();
  if (type == DK_TABLE_ARRAY) return n.is_array() && std::all_of(n.as_array()->begin(), n.as_array()->end(), [](auto& e) { return e.is_table(); });
  return type_fits(n, type);
}

/// Checks one value against its row; `path` names it in messages. Returns false on a fault (already reported).
bool check_value(const toml::node& n, const dk_config_key& k, const std::string& path, const Location& at,
                 const ConfigContext& context, Diagnostics& diags, sdk::Value& out);

sdk::Value check_table(const toml::table& table, const dk_config_key* keys, std::uint32_t count,
                       const std::function<ValueSite(const std::string&)>& where, const std::string& path_prefix,
                       const Location& nested_at, const ConfigContext& context, Diagnostics& diags) {
  sdk::Value values = sdk::Value::object();
  std::vector<std::string> known;
  for (std::uint32_t i = 0; i < count; ++i) known.emplace_back(keys[i].key);
  for (auto&& [k, v] : table) {
    const std::string key(k.str());
    const std::string path = path_prefix + key;
    const ValueSite site = where ? where(key) : ValueSite{&nested_at, &nested_at};
    const auto it = std::find(known.begin(), known.end(), key);
    if (it == known.end()) {
      diags.add(*site.key, "unknown key '" + path + "' for " + context.plugin_and_instance() + "." + did_you_mean(key, known),
                "its keys are: " + join(known) + " (`deskfarm describe " + context.plugin + "` documents them)");
      continue;
    }
    sdk::Value value;
    if (check_value(v, keys[it - known.begin()], path, *site.value, context, diags, value)) values.set(key, std::move(value));
  }
  for (std::uint32_t i = 0; i < count; ++i) {
    const auto& row = keys[i];
    if (table.contains(row.key)) continue;
    if (!row.default_toml) {
      diags.add(nested_at, "instance " + context.instance + " lacks required key '" + path_prefix + row.key + "' (" + sdk::type_name(row.type) + ")",
                row.description ? row.description : "");
      continue;
    }
    values.set(row.key, default_value(row));
  }
  return values;
}

bool check_value(const toml::node& n, const dk_config_key& k, const std::string& path, const Location& at,
                 const ConfigContext& context, Diagnostics& diags, sdk::Value& out) {
  if (!fits(n, k.type)) {
    diags.add(at, "key '" + path + "' of instance " + context.instance + " must be " + sdk::type_name(k.type) + ", found " + type_of(n),
              std::string("documented as: ") + (k.description ? k.description : ""));
    return false;
  }
  if ((k.flags & DK_HAS_RANGE) && n.is_number()) {
    const double v = n.is_integer() ? static_cast<double>(n.as_integer()->get()) : n.as_floating_point()->get();
    if (!(v >= k.min && v <= k.max)) {
      diags.add(at, "key '" + path + "' of instance " + context.instance + " is " + number_text(v) + ", outside " + number_text(k.min) + ".." +
                        number_text(k.max),
                std::string("documented as: ") + (k.description ? k.description : ""));
      return false;
    }
  }
  if (k.one_of && n.is_string()) {
    const auto choices = split_choices(k.one_of);
    const std::string v = n.as_string()->get();
    if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
      diags.add(at, "key '" + path + "' of instance " + context.instance + " is \"" + v + "\"; it must be one of " + join(choices, ", ") + "." +
                        did_you_mean(v, choices));
      return false;
    }
  }
  if ((k.type == DK_TABLE_ARRAY || k.type == DK_TABLE) && k.fields) {
    if (k.type == DK_TABLE) {
      out = check_table(*n.as_table(), k.fields, k.field_count, nullptr, path + ".", at, context, diags);
      return true;
    }
    out = sdk::Value::array();
    std::size_t i = 0;
    for (const auto& e : *n.as_array()) {
      out.push(check_table(*e.as_table(), k.fields, k.field_count, nullptr, path + "[" + std::to_string(i++) + "].", at,
                           context, diags));
    }
    return true;
  }
  out = to_value(n);
  return true;
}

}  // namespace

std::string number_text(double v) {
  // Integral limits print in full (4294967295, not the stream default 4.29497e+09).
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9007199254740992.0)
    return std::to_string(static_cast<std::int64_t>(v));
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}

sdk::Value to_value(const toml::node& node) {
  if (auto* s = node.as_string()) return sdk::Value(s->get());
  if (auto* i = node.as_integer()) return sdk::Value(static_cast<std::int64_t>(i->get()));
  if (auto* f = node.as_floating_point()) return sdk::Value(f->get());
  if (auto* b = node.as_boolean()) return sdk::Value(b->get());
  if (auto* a = node.as_array()) {
    sdk::Value out = sdk::Value::array();
    for (auto& e : *a) out.push(to_value(e));
    return out;
  }
  if (auto* t = node.as_table()) {
    sdk::Value out = sdk::Value::object();
    for (auto&& [k, v] : *t) out.set(k.str(), to_value(v));
    return out;
  }
  std::ostringstream text;
  if (auto* dt = node.as_date_time()) text << *dt;
  else if (auto* d = node.as_date()) text << *d;
  else if (auto* t = node.as_time()) text << *t;
  return sdk::Value(text.str());
}

sdk::Value default_value(const dk_config_key& key) {
  auto parsed = toml::parse(std::string("v = ") + key.default_toml);
  const toml::node& v = *parsed.get("v");
  if (!key.fields || !fits(v, key.type)) return to_value(v);
  // A default table (array) goes through its schema like a manifest's, so the keys it leaves out get their own
  // defaults. check_schema proved the default fits at load time, so nothing here can be reported.
  sdk::Value out;
  Diagnostics ignored;
  if (!check_value(v, key, key.key, Location{}, ConfigContext{"(default)", "(this plugin)"}, ignored, out)) return to_value(v);
  return out;
}

void check_schema(const dk_config_key* keys, std::uint32_t count, const Location& at, Diagnostics& diags,
                  const std::string& prefix) {
  std::set<std::string> seen;
  for (std::uint32_t i = 0; keys && i < count; ++i) {
    const dk_config_key& k = keys[i];
    if (!k.key || !*k.key || std::strlen(k.key) >= 128) {
      diags.add(at, "config key #" + std::to_string(i) + (prefix.empty() ? "" : " of " + prefix) + " has no name");
      continue;
    }
    const std::string name = prefix + k.key;
    if (!seen.insert(k.key).second) diags.add(at, "config key '" + name + "' is declared twice");
    if (prefix.empty() && (name == "plugin" || name == "requires" || name == "count"))
      diags.add(at, "config key '" + name + "' is reserved by the manifest");
    if (k.type < DK_STRING || k.type > DK_TABLE_ARRAY) diags.add(at, "config key '" + name + "' has an unknown type");
    if ((k.flags & DK_HAS_RANGE) && !(k.min <= k.max)) diags.add(at, "config key '" + name + "' has an empty range");
    if (k.type == DK_TABLE_ARRAY && (!k.fields || k.field_count == 0))
      diags.add(at, "config key '" + name + "' is an array of tables without a schema for them");
    if (k.fields) check_schema(k.fields, k.field_count, at, diags, name + ".");
    if (k.default_toml) {
      try {
        auto t = toml::parse(std::string("v = ") + k.default_toml);
        sdk::Value ignored;
        Diagnostics inner;
        if (!fits(*t.get("v"), k.type) ||
            !check_value(*t.get("v"), k, name, at, ConfigContext{"(default)", "(this plugin)"}, inner, ignored) || !inner.empty())
          diags.add(at, "the default of config key '" + name + "' (" + k.default_toml + ") does not fit its declaration (" +
                            sdk::type_name(k.type) + ")");
      } catch (const toml::parse_error& e) {
        diags.add(at, "the default of config key '" + name + "' is not a TOML value: " + std::string(e.description()));
      }
    }
  }
}

sdk::Value check_config(const toml::table& table, const dk_config_key* keys, std::uint32_t count,
                        const std::function<ValueSite(const std::string&)>& where, const ConfigContext& context,
                        Diagnostics& diags) {
  const ValueSite top = where("");
  return check_table(table, keys, count, where, "", *top.value, context, diags);
}

sdk::Value mask_secrets(const sdk::Value& values, const dk_config_key* keys, std::uint32_t count) {
  sdk::Value out = values;
  for (std::uint32_t i = 0; i < count; ++i) {
    const auto& k = keys[i];
    const sdk::Value* v = values.find(k.key);
    if (!v) continue;
    if (k.type == DK_SECRET && v->is_string()) {
      out.set(k.key, sdk::Secret(v->as_string()).masked());
    } else if (k.type == DK_TABLE_ARRAY && k.fields && v->is_array()) {
      sdk::Value list = sdk::Value::array();
      for (const auto& e : v->as_array()) list.push(mask_secrets(e, k.fields, k.field_count));
      out.set(k.key, std::move(list));
    }
  }
  return out;
}

}  // namespace deskfarm::kernel
