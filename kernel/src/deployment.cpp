#include "deployment.hpp"

#include <algorithm>
#include <future>
#include <map>
#include <set>
#include <sstream>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>

#include "blocking_pool.hpp"
#include "bus.hpp"
#include "config_check.hpp"
#include "executor.hpp"
#include "metrics.hpp"
#include "store.hpp"

namespace deskfarm::kernel {

namespace {

const char* health_name(sdk::Health h) {
  switch (h) {
    case sdk::Health::ok: return "ok";
    case sdk::Health::degraded: return "degraded";
    case sdk::Health::failed: return "failed";
  }
  return "?";
}

/// Runs `fn` on `strand` and waits; returns the exception text, if any, or a timeout message.
std::optional<std::string> call_on(Strand& strand, const std::function<void()>& fn, std::chrono::milliseconds timeout,
                                   const std::string& what) {
  auto done = std::make_shared<std::promise<std::optional<std::string>>>();
  auto result = done->get_future();
  strand.post([fn, done] {
    try {
      fn();
      done->set_value(std::nullopt);
    } catch (const std::exception& e) {
      done->set_value(std::string(e.what()));  // copied now: the exception's code lives in the plugin
    } catch (...) {
      done->set_value(std::string("unknown exception"));
    }
  });
  if (result.wait_for(timeout) != std::future_status::ready) {
    return what + " did not return within " + std::to_string(timeout.count()) + " ms";
  }
  return result.get();
}

/// Wraps the deployment clock so every timer an instance sets is cancelled when it stops.
class InstanceClock final : public sdk::Clock {
 public:
  explicit InstanceClock(sdk::Clock& clock) : clock_(clock) {}
  sdk::TimePoint now() const override { return clock_.now(); }
  sdk::TimerId after(sdk::Duration delay, sdk::Executor& ex, std::function<void()> task) override {
    std::lock_guard lock(mutex_);
    if (closed_) return 0;
    // A one-shot timer forgets itself when it fires, so the set holds only live timers.
    auto slot = std::make_shared<std::atomic<sdk::TimerId>>(0);
    const auto id = clock_.after(delay, ex, [this, slot, t = std::move(task)] {
      forget(slot->load());
      t();
    });
    slot->store(id);
    ids_.insert(id);
    return id;
  }
  sdk::TimerId every(sdk::Duration period, sdk::Executor& ex, std::function<void()> task) override {
    std::lock_guard lock(mutex_);
    if (closed_) return 0;
    const auto id = clock_.every(period, ex, std::move(task));
    ids_.insert(id);
    return id;
  }
  bool cancel(sdk::TimerId id) override {
    std::lock_guard lock(mutex_);
    ids_.erase(id);
    return clock_.cancel(id);
  }
  bool is_virtual() const override { return clock_.is_virtual(); }
  void close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    for (auto id : ids_) clock_.cancel(id);
    ids_.clear();
  }

 private:
  void forget(sdk::TimerId id) {
    std::lock_guard lock(mutex_);
    ids_.erase(id);
  }
  sdk::Clock& clock_;
  std::mutex mutex_;
  std::set<sdk::TimerId> ids_;
  bool closed_ = false;
};

}  // namespace

/// Everything shared by the instances while the deployment runs.
struct Deployment::Runtime {
  explicit Runtime(const Manifest& m)
      : pool(m.workers),
        clock(m.clock == "virtual"
                  ? std::unique_ptr<sdk::Clock>(new VirtualClock(
                        pool, m.clock_start.value_or(std::chrono::time_point_cast<sdk::Duration>(std::chrono::system_clock::now()))))
                  : std::unique_ptr<sdk::Clock>(new RealClock)),
        bus(*clock, m.bus_block_timeout),
        store(m.data_store),
        blocking(m.blocking_workers, m.blocking_queue) {}
  Pool pool;
  std::unique_ptr<sdk::Clock> clock;
  BusCore bus;
  MetricsRegistry metrics;
  KernelStore store;
  BlockingPool blocking;
  /// Where operator requests (`deskfarm request`) enter the bus; replies run here.
  Strand admin_strand{pool, "admin"};
  InstanceBus admin_bus{bus, admin_strand};
  /// Discovery: what every running instance advertised. Guarded by its mutex (read from any executor).
  std::mutex directory_mutex;
  std::map<std::string, sdk::InstanceInfo> directory;
};

/// One instance: its spec, its plugin library, its context and (once created) its plugin object.
struct Deployment::Instance final : sdk::Context {
  InstanceSpec spec;
  std::shared_ptr<PluginLibrary> library;
  std::unique_ptr<sdk::Config> cfg;
  std::filesystem::path state_root;
  std::string deployment_name;
  std::string state = "validated";
  // Set while the deployment runs:
  Runtime* rt = nullptr;
  std::unique_ptr<Strand> strand;
  std::unique_ptr<InstanceBus> bus_view;
  std::unique_ptr<InstanceClock> clock_view;
  std::unique_ptr<InstanceLogger> logger;
  std::unique_ptr<InstanceMetrics> metrics_view;
  std::shared_ptr<sdk::Lifeline> line;
  std::map<std::string, std::string> endpoints;  // advertised while starting
  void* plugin = nullptr;

  const std::string& name() const override { return spec.name; }
  const std::string& deployment() const override { return deployment_name; }
  const sdk::Config& config() const override { return *cfg; }
  sdk::Bus& bus() override { return *bus_view; }
  sdk::Clock& clock() override { return *clock_view; }
  sdk::Executor& executor() override { return *strand; }
  sdk::Logger& log() override { return *logger; }
  sdk::Metrics& metrics() override { return *metrics_view; }
  sdk::Store& store() override { return rt->store; }
  std::filesystem::path state_dir() override {
    auto dir = state_root / spec.name;
    std::filesystem::create_directories(dir);
    return dir;
  }
  std::shared_ptr<sdk::Lifeline> lifeline() override { return line; }
  void advertise(const std::string& endpoint, const std::string& address) override {
    std::lock_guard lock(rt->directory_mutex);
    endpoints[endpoint] = address;
    if (auto it = rt->directory.find(spec.name); it != rt->directory.end()) it->second.endpoints = endpoints;
  }
  std::vector<sdk::InstanceInfo> instances(const std::string& role) override {
    std::lock_guard lock(rt->directory_mutex);
    std::vector<sdk::InstanceInfo> out;
    for (const auto& [_, info] : rt->directory) {
      if (role.empty() || std::find(info.roles.begin(), info.roles.end(), role) != info.roles.end()) out.push_back(info);
    }
    return out;
  }
  void submit_blocking(std::function<void(std::stop_token)> work) override { rt->blocking.submit(spec.name, std::move(work)); }
  sdk::InstanceInfo info(const std::string& st) {
    std::lock_guard lock(rt->directory_mutex);
    return sdk::InstanceInfo{spec.name, spec.plugin, library->provides(), endpoints, st};
  }
  sdk::Plugin& object() { return *static_cast<sdk::Plugin*>(plugin); }

  /// Destroys the plugin (inside its own module) and then the context pieces it used.
  void destroy() {
    // Nothing may run on the plugin once it is gone. Its own threads may have posted through the lifeline while
    // stop() ran (a closing connection, say), and the strand may be running that on a worker right now: refuse
    // further posts, then let what is queued finish before the plugin is destroyed.
    if (line) line->end();
    // A task stuck for 30 s keeps the plugin alive (leaked) rather than destroyed under it.
    if (plugin && strand && call_on(*strand, [] {}, std::chrono::seconds(30), "queued work")) plugin = nullptr;
    if (plugin) {
      library->descriptor().destroy(plugin);
      plugin = nullptr;
    }
    if (bus_view) bus_view->close();
    if (clock_view) clock_view->close();
    if (strand) strand->close();
    strand.reset();
    bus_view.reset();
    clock_view.reset();
  }
};

Deployment::Deployment(Manifest manifest, PluginCatalog& catalog, LogSink& log) : manifest_(std::move(manifest)), log_(log) {
  Diagnostics diags;
  const Location top{manifest_.file.string()};
  try {
    (void)StoreUrl::parse(manifest_.data_store);
  } catch (const std::invalid_argument& e) {
    diags.add(top, e.what());
  }

  std::vector<std::unique_ptr<Instance>> all;
  std::map<std::string, std::size_t> index;
  std::set<std::string> failed_plugins;  // report a broken plugin once, not once per instance
  for (auto& spec : manifest_.instances) {
    auto inst = std::make_unique<Instance>();
    inst->spec = spec;
    inst->state_root = manifest_.state_dir;
    inst->deployment_name = manifest_.name;
    try {
      inst->library = catalog.find(spec.plugin, spec.plugin_where);
    } catch (const ValidationError& e) {
      if (failed_plugins.insert(spec.plugin).second)
        for (const auto& d : e.diagnostics()) diags.add(d.where, d.message, d.hint);
      index[spec.name] = all.size();
      all.push_back(std::move(inst));
      continue;
    }
    // Config: every key known, typed, in range and choices, required keys present, defaults filled in.
    const auto& d = inst->library->descriptor();
    const auto& sp = inst->spec;
    auto where = [&sp](const std::string& key) {
      const auto k = sp.key_where.find(key);
      const auto v = sp.value_where.find(key);
      return ValueSite{k == sp.key_where.end() ? &sp.where : &k->second, v == sp.value_where.end() ? &sp.where : &v->second};
    };
    const std::size_t before = diags.size();
    sdk::Value values = check_config(spec.config, d.config, d.config_count, where,
                                      "instance " + spec.name + " (plugin " + spec.plugin + ")", diags);
    inst->cfg = std::make_unique<sdk::Config>(std::move(values));
    // The plugin's own checks run only on a config that passed the schema.
    if (d.validate && diags.size() == before) {
      dk_error error{};
      if (d.validate(static_cast<const void*>(inst->cfg.get()), &error) != 0) {
        const auto v = error.key[0] ? sp.value_where.find(error.key) : sp.value_where.end();
        diags.add(v == sp.value_where.end() ? sp.where : v->second,
                  "instance " + spec.name + " (plugin " + spec.plugin + "): " + error.message);
      }
    }
    index[spec.name] = all.size();
    all.push_back(std::move(inst));
  }

  // Dependencies: explicit requires, plus every instance that provides a role the plugin requires.
  std::vector<std::vector<std::size_t>> deps(all.size());
  for (std::size_t i = 0; i < all.size(); ++i) {
    auto& inst = *all[i];
    for (const auto& [req, loc] : inst.spec.requires_instances) {
      auto it = index.find(req);
      if (it == index.end()) {
        std::vector<std::string> names;
        for (auto& [n, _] : index) names.push_back(n);
        diags.add(loc, "instance " + inst.spec.name + " requires '" + req + "', which is not an instance of this deployment." +
                           did_you_mean(req, names));
      } else if (it->second == i) {
        diags.add(loc, "instance " + inst.spec.name + " requires itself");
      } else {
        deps[i].push_back(it->second);
      }
    }
    if (!inst.library) continue;
    for (const auto& role : inst.library->requires_roles()) {
      std::vector<std::size_t> providers;
      for (std::size_t j = 0; j < all.size(); ++j) {
        if (j == i || !all[j]->library) continue;
        const auto p = all[j]->library->provides();
        if (std::find(p.begin(), p.end(), role) != p.end()) providers.push_back(j);
      }
      if (providers.empty()) {
        diags.add(inst.spec.where, "instance " + inst.spec.name + " (plugin " + inst.spec.plugin + ") requires role '" + role +
                                       "', which no instance in this deployment provides",
                  "add an instance of a plugin that provides '" + role + "' (`deskfarm plugins` lists roles)");
      }
      deps[i].insert(deps[i].end(), providers.begin(), providers.end());
    }
  }

  // Topological order, stable by manifest position; a cycle is reported as a path.
  std::vector<int> mark(all.size(), 0);  // 0 new, 1 on stack, 2 done
  std::vector<std::size_t> order;
  std::vector<std::size_t> stack;
  bool cycle_reported = false;
  std::function<void(std::size_t)> visit = [&](std::size_t i) {
    if (mark[i] == 2) return;
    if (mark[i] == 1) {
      if (!cycle_reported) {
        auto from = std::find(stack.begin(), stack.end(), i);
        std::string path;
        for (auto it = from; it != stack.end(); ++it) path += all[*it]->spec.name + " → ";
        path += all[i]->spec.name;
        diags.add(all[i]->spec.where, "dependency cycle: " + path,
                  "an instance cannot (directly or through roles) require one that requires it; remove one `requires` entry");
        cycle_reported = true;
      }
      return;
    }
    mark[i] = 1;
    stack.push_back(i);
    for (auto d : deps[i]) visit(d);
    stack.pop_back();
    mark[i] = 2;
    order.push_back(i);
  };
  for (std::size_t i = 0; i < all.size(); ++i) visit(i);
  diags.throw_if_any();
  for (auto i : order) instances_.push_back(std::move(all[i]));
}

Deployment::~Deployment() { stop(); }

std::vector<std::string> Deployment::start_order() const {
  std::vector<std::string> out;
  for (const auto& i : instances_) out.push_back(i->spec.name);
  return out;
}

sdk::Clock& Deployment::clock() {
  if (!runtime_) throw std::logic_error("deployment is not running");
  return *runtime_->clock;
}

VirtualClock* Deployment::virtual_clock() {
  return runtime_ ? dynamic_cast<VirtualClock*>(runtime_->clock.get()) : nullptr;
}

void Deployment::start() {
  if (running_) return;
  runtime_ = std::make_unique<Runtime>(manifest_);
  log_.set_clock(runtime_->clock.get());
  const std::string subject = "kernel";
  log_.write(sdk::LogLevel::info, subject, "deployment " + manifest_.name + ": starting " + std::to_string(instances_.size()) +
                                               " instances (clock " + manifest_.clock + ", " +
                                               std::to_string(runtime_->pool.threads()) + " workers)");
  // Create every instance first: constructors validate their config before anything starts.
  Diagnostics diags;
  for (auto& inst : instances_) {
    inst->rt = runtime_.get();
    inst->strand = std::make_unique<Strand>(runtime_->pool, inst->spec.name);
    inst->bus_view = std::make_unique<InstanceBus>(runtime_->bus, *inst->strand);
    inst->clock_view = std::make_unique<InstanceClock>(*runtime_->clock);
    inst->logger = std::make_unique<InstanceLogger>(log_, inst->spec.name);
    inst->metrics_view = std::make_unique<InstanceMetrics>(runtime_->metrics, inst->spec.name);
    inst->line = std::make_shared<sdk::Lifeline>(*inst->strand);
    dk_error error{};
    inst->plugin = inst->library->descriptor().create(static_cast<sdk::Context*>(inst.get()), &error);
    if (!inst->plugin) {
      Location where = inst->spec.where;
      if (error.key[0]) {
        if (auto it = inst->spec.value_where.find(error.key); it != inst->spec.value_where.end()) where = it->second;
      }
      diags.add(where, "instance " + inst->spec.name + " (plugin " + inst->spec.plugin + ") could not be created: " + error.message);
    } else {
      inst->state = "created";
    }
  }
  if (!diags.empty()) {
    destroy_all();
    runtime_.reset();
    log_.set_clock(nullptr);
    diags.throw_if_any();
  }
  for (std::size_t i = 0; i < instances_.size(); ++i) {
    auto& inst = *instances_[i];
    inst.state = "starting";
    auto error = call_on(*inst.strand, [&inst] { inst.object().start(); },
                         std::chrono::duration_cast<std::chrono::milliseconds>(manifest_.start_timeout), "start()");
    if (error) {
      inst.state = "failed";
      const std::string message = "instance " + inst.spec.name + " (plugin " + inst.spec.plugin + ") failed to start: " + *error;
      log_.write(sdk::LogLevel::error, subject, message + "; stopping the " + std::to_string(i) + " instances already started");
      stop_started(i);
      destroy_all();
      runtime_.reset();
      log_.set_clock(nullptr);
      throw StartError(message);
    }
    inst.state = "running";
    {
      auto info = inst.info("running");
      std::lock_guard lock(runtime_->directory_mutex);
      runtime_->directory[inst.spec.name] = info;
    }
    runtime_->bus.publish(sdk::make_message(sdk::instance_up_subject, inst.info("running")));
    log_.write(sdk::LogLevel::info, subject, "instance " + inst.spec.name + " (" + inst.spec.plugin + " " +
                                                 inst.library->descriptor().version + ") running");
  }
  running_ = true;
  started_at_ = std::chrono::steady_clock::now();
}

void Deployment::stop_started(std::size_t count) {
  for (std::size_t i = count; i-- > 0;) {
    auto& inst = *instances_[i];
    if (inst.state != "running" && inst.state != "failed") continue;
    inst.state = "stopping";
    {
      std::lock_guard lock(runtime_->directory_mutex);
      runtime_->directory.erase(inst.spec.name);
    }
    runtime_->bus.publish(sdk::make_message(sdk::instance_down_subject, inst.info("stopped")));
    inst.bus_view->close();
    inst.clock_view->close();
    auto error = call_on(*inst.strand, [&inst] { inst.object().stop(); }, std::chrono::seconds(30), "stop()");
    if (inst.line) inst.line->end();  // from now on the plugin's threads and blocking work post nothing more
    if (error) log_.write(sdk::LogLevel::error, "kernel", "instance " + inst.spec.name + " failed to stop cleanly: " + *error);
    if (!runtime_->blocking.cancel(inst.spec.name, std::chrono::seconds(30)))
      log_.write(sdk::LogLevel::error, "kernel", "instance " + inst.spec.name + ": blocking work still runs 30 s after stop");
    inst.state = "stopped";
    log_.write(sdk::LogLevel::info, "kernel", "instance " + inst.spec.name + " stopped");
  }
}

void Deployment::destroy_all() {
  for (auto it = instances_.rbegin(); it != instances_.rend(); ++it) (*it)->destroy();
}

void Deployment::stop() {
  if (!runtime_) return;
  stop_started(instances_.size());
  destroy_all();
  runtime_->admin_bus.close();
  runtime_->admin_strand.close();
  running_ = false;
  runtime_->pool.shutdown();
  log_.write(sdk::LogLevel::info, "kernel", "deployment " + manifest_.name + " stopped");
  log_.set_clock(nullptr);
  runtime_.reset();
}

void Deployment::run_on(const std::string& instance, std::function<void(sdk::Plugin&, sdk::Context&)> task,
                        std::chrono::milliseconds timeout) {
  for (auto& inst : instances_) {
    if (inst->spec.name != instance) continue;
    if (!inst->plugin || !inst->strand) throw std::logic_error("instance " + instance + " is not running");
    auto* raw = inst.get();
    if (auto error = call_on(*inst->strand, [raw, &task] { task(raw->object(), *raw); }, timeout, "task on " + instance))
      throw std::runtime_error(*error);
    return;
  }
  throw std::invalid_argument("no instance named " + instance);
}

BusAnswer Deployment::request(const std::string& subject, const std::string& json, std::chrono::milliseconds timeout) {
  if (!runtime_) return {false, "not_running", "the deployment is not running"};
  if (auto error = sdk::subject_error(subject, false); !error.empty()) return {false, "bad_request", error};
  try {
    (void)sdk::Value::parse_json(json);
  } catch (const std::exception& e) {
    return {false, "bad_request", std::string("request body: ") + e.what()};
  }
  sdk::Message m;
  m.subject = subject;
  m.type = sdk::json_type;
  m.bytes = json;
  // The reply may come after we stopped waiting: it writes only into state it shares.
  auto done = std::make_shared<std::promise<BusAnswer>>();
  auto answer = done->get_future();
  runtime_->admin_strand.post([this, m = std::move(m), timeout, done]() mutable {
    runtime_->admin_bus.request(std::move(m), timeout, [done](const sdk::Message* reply, std::string_view error) {
      if (!reply) return done->set_value({false, sdk::detail::bus_error_code(error), std::string(error)});
      const bool failed = reply->type == sdk::Error::type_name;
      done->set_value({!failed, failed ? "error" : std::string(reply->type), reply->encoded()});
    });
  });
  if (answer.wait_for(timeout + std::chrono::seconds(2)) != std::future_status::ready)
    return {false, "timeout", "no answer within " + std::to_string(timeout.count()) + " ms"};
  return answer.get();
}

Poco::JSON::Object::Ptr Deployment::status() {
  Poco::JSON::Object::Ptr out = new Poco::JSON::Object;
  out->set("deployment", manifest_.name);
  out->set("manifest", manifest_.file.string());
  out->set("clock", manifest_.clock);
  out->set("running", running_);
  if (runtime_) {
    const auto now = runtime_->clock->now();
    out->set("time_unix_ms", static_cast<Poco::Int64>(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count()));
    out->set("uptime_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - started_at_).count());
  }
  Poco::JSON::Array::Ptr list = new Poco::JSON::Array;
  for (auto& inst : instances_) {
    Poco::JSON::Object::Ptr o = new Poco::JSON::Object;
    o->set("name", inst->spec.name);
    o->set("plugin", inst->spec.plugin);
    o->set("version", std::string(inst->library->descriptor().version));
    o->set("state", inst->state);
    if (inst->plugin && inst->state == "running") {
      auto fields = std::make_shared<sdk::Value>(sdk::Value::object());
      std::string health = "ok";
      auto* raw = inst.get();
      auto error = call_on(*inst->strand, [raw, f = fields.get(), &health] {
        raw->object().status(*f);
        health = health_name(raw->object().health());
      }, std::chrono::seconds(2), "status()");
      if (error) {
        health = "unknown";
        o->set("status_error", *error);
      }
      o->set("health", health);
      o->set("fields", Poco::JSON::Parser().parse(fields->to_json()));
    }
    list->add(o);
  }
  out->set("instances", list);
  return out;
}

std::string Deployment::metrics_text() {
  std::string out;
  out += "# HELP deskfarm_instances Instances of the deployment by state.\n# TYPE deskfarm_instances gauge\n";
  std::map<std::string, int> states;
  for (auto& inst : instances_) states[inst->state]++;
  for (auto& [state, n] : states) out += "deskfarm_instances{state=\"" + state + "\"} " + std::to_string(n) + "\n";
  if (!runtime_) return out;
  out += "# HELP deskfarm_bus_published_total Messages published, by subject.\n# TYPE deskfarm_bus_published_total counter\n";
  std::string delivered =
      "# HELP deskfarm_bus_delivered_total Messages queued to subscribers, by subject.\n# TYPE deskfarm_bus_delivered_total counter\n";
  std::string dropped =
      "# HELP deskfarm_bus_dropped_total Messages dropped by a full subscriber queue, by subscription pattern.\n"
      "# TYPE deskfarm_bus_dropped_total counter\n";
  for (const auto& [subject, c] : runtime_->bus.subject_counters()) {
    if (subject.starts_with("$drops.")) {
      dropped += "deskfarm_bus_dropped_total" + render_labels({{"pattern", subject.substr(7)}}) + " " + std::to_string(c[2]) + "\n";
      continue;
    }
    const auto labels = render_labels({{"subject", subject}});
    out += "deskfarm_bus_published_total" + labels + " " + std::to_string(c[0]) + "\n";
    delivered += "deskfarm_bus_delivered_total" + labels + " " + std::to_string(c[1]) + "\n";
  }
  out += delivered + dropped;
  out += "# HELP deskfarm_bus_late_replies_total Replies that arrived after their request timed out.\n"
         "# TYPE deskfarm_bus_late_replies_total counter\ndeskfarm_bus_late_replies_total " +
         std::to_string(runtime_->bus.late_replies()) + "\n";
  out += runtime_->metrics.render();
  return out;
}

}  // namespace deskfarm::kernel
