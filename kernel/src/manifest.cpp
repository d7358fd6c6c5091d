#include "manifest.hpp"

#include "deskfarm/sdk/config.hpp"
#include "redact.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <set>

namespace deskfarm::kernel {

namespace {

const std::vector<std::string> top_level_keys{"include", "deployment", "instances", "overlays"};
const std::vector<std::string> deployment_keys{"name",    "data_store", "data_store_replica", "bus",         "clock",
                                               "clock_start", "admin", "state_dir", "workers",
                                               "bus_block_timeout_ms", "start_timeout_s", "stop_timeout_s", "plugin_path",
                                               "admin_token", "admin_workers", "admin_inflight", "blocking_workers", "blocking_queue",
                                               "nats_user", "nats_password", "nats_token", "nats_ca", "nats_cert", "nats_key",
                                               "nats_reconnect_buffer_kb", "nats_reconnect_wait_ms"};
const std::vector<std::string> reserved_instance_keys{"plugin", "requires", "count"};
constexpr int max_include_depth = 16;
constexpr std::int64_t max_count = 100000;

// Instances are copied (overlays patch them), but toml++ copies drop source positions: `origin` keeps,
// per top-level key, where the key was written and the original value node (for nested positions).
struct RawInstance {
  std::string name;
  Location where;
  toml::table table;
  std::map<std::string, std::pair<Location, const toml::node*>> origin;
};

struct RawOverlay {
  std::string target;
  Location where;
  const toml::table* table;
};

struct Loader {
  const EnvLookup& env;
  Diagnostics diags;
  std::vector<RawInstance> instances;
  std::vector<RawOverlay> overlays;
  std::vector<std::filesystem::path> stack;
  const toml::table* deployment = nullptr;
  std::vector<std::unique_ptr<toml::table>> keep;  // parsed documents outlive the loader's pointers into them

  void load_table(std::unique_ptr<toml::table> doc, const std::filesystem::path& file, bool top);
  void load_file(const std::filesystem::path& file, const Location& from, bool top);
};

std::unique_ptr<toml::table> parse(std::string_view text, const std::string& source, Diagnostics& diags) {
  try {
    return std::make_unique<toml::table>(toml::parse(text, source));
  } catch (const toml::parse_error& e) {
    diags.add(location_of(e.source()), "TOML syntax error: " + std::string(e.description()));
    return nullptr;
  }
}

void Loader::load_file(const std::filesystem::path& file, const Location& from, bool top) {
  const auto canonical = std::filesystem::weakly_canonical(file);
  for (std::size_t i = 0; i < stack.size(); ++i) {
    if (stack[i] == canonical) {
      std::string chain;
      for (std::size_t j = i; j < stack.size(); ++j) chain += stack[j].filename().string() + " → ";
      diags.add(from, "include cycle: " + chain + canonical.filename().string(),
                "remove one of these includes; fragments may include others but never themselves");
      return;
    }
  }
  if (static_cast<int>(stack.size()) >= max_include_depth) {
    diags.add(from, "includes nest deeper than " + std::to_string(max_include_depth) + " files");
    return;
  }
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) {
    diags.add(from, "cannot read manifest '" + file.string() + "': no such file",
              top ? "give the path of a .toml manifest, e.g. configs/pilot.toml" : "include paths are relative to the including file");
    return;
  }
  std::FILE* f = std::fopen(file.c_str(), "rb");
  if (!f) {
    diags.add(from, "cannot read manifest '" + file.string() + "': " + std::strerror(errno));
    return;
  }
  std::string text;
  char buf[65536];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  std::fclose(f);
  auto doc = parse(text, file.string(), diags);
  if (!doc) return;
  stack.push_back(canonical);
  load_table(std::move(doc), file, top);
  stack.pop_back();
}

void Loader::load_table(std::unique_ptr<toml::table> doc, const std::filesystem::path& file, bool top) {
  toml::table& t = *doc;
  keep.push_back(std::move(doc));
  const std::string source = file.string();
  for (auto&& [key, node] : t) {
    const std::string k(key.str());
    if (std::find(top_level_keys.begin(), top_level_keys.end(), k) == top_level_keys.end()) {
      diags.add(location_of(key.source()), "unknown top-level key '" + k + "'." + did_you_mean(k, top_level_keys),
                "a manifest has [deployment], [instances.NAME], [overlays.NAME] and an optional include = [...]");
    }
  }
  if (auto* inc = t.get("include")) {
    if (auto* arr = inc->as_array()) {
      for (auto& item : *arr) {
        if (auto s = item.value<std::string>()) {
          load_file(file.parent_path() / *s, location_of(item), false);
        } else {
          diags.add(location_of(item), "include entries must be strings (paths relative to this file)");
        }
      }
    } else {
      diags.add(location_of(*inc), "include must be an array of file paths, e.g. include = [\"fragments/pvs.toml\"]");
    }
  }
  if (auto* dep = t.get("deployment")) {
    if (!top) {
      diags.add(location_of(*dep), "[deployment] may appear only in the top manifest, not in an included fragment",
                "move these settings to the manifest you run");
    } else if (!dep->is_table()) {
      diags.add(location_of(*dep), "deployment must be a table: [deployment]");
    } else {
      deployment = dep->as_table();
    }
  }
  auto collect = [&](const char* section, auto&& add) {
    auto* node = t.get(section);
    if (!node) return;
    auto* tbl = node->as_table();
    if (!tbl) {
      diags.add(location_of(*node), std::string(section) + " must be a table of tables: [" + section + ".NAME]");
      return;
    }
    for (auto&& [name, inst] : *tbl) {
      if (!inst.is_table()) {
        diags.add(location_of(inst), std::string(section) + "." + std::string(name.str()) +
                                         " must be a table: [" + section + "." + std::string(name.str()) + "]");
        continue;
      }
      add(std::string(name.str()), location_of(name.source()), *inst.as_table());
    }
  };
  collect("instances", [&](std::string name, Location where, const toml::table& tbl) {
    for (const auto& other : instances) {
      if (other.name == name) {
        diags.add(where, "duplicate instance '" + name + "' (first defined at " + other.where.str() + ")",
                  "instance names are unique in a deployment; to change an included instance use [overlays." + name + "]");
        return;
      }
    }
    RawInstance raw{std::move(name), std::move(where), tbl, {}};
    for (auto&& [k, v] : tbl) raw.origin[std::string(k.str())] = {location_of(k.source()), &v};
    instances.push_back(std::move(raw));
  });
  collect("overlays", [&](std::string name, Location where, const toml::table& tbl) {
    overlays.push_back({std::move(name), std::move(where), &tbl});
  });
  (void)source;
}

// ${NAME}, ${NAME:-default}, $$ → $; `{n}` becomes the copy number of a counted instance.
std::optional<std::string> substitute(const std::string& in, const toml::node& where, const EnvLookup& env,
                                      const std::string& n, Diagnostics& diags) {
  std::string out;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '$' && i + 1 < in.size() && in[i + 1] == '$') {
      out += '$';
      ++i;
    } else if (in[i] == '$' && i + 1 < in.size() && in[i + 1] == '{') {
      const auto close = in.find('}', i + 2);
      if (close == std::string::npos) {
        diags.add(location_of(where), "unterminated ${ in \"" + in + "\"", "write ${NAME} or ${NAME:-default}; $$ is a literal $");
        return std::nullopt;
      }
      std::string body = in.substr(i + 2, close - i - 2);
      std::optional<std::string> fallback;
      if (auto sep = body.find(":-"); sep != std::string::npos) {
        fallback = body.substr(sep + 2);
        body.resize(sep);
      }
      auto value = env(body);
      if (!value || (value->empty() && fallback)) value = fallback;
      if (!value) {
        diags.add(location_of(where), "environment variable " + body + " is not set",
                  "export " + body + "=…, or give a default: ${" + body + ":-value}");
        return std::nullopt;
      }
      out += *value;
      i = close;
    } else if (!n.empty() && in.compare(i, 3, "{n}") == 0) {
      out += n;
      i += 2;
    } else {
      out += in[i];
    }
  }
  return out;
}

// Substitutes in `copy`, reporting at the positions of `original` (same shape).
void substitute_all(toml::node& copy, const toml::node& original, const EnvLookup& env, const std::string& n,
                    Diagnostics& diags) {
  if (auto* s = copy.as_string()) {
    if (auto v = substitute(s->get(), original, env, n, diags)) s->get() = *v;
  } else if (auto* a = copy.as_array()) {
    const auto* oa = original.as_array();
    for (std::size_t i = 0; oa && i < a->size() && i < oa->size(); ++i) substitute_all(*a->get(i), *oa->get(i), env, n, diags);
  } else if (auto* t = copy.as_table()) {
    const auto* ot = original.as_table();
    for (auto&& [k, v] : *t) {
      if (const auto* ov = ot ? ot->get(k.str()) : nullptr) substitute_all(v, *ov, env, n, diags);
    }
  }
}

std::string expand_name(const std::string& pattern, std::int64_t n) {
  const auto pos = pattern.find("{n}");
  if (pos == std::string::npos) return pattern + "-" + std::to_string(n);
  return pattern.substr(0, pos) + std::to_string(n) + pattern.substr(pos + 3);
}

bool valid_instance_name(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '{' && c != '}') return false;
  }
  return true;
}

}  // namespace

std::string parse_nats_servers(const std::string& bus, std::vector<std::string>& servers) {
  servers.clear();
  std::size_t start = 0;
  while (start <= bus.size()) {
    const auto comma = std::min(bus.find(',', start), bus.size());
    std::string item = bus.substr(start, comma - start);
    while (!item.empty() && item.front() == ' ') item.erase(0, 1);
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (item.empty()) return "an empty server in the list";
    const bool has_scheme = item.find("://") != std::string::npos;
    if (has_scheme && !item.starts_with("nats://") && !item.starts_with("tls://"))
      return "server '" + redact_url(item) + "' is neither nats:// nor tls://";
    if (!has_scheme) item = "nats://" + item;  // the later ones may leave the scheme out
    const auto host_port = item.substr(item.find("://") + 3);
    const auto at = host_port.rfind('@');
    const auto hp = at == std::string::npos ? host_port : host_port.substr(at + 1);
    const auto colon = hp.rfind(':');
    unsigned port = 0;
    const char* end = hp.data() + hp.size();
    if (colon == std::string::npos || colon == 0 || std::from_chars(hp.data() + colon + 1, end, port).ptr != end ||
        port == 0 || port > 65535)
      return "server '" + redact_url(item) + "' is not host:port";
    servers.push_back(item);
    start = comma + 1;
  }
  return servers.empty() ? "no server" : "";
}

namespace {

void read_deployment(const toml::table& d, Manifest& m, const EnvLookup& env, Diagnostics& diags) {
  for (auto&& [key, node] : d) {
    const std::string k(key.str());
    if (std::find(deployment_keys.begin(), deployment_keys.end(), k) == deployment_keys.end()) {
      diags.add(location_of(key.source()), "unknown key '" + k + "' in [deployment]." + did_you_mean(k, deployment_keys),
                "[deployment] keys are: " + join(deployment_keys));
    }
  }
  auto string_key = [&](const char* key, std::string& out) {
    if (auto* n = d.get(key)) {
      if (auto* s = n->as_string()) {
        if (auto v = substitute(s->get(), *n, env, {}, diags)) out = *v;
      } else {
        diags.add(location_of(*n), std::string("deployment.") + key + " must be a string, found " + type_of(*n));
      }
    }
  };
  auto int_key = [&](const char* key, std::int64_t lo, std::int64_t hi) -> std::optional<std::int64_t> {
    auto* n = d.get(key);
    if (!n) return std::nullopt;
    auto v = n->value_exact<std::int64_t>();
    if (!v) {
      diags.add(location_of(*n), std::string("deployment.") + key + " must be an integer, found " + type_of(*n));
      return std::nullopt;
    }
    if (*v < lo || *v > hi) {
      diags.add(location_of(*n), std::string("deployment.") + key + " = " + std::to_string(*v) + " is out of range " +
                                     std::to_string(lo) + ".." + std::to_string(hi));
      return std::nullopt;
    }
    return v;
  };
  if (d.get("name")) string_key("name", m.name);
  else diags.add(location_of(d), "[deployment] has no name", "add name = \"pilot\" (it names logs, metrics and var/NAME)");
  string_key("data_store", m.data_store);
  string_key("data_store_replica", m.data_store_replica);
  string_key("bus", m.bus);
  string_key("clock", m.clock);
  string_key("admin", m.admin);
  string_key("admin_token", m.admin_token);
  string_key("nats_user", m.nats_user);
  string_key("nats_password", m.nats_password);
  string_key("nats_token", m.nats_token);
  string_key("nats_ca", m.nats_ca);
  string_key("nats_cert", m.nats_cert);
  string_key("nats_key", m.nats_key);
  if (auto v = int_key("nats_reconnect_buffer_kb", 1, 1024 * 1024)) m.nats_reconnect_buffer_kb = static_cast<std::size_t>(*v);
  if (auto v = int_key("nats_reconnect_wait_ms", 10, 600000)) m.nats_reconnect_wait = std::chrono::milliseconds(*v);
  std::string state_dir;
  string_key("state_dir", state_dir);
  if (!state_dir.empty()) m.state_dir = state_dir;
  if (auto v = int_key("workers", 0, 256)) m.workers = static_cast<unsigned>(*v);
  if (auto v = int_key("admin_workers", 1, 64)) m.admin_workers = static_cast<unsigned>(*v);
  if (auto v = int_key("admin_inflight", 1, 100000)) m.admin_inflight = static_cast<std::size_t>(*v);
  if (auto v = int_key("blocking_workers", 1, 256)) m.blocking_workers = static_cast<unsigned>(*v);
  if (auto v = int_key("blocking_queue", 1, 1000000)) m.blocking_queue = static_cast<std::size_t>(*v);
  if (auto v = int_key("bus_block_timeout_ms", 0, 600000)) m.bus_block_timeout = std::chrono::milliseconds(*v);
  if (auto v = int_key("start_timeout_s", 1, 3600)) m.start_timeout = std::chrono::seconds(*v);
  if (auto v = int_key("stop_timeout_s", 1, 3600)) m.stop_timeout = std::chrono::seconds(*v);
  if (auto* n = d.get("plugin_path")) {
    auto* arr = n->as_array();
    if (!arr) diags.add(location_of(*n), "deployment.plugin_path must be an array of directories");
    for (std::size_t i = 0; arr && i < arr->size(); ++i) {
      if (auto s = arr->get(i)->value<std::string>()) m.plugin_path.push_back(*s);
      else diags.add(location_of(*arr->get(i)), "plugin_path entries must be strings");
    }
  }
  if (auto* n = d.get("clock_start")) {
    if (auto* dt = n->as_date_time()) {
      const auto& v = dt->get();
      if (!v.offset) {
        diags.add(location_of(*n), "clock_start needs a time zone offset", "write e.g. 2026-01-05T08:00:00Z");
      } else if (v.date.year < 1970 || v.date.year > 2200) {
        // Deployment time counts nanoseconds in 64 bits: about 1678..2262; keep well inside it.
        diags.add(location_of(*n), "clock_start year " + std::to_string(v.date.year) + " is outside 1970..2200");
      } else {
        std::tm tm{};
        tm.tm_year = v.date.year - 1900;
        tm.tm_mon = v.date.month - 1;
        tm.tm_mday = v.date.day;
        tm.tm_hour = v.time.hour;
        tm.tm_min = v.time.minute;
        tm.tm_sec = v.time.second;
        const auto secs = timegm(&tm) - static_cast<std::int64_t>(v.offset->minutes) * 60;
        m.clock_start = sdk::TimePoint(std::chrono::seconds(secs) + std::chrono::nanoseconds(v.time.nanosecond));
      }
    } else {
      diags.add(location_of(*n), "clock_start must be a TOML date-time, e.g. 2026-01-05T08:00:00Z");
    }
  }
  if (m.clock != "real" && m.clock != "virtual")
    diags.add(location_of(*d.get("clock")), "clock = \"" + m.clock + "\" is not a clock", "use \"real\" or \"virtual\"");
  if (m.clock_start && m.clock != "virtual")
    diags.add(location_of(*d.get("clock_start")), "clock_start applies only to clock = \"virtual\"");
  if (m.bus.starts_with("nats://") || m.bus.starts_with("tls://")) {
    if (auto error = parse_nats_servers(m.bus, m.bus_servers); !error.empty())
      diags.add(location_of(*d.get("bus")), "bus: " + error, "write bus = \"nats://127.0.0.1:4222\" (several servers separated by commas)");
  } else if (m.bus != "inproc") {
    diags.add(location_of(*d.get("bus")), "bus = \"" + redact_url(m.bus) + "\" is not a bus",
              "use bus = \"inproc\" (one process) or bus = \"nats://host:port[,host:port…]\" (across processes)");
  }
  const bool nats = !m.bus_servers.empty();
  for (const char* key : {"nats_user", "nats_password", "nats_token", "nats_ca", "nats_cert", "nats_key",
                          "nats_reconnect_buffer_kb", "nats_reconnect_wait_ms"}) {
    if (!nats && d.get(key))
      diags.add(location_of(*d.get(key)), std::string(key) + " applies only to a NATS bus", "set bus = \"nats://host:port\" or remove it");
  }
  if (nats && m.nats_user.empty() != m.nats_password.empty())
    diags.add(location_of(*d.get(m.nats_user.empty() ? "nats_password" : "nats_user")), "nats_user and nats_password go together");
  if (nats && !m.nats_token.empty() && !m.nats_user.empty())
    diags.add(location_of(*d.get("nats_token")), "give NATS either a token or a user and password, not both");
  if (nats && m.nats_cert.empty() != m.nats_key.empty())
    diags.add(location_of(*d.get(m.nats_cert.empty() ? "nats_key" : "nats_cert")), "nats_cert and nats_key go together");
}

Manifest finish(Loader& loader, const std::filesystem::path& file, const EnvLookup& env) {
  Manifest m;
  m.file = file;
  Diagnostics& diags = loader.diags;
  if (loader.deployment) {
    read_deployment(*loader.deployment, m, env, diags);
  } else if (diags.empty()) {
    diags.add(Location{file.string()}, "the manifest has no [deployment] table",
              "start it with [deployment] and name = \"…\"");
  }
  if (m.state_dir.empty() && !m.name.empty()) m.state_dir = std::filesystem::path("var") / m.name;
  if (m.data_store.empty() && !m.state_dir.empty()) m.data_store = "sqlite:" + (m.state_dir / "datastore.db").string();

  // Overlays patch instances defined anywhere (typically in an included fragment).
  for (auto& o : loader.overlays) {
    auto it = std::find_if(loader.instances.begin(), loader.instances.end(), [&](auto& i) { return i.name == o.target; });
    if (it == loader.instances.end()) {
      std::vector<std::string> names;
      for (auto& i : loader.instances) names.push_back(i.name);
      diags.add(o.where, "overlay for unknown instance '" + o.target + "'." + did_you_mean(o.target, names),
                "an overlay changes keys of an instance defined in [instances.NAME] here or in an included file");
      continue;
    }
    for (auto&& [k, v] : *o.table) {
      it->table.insert_or_assign(k, v);
      it->origin[std::string(k.str())] = {location_of(k.source()), &v};
    }
  }

  std::set<std::string> seen;
  for (auto& raw : loader.instances) {
    if (!valid_instance_name(raw.name)) {
      diags.add(raw.where, "instance name '" + raw.name + "' may use only letters, digits, '-', '_' and {n}");
      continue;
    }
    InstanceSpec base;
    base.where = raw.where;
    // Reserved keys are read from the original nodes, so errors carry their positions.
    auto original = [&](const char* key) -> const toml::node* {
      auto it = raw.origin.find(key);
      return it == raw.origin.end() ? nullptr : it->second.second;
    };
    if (auto* p = original("plugin")) {
      if (auto s = p->value<std::string>()) {
        base.plugin = *s;
        base.plugin_where = location_of(*p);
      } else {
        diags.add(location_of(*p), "instances." + raw.name + ".plugin must be a string (a plugin name)");
      }
    } else {
      diags.add(raw.where, "instance '" + raw.name + "' names no plugin", "add plugin = \"NAME\"; `deskfarm plugins` lists them");
    }
    if (auto* r = original("requires")) {
      if (auto* arr = r->as_array()) {
        for (auto& item : *arr) {
          if (auto s = item.value<std::string>()) base.requires_instances.emplace_back(*s, location_of(item));
          else diags.add(location_of(item), "requires entries must be instance names (strings)");
        }
      } else {
        diags.add(location_of(*r), "requires must be an array of instance names, e.g. requires = [\"xen-pool\"]");
      }
    }
    std::int64_t count = 1;
    bool counted = false;
    if (auto* c = original("count")) {
      auto v = c->value_exact<std::int64_t>();
      if (!v || *v < 1 || *v > max_count) {
        diags.add(location_of(*c), "count must be an integer from 1 to " + std::to_string(max_count));
        continue;
      }
      count = *v;
      counted = true;
    }
    for (auto&& [k, v] : raw.table) {
      const std::string key(k.str());
      if (std::find(reserved_instance_keys.begin(), reserved_instance_keys.end(), key) != reserved_instance_keys.end()) continue;
      base.config.insert(k, v);
      base.key_where[key] = raw.origin[key].first;
      base.value_where[key] = location_of(*raw.origin[key].second);
    }
    for (std::int64_t n = 1; n <= count; ++n) {
      InstanceSpec spec = base;
      spec.name = counted ? expand_name(raw.name, n) : raw.name;
      const std::string copy = counted ? std::to_string(n) : std::string{};
      for (auto& [req, loc] : spec.requires_instances) {
        if (auto v = substitute(req, *original("requires"), env, copy, diags)) req = *v;
      }
      for (auto&& [k, v] : spec.config) substitute_all(v, *raw.origin[std::string(k.str())].second, env, copy, diags);
      if (!seen.insert(spec.name).second) {
        diags.add(raw.where, "duplicate instance '" + spec.name + "'" + (counted ? " (from count expansion)" : ""));
        continue;
      }
      m.instances.push_back(std::move(spec));
    }
  }
  diags.throw_if_any();
  return m;
}

}  // namespace

std::string type_of(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::array: return "array";
    case toml::node_type::table: return "table";
    default: return "date/time";
  }
}

bool type_fits(const toml::node& n, std::uint32_t type) {
  switch (type) {
    case DK_STRING: return n.is_string();
    case DK_INTEGER: return n.is_integer();
    case DK_FLOAT: return n.is_number();
    case DK_BOOLEAN: return n.is_boolean();
    case DK_STRING_ARRAY:
      return n.is_array() && std::all_of(n.as_array()->begin(), n.as_array()->end(), [](auto& e) { return e.is_string(); });
    case DK_TABLE: return n.is_table();
    case DK_ARRAY: return n.is_array();
    default: return false;
  }
}

Location location_of(const toml::source_region& region) {
  return Location{region.path ? *region.path : std::string{}, region.begin.line, region.begin.column};
}

Location location_of(const toml::node& node) { return location_of(node.source()); }

EnvLookup process_environment() {
  return [](const std::string& name) -> std::optional<std::string> {
    if (const char* v = std::getenv(name.c_str())) return std::string(v);
    return std::nullopt;
  };
}

Manifest load_manifest(const std::filesystem::path& file, const EnvLookup& env) {
  Loader loader{env, {}, {}, {}, {}, nullptr, {}};
  loader.load_file(file, Location{file.string()}, true);
  return finish(loader, file, env);  // reports what loading found together with the rest
}

Manifest load_manifest_text(std::string_view text, const std::string& source_name, const EnvLookup& env,
                            const std::filesystem::path& base_dir) {
  Loader loader{env, {}, {}, {}, {}, nullptr, {}};
  auto doc = parse(text, source_name, loader.diags);
  if (doc) loader.load_table(std::move(doc), base_dir / source_name, true);
  return finish(loader, base_dir / source_name, env);
}

}  // namespace deskfarm::kernel
