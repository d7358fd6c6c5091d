// The lifecycle of a deployment: validate, create every instance, start in order, stop in reverse.
#include "deployment.hpp"

#include <algorithm>
#include <cstring>
#include <future>
#include <set>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include "config_check.hpp"
#include "dependency_graph.hpp"
#include "instance.hpp"
#include "redact.hpp"
#include "runtime.hpp"

namespace deskfarm::kernel {

namespace {
/// Gives up an object on purpose (see teardown): LeakSanitizer is told, so a deliberate leak is not a finding,
/// while anything else that leaks still is.
template <class T>
void abandon(std::unique_ptr<T>& owner) {
  T* p = owner.release();
#if defined(__SANITIZE_ADDRESS__)
  __lsan_ignore_object(p);
#else
  (void)p;
#endif
}

/// Where a plugin's refusal of config key `key` points: the key's top-level value (a nested key such as
/// "devices[0].mac" at "devices"), else the instance's table.
Location refused_at(const InstanceSpec& spec, const char* key) {
  const std::string top(key, std::strcspn(key, "[."));
  const auto v = top.empty() ? spec.value_where.end() : spec.value_where.find(top);
  return v == spec.value_where.end() ? spec.where : v->second;
}

/// The instance's config checked against its plugin's schema (types, ranges, choices, nested tables, defaults),
/// then by the plugin's own validate() when the schema found nothing: all before any instance exists.
std::unique_ptr<sdk::Config> checked_config(const Instance& inst, Diagnostics& diags) {
  const auto& d = inst.library->descriptor();
  const auto& sp = inst.spec;
  auto where = [&sp](const std::string& key) {
    const auto k = sp.key_where.find(key);
    const auto v = sp.value_where.find(key);
    return ValueSite{k == sp.key_where.end() ? &sp.where : &k->second, v == sp.value_where.end() ? &sp.where : &v->second};
  };
  const std::size_t before = diags.size();
  auto cfg = std::make_unique<sdk::Config>(check_config(sp.config, d.config, d.config_count, where, ConfigContext{sp.name, sp.plugin}, diags));
  if (d.validate && diags.size() == before) {
    dk_error error{};
    if (d.validate(static_cast<const void*>(cfg.get()), &error) != 0) {
      diags.add(refused_at(sp, error.key), "instance " + sp.name + " (plugin " + sp.plugin + ") refused its config: " + error.message);
    }
  }
  return cfg;
}
}  // namespace

Deployment::Deployment(Manifest manifest, PluginCatalog& catalog, LogSink& log)
    : manifest_(std::move(manifest)), log_(log), secrets_(url_secrets(manifest_.data_store)) {
  for (auto& secret : url_secrets(manifest_.data_store_replica)) secrets_.push_back(std::move(secret));
  if (!manifest_.admin_token.empty()) secrets_.push_back(manifest_.admin_token);
  for (const auto& secret : {manifest_.nats_password, manifest_.nats_token}) {
    if (!secret.empty()) secrets_.push_back(secret);
  }
  for (const auto& server : manifest_.bus_servers) {
    for (auto& secret : url_secrets(server)) secrets_.push_back(std::move(secret));
  }
  log_.set_secrets(secrets_);
  Diagnostics diags;
  const Location top{manifest_.file.string()};
  try {
    KernelStore check(manifest_.data_store, manifest_.data_store_replica);  // parses both; connects to neither
  } catch (const std::invalid_argument& e) {
    diags.add(top, e.what());
  }

  std::vector<std::unique_ptr<Instance>> all;
  std::vector<DependencyNode> nodes;
  std::set<std::string> failed_plugins;  // report a broken plugin once, not once per instance
  for (auto& spec : manifest_.instances) {
    auto inst = std::make_unique<Instance>();
    inst->spec = spec;
    inst->state_root = manifest_.state_dir;
    inst->deployment_name = manifest_.name;
    DependencyNode node{spec.name, spec.plugin, spec.where, spec.requires_instances, {}, {}, true};
    try {
      inst->library = catalog.find(spec.plugin, spec.plugin_where);
      inst->cfg = checked_config(*inst, diags);
      node.provides = inst->library->provides();
      node.requires_roles = inst->library->requires_roles();
    } catch (const ValidationError& e) {
      if (failed_plugins.insert(spec.plugin).second)
        for (const auto& d : e.diagnostics()) diags.add(d.where, d.message, d.hint);
      node.plugin_loaded = false;
    }
    nodes.push_back(std::move(node));
    all.push_back(std::move(inst));
  }
  const auto order = dependency_order(nodes, diags);
  diags.throw_if_any();
  for (auto i : order) instances_.push_back(std::move(all[i]));
}

std::string Deployment::redact(std::string text) const { return redact_secrets(std::move(text), secrets_); }

Deployment::~Deployment() {
  stop();
  for (auto& inst : instances_) {
    if (inst->leaked) abandon(inst);  // see Instance::destroy
  }
}

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

void Deployment::create_all() {
  first_missing_dir_.clear();
  for (auto dir = std::filesystem::absolute(manifest_.state_dir); !dir.empty() && !std::filesystem::exists(dir);
       dir = dir.parent_path()) {
    first_missing_dir_ = dir;
    if (dir == dir.parent_path()) break;
  }
  runtime_ = std::make_unique<Runtime>(manifest_);
  log_.set_clock(runtime_->clock.get());
  runtime_->store.observe([this](sdk::LogLevel level, const std::string& line) { log_.write(level, "kernel", line); },
                          &runtime_->metrics.counter("deskfarm_store_replica_fallbacks_total",
                                                     "read sessions the primary answered because the read replica did not", {}));
  if (!manifest_.bus_servers.empty()) {
    NatsSettings n;
    n.servers = manifest_.bus_servers;
    n.user = manifest_.nats_user;
    n.password = manifest_.nats_password;
    n.token = manifest_.nats_token;
    n.ca = manifest_.nats_ca;
    n.cert = manifest_.nats_cert;
    n.key = manifest_.nats_key;
    n.tls = !n.ca.empty() || !n.cert.empty() ||
            std::any_of(n.servers.begin(), n.servers.end(), [](const std::string& s) { return s.starts_with("tls://"); });
    n.reconnect_buffer_bytes = manifest_.nats_reconnect_buffer_kb * 1024;
    n.reconnect_wait = manifest_.nats_reconnect_wait;
    n.name = manifest_.name;
    runtime_->nats = std::make_unique<NatsTransport>(std::move(n), runtime_->bus, log_, secrets_);
    runtime_->bus.attach(runtime_->nats.get());  // before any instance exists, so before any subscription
  }
  // Constructors validate their config before anything starts.
  Diagnostics diags;
  for (auto& inst : instances_) {
    dk_error error{};
    if (!inst->create(*runtime_, log_, error)) {
      diags.add(refused_at(inst->spec, error.key), "instance " + inst->spec.name + " (plugin " + inst->spec.plugin + ") could not be created: " + redact(error.message));
    } else {
      inst->state = "created";
    }
  }
  if (!diags.empty()) {
    teardown();
    remove_created_dirs();
    diags.throw_if_any();
  }
}

void Deployment::remove_created_dirs() {
  std::error_code ignored;  // a directory a plugin wrote into is not empty, and stays
  for (auto& inst : instances_) {
    if (inst->created_state_dir) std::filesystem::remove(inst->state_root / inst->spec.name, ignored);
    inst->created_state_dir = false;
  }
  if (first_missing_dir_.empty()) return;
  for (auto dir = std::filesystem::absolute(manifest_.state_dir); dir.string().size() >= first_missing_dir_.string().size();
       dir = dir.parent_path()) {
    if (!std::filesystem::remove(dir, ignored) || dir == first_missing_dir_) break;
  }
}

void Deployment::check() {
  if (running_) return;
  create_all();
  teardown();
  remove_created_dirs();
  for (auto& inst : instances_) inst->state = "validated";
}

void Deployment::start() {
  if (running_) return;
  create_all();
  const std::string subject = "kernel";
  if (runtime_->nats) {
    try {
      runtime_->nats->connect();
    } catch (const std::exception& e) {
      const std::string message = redact(e.what());
      log_.write(sdk::LogLevel::error, subject, message);
      teardown();
      remove_created_dirs();
      throw StartError(message);
    }
  }
  log_.write(sdk::LogLevel::info, subject, "deployment " + manifest_.name + ": starting " + std::to_string(instances_.size()) +
                                               " instances (clock " + manifest_.clock + ", " +
                                               std::to_string(runtime_->pool.threads()) + " workers)");
  for (std::size_t i = 0; i < instances_.size(); ++i) {
    auto& inst = *instances_[i];
    inst.state = "starting";
    auto* raw = &inst;  // the Instance outlives a late start(): it is destroyed only after its strand drained
    auto error = call_on(*inst.strand, [raw] { raw->object().start(); },
                         std::chrono::duration_cast<std::chrono::milliseconds>(manifest_.start_timeout), "start()");
    if (error) {
      inst.state = "failed";
      const std::string message = "instance " + inst.spec.name + " (plugin " + inst.spec.plugin + ") failed to start: " + redact(*error);
      log_.write(sdk::LogLevel::error, subject, message + "; stopping the " + std::to_string(i) + " instances already started");
      stop_started(i);
      teardown();
      throw StartError(message);
    }
    inst.state = "running";
    announce(inst, true);
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
    if (inst.state == "running") announce(inst, false);
    inst.state = "stopping";
    inst.bus_view->close();
    inst.clock_view->close();
    auto* raw = &inst;
    auto error = call_on(*inst.strand, [raw] { raw->object().stop(); },
                         std::chrono::duration_cast<std::chrono::milliseconds>(manifest_.stop_timeout), "stop()");
    if (inst.line) inst.line->end();  // from now on the plugin's threads and blocking work post nothing more
    if (error) log_.write(sdk::LogLevel::error, "kernel", "instance " + inst.spec.name + " failed to stop cleanly: " + *error);
    // Its blocking work: queued jobs are dropped, running ones see their stop_token, and we wait for them.
    if (!runtime_->blocking.cancel(inst.spec.name, std::chrono::duration_cast<std::chrono::milliseconds>(manifest_.stop_timeout)))
      log_.write(sdk::LogLevel::error, "kernel", "instance " + inst.spec.name + ": blocking work still runs " +
                                                     std::to_string(manifest_.stop_timeout.count()) + " s after stop()");
    inst.state = "stopped";
    log_.write(sdk::LogLevel::info, "kernel", "instance " + inst.spec.name + " stopped");
  }
}

void Deployment::announce(Instance& inst, bool up) {
  auto info = inst.info(up ? "running" : "stopped");
  {
    std::lock_guard lock(runtime_->directory_mutex);
    if (up) runtime_->directory[inst.spec.name] = info;
    else runtime_->directory.erase(inst.spec.name);
  }
  runtime_->bus.publish(sdk::make_message(up ? sdk::instance_up_subject : sdk::instance_down_subject, std::move(info)));
}

void Deployment::teardown() {
  if (runtime_->nats) runtime_->nats->close();  // no message from another process reaches a strand from now on
  runtime_->admin.close();
  {
    std::lock_guard lock(runtime_->clients_mutex);
    for (auto& c : runtime_->clients) c->close();
  }
  const auto drain = std::chrono::duration_cast<std::chrono::milliseconds>(manifest_.stop_timeout);
  std::vector<std::string> leaked;
  for (auto it = instances_.rbegin(); it != instances_.rend(); ++it) {
    if (!(*it)->destroy(drain)) leaked.push_back((*it)->spec.name);
  }
  running_ = false;
  log_.set_clock(nullptr);
  if (leaked.empty()) {
    runtime_->pool.shutdown();
    runtime_.reset();
    return;
  }
  // A plugin call that never returns holds a worker thread and may still use the bus, clock and
  // store: deleting any of it would crash the process, joining the worker would hang it. Leak them.
  log_.write(sdk::LogLevel::error, "kernel",
             "instance " + join(leaked) + " did not return from a plugin call within " +
                 std::to_string(manifest_.stop_timeout.count()) +
                 " s (stop_timeout_s); it is left running and not destroyed; restart the process to reclaim it");
  abandon(runtime_);
}

void Deployment::stop() {
  if (!runtime_) return;
  stop_started(instances_.size());
  teardown();
  log_.write(sdk::LogLevel::info, "kernel", "deployment " + manifest_.name + " stopped");
}

void Deployment::request_async(const std::string& subject, const std::string& json, std::chrono::milliseconds timeout,
                               std::function<void(BusAnswer)> done) {
  if (!runtime_) return done({false, "not_running", "the deployment is not running"});
  if (auto error = sdk::subject_error(subject, false); !error.empty()) return done({false, "bad_request", error});
  try {
    (void)sdk::Value::parse_json(json);
  } catch (const std::exception& e) {
    return done({false, "bad_request", std::string("request body: ") + e.what()});
  }
  sdk::Message m;
  m.subject = subject;
  m.type = sdk::json_type;
  m.bytes = json;
  Runtime* rt = runtime_.get();
  rt->admin.strand.post([rt, m = std::move(m), timeout, done = std::move(done)]() mutable {
    rt->admin.bus.request(std::move(m), timeout, [done = std::move(done)](const sdk::Message* reply, std::string_view error) {
      if (!reply) return done({false, sdk::detail::bus_error_code(error), std::string(error)});
      const bool failed = reply->type == sdk::Error::type_name;
      done({!failed, failed ? "error" : std::string(reply->type), reply->encoded()});
    });
  });
}

BusAnswer Deployment::request(const std::string& subject, const std::string& json, std::chrono::milliseconds timeout) {
  // The reply may come after we stopped waiting: it writes only into state it shares.
  auto done = std::make_shared<std::promise<BusAnswer>>();
  auto answer = done->get_future();
  request_async(subject, json, timeout, [done](BusAnswer a) { done->set_value(std::move(a)); });
  if (answer.wait_for(timeout + std::chrono::seconds(2)) != std::future_status::ready)
    return {false, "timeout", "no answer within " + std::to_string(timeout.count()) + " ms"};
  return answer.get();
}

BusClient& Deployment::open_client(const std::string& name) {
  if (!runtime_) throw std::logic_error("bus client " + name + ": the deployment is not running; start() it first");
  std::lock_guard lock(runtime_->clients_mutex);
  runtime_->clients.push_back(std::make_unique<BusClient>(runtime_->pool, runtime_->bus, name));
  return *runtime_->clients.back();
}

void Deployment::run_on(const std::string& instance, std::function<void(sdk::Plugin&, sdk::Context&)> task,
                        std::chrono::milliseconds timeout) {
  for (auto& inst : instances_) {
    if (inst->spec.name != instance) continue;
    if (!inst->plugin || !inst->strand) throw std::logic_error("instance " + instance + " is not running");
    auto* raw = inst.get();
    if (auto error = call_on(*inst->strand, [raw, task = std::move(task)] { task(raw->object(), *raw); }, timeout,
                             "task on " + instance))
      throw std::runtime_error(*error);
    return;
  }
  throw std::invalid_argument("no instance named " + instance);
}

}  // namespace deskfarm::kernel
