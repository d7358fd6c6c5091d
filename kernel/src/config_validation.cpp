#include "config_validation.hpp"

#include <algorithm>
#include <sstream>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

namespace deskfarm::kernel {

Poco::Dynamic::Var to_json(const toml::node& node) {
  if (auto* s = node.as_string()) return s->get();
  if (auto* i = node.as_integer()) return static_cast<Poco::Int64>(i->get());
  if (auto* f = node.as_floating_point()) return f->get();
  if (auto* b = node.as_boolean()) return b->get();
  if (auto* a = node.as_array()) {
    Poco::JSON::Array::Ptr out = new Poco::JSON::Array;
    for (auto& e : *a) out->add(to_json(e));
    return out;
  }
  if (auto* t = node.as_table()) {
    Poco::JSON::Object::Ptr out = new Poco::JSON::Object;
    for (auto&& [k, v] : *t) out->set(std::string(k.str()), to_json(v));
    return out;
  }
  std::ostringstream text;
  if (auto* dt = node.as_date_time()) text << *dt;
  else if (auto* d = node.as_date()) text << *d;
  else if (auto* t = node.as_time()) text << *t;
  return text.str();
}

std::unique_ptr<sdk::Config> validate_config(const InstanceSpec& spec, const dk_plugin_descriptor& d, Diagnostics& diags) {
  std::vector<std::string> known;
  for (std::uint32_t i = 0; i < d.config_count; ++i) known.emplace_back(d.config[i].key);
  Poco::JSON::Object::Ptr values = new Poco::JSON::Object;
  const auto where = [](const std::map<std::string, Location>& places, const std::string& key) {
    auto it = places.find(key);
    return it == places.end() ? Location{} : it->second;
  };
  for (auto&& [k, v] : spec.config) {
    const std::string key(k.str());
    const auto it = std::find(known.begin(), known.end(), key);
    if (it == known.end()) {
      diags.add(where(spec.key_where, key), "unknown key '" + key + "' for plugin " + spec.plugin + " (instance " + spec.name + ")." +
                                                did_you_mean(key, known),
                "its keys are: " + join(known) + " (`deskfarm describe " + spec.plugin + "` documents them)");
      continue;
    }
    const auto& schema = d.config[it - known.begin()];
    if (!type_fits(v, schema.type)) {
      diags.add(where(spec.value_where, key), "key '" + key + "' of instance " + spec.name + " must be " + sdk::type_name(schema.type) +
                                                  ", found " + type_of(v),
                std::string("plugin ") + spec.plugin + " documents it as: " + (schema.description ? schema.description : ""));
      continue;
    }
    values->set(key, to_json(v));
  }
  for (std::uint32_t i = 0; i < d.config_count; ++i) {
    const auto& schema = d.config[i];
    if (values->has(schema.key) || spec.config.contains(schema.key)) continue;
    if (!schema.default_toml) {
      diags.add(spec.where, "instance " + spec.name + " lacks required key '" + schema.key + "' (" + sdk::type_name(schema.type) + ")",
                schema.description ? schema.description : "");
      continue;
    }
    auto parsed = toml::parse(std::string("v = ") + schema.default_toml);
    values->set(schema.key, to_json(*parsed.get("v")));
  }
  return std::make_unique<sdk::Config>(values);
}

}  // namespace deskfarm::kernel
