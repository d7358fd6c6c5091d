// The test kit over the kernel: a Deployment, its log sink and plugin catalog, and a bus client of its own.
#include "deskfarm/testing/harness.hpp"

#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <toml++/toml.h>

#include <deskfarm/testing/temp_dir.hpp>

#include "deployment.hpp"
#include "plugin_loader.hpp"
#include "runtime.hpp"

namespace deskfarm::testing {

namespace detail {

struct ProbeState {
  explicit ProbeState(std::string p) : pattern(std::move(p)) {}
  const std::string pattern;
  mutable std::mutex mutex;
  std::condition_variable arrived;
  std::deque<sdk::Message> pending;  // not taken yet
  std::vector<sdk::Message> all;

  void add(const sdk::Message& m) {
    {
      std::lock_guard lock(mutex);
      pending.push_back(m);
      all.push_back(m);
    }
    arrived.notify_all();
  }
  /// The next pending message `accept` takes; those it refuses are dropped. mutex held.
  std::optional<sdk::Message> take_locked(const std::function<bool(const sdk::Message&)>& accept) {
    while (!pending.empty()) {
      sdk::Message m = std::move(pending.front());
      pending.pop_front();
      if (!accept || accept(m)) return m;
    }
    return std::nullopt;
  }
  std::optional<sdk::Message> take(const std::function<bool(const sdk::Message&)>& accept) {
    std::lock_guard lock(mutex);
    return take_locked(accept);
  }
  /// Makes the held messages independent of the plugins that published them, before their libraries are
  /// unloaded: a body's deleter, its encode function and the type name all live in the plugin's module.
  void detach() {
    std::lock_guard lock(mutex);
    auto own = [this](sdk::Message& m) {
      if (m.body) {
        m.bytes = m.encoded();
        m.body.reset();
        m.encode = nullptr;
      }
      m.type = *type_names.emplace(m.type).first;
    };
    for (auto& m : pending) own(m);
    for (auto& m : all) own(m);
  }
  std::set<std::string, std::less<>> type_names;  // detached messages' types point here
};

struct HarnessCore {
  std::optional<TempDir> temp;  // the default state_dir
  std::filesystem::path state_dir;
  bool echo = false;
  mutable std::mutex lines_mutex;
  std::vector<std::string> lines;
  kernel::LogSink log;
  std::unique_ptr<kernel::PluginCatalog> catalog;
  std::unique_ptr<kernel::Deployment> deployment;
  kernel::BusClient* client = nullptr;  // owned by the running deployment
  std::vector<sdk::Subscription> subscriptions;  // the probes'; they end before the deployment stops
  std::vector<std::weak_ptr<ProbeState>> probes;

  kernel::VirtualClock* virtual_clock() const { return deployment ? deployment->virtual_clock() : nullptr; }
  kernel::Deployment& running(const char* what) const {
    if (!deployment || !deployment->running())
      throw std::logic_error(std::string("Harness::") + what + ": the deployment is not running; call start() first");
    return *deployment;
  }
  kernel::VirtualClock& virtual_clock(const char* what) const {
    auto* vc = running(what).virtual_clock();
    if (!vc)
      throw std::logic_error(std::string("Harness::") + what +
                             ": the deployment has a real clock; set clock = \"virtual\" in [deployment] or HarnessOptions");
    return *vc;
  }
  void stop() {
    subscriptions.clear();
    client = nullptr;
    if (deployment) deployment->stop();
    // The catalog still holds the plugin libraries here, so the bodies can still be encoded.
    for (auto& weak : probes) {
      if (auto p = weak.lock()) p->detach();
    }
    probes.clear();
  }
};

}  // namespace detail

namespace {

std::vector<std::filesystem::path> plugin_dirs(const std::vector<std::filesystem::path>& given,
                                               const kernel::Manifest* manifest) {
  std::vector<std::filesystem::path> dirs = given;
  if (dirs.empty()) {
    if (const char* env = std::getenv("DESKFARM_PLUGIN_PATH")) dirs = kernel::split_path_list(env);
  }
  if (manifest) {
    for (const auto& p : manifest->plugin_path) dirs.push_back(manifest->file.parent_path() / p);
  }
  auto defaults = kernel::default_plugin_dirs();
  dirs.insert(dirs.end(), defaults.begin(), defaults.end());
  return dirs;
}

/// The keys the text's [deployment] table sets (none when the text does not parse: the kernel reports that).
struct Written {
  bool table = false, state_dir = false, data_store = false;
};
Written deployment_keys(const std::string& text) {
  Written w;
  try {
    const auto doc = toml::parse(text);
    if (const auto* d = doc["deployment"].as_table()) {
      w.table = true;
      w.state_dir = d->contains("state_dir");
      w.data_store = d->contains("data_store");
    }
  } catch (const toml::parse_error&) {
  }
  return w;
}

void describe_keys(const dk_config_key* keys, std::uint32_t count, const std::string& prefix,
                   std::vector<PluginInfo::Key>& out) {
  for (std::uint32_t i = 0; i < count; ++i) {
    const auto& k = keys[i];
    const std::string name = prefix + k.key;
    out.push_back({name, k.default_toml ? std::optional<std::string>(k.default_toml) : std::nullopt,
                   k.description ? k.description : ""});
    if (k.fields) describe_keys(k.fields, k.field_count, name + (k.type == DK_TABLE_ARRAY ? "[]." : "."), out);
  }
}

std::vector<std::string> roles(const char* const* list) {
  std::vector<std::string> out;
  for (auto p = list; p && *p; ++p) out.emplace_back(*p);
  return out;
}

}  // namespace

// ---- Probe ----

std::optional<sdk::Message> Probe::expect(std::chrono::nanoseconds within,
                                          const std::function<bool(const sdk::Message&)>& accept) {
  auto core = core_.lock();
  kernel::VirtualClock* vc = core && core->deployment && core->deployment->running() ? core->virtual_clock() : nullptr;
  if (!vc) {
    std::unique_lock lock(state_->mutex);
    std::optional<sdk::Message> got;
    state_->arrived.wait_for(lock, within, [&] { return (got = state_->take_locked(accept)).has_value(); });
    return got;
  }
  const auto limit = vc->now() + std::chrono::duration_cast<sdk::Duration>(within);
  // One batch of timers at a time, so time stops at the first message; bounded for a timer that re-arms at 0 s.
  constexpr std::size_t max_steps = 1'000'000;
  for (std::size_t i = 0; i < max_steps; ++i) {
    if (auto m = state_->take(accept)) return m;
    if (vc->step(limit) == 0) break;
  }
  if (auto m = state_->take(accept)) return m;
  if (vc->now() < limit) vc->advance(limit - vc->now());
  return state_->take(accept);
}

std::optional<sdk::Message> Probe::await(std::chrono::nanoseconds real_timeout) {
  std::unique_lock lock(state_->mutex);
  std::optional<sdk::Message> got;
  state_->arrived.wait_for(lock, real_timeout, [&] { return (got = state_->take_locked({})).has_value(); });
  return got;
}

std::vector<sdk::Message> Probe::received() const {
  std::lock_guard lock(state_->mutex);
  return state_->all;
}

std::size_t Probe::count() const {
  std::lock_guard lock(state_->mutex);
  return state_->all.size();
}

const std::string& Probe::pattern() const { return state_->pattern; }

// ---- Harness ----

Harness::Harness(const std::string& manifest_toml, HarnessOptions options) : core_(std::make_shared<detail::HarnessCore>()) {
  auto& c = *core_;
  c.echo = options.echo_logs;
  c.log.set_threshold(options.log_level);
  // Called from any worker: `c` outlives the deployment that calls it (same object, destroyed after it).
  c.log.capture([&c](const std::string& line) {
    std::lock_guard lock(c.lines_mutex);
    c.lines.push_back(line);
    if (c.echo) std::cerr << line << "\n";
  });
  const Written written = deployment_keys(manifest_toml);
  std::string text = manifest_toml;
  // Appended, not prepended, so the positions in error messages are those of the caller's text.
  if (!written.table) text += "\n[deployment]\nname = \"harness\"\n";
  kernel::Manifest manifest;
  try {
    manifest = kernel::load_manifest_text(text, options.source_name, kernel::process_environment());
  } catch (const std::exception& e) {
    throw std::runtime_error(e.what());
  }
  if (!options.clock.empty()) {
    if (options.clock != "real" && options.clock != "virtual")
      throw std::invalid_argument("HarnessOptions::clock = \"" + options.clock + "\": use \"real\" or \"virtual\"");
    manifest.clock = options.clock;
  }
  if (!written.state_dir) {
    if (options.state_dir.empty()) {
      c.temp.emplace("deskfarm-harness");
      manifest.state_dir = c.temp->path() / "var";
    } else {
      manifest.state_dir = options.state_dir;
    }
    if (!written.data_store) manifest.data_store = "sqlite:" + (manifest.state_dir / "datastore.db").string();
  }
  c.state_dir = manifest.state_dir;
  std::filesystem::create_directories(c.state_dir);
  c.catalog = std::make_unique<kernel::PluginCatalog>(plugin_dirs(options.plugin_path, &manifest));
  try {
    c.deployment = std::make_unique<kernel::Deployment>(std::move(manifest), *c.catalog, c.log);
  } catch (const std::exception& e) {
    throw std::runtime_error(e.what());
  }
}

namespace {
/// Stops what a Harness being destroyed or replaced ran; a failure is reported, not thrown (noexcept callers).
void stop_quietly(const std::shared_ptr<detail::HarnessCore>& core) noexcept {
  if (!core) return;
  try {
    core->stop();
  } catch (const std::exception& e) {
    std::cerr << "deskfarm::testing::Harness: stopping the deployment failed: " << e.what() << "\n";
  }
}
}  // namespace

Harness::~Harness() { stop_quietly(core_); }

Harness::Harness(Harness&&) noexcept = default;
Harness& Harness::operator=(Harness&& other) noexcept {
  if (this != &other) {
    stop_quietly(core_);
    core_ = std::move(other.core_);
  }
  return *this;
}

void Harness::start() {
  auto& c = *core_;
  if (c.deployment->running()) return;
  try {
    c.deployment->start();
  } catch (const std::exception& e) {
    throw std::runtime_error(e.what());
  }
  c.client = &c.deployment->open_client("harness");
}

void Harness::stop() { core_->stop(); }

bool Harness::running() const { return core_->deployment->running(); }

std::vector<std::string> Harness::instances() const { return core_->deployment->start_order(); }

bool Harness::is_virtual() const { return core_->deployment->manifest().clock == "virtual"; }

sdk::TimePoint Harness::now() const { return core_->running("now").clock().now(); }

void Harness::advance(sdk::Duration span) { core_->virtual_clock("advance").advance(span); }

void Harness::run_on(const std::string& instance, std::function<void(sdk::Plugin&, sdk::Context&)> task,
                     std::chrono::milliseconds timeout) {
  core_->running("run_on").run_on(instance, std::move(task), timeout);
}

sdk::Value Harness::status() {
  std::ostringstream json;
  core_->running("status").status()->stringify(json);
  return sdk::Value::parse_json(json.str());
}

sdk::Value Harness::instance_status(const std::string& instance, std::chrono::milliseconds timeout) {
  auto out = std::make_shared<sdk::Value>(sdk::Value::object());  // the task may outlive a timed-out wait
  run_on(instance, [out](sdk::Plugin& p, sdk::Context&) { p.status(*out); }, timeout);
  return *out;
}

void Harness::await_status(const std::string& instance, const std::string& key, const std::string& expected,
                           std::chrono::milliseconds within) {
  const auto end = std::chrono::steady_clock::now() + within;
  std::string seen = "(no field)";
  for (;;) {
    const auto status = instance_status(instance);
    if (const auto* v = status.find(key)) {
      if (v->is_string() && v->as_string() == expected) return;
      seen = v->is_string() ? "\"" + v->as_string() + "\"" : "a non-string value";
    }
    if (std::chrono::steady_clock::now() >= end)
      throw std::runtime_error(instance + ": status field \"" + key + "\" is still " + seen + ", not \"" + expected +
                               "\", after " + std::to_string(within.count()) + " ms");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string Harness::metrics_text() { return core_->running("metrics_text").metrics_text(); }

std::vector<std::string> Harness::logs() const {
  std::lock_guard lock(core_->lines_mutex);
  return core_->lines;
}

bool Harness::logged(std::string_view needle) const {
  std::lock_guard lock(core_->lines_mutex);
  for (const auto& l : core_->lines) {
    if (l.find(needle) != std::string::npos) return true;
  }
  return false;
}

Probe Harness::probe(const std::string& pattern) {
  auto& c = *core_;
  c.running("probe");
  if (auto error = sdk::subject_error(pattern, true); !error.empty())
    throw std::invalid_argument("Harness::probe(\"" + pattern + "\"): " + error);
  auto state = std::make_shared<detail::ProbeState>(pattern);
  c.subscriptions.push_back(c.client->bus.subscribe(pattern, [state](const sdk::Message& m) { state->add(m); }, sdk::SubscribeOptions{}));
  c.probes.push_back(state);
  return Probe(std::move(state), core_);
}

void Harness::with_bus(std::function<void(sdk::Bus&)> task) {
  auto& c = *core_;
  c.running("with_bus");
  c.client->strand.post([bus = &c.client->bus, task = std::move(task)] { task(*bus); });
}

JsonAnswer Harness::json_request(const std::string& subject, const std::string& json, std::chrono::milliseconds timeout) {
  const auto a = core_->running("json_request").request(subject, json, timeout);
  return {a.ok, a.type, a.body};
}

const std::filesystem::path& Harness::state_dir() const { return core_->state_dir; }

std::chrono::milliseconds Harness::reply_grace() { return std::chrono::seconds(2); }

PluginInfo Harness::describe(const std::string& name, const std::vector<std::filesystem::path>& plugin_path) {
  kernel::PluginCatalog catalog(plugin_dirs(plugin_path, nullptr));
  std::shared_ptr<kernel::PluginLibrary> lib;
  try {
    lib = catalog.find(name, kernel::Location{"Harness::describe"});
  } catch (const std::exception& e) {
    throw std::runtime_error(e.what());
  }
  const auto& d = lib->descriptor();
  PluginInfo info;
  info.file = lib->file();
  info.name = d.name;
  info.version = d.version ? d.version : "";
  info.sdk_version = d.sdk_version ? d.sdk_version : "";
  info.summary = d.summary ? d.summary : "";
  info.provides = roles(d.provides_roles);
  info.requires_roles = roles(d.requires_roles);
  describe_keys(d.config, d.config_count, "", info.config);
  return info;
}

}  // namespace deskfarm::testing
