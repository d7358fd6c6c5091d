// What a running deployment reports about itself: /status (JSON) and /metrics (Prometheus text).
#include <map>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>

#include "deployment.hpp"
#include "instance.hpp"
#include "runtime.hpp"

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

}  // namespace

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
  if (runtime_ && runtime_->nats) {
    out->set("bus", runtime_->nats->status());
  } else {
    Poco::JSON::Object::Ptr bus = new Poco::JSON::Object;
    bus->set("transport", "inproc");
    out->set("bus", bus);
  }
  Poco::JSON::Array::Ptr list = new Poco::JSON::Array;
  for (auto& inst : instances_) {
    Poco::JSON::Object::Ptr o = new Poco::JSON::Object;
    o->set("name", inst->spec.name);
    o->set("plugin", inst->spec.plugin);
    o->set("version", std::string(inst->library->descriptor().version));
    o->set("state", inst->state);
    if (inst->plugin && inst->state == "running") {
      // The task owns what it writes: after a timeout it may still run, long after this returned.
      struct Answer {
        sdk::Value fields = sdk::Value::object();
        std::string health = "ok";
      };
      auto answer = std::make_shared<Answer>();
      auto* raw = inst.get();
      auto error = call_on(*inst->strand, [raw, answer] {
        raw->object().status(answer->fields);
        answer->health = health_name(raw->object().health());
      }, std::chrono::seconds(2), "status()");
      if (error) {
        o->set("health", "unknown");
        o->set("status_error", redact(*error));
        o->set("fields", Poco::JSON::Object::Ptr(new Poco::JSON::Object));
      } else {
        o->set("health", answer->health);
        o->set("fields", Poco::JSON::Parser().parse(answer->fields.to_json()));
      }
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
  out += runtime_->bus.metrics_text();
  if (runtime_->nats) out += runtime_->nats->metrics_text();
  std::uint64_t skipped = 0;
  if (auto* v = dynamic_cast<VirtualClock*>(runtime_->clock.get())) skipped = v->skipped_ticks();
  else if (auto* r = dynamic_cast<RealClock*>(runtime_->clock.get())) skipped = r->skipped_ticks();
  out += "# HELP deskfarm_kernel_timer_ticks_skipped_total Periodic timer ticks skipped because the previous tick "
         "had not run yet (a busy or blocked instance).\n# TYPE deskfarm_kernel_timer_ticks_skipped_total counter\n"
         "deskfarm_kernel_timer_ticks_skipped_total " + std::to_string(skipped) + "\n";
  out += "# HELP deskfarm_kernel_blocking_jobs Blocking jobs (run_blocking) by state.\n"
         "# TYPE deskfarm_kernel_blocking_jobs gauge\ndeskfarm_kernel_blocking_jobs{state=\"queued\"} " +
         std::to_string(runtime_->blocking.queued()) + "\ndeskfarm_kernel_blocking_jobs{state=\"running\"} " +
         std::to_string(runtime_->blocking.running()) + "\n";
  out += runtime_->metrics.render();
  return out;
}

}  // namespace deskfarm::kernel
