// vda: the desktop agents of the desktops of one or more hypervisor instances. An agent starts when its VM's
// firmware hands over (or, without real firmware, when the VM runs), finds a controller ListOfDDCs-style (its
// controllers in random order), registers with a farm-key signature, heartbeats, re-registers with another
// controller when its own stops answering, and stops with its VM.
#include <algorithm>
#include <random>
#include <unordered_map>

#include <deskfarm/interfaces/ddc/ddc.hpp>
#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/sdk/plugin.hpp>

#include "farm_key.hpp"

namespace {

using namespace deskfarm::sdk;
namespace ddc = deskfarm::interfaces::ddc;
namespace hv = deskfarm::interfaces::hypervisor;

struct VdaConfig {
  std::vector<std::string> hypervisors;
  std::vector<std::string> controllers;
  std::vector<std::string> trusted;
  Secret farm_key;
  std::int64_t heartbeat_s = 30;
  std::int64_t request_timeout_ms = 5000;
  std::int64_t retry_s = 10;
  std::int64_t seed = 1;
};

constexpr auto config_schema = schema<VdaConfig>(
    option("hypervisors", &VdaConfig::hypervisors, "[]", "hypervisor instances whose desktops run this agent; [] = every one"),
    option("controllers", &VdaConfig::controllers, nullptr, "ListOfDDCs: the controller instances an agent registers with, tried in random order"),
    option("trusted", &VdaConfig::trusted, "[]", "ListOfSIDs: controllers an agent accepts registrations and sessions from; [] = the controllers"),
    option("farm_key", &VdaConfig::farm_key, "\"\"", "the farm key registrations are signed with (the controllers' farm_key); a secret, give it as \"${ENV_VAR}\""),
    option("heartbeat_s", &VdaConfig::heartbeat_s, "30", "seconds between heartbeats when the controller names no period (it asks for half its deregistration period)").range(1, 3600),
    option("request_timeout_ms", &VdaConfig::request_timeout_ms, "5000", "how long an agent waits for a controller's answer").range(10, 600000),
    option("retry_s", &VdaConfig::retry_s, "10", "seconds before an agent tries its controllers again after every one failed").range(1, 3600),
    option("seed", &VdaConfig::seed, "1", "seed of the controllers' random order (nonces are truly random)").range(0, 9.0e15));

constexpr const char* provides[] = {"vda", nullptr};

struct Agent {
  std::string key;  ///< hypervisor/vm
  std::string hypervisor, vm, mac, desktop;
  std::string address;  ///< "IP:1494" from its VM's lease; "" = the hypervisor gave the VM none
  std::vector<std::string> order;  ///< this agent's ListOfDDCs order
  std::size_t next = 0;            ///< where the next registration round starts
  std::string controller, token;
  std::string session_state = ddc::kNoSession, user, endpoint;
  std::chrono::seconds period{30};  ///< the heartbeat period its controller asked for
  std::uint64_t gen = 0;  ///< bumped on every restart: answers and timers of an older life are dropped
  TimerId timer = 0;
};

class Vda final : public Plugin {
 public:
  explicit Vda(Context& ctx)
      : ctx_(ctx), config_(config_schema.bind(ctx.config())), rng_(static_cast<std::uint64_t>(config_.seed)) {
    if (config_.trusted.empty()) config_.trusted = config_.controllers;
    auto& m = ctx_.metrics();
    registered_total_ = &m.counter("deskfarm_vda_registrations_total", "registrations a controller accepted");
    refused_total_ = &m.counter("deskfarm_vda_registrations_refused_total", "registrations a controller refused");
    failovers_ = &m.counter("deskfarm_vda_failovers_total", "re-registrations after a controller stopped answering");
    untrusted_ = &m.counter("deskfarm_vda_untrusted_total", "controllers refused because they are not in the trusted list or failed the farm-key proof");
  }

  static void validate(const Config& c) {
    const auto conf = config_schema.bind(c);
    if (conf.controllers.empty()) throw ConfigError("controllers", "name at least one ddc instance (ListOfDDCs)");
  }

  void start() override {
    if (config_.farm_key.reveal().empty())
      ctx_.log().warning("no farm_key: registrations are unsigned and controllers cannot be verified");
    subs_.push_back(subscribe<hv::PowerStateEvent>(ctx_.bus(), hv::all_power_events, [this](const hv::PowerStateEvent& e, const Message&) {
      if (!mine(e.adapter)) return;
      if (e.state == hv::kRunning) start_agent(e.adapter, e.vm, e.mac);
      else if (e.state == hv::kOff || e.state == hv::kStopping || e.state == hv::kSuspended) stop_agent(e.adapter + "/" + e.vm);
    }));
    subs_.push_back(subscribe<hv::BootProgress>(ctx_.bus(), "hypervisor.*.vm.*.boot", [this](const hv::BootProgress& b, const Message&) {
      if (mine(b.adapter) && b.step == "handover" && b.state == "ok") start_agent(b.adapter, b.vm, b.mac);
    }));
    // Desktops already running when the agent service starts (a restarted deployment): the inventory says which.
    subs_.push_back(subscribe<InstanceInfo>(ctx_.bus(), instance_up_subject, [this](const InstanceInfo& i, const Message&) {
      if (std::find(i.roles.begin(), i.roles.end(), "hypervisor") != i.roles.end()) adopt_running(i.name);
    }));
    for (const auto& i : ctx_.instances("hypervisor")) adopt_running(i.name);
    subs_.push_back(serve_async<ddc::PrepareSession, ddc::Ack>(ctx_.bus(), ddc::agent_subject(ctx_.name(), "prepare"),
        [this](const ddc::PrepareSession& p, Responder<ddc::Ack> r) { r.ok(prepare(p)); }));
    subs_.push_back(serve_async<ddc::SessionAction, ddc::Ack>(ctx_.bus(), ddc::agent_subject(ctx_.name(), "admin.session"),
        [this](const ddc::SessionAction& a, Responder<ddc::Ack> r) { session_action(a, std::move(r)); }));
  }

  void stop() override {
    subs_.clear();
    for (auto& [key, a] : agents_)
      if (a.timer) ctx_.clock().cancel(a.timer);
    agents_.clear();
    by_name_.clear();
  }

  void status(Value& out) const override {
    std::int64_t registered = 0;
    Value per = Value::object();
    for (const auto& [key, a] : agents_) {
      if (a.controller.empty()) continue;
      ++registered;
      auto& n = per[a.controller];
      n = Value(static_cast<std::int64_t>((n.is_null() ? 0 : n.as_integer()) + 1));
    }
    out["agents"] = static_cast<std::int64_t>(agents_.size());
    out["registered"] = registered;
    out["per_controller"] = std::move(per);
    out["refused"] = static_cast<std::int64_t>(refused_total_->value());
    out["failovers"] = static_cast<std::int64_t>(failovers_->value());
  }

 private:
  bool mine(const std::string& adapter) const {
    return config_.hypervisors.empty() ||
           std::find(config_.hypervisors.begin(), config_.hypervisors.end(), adapter) != config_.hypervisors.end();
  }
  bool trusted(const std::string& controller) const {
    return std::find(config_.trusted.begin(), config_.trusted.end(), controller) != config_.trusted.end();
  }
  std::chrono::milliseconds timeout() const { return std::chrono::milliseconds(config_.request_timeout_ms); }
  std::int64_t now_ms() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(ctx_.clock().now().time_since_epoch()).count();
  }

  void adopt_running(const std::string& hypervisor) {
    if (!mine(hypervisor)) return;
    request<Empty, hv::Inventory>(ctx_.bus(), hv::request_subject(hypervisor, "inventory"), Empty{}, timeout(),
                                  [this, hypervisor](Reply<hv::Inventory> inv) {
                                    if (!inv) return;
                                    for (const auto& v : inv->vms) {
                                      names_[hypervisor + "/" + v.id] = {v.name, v.address};
                                      if (v.power_state == hv::kRunning) start_agent(hypervisor, v.id, v.mac);
                                    }
                                  });
  }

  void start_agent(const std::string& hypervisor, const std::string& vm, const std::string& mac) {
    const std::string key = hypervisor + "/" + vm;
    if (agents_.contains(key)) return;  // the handover and the running event both start it
    Agent& a = agents_[key];
    a.key = key;
    a.hypervisor = hypervisor;
    a.vm = vm;
    a.mac = mac;
    a.gen = ++generation_;
    a.order = config_.controllers;
    std::shuffle(a.order.begin(), a.order.end(), rng_);  // ListOfDDCs: random order spreads the farm's agents
    a.next = 0;
    if (auto n = names_.find(key); n != names_.end()) {
      a.desktop = n->second.name;
      a.address = agent_address(n->second.address);
      by_name_[a.desktop] = key;
      register_round(key, a.gen, 0);
      return;
    }
    // The power event names the VM by id; groups name desktops by the VM's name, which the inventory gives. One
    // inventory request per hypervisor at a time serves every agent that waits for its name (a boot storm).
    auto& waiting = waiting_[hypervisor];
    waiting.emplace_back(key, a.gen);
    if (waiting.size() > 1) return;
    request<Empty, hv::Inventory>(ctx_.bus(), hv::request_subject(hypervisor, "inventory"), Empty{}, timeout(),
                                  [this, hypervisor](Reply<hv::Inventory> inv) {
                                    if (inv)
                                      for (const auto& v : inv->vms) names_[hypervisor + "/" + v.id] = {v.name, v.address};
                                    auto agents = std::move(waiting_[hypervisor]);
                                    waiting_.erase(hypervisor);
                                    for (const auto& [k, gen] : agents) {
                                      auto* ag = live(k, gen);
                                      if (!ag) continue;
                                      auto n = names_.find(k);
                                      ag->desktop = n != names_.end() ? n->second.name : ag->vm;
                                      ag->address = n != names_.end() ? agent_address(n->second.address) : "";
                                      by_name_[ag->desktop] = k;
                                      register_round(k, gen, 0);
                                    }
                                  });
  }

  void stop_agent(const std::string& key) {
    auto it = agents_.find(key);
    if (it == agents_.end()) return;
    Agent& a = it->second;
    if (a.timer) ctx_.clock().cancel(a.timer);
    if (!a.controller.empty())  // a clean shutdown tells the controller; a crash leaves it to the 60 s rule
      request<ddc::Deregister, ddc::Ack>(ctx_.bus(), ddc::subject(a.controller, "deregister"),
                                         ddc::Deregister{a.desktop, a.token, "shutdown"}, timeout(), [](Reply<ddc::Ack>) {});
    by_name_.erase(a.desktop);
    agents_.erase(it);
  }

  /// Where clients reach the agent: its VM's address with the ICA port; nothing when the VM has no address (the
  /// agent does not make one up: the controller then hands out the desktop's name).
  static std::string agent_address(const std::string& vm_address) {
    return vm_address.empty() ? "" : vm_address + ":" + std::to_string(ddc::kIcaPort);
  }

  Agent* live(const std::string& key, std::uint64_t gen) {
    auto it = agents_.find(key);
    return it != agents_.end() && it->second.gen == gen ? &it->second : nullptr;
  }

  void later(Agent& a, std::chrono::seconds delay, std::function<void(Agent&)> step) {
    if (a.timer) ctx_.clock().cancel(a.timer);
    a.timer = ctx_.after(delay, [this, key = a.key, gen = a.gen, step = std::move(step)] {
      if (auto* x = live(key, gen)) {
        x->timer = 0;
        step(*x);
      }
    });
  }

  /// Tries the controllers in this agent's order from a.next; `tried` counts the attempts of this round.
  void register_round(const std::string& key, std::uint64_t gen, std::size_t tried) {
    Agent* a = live(key, gen);
    if (!a) return;
    if (tried >= a->order.size()) {
      later(*a, std::chrono::seconds(config_.retry_s), [this](Agent& x) { register_round(x.key, x.gen, 0); });
      return;
    }
    const std::string controller = a->order[a->next % a->order.size()];
    a->next = (a->next + 1) % a->order.size();
    ddc::Register reg;
    reg.desktop = a->desktop;
    reg.vm = a->vm;
    reg.mac = a->mac;
    reg.hypervisor = a->hypervisor;
    reg.agent = ctx_.name();
    reg.nonce = deskfarm::farm_key::random_hex(nonces_);
    reg.time_ms = now_ms();
    reg.session_state = a->session_state;
    reg.user = a->user;
    reg.endpoint = a->endpoint;
    reg.address = a->address;
    reg.signature = deskfarm::farm_key::sign(config_.farm_key.reveal(), reg.signing_text(controller));
    request<ddc::Register, ddc::Registered>(
        ctx_.bus(), ddc::subject(controller, "register"), reg, timeout(),
        [this, key, gen, tried, controller, nonce = reg.nonce](Reply<ddc::Registered> r) {
          Agent* ag = live(key, gen);
          if (!ag) return;
          if (!r || !r->accepted) {
            if (r) {
              refused_total_->inc();
              ctx_.log().warning(ag->desktop + ": " + controller + " refused the registration (" + r->reason + "): " + r->detail);
            }
            return register_round(key, gen, tried + 1);
          }
          const auto& key_text = config_.farm_key.reveal();
          const bool proven = key_text.empty() ||
                              deskfarm::farm_key::verify(key_text, ddc::Registered::proof_text(r->controller, nonce), r->proof);
          if (!trusted(r->controller) || !proven) {
            untrusted_->inc();
            ctx_.log().warning(ag->desktop + ": controller " + r->controller +
                               (proven ? " is not in the trusted list" : " failed the farm-key proof") + "; trying another");
            request<ddc::Deregister, ddc::Ack>(ctx_.bus(), ddc::subject(controller, "deregister"),
                                               ddc::Deregister{ag->desktop, r->token, "untrusted controller"}, timeout(),
                                               [](Reply<ddc::Ack>) {});
            return register_round(key, gen, tried + 1);
          }
          registered_total_->inc();
          ag->controller = controller;
          ag->token = r->token;
          ag->period = std::chrono::seconds(r->heartbeat_s > 0 ? r->heartbeat_s : config_.heartbeat_s);
          later(*ag, ag->period, [this](Agent& x) { heartbeat(x); });
        });
  }

  void heartbeat(Agent& a) {
    request<ddc::Heartbeat, ddc::Ack>(
        ctx_.bus(), ddc::subject(a.controller, "heartbeat"), ddc::Heartbeat{a.desktop, a.token, a.session_state}, timeout(),
        [this, key = a.key, gen = a.gen](Reply<ddc::Ack> r) {
          Agent* ag = live(key, gen);
          if (!ag) return;
          if (r && r->ok) {
            later(*ag, ag->period, [this](Agent& x) { heartbeat(x); });
            return;
          }
          lose_controller(*ag, r ? r->reason : r.error().code);
        });
  }

  /// The agent's controller stopped answering (or no longer knows it): register with another at once, carrying
  /// the session.
  void lose_controller(Agent& a, const std::string& why) {
    failovers_->inc();
    ctx_.log().info(a.desktop + ": controller " + a.controller + " stopped answering (" + why + "); registering with another");
    // Start the new round at the controller after the lost one, so the lost one is tried last.
    const auto pos = std::find(a.order.begin(), a.order.end(), a.controller);
    a.next = pos == a.order.end() ? 0 : static_cast<std::size_t>(pos - a.order.begin() + 1) % a.order.size();
    a.controller.clear();
    a.token.clear();
    register_round(a.key, a.gen, 0);
  }

  Agent* by_desktop(const std::string& desktop) {
    auto k = by_name_.find(desktop);
    if (k == by_name_.end()) return nullptr;
    auto it = agents_.find(k->second);
    return it == agents_.end() ? nullptr : &it->second;
  }

  ddc::Ack prepare(const ddc::PrepareSession& p) {
    Agent* a = by_desktop(p.desktop);
    if (!a) return {false, ddc::kUnknownAgent, "no agent runs on desktop " + p.desktop + " here (is its VM running?)"};
    if (!trusted(p.controller)) {
      untrusted_->inc();
      return {false, ddc::kAgentRefused, "controller " + p.controller + " is not in the trusted list of " + p.desktop};
    }
    if (p.kind == ddc::kReconnect) {
      if (a->user != p.user) return {false, ddc::kAgentRefused, p.desktop + " has no session of " + p.user};
    } else if (a->session_state != ddc::kNoSession) {
      return {false, ddc::kAgentRefused, p.desktop + " already has a session of " + a->user};
    }
    a->session_state = ddc::kActive;
    a->user = p.user;
    a->endpoint = p.endpoint;
    return {true, "", p.kind + " of " + p.user + " from " + p.endpoint};
  }

  void session_action(const ddc::SessionAction& act, Responder<ddc::Ack> r) {
    Agent* a = by_desktop(act.desktop);
    if (!a) return r.ok({false, ddc::kUnknownAgent, "no agent runs on desktop " + act.desktop + " here"});
    if (a->session_state == ddc::kNoSession)
      return r.ok({false, ddc::kNoSession, act.desktop + " has no session; broker one first"});
    std::string kind;
    if (act.action == "disconnect") {
      a->session_state = ddc::kDisconnected;
      kind = ddc::kDisconnect;
    } else if (act.action == "reconnect") {
      a->session_state = ddc::kActive;
      if (!act.endpoint.empty()) a->endpoint = act.endpoint;
      kind = ddc::kReconnect;
    } else if (act.action == "logoff") {
      a->session_state = ddc::kNoSession;
      kind = ddc::kLogoff;
    } else {
      return r.fail("bad_request", "action '" + act.action + "' is not one of disconnect, reconnect, logoff");
    }
    ddc::SessionEvent ev{a->desktop, a->token, kind, a->user, a->endpoint};
    if (kind == ddc::kLogoff) a->user.clear(), a->endpoint.clear();
    if (a->controller.empty()) return r.ok({true, "", "not registered: the next registration carries the session"});
    request<ddc::SessionEvent, ddc::Ack>(
        ctx_.bus(), ddc::subject(a->controller, "session"), ev, timeout(),
        [this, r, key = a->key, gen = a->gen, controller = a->controller](Reply<ddc::Ack> ack) mutable {
          if (ack) return r.ok(*ack);
          // The session changed on the desktop whatever the controller says: when it does not answer (it died), the
          // agent does not wait for its heartbeat to notice but registers with another now, and the registration
          // carries the session's new state.
          Agent* ag = live(key, gen);
          if (ag && ag->controller == controller && (ack.error().code == "timeout" || ack.error().code == "no_responders")) {
            lose_controller(*ag, ack.error().code + " to a session event");
            return r.ok({true, "", "controller " + controller + " did not answer (" + ack.error().code +
                                       "); the registration with another carries the session"});
          }
          r.ok({false, ack.error().code, ack.error().message});
        });
  }

  Context& ctx_;
  VdaConfig config_;
  std::mt19937_64 rng_;
  std::mt19937_64 nonces_{std::random_device{}()};  ///< never the seed: two agents must not share nonces
  std::unordered_map<std::string, Agent> agents_;
  struct VmName {
    std::string name;
    std::string address;  ///< the VM's lease ("" = none)
  };
  std::unordered_map<std::string, VmName> names_;  ///< hypervisor/vm → VM name and address
  std::unordered_map<std::string, std::string> by_name_;  ///< desktop name → agent key
  std::unordered_map<std::string, std::vector<std::pair<std::string, std::uint64_t>>> waiting_;  ///< agents waiting for names
  std::uint64_t generation_ = 0;
  std::vector<Subscription> subs_;
  Counter* registered_total_ = nullptr;
  Counter* refused_total_ = nullptr;
  Counter* failovers_ = nullptr;
  Counter* untrusted_ = nullptr;
};

}  // namespace

DESKFARM_PLUGIN(Vda, "vda", "1.0.0", "Desktop agents: register with a controller (ListOfDDCs, farm key), heartbeat, fail over, report sessions",
                provides, nullptr, config_schema)
