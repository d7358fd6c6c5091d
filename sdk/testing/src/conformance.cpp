// The conformance suite's checks (declared in deskfarm/testing/conformance.hpp), compiled once into the test kit
// rather than into every test that includes the header.
#include <deskfarm/testing/conformance.hpp>

#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <thread>

#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>

namespace deskfarm::testing::conformance {

namespace detail {

std::string instance_state(Harness& h, const std::string& instance) {
  const auto status = h.status();
  const auto* list = status.find("instances");
  if (!list || !list->is_array()) return "";
  for (const auto& i : list->as_array()) {
    const auto* name = i.find("name");
    const auto* state = i.find("state");
    if (name && name->is_string() && name->as_string() == instance && state && state->is_string()) return state->as_string();
  }
  return "";
}

/// Log lines at level error that name `instance` (the kernel's "instance X ..." lines and the plugin's own).
std::vector<std::string> error_lines(const Harness& h, const std::string& instance) {
  std::vector<std::string> out;
  for (const auto& l : h.logs()) {
    if (l.find(" error ") != std::string::npos && l.find(instance) != std::string::npos) out.push_back(l);
  }
  return out;
}

/// Runs `body`, turning an exception into a finding of `check`.
void guarded(Findings& out, const std::string& check, const std::function<void(Findings&)>& body) {
  try {
    body(out);
  } catch (const std::exception& e) {
    out.push_back({check, e.what()});
  }
}

}  // namespace detail

Findings check_every_plugin(const Subject& s) {
  Findings out;
  const std::string described = "the plugin loads and its descriptor and config schema pass the kernel's checks";
  detail::guarded(out, described, [&](Findings& f) {
    const auto info = Harness::describe(s.plugin, s.options.plugin_path);
    if (info.name != s.plugin) f.push_back({described, "the descriptor names the plugin '" + info.name + "'"});
    if (info.version.empty()) f.push_back({described, "the descriptor has no version"});
    if (info.summary.empty()) f.push_back({described, "the descriptor has no summary (deskfarm plugins shows it)"});
    for (const auto& k : info.config) {
      if (k.description.empty()) f.push_back({described, "config key '" + k.name + "' has no description (deskfarm describe shows it)"});
    }
  });

  const std::string lifecycle = "it starts, reports status and metrics, and stops cleanly";
  detail::guarded(out, lifecycle, [&](Findings& f) {
    Harness h(s.manifest_toml, s.options);
    h.start();
    if (detail::instance_state(h, s.instance) != "running")
      f.push_back({lifecycle, "instance " + s.instance + " is not running after start(); state '" +
                                  detail::instance_state(h, s.instance) + "'"});
    const auto fields = h.instance_status(s.instance);
    if (!fields.is_object()) f.push_back({lifecycle, "status() wrote " + fields.to_json() + ", not an object"});
    if (h.metrics_text().find("deskfarm_instances") == std::string::npos)
      f.push_back({lifecycle, "metrics_text() lacks the kernel's deskfarm_instances family"});
    h.stop();
    if (!h.logged("instance " + s.instance + " stopped")) f.push_back({lifecycle, "no log line says instance " + s.instance + " stopped"});
    for (const auto& l : detail::error_lines(h, s.instance)) f.push_back({lifecycle, "logged an error: " + l});
  });

  const std::string restart = "a second deployment on the same state_dir starts (state survives a restart)";
  detail::guarded(out, restart, [&](Findings&) {
    HarnessOptions o = s.options;
    Harness first(s.manifest_toml, o);
    o.state_dir = first.state_dir();
    first.start();
    first.stop();
    Harness second(s.manifest_toml, o);
    second.start();
    second.stop();
  });

  const std::string unknown = "an unknown request on its subjects is answered or times out; the instance keeps running";
  detail::guarded(out, unknown, [&](Findings& f) {
    Harness h(s.manifest_toml, s.options);
    h.start();
    const auto info = Harness::describe(s.plugin, s.options.plugin_path);
    std::vector<std::string> prefixes = info.provides;
    prefixes.push_back(s.plugin);
    for (const auto& prefix : prefixes) {
      const std::string subject = prefix + "." + s.instance + ".conformance-unknown";
      const auto a = h.json_request(subject, R"({"conformance":true})", std::chrono::milliseconds(500));
      if (a.ok) f.push_back({unknown, subject + " was answered as if it were a request it knows: " + a.body});
      for (const std::string bad : {"{}", "[]", "null"}) (void)h.json_request(subject, bad, std::chrono::milliseconds(200));
    }
    if (detail::instance_state(h, s.instance) != "running")
      f.push_back({unknown, "instance " + s.instance + " is no longer running after unknown requests"});
    (void)h.instance_status(s.instance);  // its executor still answers
  });
  return out;
}

Findings role_declared(const Subject& s, const std::string& role) {
  Findings out;
  const std::string check = "the plugin declares that it provides role " + role;
  detail::guarded(out, check, [&](Findings& f) {
    const auto info = Harness::describe(s.plugin, s.options.plugin_path);
    bool found = false;
    for (const auto& r : info.provides) found = found || r == role;
    if (!found) f.push_back({check, "plugin " + s.plugin + " does not list '" + role + "' in its provides roles"});
  });
  return out;
}

namespace detail::hypervisor {

namespace hv = ::deskfarm::interfaces::hypervisor;

/// The codes a known vendor answers with; "" for another vendor (then any non-empty code passes).
std::string vendor_code(const std::string& vendor, const std::string& what) {
  static const std::map<std::string, std::map<std::string, std::string>> codes{
      {"xen", {{"bad_state", "VM_BAD_POWER_STATE"}, {"capacity", "HOST_NOT_ENOUGH_FREE_MEMORY"}, {"not_found", "UUID_INVALID"}}},
      {"hyperv", {{"bad_state", "32775"}, {"capacity", "32778"}, {"not_found", "32779"}}},
      {"esx", {{"bad_state", "InvalidPowerState"}, {"capacity", "InsufficientResourcesFault"}, {"not_found", "ManagedObjectNotFound"}}}};
  auto v = codes.find(vendor);
  if (v == codes.end()) return "";
  auto c = v->second.find(what);
  return c == v->second.end() ? "" : c->second;
}

bool ended(const std::string& state) { return state == "completed" || state == "failed" || state == "cancelled"; }

/// Drives one adapter instance through the contract's requests on the virtual clock; keeps every task event.
class Driver {
 public:
  Driver(Harness& h, std::string instance)
      : h_(h), instance_(std::move(instance)), tasks_(h.probe("hypervisor." + instance_ + ".task.*")),
        power_(h.probe("hypervisor." + instance_ + ".vm.*.power")) {}

  std::string subject(const std::string& what) const { return hv::request_subject(instance_, what); }

  hv::Inventory inventory() {
    auto r = h_.request<sdk::Empty, hv::Inventory>(subject("inventory"), sdk::Empty{});
    if (!r) throw std::runtime_error(subject("inventory") + " answered " + r.error().code + ": " + r.error().message);
    return *r;
  }
  std::optional<hv::Vm> vm(const std::string& id) {
    for (auto& v : inventory().vms)
      if (v.id == id) return v;
    return std::nullopt;
  }
  sdk::Reply<hv::Task> act(const std::string& action, const std::string& vm, const std::string& template_name = "") {
    hv::VmAction a;
    a.action = action;
    a.vm = vm;
    a.template_name = template_name;
    a.name = template_name.empty() ? "" : "conformance";
    return h_.request<hv::VmAction, hv::Task>(subject("vm.action"), a);
  }
  hv::Task act_ok(const std::string& action, const std::string& vm, const std::string& template_name = "") {
    auto r = act(action, vm, template_name);
    if (!r) throw std::runtime_error(action + " of '" + vm + template_name + "' was refused: " + r.error().code + ": " + r.error().message);
    return *r;
  }
  sdk::Reply<hv::Task> cancel(const std::string& task) {
    return h_.request<hv::CancelTask, hv::Task>(subject("task.cancel"), hv::CancelTask{task});
  }
  sdk::Reply<hv::Hosts> fault(const std::string& kind, const std::string& host) {
    return h_.request<hv::Fault, hv::Hosts>(subject("fault"), hv::Fault{kind, host, 0});
  }
  /// Waits (virtual time, at most `within`) for task `t` to end; throws naming it when it does not.
  hv::Task finish(const hv::Task& t, std::chrono::nanoseconds within = std::chrono::minutes(30)) {
    if (ended(t.state)) return t;
    for (int i = 0; i < 100000; ++i) {
      if (auto it = ended_.find(t.id); it != ended_.end()) return it->second;
      if (!take(within)) break;
    }
    if (auto it = ended_.find(t.id); it != ended_.end()) return it->second;
    throw std::runtime_error("task " + t.id + " (" + t.action + ") did not end within " +
                             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(within).count()) + " s");
  }
  /// Takes the next task event (moving virtual time up to `within`); false when none came.
  bool take(std::chrono::nanoseconds within) {
    auto m = tasks_.expect_as<hv::Task>(within);
    if (!m) return false;
    hv::Task t = *m;
    seen_.push_back(t);
    if (ended(t.state)) ended_[t.id] = t;
    return true;
  }
  /// Creates a VM from `template_name` and waits for it.
  std::string create(const std::string& template_name) {
    const auto t = finish(act_ok("create", "", template_name));
    if (t.state != "completed" || t.vm.empty())
      throw std::runtime_error("create from template '" + template_name + "' ended " + t.state + " " + t.error_code + ": " + t.error);
    return t.vm;
  }
  /// Every power event so far (a copy: the probe's bodies belong to the plugin).
  std::vector<hv::PowerStateEvent> power() const {
    std::vector<hv::PowerStateEvent> out;
    for (const auto& m : power_.received())
      if (auto e = sdk::body_of<hv::PowerStateEvent>(m)) out.push_back(*e);
    return out;
  }
  std::vector<hv::PowerStateEvent> power_of(const std::string& vm) const {
    auto all = power();
    std::erase_if(all, [&](const hv::PowerStateEvent& e) { return e.vm != vm; });
    return all;
  }
  const std::vector<hv::Task>& seen() const { return seen_; }
  Harness& harness() { return h_; }

 private:
  Harness& h_;
  std::string instance_;
  Probe tasks_;
  Probe power_;
  std::vector<hv::Task> seen_;
  std::map<std::string, hv::Task> ended_;
};

HarnessOptions virtual_clock(const Subject& s) {
  HarnessOptions o = s.options;
  if (o.clock.empty()) o.clock = "virtual";
  return o;
}

/// The first template of the inventory, or a finding-worthy error.
std::string first_template(const hv::Inventory& inv) {
  if (inv.templates.empty()) throw std::runtime_error("the inventory lists no template; give the subject one");
  return inv.templates.front();
}

}  // namespace detail::hypervisor

Findings check_hypervisor(const Subject& s) {
  namespace hv = ::deskfarm::interfaces::hypervisor;
  using detail::hypervisor::Driver;
  using detail::hypervisor::vendor_code;
  using namespace std::chrono_literals;
  Findings out = role_declared(s, "hypervisor");
  if (!out.empty()) return out;  // not an adapter: its behaviour against the contract means nothing
  const auto options = detail::hypervisor::virtual_clock(s);

  const std::string inventory = "the inventory names the vendor and lists hosts, templates and networks";
  detail::guarded(out, inventory, [&](Findings& f) {
    Harness h(s.manifest_toml, options);
    h.start();
    Driver d(h, s.instance);
    const auto inv = d.inventory();
    if (inv.vendor.empty()) f.push_back({inventory, "vendor is empty"});
    if (inv.hosts.size() < 2) f.push_back({inventory, "fewer than two hosts (the HA check needs two)"});
    if (inv.templates.empty()) f.push_back({inventory, "no template"});
    if (inv.networks.empty()) f.push_back({inventory, "no network"});
  });

  const std::string created = "a created VM is listed, off, with a unique locally administered unicast MAC";
  const std::string legal = "legal transitions change the state with events in order, each carrying the VM's MAC";
  const std::string illegal = "an illegal transition fails with the vendor's error and changes nothing";
  const std::string unknown = "unknown VM, task and host ids are refused with an error naming them; the instance keeps running";
  detail::guarded(out, legal, [&](Findings& f) {
    Harness h(s.manifest_toml, options);
    h.start();
    Driver d(h, s.instance);
    const auto inv = d.inventory();
    const auto tpl = detail::hypervisor::first_template(inv);
    const auto a = d.create(tpl);
    const auto b = d.create(tpl);
    const auto va = d.vm(a), vb = d.vm(b);
    if (!va || !vb) {
      f.push_back({created, "a created VM is not in the inventory"});
      return;
    }
    if (va->power_state != hv::kOff) f.push_back({created, "a new VM is " + va->power_state + ", not off"});
    if (va->mac == vb->mac) f.push_back({created, "two VMs share MAC " + va->mac});
    if (va->mac.size() != 17 || (std::stoi(va->mac.substr(0, 2), nullptr, 16) & 3) != 2)
      f.push_back({created, "MAC " + va->mac + " is not a locally administered unicast address"});

    // off -> start -> running
    auto start = d.finish(d.act_ok("start", a));
    if (start.state != "completed") f.push_back({legal, "start ended " + start.state + " " + start.error_code + ": " + start.error});
    auto events = d.power_of(a);
    std::string at = hv::kOff;
    for (const auto& e : events) {
      if (e.previous != at) f.push_back({legal, "event " + e.previous + " -> " + e.state + " does not follow " + at});
      if (e.mac != va->mac) f.push_back({legal, "event for " + a + " carries MAC '" + e.mac + "', not " + va->mac});
      at = e.state;
    }
    if (events.empty() || events.back().state != hv::kRunning) f.push_back({legal, "no event says the started VM is running"});
    if (!events.empty() && !events.front().is_boot()) f.push_back({legal, "the first event of a start is not a boot (is_boot())"});
    if (d.vm(a)->power_state != hv::kRunning) f.push_back({legal, "inventory says " + d.vm(a)->power_state + " after start"});
    for (const auto& [action, expect] : std::vector<std::pair<std::string, std::string>>{
             {"suspend", hv::kSuspended}, {"resume", hv::kRunning}, {"shutdown", hv::kOff}}) {
      auto t = d.finish(d.act_ok(action, a));
      const auto now = d.vm(a)->power_state;
      if (t.state != "completed" || now != expect)
        f.push_back({legal, action + " ended " + t.state + " " + t.error + "; the VM is " + now + ", expected " + expect});
    }

    // illegal: the VM is off now
    const auto code = vendor_code(inv.vendor, "bad_state");
    const auto before = d.power_of(a).size();
    for (const std::string action : {"shutdown", "suspend", "resume"}) {
      auto r = d.act(action, a);
      hv::Task t = r ? d.finish(*r) : hv::Task{};
      const std::string got = r ? t.error_code : r.error().code;
      if (r && t.state != "failed") f.push_back({illegal, action + " of an off VM ended " + t.state});
      if (got.empty()) f.push_back({illegal, action + " of an off VM failed without an error code"});
      if (!code.empty() && got != code) f.push_back({illegal, action + " of an off VM answered '" + got + "', not " + code});
    }
    if (h.is_virtual()) h.advance(1min);
    else std::this_thread::sleep_for(500ms);  // a real machine's adapter (clock = "real"): refusals are immediate
    if (d.vm(a)->power_state != hv::kOff) f.push_back({illegal, "the VM is " + d.vm(a)->power_state + " after refused actions"});
    if (d.power_of(a).size() != before) f.push_back({illegal, "refused actions published power events"});
    // destroy -> gone
    auto gone = d.finish(d.act_ok("destroy", a));
    if (gone.state != "completed" || d.vm(a)) f.push_back({legal, "destroy ended " + gone.state + " and the VM is still listed"});

    // unknown ids
    const auto not_found = vendor_code(inv.vendor, "not_found");
    for (const std::string& id : {std::string("conformance-no-such-vm"), a}) {
      auto r = d.act("start", id);
      if (r) {
        f.push_back({unknown, "start of unknown VM '" + id + "' was accepted as task " + r->id});
        continue;
      }
      if (r.error().message.find(id) == std::string::npos) f.push_back({unknown, "the error for '" + id + "' does not name it: " + r.error().message});
      if (!not_found.empty() && r.error().code != not_found) f.push_back({unknown, "unknown VM answered " + r.error().code + ", not " + not_found});
    }
    if (d.cancel("conformance-no-such-task")) f.push_back({unknown, "cancel of an unknown task was accepted"});
    if (d.fault("host_crash", "conformance-no-such-host")) f.push_back({unknown, "host_crash of an unknown host was accepted"});
    if (d.act("conformance-no-such-action", b)) f.push_back({unknown, "an unknown action was accepted"});
    if (detail::instance_state(h, s.instance) != "running") f.push_back({unknown, "the instance stopped running"});
  });

  const std::string capacity = "a start no host has room for fails with the vendor's capacity error; capacity is never overcommitted";
  detail::guarded(out, capacity, [&](Findings& f) {
    Harness h(s.manifest_toml, options);
    h.start();
    Driver d(h, s.instance);
    const auto inv = d.inventory();
    const auto first = d.create(detail::hypervisor::first_template(inv));
    const auto mem = std::max<std::int64_t>(1, d.vm(first)->memory_mb);
    std::int64_t room = 0;
    for (const auto& host : inv.hosts) room += host.up ? host.free_memory_mb / mem : 0;
    if (room + 1 > 256) {
      f.push_back({capacity, "the hosts hold " + std::to_string(room) + " VMs of the first template; give the subject hosts for fewer than 256"});
      return;
    }
    std::vector<std::string> vms{first};
    for (std::int64_t i = 0; i < room; ++i) vms.push_back(d.create(detail::hypervisor::first_template(inv)));
    std::vector<hv::Task> started;
    for (const auto& v : vms) started.push_back(d.act_ok("start", v));
    std::size_t refused = 0;
    std::string codes;
    for (auto& t : started) {
      t = d.finish(t);
      if (t.state == "failed") ++refused, codes += t.error_code + " ";
    }
    if (refused == 0) f.push_back({capacity, std::to_string(vms.size()) + " starts all succeeded on hosts with room for " + std::to_string(room)});
    const auto code = vendor_code(inv.vendor, "capacity");
    if (!code.empty() && refused > 0 && codes.find(code) == std::string::npos)
      f.push_back({capacity, "refused starts answered " + codes + "not " + code});
    for (const auto& host : d.inventory().hosts)
      if (host.free_memory_mb < 0) f.push_back({capacity, "host " + host.id + " has negative free memory"});
  });

  const std::string throttle = "actions are queued: at most max_in_progress started at once, the rest pending";
  const std::string cancel = "a pending task cancels without effect; a started one returns the VM to where it was";
  detail::guarded(out, throttle, [&](Findings& f) {
    Harness h(s.manifest_toml, options);
    h.start();
    Driver d(h, s.instance);
    const auto inv = d.inventory();
    if (inv.max_in_progress <= 0) {
      f.push_back({throttle, "the inventory reports no max_in_progress; give the subject a throttle"});
      return;
    }
    const auto limit = static_cast<std::size_t>(inv.max_in_progress);
    const auto tpl = detail::hypervisor::first_template(inv);
    std::vector<std::string> vms;
    for (std::size_t i = 0; i < std::min<std::size_t>(limit + 2, 64); ++i) vms.push_back(d.create(tpl));
    std::vector<hv::Task> replies;
    for (const auto& v : vms) replies.push_back(d.act_ok("start", v));
    std::size_t started = 0, pending = 0;
    for (const auto& r : replies) started += r.state == "started", pending += r.state == "pending";
    if (started > limit) f.push_back({throttle, std::to_string(started) + " started at once, max_in_progress is " + std::to_string(limit)});
    if (vms.size() > limit && pending == 0) f.push_back({throttle, "no task was pending with more actions than max_in_progress"});

    // cancel the last pending one, then one that started
    const auto& last = replies.back();
    if (last.state == "pending") {
      auto c = d.cancel(last.id);
      if (!c || c->state != "cancelled") f.push_back({cancel, "cancel of pending task " + last.id + " answered " + (c ? c->state : c.error().code)});
    }
    const auto& first = replies.front();
    auto c = d.cancel(first.id);
    if (!c || c->state != "cancelled") f.push_back({cancel, "cancel of started task " + first.id + " answered " + (c ? c->state : c.error().code)});
    for (auto& r : replies) r = d.finish(r);
    // Count what ran at once from the task events: started +1, ended -1.
    std::map<std::string, bool> live;
    std::size_t most = started;
    for (const auto& t : d.seen()) {
      if (t.state == "started") live[t.id] = true;
      if (detail::hypervisor::ended(t.state)) live.erase(t.id);
      most = std::max(most, live.size());
    }
    if (most > limit) f.push_back({throttle, std::to_string(most) + " tasks ran at once; max_in_progress is " + std::to_string(limit)});
    const auto after_last = d.vm(vms.back());
    if (last.state == "pending" && after_last && after_last->power_state != hv::kOff)
      f.push_back({cancel, "the VM of a cancelled pending start is " + after_last->power_state});
    if (!d.power_of(vms.back()).empty() && last.state == "pending") f.push_back({cancel, "a cancelled pending start published power events"});
    const auto after_first = d.vm(vms.front());
    if (after_first && after_first->power_state != hv::kOff)
      f.push_back({cancel, "the VM of a cancelled started start is " + after_first->power_state + ", not off"});
    if (d.cancel(first.id)) f.push_back({cancel, "a finished task was cancelled again"});
  });

  const std::string ha = "a failed host's VMs go off; HA-protected ones run again on another host within a minute";
  detail::guarded(out, ha, [&](Findings& f) {
    Harness h(s.manifest_toml, options);
    h.start();
    Driver d(h, s.instance);
    const auto inv = d.inventory();
    const auto v = d.create(detail::hypervisor::first_template(inv));
    d.finish(d.act_ok("start", v));
    const auto host = d.vm(v)->host;
    auto r = d.fault("host_crash", host);
    if (!r) {
      f.push_back({ha, "fault host_crash " + host + " was refused: " + r.error().code + " " + r.error().message});
      return;
    }
    h.advance(60s);
    const auto events = d.power_of(v);
    const bool went_off = std::any_of(events.begin(), events.end(), [](auto& e) { return e.state == hv::kOff && e.reason == "host_failure"; });
    const bool back = std::any_of(events.begin(), events.end(), [](auto& e) { return e.state == hv::kRunning && e.reason == "ha_restart"; });
    if (!went_off) f.push_back({ha, "no event says VM " + v + " went off with reason host_failure"});
    if (!back) f.push_back({ha, "no event says VM " + v + " runs again with reason ha_restart"});
    const auto now = d.vm(v);
    if (!now || now->power_state != hv::kRunning || now->host == host)
      f.push_back({ha, "after 60 s the VM is " + (now ? now->power_state + " on '" + now->host + "'" : std::string("gone"))});
    for (const auto& x : d.inventory().hosts)
      if (x.id == host && x.up) f.push_back({ha, "the crashed host is still up"});
    auto back_up = d.fault("host_recover", host);
    if (!back_up) f.push_back({ha, "host_recover was refused: " + back_up.error().message});
  });

  const std::string persist = "VMs, their MACs and power states survive a restart of the deployment";
  detail::guarded(out, persist, [&](Findings& f) {
    HarnessOptions o = options;
    std::string id, mac;
    Harness first(s.manifest_toml, o);
    o.state_dir = first.state_dir();
    first.start();
    {
      Driver d(first, s.instance);
      id = d.create(detail::hypervisor::first_template(d.inventory()));
      d.finish(d.act_ok("start", id));
      mac = d.vm(id)->mac;
    }
    first.stop();
    Harness second(s.manifest_toml, o);
    second.start();
    Driver d(second, s.instance);
    const auto v = d.vm(id);
    if (!v) {
      f.push_back({persist, "VM " + id + " is gone after a restart"});
      return;
    }
    if (v->mac != mac) f.push_back({persist, "VM " + id + " came back with MAC " + v->mac + ", not " + mac});
    if (v->power_state != hv::kRunning) f.push_back({persist, "VM " + id + " came back " + v->power_state + ", not running"});
  });
  return out;
}

Findings check_pvs(const Subject& s) { return role_declared(s, "pvs"); }
Findings check_tftp(const Subject& s) { return role_declared(s, "tftp"); }

const std::map<std::string, std::function<Findings(const Subject&)>>& role_checks() {
  static const std::map<std::string, std::function<Findings(const Subject&)>> checks{
      {"hypervisor", check_hypervisor}, {"pvs", check_pvs}, {"tftp", check_tftp}};
  return checks;
}

Findings check_role(const Subject& s, const std::string& role) {
  const auto& checks = role_checks();
  if (auto it = checks.find(role); it != checks.end()) return it->second(s);
  return role_declared(s, role);
}

Findings run(const Subject& s) {
  Findings out = check_every_plugin(s);
  std::vector<std::string> roles = s.roles;
  if (roles.empty()) {
    try {
      roles = Harness::describe(s.plugin, s.options.plugin_path).provides;
    } catch (const std::exception&) {
      // already reported by check_every_plugin
    }
  }
  for (const auto& role : roles) {
    auto found = check_role(s, role);
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
}

}  // namespace deskfarm::testing::conformance
