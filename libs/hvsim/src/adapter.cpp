// The plugin side of the simulated hypervisors: see adapter.hpp.
#include "deskfarm/hvsim/adapter.hpp"

#include <deskfarm/sdk/time_text.hpp>

#if __has_include(<deskfarm/firmware/firmware.hpp>)
#include <deskfarm/firmware/firmware.hpp>
#define DESKFARM_HVSIM_FIRMWARE 1
#else
#define DESKFARM_HVSIM_FIRMWARE 0
#endif

namespace deskfarm::hvsim {

using sdk::ConfigError;

EngineConfig engine_config(const AdapterConfig& c, const std::string& instance) {
  EngineConfig e;
  e.instance = instance;
  e.mac_prefix = c.mac_prefix;
  for (const auto& h : c.hosts) e.hosts.push_back({h.id, h.pool, h.memory_mb, h.vcpus});
  for (const auto& t : c.templates) e.templates.push_back({t.name, t.memory_mb, t.vcpus, t.network, t.boot_order, t.ha});
  for (const auto& n : c.networks) e.networks.push_back({n.name, n.tftp_server, n.boot_file, n.subnet});
  e.isos = c.isos;
  for (const auto& l : c.latencies) {
    const auto a = action_of(l.action);
    const auto kind = latency_kind(l.distribution);
    const auto action = a ? *a : Action::ha_restart;  // "ha_restart" is a latency, not a request
    if (!kind) throw ConfigError("latencies", "distribution '" + l.distribution + "' is not constant, uniform or lognormal");
    if (*kind == Latency::Kind::uniform && l.max_ms < l.ms)
      throw ConfigError("latencies", "action " + l.action + ": uniform needs max_ms (" + std::to_string(l.max_ms) +
                                         ") >= ms (" + std::to_string(l.ms) + ")");
    if (e.latencies.count(action)) throw ConfigError("latencies", "action " + l.action + " is given twice");
    e.latencies[action] = {*kind, l.ms, *kind == Latency::Kind::uniform ? l.max_ms : l.sigma};
  }
  e.max_in_progress = c.max_in_progress;
  e.max_per_minute = c.max_per_minute;
  e.max_vms = c.max_vms;
  e.ha = c.ha;
  e.seed = static_cast<std::uint64_t>(c.seed);
  e.task_failure_rate = c.task_failure_rate;
  e.storage_factor = c.slow_storage;
  std::int64_t seeded = 0;
  for (const auto& s : c.vms) {
    bool found = false;
    for (const auto& t : c.templates) found = found || t.name == s.template_name;
    if (!found) throw ConfigError("vms", "template '" + s.template_name + "' is not in templates");
    seeded += s.count;
  }
  if (seeded > c.max_vms)
    throw ConfigError("vms", std::to_string(seeded) + " VMs are more than max_vms (" + std::to_string(c.max_vms) + "); raise max_vms");
  for (const auto& f : c.faults) {
    const bool needs_host = f.kind == "host_crash" || f.kind == "host_recover";
    if (needs_host && std::none_of(c.hosts.begin(), c.hosts.end(), [&](auto& h) { return h.id == f.host; }))
      throw ConfigError("faults", f.kind + " names host '" + f.host + "', which is not in hosts");
    if (f.kind == "task_failure_rate" && f.value > 1) throw ConfigError("faults", "task_failure_rate is a share 0..1, not " + std::to_string(f.value));
    if (f.kind == "slow_storage" && f.value < 1) throw ConfigError("faults", "slow_storage is a factor >= 1, not " + std::to_string(f.value));
  }
  if (c.firmware && !DESKFARM_HVSIM_FIRMWARE)
    throw ConfigError("firmware", "this build has no firmware library (libs/firmware); set firmware = false");
  return e;
}

namespace {

/// The engine's own checks of a config, reported at the key they concern.
void check_engine(const Personality& vendor, const EngineConfig& e) {
  Callbacks cb;
  cb.now = [] { return TimePoint{}; };
  cb.wake_at = [](TimePoint) {};
  try {
    Engine probe(vendor, e, cb);
  } catch (const std::invalid_argument& x) {
    const std::string what = x.what();
    const auto colon = what.find(':');
    const auto key = colon == std::string::npos ? std::string("hosts") : what.substr(0, colon);
    throw ConfigError(key, colon == std::string::npos ? what : what.substr(colon + 2));
  }
}


}  // namespace

Adapter::Adapter(sdk::Context& ctx, const Personality& vendor)
    : ctx_(ctx), vendor_(vendor), config_(adapter_schema.bind(ctx.config())) {
  auto& m = ctx_.metrics();
  tasks_ok_ = &m.counter("deskfarm_hypervisor_tasks_completed_total", "Tasks that completed");
  tasks_failed_ = &m.counter("deskfarm_hypervisor_tasks_failed_total", "Tasks that failed or were cancelled");
  power_events_ = &m.counter("deskfarm_hypervisor_power_events_total", "Power-state changes published");
  vms_ = &m.gauge("deskfarm_hypervisor_vms", "VMs in the inventory");
  running_ = &m.gauge("deskfarm_hypervisor_vms_running", "VMs holding a host (starting, running, paused, stopping)");
  queued_ = &m.gauge("deskfarm_hypervisor_tasks_pending", "Tasks waiting in the connection's queue");
}

Adapter::~Adapter() = default;

void Adapter::validate(const sdk::Config& config) {
  // The vendor does not change what a config may say, so any personality checks it.
  const auto c = adapter_schema.bind(config);
  check_engine(xen(), engine_config(c, "validate"));
}

void Adapter::start() {
  const auto e = engine_config(config_, ctx_.name());
  Callbacks cb;
  cb.now = [this] { return TimePoint(ctx_.clock().now()); };
  cb.wake_at = [this](TimePoint t) { wake_at(t); };
  cb.on_power = [this](const hv::PowerStateEvent& ev) {
    power_events_->inc();
    sdk::publish(ctx_.bus(), hv::power_subject(ctx_.name(), ev.vm), ev);
  };
  cb.on_task = [this](const hv::Task& t) {
    if (t.state == "completed") tasks_ok_->inc();
    if (t.state == "failed" || t.state == "cancelled") tasks_failed_->inc();
    sdk::publish(ctx_.bus(), hv::task_subject(ctx_.name(), t.id), t);
  };
  cb.log = [this](const std::string& line) { ctx_.log().info(line); };
  if (config_.firmware) cb.on_boot = [this](const BootTicket& b) { boot(b); };
  if (real()) cb.on_work = [this](const WorkTicket& w) { work(w); };
  engine_ = std::make_unique<Engine>(vendor_, e, std::move(cb));

  const auto dir = config_.state_dir.empty() ? ctx_.state_dir() : std::filesystem::path(config_.state_dir);
  std::filesystem::create_directories(dir);
  file_ = dir / (ctx_.name() + ".inventory");
  if (std::filesystem::exists(file_)) {
    engine_->load(file_);  // a corrupt file throws: the instance does not start, and the message names file and line
    ctx_.log().info("inventory: " + std::to_string(engine_->vm_count()) + " VMs from " + file_.string());
  } else {
    for (const auto& s : config_.vms) engine_->seed(s.template_name, static_cast<std::size_t>(s.count), s.prefix);
    save();
  }

  auto& bus = ctx_.bus();
  const auto& name = ctx_.name();
  auto refuse = [](const Refused& r) { return sdk::RequestError(r.code(), r.what()); };
  served_.push_back(sdk::serve<sdk::Empty, hv::Inventory>(bus, hv::request_subject(name, "inventory"),
                                                          [this](const sdk::Empty&) { return engine_->inventory(); }));
  served_.push_back(sdk::serve<hv::VmAction, hv::Task>(bus, hv::request_subject(name, "vm.action"), [this, refuse](const hv::VmAction& a) {
    try {
      return engine_->submit(a);
    } catch (const Refused& r) {
      throw refuse(r);
    }
  }));
  served_.push_back(sdk::serve<hv::CancelTask, hv::Task>(bus, hv::request_subject(name, "task.cancel"), [this, refuse](const hv::CancelTask& c) {
    try {
      return engine_->cancel(c.task);
    } catch (const Refused& r) {
      throw refuse(r);
    }
  }));
  served_.push_back(sdk::serve<hv::Fault, hv::Hosts>(bus, hv::request_subject(name, "fault"), [this, refuse](const hv::Fault& f) {
    // A real backend's hosts are bookkeeping: a simulated crash would report VMs off while their machines run on.
    if (real())
      throw refuse(Refused(vendor_.error(Failure::not_supported, f.kind.empty() ? "(no kind)" : f.kind,
                                         "a real machine takes no simulated faults; end its process to see a VM fail")));
    try {
      apply(f.kind, f.host, f.value);
    } catch (const Refused& r) {
      throw refuse(r);
    }
    return hv::Hosts{engine_->hosts()};
  }));
  served_.push_back(sdk::serve<hv::NetworkBoot, hv::NetworkReply>(bus, hv::request_subject(name, "network.boot"), [this, refuse](const hv::NetworkBoot& b) {
    try {
      hv::NetworkReply reply{engine_->set_network_boot(b.network, b.tftp_server, b.boot_file)};
      ctx_.log().info("network " + b.network + ": option 66 " + (b.tftp_server.empty() ? "(none)" : b.tftp_server) + ", option 67 " +
                      (b.boot_file.empty() ? "(none)" : b.boot_file));
      return reply;
    } catch (const Refused& r) {
      throw refuse(r);
    }
  }));
  for (const auto& f : config_.faults) {
    if (f.at_s == 0) {
      apply(f.kind, f.host, f.value);
      continue;
    }
    ctx_.after(std::chrono::seconds(f.at_s), [this, f] { apply(f.kind, f.host, f.value); });
  }
  saver_ = ctx_.every(std::chrono::milliseconds(config_.save_interval_ms), [this] {
    if (engine_->dirty()) save();
    const auto s = engine_->stats();
    queued_->set(static_cast<double>(s.pending));
    vms_->set(static_cast<double>(engine_->vm_count()));
  });
  vms_->set(static_cast<double>(engine_->vm_count()));
  ctx_.log().info(std::string(vendor_.vendor) + (real() ? " machines: " : " simulation: ") + std::to_string(config_.hosts.size()) + " hosts, " +
                  std::to_string(engine_->vm_count()) + " VMs" + (config_.firmware ? ", real firmware" : ""));
}

void Adapter::stop() {
  served_.clear();
  if (timer_) ctx_.clock().cancel(timer_), timer_ = 0;
  if (saver_) ctx_.clock().cancel(saver_), saver_ = 0;
  if (engine_) stop_machines();
  if (engine_) save();
}

void Adapter::status(sdk::Value& out) const {
  out.set("vendor", std::string(vendor_.vendor));
  out.set("url", config_.url);
  out.set("username", config_.username);
  out.set("password", config_.password.masked());
  out.set("inventory_file", file_.string());
  if (!engine_) return;
  const auto s = engine_->stats();
  out.set("vms", static_cast<std::int64_t>(engine_->vm_count()));
  out.set("vms_running", static_cast<std::int64_t>(engine_->running_count()));
  auto queue = sdk::Value::object();
  queue.set("pending", static_cast<std::int64_t>(s.pending));
  queue.set("started", static_cast<std::int64_t>(s.in_progress));
  queue.set("started_last_minute", static_cast<std::int64_t>(s.started_last_minute));
  queue.set("completed", static_cast<std::int64_t>(s.completed));
  queue.set("failed", static_cast<std::int64_t>(s.failed));
  queue.set("cancelled", static_cast<std::int64_t>(s.cancelled));
  queue.set("max_in_progress", config_.max_in_progress);
  queue.set("max_per_minute", config_.max_per_minute);
  out.set("queue", std::move(queue));
  auto hosts = sdk::Value::array();
  for (const auto& h : engine_->hosts()) {
    auto v = sdk::Value::object();
    v.set("id", h.id).set("pool", h.pool).set("up", h.up).set("free_memory_mb", h.free_memory_mb);
    hosts.push(std::move(v));
  }
  out.set("hosts", std::move(hosts));
  machines_status(out);
}

void Adapter::wake_at(TimePoint t) {
  // One timer, at the engine's earliest event: many thousands of tasks cost one clock entry.
  if (timer_ && t >= timer_at_) return;
  if (timer_) ctx_.clock().cancel(timer_);
  timer_at_ = t;
  const auto delay = std::max(sdk::Duration::zero(), t - TimePoint(ctx_.clock().now()));
  timer_ = ctx_.after(delay, [this] {
    timer_ = 0;
    engine_->run_due();
    running_->set(static_cast<double>(engine_->stats().in_progress));
  });
}

void Adapter::apply(const std::string& kind, const std::string& host, double value) {
  if (kind == "host_crash") engine_->crash_host(host);
  else if (kind == "host_recover") engine_->recover_host(host);
  else if (kind == "task_failure_rate") engine_->set_task_failure_rate(value);
  else if (kind == "slow_storage") engine_->set_storage_factor(value);
  else throw sdk::RequestError("bad_request", "fault kind '" + kind + "' is not host_crash, host_recover, task_failure_rate or slow_storage");
  ctx_.log().info("fault injected: " + kind + (host.empty() ? "" : " " + host) +
                  (kind == "task_failure_rate" || kind == "slow_storage" ? " " + std::to_string(value) : ""));
}

void Adapter::save() {
  try {
    engine_->save(file_);
  } catch (const std::exception& e) {
    ctx_.log().error(std::string("inventory not saved: ") + e.what());
  }
}

void Adapter::boot(const BootTicket& ticket) {
#if DESKFARM_HVSIM_FIRMWARE
  firmware::BootPlan plan;
  plan.mac = ticket.mac;
  plan.boot_order = ticket.boot_order;
  plan.tftp_server = ticket.tftp_server;
  plan.boot_file = ticket.boot_file;
  plan.iso_path = ticket.iso;
  // On loopback every simulated PC gets an address of its own, 127.X.Y.Z from its MAC's last three octets: pvs
  // tells devices apart by address (a bootstrap fetched from an address ends the session of the device seen there).
  if (plan.tftp_server.starts_with("127.") && ticket.mac.size() == 17) {
    auto octet = [&](int i) { return std::to_string(std::stoi(ticket.mac.substr(static_cast<std::size_t>(3 * i), 2), nullptr, 16)); };
    plan.source_address = "127." + octet(3) + "." + octet(4) + "." + octet(5);
  }
  auto line = ctx_.lifeline();
  const auto adapter = ctx_.name();
  // The firmware blocks on real sockets: it runs on the blocking pool, and each step comes back to the
  // executor through the lifeline (dropped once the instance stopped) to be published in order.
  ctx_.run_blocking(
      [plan, line, ticket, adapter, this](std::stop_token stop) {
        return firmware::boot(plan, stop, [line, ticket, adapter, this](const firmware::Step& s) {
          hv::BootProgress p{ticket.vm, ticket.mac, ticket.task_id, s.name, s.state, sdk::iso8601(s.at, true),
                             static_cast<std::int64_t>(s.took.count()), s.detail, adapter};
          line->post([this, p] { sdk::publish(ctx_.bus(), hv::boot_subject(ctx_.name(), p.vm), p); });
        });
      },
      [this, num = ticket.task, vm = ticket.vm](sdk::Reply<firmware::BootResult> r) {
        const bool ok = r && r->ok;
        const std::string why = !r ? r.error().message
                                   : r->ok ? ""
                                           : r->failed_step + ": " + r->reason + (r->recovery.empty() ? "" : " (recovery: " + r->recovery + ")");
        if (num == 0) return engine_->ha_boot_finished(vm, ok, why);
        engine_->boot_finished(num, ok, why);
      });
#else
  // validate() refuses firmware = true in a build without the firmware library; never reached.
  if (ticket.task == 0) engine_->ha_boot_finished(ticket.vm, false, "no firmware library in this build");
  else engine_->boot_finished(ticket.task, false, "no firmware library in this build");
#endif
}

}  // namespace deskfarm::hvsim
