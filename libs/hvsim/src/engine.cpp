// The simulation engine: see engine.hpp. Everything runs on the caller's thread; time comes from Callbacks.
#include "deskfarm/hvsim/engine.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

namespace deskfarm::hvsim {

namespace {

constexpr std::array<std::string_view, action_count> action_names{
    "create", "start", "shutdown", "power_off", "reboot", "suspend", "resume", "destroy", "attach_iso", "eject_iso",
    "set_boot_order", "pause", "unpause", "ha_restart"};
constexpr std::array<std::string_view, 4> boot_devices{"", "network", "cdrom", "disk"};
constexpr std::uint32_t max_index = 0xfffffe;  // 24 bits of the MAC hold index + 1

std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

bool disk_bound(Action a) {
  return a == Action::create || a == Action::start || a == Action::suspend || a == Action::resume ||
         a == Action::destroy || a == Action::reboot;
}

/// Actions whose task holds the VM in a transient state while it runs.
std::optional<State> transient(Action a) {
  switch (a) {
    case Action::start:
    case Action::reboot: return State::starting;
    case Action::shutdown: return State::stopping;
    default: return std::nullopt;
  }
}

}  // namespace

std::string_view action_name(Action a) { return action_names[static_cast<std::size_t>(a)]; }

std::optional<Action> action_of(std::string_view name) {
  for (std::size_t i = 0; i + 1 < action_count; ++i)
    if (action_names[i] == name) return static_cast<Action>(i);
  return std::nullopt;
}

std::optional<Latency::Kind> latency_kind(std::string_view name) {
  if (name == "constant") return Latency::Kind::constant;
  if (name == "uniform") return Latency::Kind::uniform;
  if (name == "lognormal") return Latency::Kind::lognormal;
  return std::nullopt;
}

std::chrono::nanoseconds Latency::draw(std::mt19937_64& rng) const {
  double ms = a;
  switch (kind) {
    case Kind::constant: break;
    case Kind::uniform: ms = std::uniform_real_distribution<double>(a, std::max(a, b))(rng); break;
    case Kind::lognormal: ms = a > 0 ? std::lognormal_distribution<double>(std::log(a), b)(rng) : 0; break;
  }
  // A lognormal tail is unbounded; a real task that takes an hour has failed, so cap at one.
  ms = std::clamp(ms, 0.0, 3600e3);
  return std::chrono::nanoseconds(static_cast<std::int64_t>(ms * 1e6));
}

Latency default_latency(Action a) {
  using K = Latency::Kind;
  switch (a) {
    case Action::create: return {K::lognormal, 2000, 0.3};
    case Action::start: return {K::lognormal, 4000, 0.3};
    case Action::shutdown: return {K::lognormal, 3000, 0.3};
    case Action::power_off: return {K::uniform, 200, 800};
    case Action::reboot: return {K::lognormal, 5000, 0.3};
    case Action::suspend: return {K::lognormal, 4000, 0.3};
    case Action::resume: return {K::lognormal, 3000, 0.3};
    case Action::destroy: return {K::uniform, 500, 1500};
    case Action::attach_iso:
    case Action::eject_iso: return {K::uniform, 100, 400};
    case Action::set_boot_order: return {K::uniform, 50, 150};
    case Action::pause:
    case Action::unpause: return {K::uniform, 100, 300};
    case Action::ha_restart: return {K::uniform, 1000, 3000};
  }
  return {};
}

Engine::Engine(const Personality& vendor, EngineConfig config, Callbacks callbacks)
    : vendor_(vendor), config_(std::move(config)), cb_(std::move(callbacks)), rng_(config_.seed) {
  if (!cb_.now || !cb_.wake_at) throw std::invalid_argument("hvsim: Callbacks need now and wake_at");
  if (config_.hosts.empty()) throw std::invalid_argument("hosts: at least one host is needed");
  if (config_.hosts.size() > 32767) throw std::invalid_argument("hosts: at most 32767 hosts");
  if (config_.templates.size() > 65535 || config_.networks.size() > 65535 || config_.isos.size() > 32767)
    throw std::invalid_argument("too many templates, networks or ISOs (at most 65535, 65535, 32767)");
  if (config_.max_vms < 1 || config_.max_vms > max_index)
    throw std::invalid_argument("max_vms: " + std::to_string(config_.max_vms) + " is not 1..16777214 (a MAC holds 24 bits of VM index)");
  std::set<std::string> seen;
  for (const auto& h : config_.hosts) {
    if (h.id.empty()) throw std::invalid_argument("hosts: a host has an empty id");
    if (!seen.insert(h.id).second) throw std::invalid_argument("hosts: id '" + h.id + "' is given twice");
    if (h.memory_mb <= 0 || h.vcpus <= 0)
      throw std::invalid_argument("hosts: host '" + h.id + "' needs memory_mb > 0 and vcpus > 0");
    hosts_.push_back(HostRec{h, 0, 0, true});
  }
  seen.clear();
  for (const auto& n : config_.networks) {
    if (!seen.insert(n.name).second) throw std::invalid_argument("networks: name '" + n.name + "' is given twice");
    LeasePool pool;
    if (!n.subnet.empty()) {
      // The network and broadcast addresses are not leased; a /31 or /32 leaves nothing to lease.
      pool.subnet = n.subnet.find('/') == std::string::npos ? std::nullopt : net::Subnet::parse(n.subnet);
      if (!pool.subnet || pool.subnet->family() != net::Family::ipv4 || pool.subnet->prefix() < 8 || pool.subnet->prefix() > 30)
        throw std::invalid_argument("networks: '" + n.name + "' has subnet '" + n.subnet +
                                    "', not an IPv4 range ADDRESS/8..30 with no host bits set (e.g. \"10.1.0.0/16\")");
      pool.room = pool.subnet->host_count();
    }
    leases_.push_back(std::move(pool));
  }
  seen.clear();
  for (const auto& t : config_.templates) {
    if (!seen.insert(t.name).second) throw std::invalid_argument("templates: name '" + t.name + "' is given twice");
    if (t.memory_mb <= 0 || t.vcpus <= 0 || t.memory_mb > 0xffffffffll || t.vcpus > 0xffff)
      throw std::invalid_argument("templates: '" + t.name + "' needs memory_mb 1..4294967295 and vcpus 1..65535");
    bool fits = false;
    for (const auto& h : config_.hosts) fits = fits || (h.memory_mb >= t.memory_mb && h.vcpus >= t.vcpus);
    if (!fits)
      throw std::invalid_argument("templates: '" + t.name + "' needs " + std::to_string(t.memory_mb) + " MB and " +
                                  std::to_string(t.vcpus) + " vCPUs, more than any host has; give it less or add a bigger host");
    if (!t.network.empty() && std::none_of(config_.networks.begin(), config_.networks.end(), [&](auto& n) { return n.name == t.network; }))
      throw std::invalid_argument("templates: '" + t.name + "' names network '" + t.network + "', which is not in networks");
    try {
      (void)encode_boot_order(t.boot_order, t.name);
    } catch (const Refused& e) {
      throw std::invalid_argument("templates: '" + t.name + "': boot_order " + e.what());
    }
  }
  if (!config_.templates.empty() && config_.networks.empty())
    throw std::invalid_argument("networks: templates need at least one network");
  for (std::size_t i = 0; i < action_count; ++i) latency_[i] = default_latency(static_cast<Action>(i));
  for (const auto& [a, l] : config_.latencies) latency_[static_cast<std::size_t>(a)] = l;

  const auto h = fnv1a(vendor_.vendor) ^ fnv1a(config_.instance);
  char buf[64];
  switch (vendor_.ids) {
    case Personality::Ids::uuid:
      std::snprintf(buf, sizeof buf, "%08x-%04x-4%03x-8%03x-", unsigned(h >> 32), unsigned((h >> 16) & 0xffff),
                    unsigned((h >> 4) & 0xfff), unsigned((h >> 40) & 0xfff));
      id_prefix_ = buf;
      break;
    case Personality::Ids::guid:
      std::snprintf(buf, sizeof buf, "%08X-%04X-4%03X-8%03X-", unsigned(h >> 32), unsigned((h >> 16) & 0xffff),
                    unsigned((h >> 4) & 0xfff), unsigned((h >> 40) & 0xfff));
      id_prefix_ = buf;
      break;
    case Personality::Ids::moref: id_prefix_ = "vm-"; break;
  }
  if (config_.mac_prefix.empty()) {
    // Locally administered (bit 1 set), unicast (bit 0 clear); the instance name, not the vendor, picks the
    // other 22 bits, so a VM keeps its MAC when the deployment swaps adapters.
    const auto m = fnv1a(config_.instance);
    mac_prefix_[0] = static_cast<std::uint8_t>((m & 0xfc) | 0x02);
    mac_prefix_[1] = static_cast<std::uint8_t>(m >> 8);
    mac_prefix_[2] = static_cast<std::uint8_t>(m >> 16);
  } else {
    const auto bad = std::invalid_argument("mac_prefix: '" + config_.mac_prefix +
                                           "' is not 3 to 5 hex octets of a unicast MAC, like \"52:54:00\"");
    std::size_t n = 0;
    for (std::size_t p = 0; p < config_.mac_prefix.size(); p += 3) {
      const auto octet = config_.mac_prefix.substr(p, 2);
      if (n == 5 || octet.size() != 2 || !std::isxdigit(static_cast<unsigned char>(octet[0])) ||
          !std::isxdigit(static_cast<unsigned char>(octet[1])) || (p + 2 < config_.mac_prefix.size() && config_.mac_prefix[p + 2] != ':'))
        throw bad;
      mac_prefix_[n++] = static_cast<std::uint8_t>(std::stoul(octet, nullptr, 16));
    }
    if (n < 3 || (mac_prefix_[0] & 1)) throw bad;
    mac_octets_ = n;
  }
  mac_room_ = static_cast<std::uint32_t>((1ull << (8 * (6 - mac_octets_))) - 2);  // numbers 1 .. 2^bits - 2
  if (config_.max_vms > static_cast<std::int64_t>(mac_room_)) config_.max_vms = mac_room_;
}

// ---- names ----

std::string Engine::vm_id(std::uint32_t index) const {
  char buf[32];
  if (vendor_.ids == Personality::Ids::moref)
    std::snprintf(buf, sizeof buf, "%u", index + 1000);
  else
    std::snprintf(buf, sizeof buf, vendor_.ids == Personality::Ids::guid ? "%012X" : "%012x", index);
  return id_prefix_ + buf;
}

std::optional<std::uint32_t> Engine::vm_index(std::string_view id) const {
  if (id.size() <= id_prefix_.size() || id.substr(0, id_prefix_.size()) != id_prefix_) return std::nullopt;
  const auto tail = id.substr(id_prefix_.size());
  const bool moref = vendor_.ids == Personality::Ids::moref;
  if (!moref && tail.size() != 12) return std::nullopt;
  if (tail.size() > 12) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : tail) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (!moref && vendor_.ids == Personality::Ids::uuid && c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (!moref && vendor_.ids == Personality::Ids::guid && c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return std::nullopt;
    v = v * (moref ? 10 : 16) + static_cast<std::uint64_t>(d);
  }
  if (moref) {
    if (v < 1000) return std::nullopt;
    v -= 1000;
  }
  if (v >= vms_.size() || !vms_[v].alive) return std::nullopt;
  return static_cast<std::uint32_t>(v);
}

std::string Engine::mac_of(std::uint32_t index) const {
  std::uint8_t b[6];
  std::copy(mac_prefix_, mac_prefix_ + mac_octets_, b);
  const auto n = index + 1;  // never all zero
  for (std::size_t i = 5; i >= mac_octets_; --i) b[i] = static_cast<std::uint8_t>(n >> (8 * (5 - i)));
  char buf[18];
  std::snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5]);
  return buf;
}

std::string Engine::task_id(std::uint64_t num) const { return std::string(vendor_.task_prefix) + std::to_string(num); }

std::optional<std::uint64_t> Engine::task_num(std::string_view id) const {
  const auto p = vendor_.task_prefix;
  if (id.size() <= p.size() || id.size() > p.size() + 19 || id.substr(0, p.size()) != p) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : id.substr(p.size())) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return v;
}

std::int16_t Engine::host_index(std::string_view id) const {
  for (std::size_t i = 0; i < hosts_.size(); ++i)
    if (hosts_[i].spec.id == id) return static_cast<std::int16_t>(i);
  return -1;
}

std::optional<std::uint16_t> Engine::template_index(std::string_view name) const {
  for (std::size_t i = 0; i < config_.templates.size(); ++i)
    if (config_.templates[i].name == name) return static_cast<std::uint16_t>(i);
  return std::nullopt;
}

std::int16_t Engine::iso_index(std::string_view name) const {
  for (std::size_t i = 0; i < config_.isos.size(); ++i)
    if (config_.isos[i] == name) return static_cast<std::int16_t>(i);
  return -1;
}

std::uint8_t Engine::encode_boot_order(const std::vector<std::string>& order, std::string_view subject) const {
  if (order.empty() || order.size() > 3)
    throw refused(Failure::bad_argument, subject, "boot_order needs 1 to 3 of network, cdrom, disk");
  std::uint8_t packed = 0;
  std::uint8_t used = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    const auto it = std::find(boot_devices.begin() + 1, boot_devices.end(), order[i]);
    if (it == boot_devices.end())
      throw refused(Failure::bad_argument, subject, "boot device '" + order[i] + "' is not network, cdrom or disk");
    const auto d = static_cast<std::uint8_t>(it - boot_devices.begin());
    if (used & (1u << d)) throw refused(Failure::bad_argument, subject, "boot device '" + order[i] + "' is listed twice");
    used |= static_cast<std::uint8_t>(1u << d);
    packed |= static_cast<std::uint8_t>(d << (2 * i));
  }
  return packed;
}

std::vector<std::string> Engine::decode_boot_order(std::uint8_t packed) {
  std::vector<std::string> out;
  for (int i = 0; i < 3; ++i)
    if (auto d = (packed >> (2 * i)) & 3) out.emplace_back(boot_devices[d]);
  return out;
}

Refused Engine::refused(Failure f, std::string_view subject, std::string_view detail) const {
  return Refused(vendor_.error(f, subject, detail));
}

// ---- views ----

hv::Vm Engine::vm_view(std::uint32_t index) const {
  const auto& v = vms_[index];
  hv::Vm out;
  out.id = vm_id(index);
  out.name = v.name;
  out.mac = mac_of(index);
  out.host = v.host >= 0 ? hosts_[static_cast<std::size_t>(v.host)].spec.id : "";
  out.power_state = std::string(common_name(v.state));
  out.vendor_state = std::string(vendor_.state_name(v.state));
  out.memory_mb = v.memory_mb;
  out.vcpus = v.vcpus;
  out.network = config_.networks.empty() ? "" : config_.networks[v.network].name;
  out.iso = v.iso >= 0 ? config_.isos[static_cast<std::size_t>(v.iso)] : "";
  out.boot_order = decode_boot_order(v.boot_order);
  out.address = address_of(v);
  return out;
}

hv::Task Engine::task_view(const TaskRec& t) const {
  hv::Task out;
  out.id = task_id(t.num);
  out.action = std::string(action_name(t.action));
  out.vm = t.action == Action::create && t.state != TaskState::completed ? "" : vm_id(t.vm);
  out.state = std::string(common_name(t.state));
  out.vendor_state = std::string(vendor_.task_state_name(t.state));
  out.progress = t.progress;
  out.error_code = t.error_code;
  out.error = t.error;
  return out;
}

hv::Inventory Engine::inventory() const {
  hv::Inventory inv;
  inv.vendor = std::string(vendor_.vendor);
  inv.hosts = hosts();
  for (const auto& t : config_.templates) inv.templates.push_back(t.name);
  inv.isos = config_.isos;
  inv.networks = config_.networks;
  inv.vms.reserve(live_vms_);
  for (std::uint32_t i = 0; i < vms_.size(); ++i)
    if (vms_[i].alive) inv.vms.push_back(vm_view(i));
  inv.max_in_progress = config_.max_in_progress;
  inv.max_per_minute = config_.max_per_minute;
  return inv;
}

std::vector<hv::Host> Engine::hosts() const {
  std::vector<hv::Host> out;
  for (const auto& h : hosts_)
    out.push_back(hv::Host{h.spec.id, h.spec.pool, h.spec.memory_mb, h.up ? h.spec.memory_mb - h.used_memory : 0,
                           h.spec.vcpus, h.up});
  return out;
}

std::optional<hv::Vm> Engine::vm(const std::string& id) const {
  if (auto i = vm_index(id)) return vm_view(*i);
  return std::nullopt;
}

std::optional<hv::Task> Engine::task(const std::string& id) const {
  const auto num = task_num(id);
  if (!num) return std::nullopt;
  if (auto it = tasks_.find(*num); it != tasks_.end()) return task_view(it->second);
  for (const auto& t : finished_)
    if (t.id == id) return t;
  return std::nullopt;
}

QueueStats Engine::stats() const {
  QueueStats s = counts_;
  s.pending = queue_.size();
  s.in_progress = in_progress_;
  s.started_last_minute = window_.size();
  return s;
}

std::size_t Engine::running_count() const {
  std::size_t n = 0;
  for (const auto& v : vms_) n += v.alive && v.state != State::off && v.state != State::suspended;
  return n;
}

// ---- rules ----

bool Engine::accepts(Action a, State s) {
  switch (a) {
    case Action::create: return true;
    case Action::start: return s == State::off;
    case Action::shutdown: return s == State::running;
    case Action::power_off: return s == State::running || s == State::starting || s == State::paused || s == State::stopping || s == State::suspended;
    case Action::reboot: return s == State::running;
    case Action::suspend: return s == State::running;
    case Action::resume: return s == State::suspended;
    case Action::destroy: return s == State::off;
    case Action::attach_iso:
    case Action::eject_iso:
    case Action::set_boot_order: return true;
    case Action::pause: return s == State::running;
    case Action::unpause: return s == State::paused;
    case Action::ha_restart: return s == State::off;
  }
  return false;
}

std::string Engine::expected_states(Action a) const {
  std::string out;
  for (std::size_t i = 0; i < state_count; ++i) {
    const auto s = static_cast<State>(i);
    if (!accepts(a, s)) continue;
    const auto name = vendor_.state_name(s);
    if (out.find(name) != std::string::npos) continue;
    if (!out.empty()) out += "|";
    out += name;
  }
  return out;
}

std::int16_t Engine::place(const VmRec& vm, std::int16_t avoid) const {
  // The up host with the most free memory that holds the VM (spreads load, as XenServer's and DRS's
  // default placement do).
  std::int16_t best = -1;
  std::int64_t best_free = -1;
  for (std::size_t i = 0; i < hosts_.size(); ++i) {
    const auto& h = hosts_[i];
    if (!h.up || static_cast<std::int16_t>(i) == avoid) continue;
    const auto free = h.spec.memory_mb - h.used_memory;
    if (free < vm.memory_mb || h.spec.vcpus - h.used_vcpus < vm.vcpus) continue;
    if (free > best_free) best = static_cast<std::int16_t>(i), best_free = free;
  }
  return best;
}

void Engine::reserve(VmRec& vm, std::int16_t host) {
  vm.host = host;
  hosts_[static_cast<std::size_t>(host)].used_memory += vm.memory_mb;
  hosts_[static_cast<std::size_t>(host)].used_vcpus += vm.vcpus;
}

void Engine::release(VmRec& vm) {
  if (vm.host < 0) return;
  auto& h = hosts_[static_cast<std::size_t>(vm.host)];
  h.used_memory -= vm.memory_mb;
  h.used_vcpus -= vm.vcpus;
  vm.host = -1;
}

void Engine::set_state(std::uint32_t index, State s, std::string_view reason) {
  auto& vm = vms_[index];
  if (vm.state == s) return;
  const auto previous = vm.state;
  vm.state = s;
  if (s == State::off || s == State::suspended) release(vm);
  dirty_ = true;
  if (!cb_.on_power) return;
  hv::PowerStateEvent e;
  e.vm = vm_id(index);
  e.mac = mac_of(index);
  e.previous = std::string(common_name(previous));
  e.state = std::string(common_name(s));
  e.vendor_state = std::string(vendor_.state_name(s));
  e.host = vm.host >= 0 ? hosts_[static_cast<std::size_t>(vm.host)].spec.id : "";
  e.reason = std::string(reason);
  e.adapter = config_.instance;
  cb_.on_power(e);
}

std::chrono::nanoseconds Engine::latency(Action a) {
  auto d = latency_[static_cast<std::size_t>(a)].draw(rng_);
  if (disk_bound(a) && config_.storage_factor != 1)
    d = std::chrono::nanoseconds(static_cast<std::int64_t>(static_cast<double>(d.count()) * config_.storage_factor));
  return d;
}

// ---- the queue and its timers ----

void Engine::schedule(TimePoint at, EvKind kind, std::uint64_t ref, std::uint64_t* seq_out) {
  const auto seq = ++seq_;
  events_.push(Event{at, seq, kind, ref});
  if (seq_out) *seq_out = seq;
}

void Engine::arm() {
  if (events_.empty()) return;
  const auto at = events_.top().at;
  if (armed_ && *armed_ <= at) return;
  armed_ = at;
  cb_.wake_at(at);
}

void Engine::run_due() {
  armed_.reset();
  const auto now = cb_.now();
  // Bounded: each event is popped once; the events an event schedules lie in the future unless their latency
  // drew zero, and then they are handled in this same loop (at most one follow-up per event).
  while (!events_.empty() && events_.top().at <= now) {
    const auto e = events_.top();
    events_.pop();
    switch (e.kind) {
      case EvKind::task_done: {
        auto it = tasks_.find(e.ref);
        if (it != tasks_.end() && it->second.state == TaskState::started && it->second.timer == e.seq) complete(e.ref);
        break;
      }
      case EvKind::ha_restart: {
        auto& vm = vms_[e.ref];
        if (!vm.alive || vm.state != State::off || vm.ha_stage != 1) break;
        const auto h = place(vm, -1);
        if (h < 0) {
          vm.ha_stage = 0;
          if (cb_.log) cb_.log("HA: no host can take VM " + vm_id(static_cast<std::uint32_t>(e.ref)) + " (" + vm.name + "); it stays off");
          break;
        }
        reserve(vm, h);
        vm.ha_stage = 2;
        set_state(static_cast<std::uint32_t>(e.ref), State::starting, "ha_restart");
        schedule(now + latency(Action::start), EvKind::ha_running, e.ref);
        break;
      }
      case EvKind::ha_running: {
        auto& vm = vms_[e.ref];
        if (!vm.alive || vm.state != State::starting || vm.ha_stage != 2) break;
        // A restarted VM boots as a started one does: through its firmware when its network boots it.
        if (cb_.on_boot && wants_firmware(vm)) {
          vm.ha_stage = 3;
          cb_.on_boot(ticket(static_cast<std::uint32_t>(e.ref), 0));
          break;
        }
        vm.ha_stage = 0;
        set_state(static_cast<std::uint32_t>(e.ref), State::running, "ha_restart");
        if (cb_.log) cb_.log("HA: VM " + vm_id(static_cast<std::uint32_t>(e.ref)) + " restarted on " + vm_view(static_cast<std::uint32_t>(e.ref)).host);
        break;
      }
      case EvKind::throttle: break;  // pump() below
    }
  }
  pump();
  arm();
}

void Engine::pump() {
  const auto now = cb_.now();
  while (!window_.empty() && window_.front() <= now - std::chrono::minutes(1)) window_.pop_front();
  // Bounded by the queue's length: each pass pops one task.
  while (!queue_.empty()) {
    if (config_.max_in_progress > 0 && in_progress_ >= static_cast<std::size_t>(config_.max_in_progress)) break;
    if (config_.max_per_minute > 0 && window_.size() >= static_cast<std::size_t>(config_.max_per_minute)) {
      schedule(window_.front() + std::chrono::minutes(1), EvKind::throttle, 0);
      break;
    }
    const auto num = queue_.front();
    queue_.pop_front();
    auto it = tasks_.find(num);
    if (it == tasks_.end() || it->second.state != TaskState::pending) continue;
    window_.push_back(now);
    begin(it->second);
  }
}

hv::Task Engine::submit(const hv::VmAction& a) {
  const auto action = action_of(a.action);
  if (!action)
    throw refused(Failure::not_supported, a.action.empty() ? "(no action)" : a.action,
                  "actions: create start shutdown power_off reboot suspend resume destroy attach_iso eject_iso set_boot_order" +
                      std::string(vendor_.has_pause ? " pause unpause" : ""));
  if ((*action == Action::pause || *action == Action::unpause) && !vendor_.has_pause)
    throw refused(Failure::not_supported, a.action, std::string(vendor_.vendor) + " has no paused state");
  TaskRec t;
  t.num = next_task_++;
  t.action = *action;
  if (*action == Action::create) {
    const auto ti = template_index(a.template_name);
    if (!ti) throw refused(Failure::object_not_found, a.template_name.empty() ? "(no template)" : a.template_name, "template");
    if (a.name.size() > 128 || a.name.find_first_of("\t\n\r") != std::string::npos)
      throw refused(Failure::bad_argument, "name", "a VM name is at most 128 characters without tabs or line breaks");
    if (live_vms_ + tasks_.size() >= static_cast<std::size_t>(config_.max_vms) || vms_.size() >= mac_room_)
      throw refused(Failure::not_enough_memory, a.template_name,
                    "room for a VM (max_vms " + std::to_string(config_.max_vms) + " reached; mac_prefix leaves room for " +
                        std::to_string(mac_room_) + ")");
    const auto net = network_of(*ti);
    if (!leases_.empty() && leases_[net].room && leases_[net].free() <= leases_[net].creating)
      throw refused(Failure::not_enough_memory, a.template_name,
                    "a free address on network '" + config_.networks[net].name + "' (subnet " + config_.networks[net].subnet +
                        " is fully leased; destroy VMs or give the network a larger subnet)");
    t.template_idx = *ti;
    t.name = a.name.empty() ? a.template_name : a.name;
  } else {
    const auto vi = vm_index(a.vm);
    if (!vi) throw refused(Failure::vm_not_found, a.vm.empty() ? "(no vm)" : a.vm, "");
    t.vm = *vi;
    if (*action == Action::attach_iso) {
      t.iso = iso_index(a.iso);
      if (t.iso < 0) throw refused(Failure::object_not_found, a.iso.empty() ? "(no iso)" : a.iso, "ISO");
    }
    if (*action == Action::set_boot_order) t.boot_order = encode_boot_order(a.boot_order, a.vm);
    const auto state = vms_[*vi].state;
    if (!accepts(*action, state)) {
      // Refused at once with the vendor's error: nothing changes and the queue is not touched.
      const auto e = vendor_.error(Failure::bad_power_state, a.vm,
                                   "expected " + expected_states(*action) + ", actual " + std::string(vendor_.state_name(state)));
      t.state = TaskState::failed;
      t.error_code = e.code;
      t.error = e.message;
      ++counts_.failed;
      auto view = task_view(t);
      finished_.push_back(view);
      if (finished_.size() > config_.task_history) finished_.pop_front();
      return view;
    }
  }
  auto& stored = tasks_.emplace(t.num, std::move(t)).first->second;
  count_create(stored, true);
  queue_.push_back(stored.num);
  const auto id = task_id(stored.num);
  pump();
  arm();
  return *task(id);  // as it stands now: started at once when the queue had room, or already failed
}

void Engine::begin(TaskRec& t) {
  t.state = TaskState::started;
  ++in_progress_;
  if (t.action != Action::create) {
    auto& vm = vms_[t.vm];
    if (!vm.alive) return fail(t.num, Failure::vm_not_found, "", false);
    if (!accepts(t.action, vm.state))
      return fail(t.num, Failure::bad_power_state,
                  "expected " + expected_states(t.action) + ", actual " + std::string(vendor_.state_name(vm.state)), false);
    t.before = vm.state;
    vm.ha_stage = 0;  // an operator's action wins over a pending HA restart
    if (t.action == Action::power_off && vm.task != 0 && vm.task != t.num) {
      // A hard power-off ends whatever was in flight on the VM (a start still booting, a shutdown).
      const auto other = vm.task;
      vm.task = 0;
      if (tasks_.count(other)) {
        auto& o = tasks_.at(other);
        finish(o, TaskState::failed, vendor_.error(Failure::cancelled, task_id(other), "powered off"));
      }
    }
    if (t.action == Action::start || t.action == Action::resume) {
      const auto h = place(vm, -1);
      if (h < 0) {
        std::int64_t most = 0;
        for (const auto& hr : hosts_) most = std::max(most, hr.up ? hr.spec.memory_mb - hr.used_memory : 0);
        return fail(t.num, Failure::not_enough_memory,
                    std::to_string(vm.memory_mb) + " MB and " + std::to_string(vm.vcpus) + " vCPUs; the most free on any host is " +
                        std::to_string(most) + " MB", false);
      }
      reserve(vm, h);
    }
    vm.task = t.num;
    if (auto s = transient(t.action)) set_state(t.vm, *s, "action");
  }
  if (cb_.on_task) cb_.on_task(task_view(t));
  if (cb_.on_work) return hand_to_backend(t);
  schedule(cb_.now() + latency(t.action), EvKind::task_done, t.num, &t.timer);
}

void Engine::hand_to_backend(TaskRec& t) {
  WorkTicket w;
  w.task = t.num;
  w.task_id = task_id(t.num);
  w.action = t.action;
  if (t.action == Action::create) {
    const auto& tp = config_.templates[t.template_idx];
    w.template_name = tp.name;
    w.memory_mb = tp.memory_mb;
    w.vcpus = tp.vcpus;
  } else {
    const auto& vm = vms_[t.vm];
    w.vm = vm_id(t.vm);
    w.mac = mac_of(t.vm);
    w.template_name = config_.templates[vm.template_idx].name;
    w.memory_mb = vm.memory_mb;
    w.vcpus = vm.vcpus;
    const auto iso = t.action == Action::attach_iso ? t.iso : vm.iso;
    w.iso = iso >= 0 ? config_.isos[static_cast<std::size_t>(iso)] : "";
    w.boot_order = decode_boot_order(t.action == Action::set_boot_order ? t.boot_order : vm.boot_order);
  }
  cb_.on_work(w);
}

void Engine::work_finished(std::uint64_t num, bool ok, const std::string& reason) {
  auto it = tasks_.find(num);
  if (it == tasks_.end() || it->second.state != TaskState::started) return;
  if (ok) complete(num);
  else fail(num, Failure::internal, reason, true);
  pump();
  arm();
}

void Engine::observed(const std::string& id, State s, const std::string& reason, const std::string& detail) {
  const auto index = vm_index(id);
  if (!index) return;
  auto& vm = vms_[*index];
  if (vm.task != 0) {
    const auto other = vm.task;
    vm.task = 0;
    if (tasks_.count(other)) finish(tasks_.at(other), TaskState::failed, vendor_.error(Failure::internal, id, detail));
  }
  vm.ha_stage = 0;
  set_state(*index, s, reason);
  pump();
  arm();
}

void Engine::complete(std::uint64_t num) {
  auto& t = tasks_.at(num);
  if (config_.task_failure_rate > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < config_.task_failure_rate)
    return fail(num, Failure::internal, "injected failure (task_failure_rate " + std::to_string(config_.task_failure_rate) + ")", true);
  switch (t.action) {
    case Action::create: t.vm = new_vm(t.template_idx, t.name); break;
    case Action::start:
    case Action::reboot:
      if (cb_.on_boot && wants_firmware(vms_[t.vm])) return hand_to_firmware(t);
      set_state(t.vm, State::running, "action");
      break;
    case Action::shutdown:
    case Action::power_off: set_state(t.vm, State::off, "action"); break;
    case Action::suspend: set_state(t.vm, State::suspended, "action"); break;
    case Action::resume:
    case Action::unpause: set_state(t.vm, State::running, "action"); break;
    case Action::pause: set_state(t.vm, State::paused, "action"); break;
    case Action::destroy: {
      auto& vm = vms_[t.vm];
      release_lease(vm);
      vm.alive = false;
      vm.name = std::string();
      vm.name.shrink_to_fit();
      --live_vms_;
      dirty_ = true;
      break;
    }
    case Action::attach_iso: vms_[t.vm].iso = t.iso, dirty_ = true; break;
    case Action::eject_iso: vms_[t.vm].iso = -1, dirty_ = true; break;
    case Action::set_boot_order: vms_[t.vm].boot_order = t.boot_order, dirty_ = true; break;
    case Action::ha_restart: break;
  }
  finish(t, TaskState::completed);
}

bool Engine::wants_firmware(const VmRec& vm) const {
  switch (vm.boot_order & 3) {  // the first boot device
    case 1: {                   // network: its network's options 66/67 say where the bootstrap is
      if (config_.networks.empty()) return false;
      const auto& n = config_.networks[vm.network];
      return !n.tftp_server.empty() && !n.boot_file.empty();
    }
    case 2: return vm.iso >= 0;  // cdrom with a disc in it: the firmware reads the boot record from the ISO
    default: return false;
  }
}

void Engine::hand_to_firmware(TaskRec& t) {
  t.booting = true;
  t.progress = 0.5;
  if (cb_.on_task) cb_.on_task(task_view(t));
  cb_.on_boot(ticket(t.vm, t.num));
}

BootTicket Engine::ticket(std::uint32_t index, std::uint64_t task) const {
  const auto& vm = vms_[index];
  const auto& n = config_.networks[vm.network];
  return BootTicket{task, task ? task_id(task) : "", vm_id(index), mac_of(index), decode_boot_order(vm.boot_order), n.tftp_server,
                    n.boot_file, vm.iso >= 0 ? config_.isos[static_cast<std::size_t>(vm.iso)] : ""};
}

void Engine::ha_boot_finished(const std::string& id, bool ok, const std::string& reason) {
  const auto i = vm_index(id);
  if (!i) return;
  auto& vm = vms_[*i];
  // A power-off or a second host failure during the boot ended this restart already.
  if (!vm.alive || vm.state != State::starting || vm.ha_stage != 3 || vm.task != 0) return;
  vm.ha_stage = 0;
  if (ok) {
    set_state(*i, State::running, "ha_restart");
    if (cb_.log) cb_.log("HA: VM " + id + " restarted on " + vm_view(*i).host + " and booted through its firmware");
  } else {
    set_state(*i, State::off, "ha_restart");  // frees its host
    if (cb_.log) cb_.log("HA: VM " + id + " (" + vm.name + ") failed to boot on its new host (" + reason + "); it stays off");
  }
  pump();
  arm();
}

bool Engine::booting(std::uint64_t task) const {
  auto it = tasks_.find(task);
  return it != tasks_.end() && it->second.booting;
}

void Engine::boot_finished(std::uint64_t num, bool ok, const std::string& reason) {
  auto it = tasks_.find(num);
  if (it == tasks_.end() || !it->second.booting) return;
  auto& t = it->second;
  if (!ok) return fail(num, Failure::boot_failed, reason, true);
  set_state(t.vm, State::running, "action");
  finish(t, TaskState::completed);
  pump();
  arm();
}

void Engine::finish(TaskRec& t, TaskState s, std::optional<VendorError> error) {
  const auto num = t.num;
  if (t.state == TaskState::started && in_progress_ > 0) --in_progress_;
  t.state = s;
  t.booting = false;
  if (s == TaskState::completed) t.progress = 1;
  if (error) t.error_code = error->code, t.error = error->message;
  if (t.action != Action::create && t.vm < vms_.size() && vms_[t.vm].task == num) vms_[t.vm].task = 0;
  s == TaskState::completed ? ++counts_.completed : s == TaskState::cancelled ? ++counts_.cancelled : ++counts_.failed;
  const auto view = task_view(t);
  finished_.push_back(view);
  if (finished_.size() > config_.task_history) finished_.pop_front();
  count_create(t, false);
  tasks_.erase(num);
  if (cb_.on_task) cb_.on_task(view);
}

void Engine::revert(TaskRec& t) {
  if (t.action == Action::create || t.vm >= vms_.size() || !vms_[t.vm].alive) return;
  auto& vm = vms_[t.vm];
  if (vm.task != t.num) return;  // something else owns the VM now (a power-off, a host failure)
  // Back to where the task found it; a host reserved for a start or resume is given back.
  set_state(t.vm, t.before, "action");
  if ((t.action == Action::start || t.action == Action::resume) && t.before != State::running) release(vm);
}

void Engine::fail(std::uint64_t num, Failure f, std::string_view detail, bool undo) {
  auto it = tasks_.find(num);
  if (it == tasks_.end()) return;
  auto& t = it->second;
  if (undo) revert(t);
  const std::string subject = t.action == Action::create ? t.name : vm_id(t.vm);
  finish(t, TaskState::failed, vendor_.error(f, subject, detail));
}

hv::Task Engine::cancel(const std::string& id) {
  const auto num = task_num(id);
  if (!num) throw refused(Failure::object_not_found, id.empty() ? "(no task)" : id, "task");
  auto it = tasks_.find(*num);
  if (it == tasks_.end()) {
    for (const auto& f : finished_)
      if (f.id == id) throw refused(Failure::not_cancellable, id, f.state);
    throw refused(Failure::object_not_found, id, "task");
  }
  auto& t = it->second;
  if (t.state == TaskState::started) revert(t);
  finish(t, TaskState::cancelled, vendor_.error(Failure::cancelled, id, ""));
  auto view = *task(id);
  pump();
  arm();
  return view;
}

// ---- faults ----

void Engine::crash_host(const std::string& id) {
  const auto h = host_index(id);
  if (h < 0) throw refused(Failure::object_not_found, id, "host");
  auto& host = hosts_[static_cast<std::size_t>(h)];
  if (!host.up) return;
  host.up = false;
  std::size_t lost = 0, protected_vms = 0;
  const auto now = cb_.now();
  for (std::uint32_t i = 0; i < vms_.size(); ++i) {
    auto& vm = vms_[i];
    if (!vm.alive || vm.host != h) continue;
    ++lost;
    if (vm.task != 0) {
      const auto other = vm.task;
      vm.task = 0;
      if (tasks_.count(other)) finish(tasks_.at(other), TaskState::failed, vendor_.error(Failure::host_offline, id, ""));
    }
    vm.ha_stage = 0;
    set_state(i, State::off, "host_failure");
    if (config_.ha && vm.ha) {
      vm.ha_stage = 1;
      ++protected_vms;
      schedule(now + latency(Action::ha_restart), EvKind::ha_restart, i);
    }
  }
  host.used_memory = host.used_vcpus = 0;
  if (cb_.log)
    cb_.log("host " + id + " failed: " + std::to_string(lost) + " VMs off, " + std::to_string(protected_vms) +
            " HA-protected to restart on the remaining hosts");
  pump();
  arm();
}

void Engine::recover_host(const std::string& id) {
  const auto h = host_index(id);
  if (h < 0) throw refused(Failure::object_not_found, id, "host");
  auto& host = hosts_[static_cast<std::size_t>(h)];
  if (host.up) return;
  host.up = true;
  if (cb_.log) cb_.log("host " + id + " is back");
}

hv::Network Engine::set_network_boot(const std::string& network, const std::string& tftp_server, const std::string& boot_file) {
  for (auto& n : config_.networks) {
    if (n.name != network) continue;
    n.tftp_server = tftp_server;
    n.boot_file = boot_file;
    return n;
  }
  throw refused(Failure::object_not_found, network, "network");
}

void Engine::set_task_failure_rate(double rate) {
  if (!(rate >= 0 && rate <= 1)) throw refused(Failure::bad_argument, "task_failure_rate", "a share 0..1");
  config_.task_failure_rate = rate;
}

void Engine::set_storage_factor(double factor) {
  if (!(factor >= 1 && factor <= 1000)) throw refused(Failure::bad_argument, "slow_storage", "a factor 1..1000");
  config_.storage_factor = factor;
}

// ---- VMs without tasks ----

std::uint32_t Engine::new_vm(std::uint16_t template_idx, std::string name) {
  const auto& tp = config_.templates[template_idx];
  VmRec v;
  v.name = std::move(name);
  v.memory_mb = static_cast<std::uint32_t>(tp.memory_mb);
  v.vcpus = static_cast<std::uint16_t>(tp.vcpus);
  v.template_idx = template_idx;
  v.network = network_of(template_idx);
  v.lease = take_lease(v.network);
  v.boot_order = encode_boot_order(tp.boot_order.empty() ? std::vector<std::string>{"network", "disk"} : tp.boot_order, tp.name);
  v.ha = tp.ha;
  v.alive = true;
  vms_.push_back(std::move(v));
  ++live_vms_;
  dirty_ = true;
  return static_cast<std::uint32_t>(vms_.size() - 1);
}

std::uint16_t Engine::network_of(std::uint16_t template_idx) const {
  const auto& tp = config_.templates[template_idx];
  std::uint16_t net = 0;
  for (std::size_t i = 0; i < config_.networks.size(); ++i)
    if (config_.networks[i].name == tp.network) net = static_cast<std::uint16_t>(i);
  return net;
}

std::uint32_t Engine::take_lease(std::uint16_t net) {
  if (leases_.empty()) return 0;
  auto& pool = leases_[net];
  if (pool.room == 0) return 0;
  if (!pool.freed.empty()) {
    const auto n = *pool.freed.begin();
    pool.freed.erase(pool.freed.begin());
    return n;
  }
  if (pool.next > pool.room) throw refused(Failure::not_enough_memory, config_.networks[net].name, "a free address on the network's subnet");
  return pool.next++;
}

void Engine::release_lease(VmRec& vm) {
  if (vm.lease == 0 || leases_.empty()) return;
  auto& pool = leases_[vm.network];
  if (vm.lease + 1 == pool.next) {
    --pool.next;  // keep `freed` small: the top of the range returns to `next`
    while (pool.next > 1 && pool.freed.erase(pool.next - 1)) --pool.next;
  } else {
    pool.freed.insert(vm.lease);
  }
  vm.lease = 0;
}

std::string Engine::address_of(const VmRec& vm) const {
  const auto address = vm.lease == 0 || leases_.empty() || !leases_[vm.network].subnet ? std::nullopt
                                                                                       : leases_[vm.network].subnet->host(vm.lease);
  return address ? address->text() : std::string();
}

void Engine::count_create(const TaskRec& t, bool queued) {
  if (t.action != Action::create || leases_.empty()) return;
  auto& creating = leases_[network_of(t.template_idx)].creating;
  queued ? ++creating : --creating;
}

std::vector<std::string> Engine::seed(const std::string& template_name, std::size_t count, const std::string& prefix) {
  const auto ti = template_index(template_name);
  if (!ti) throw refused(Failure::object_not_found, template_name, "template");
  if (live_vms_ + count > static_cast<std::size_t>(config_.max_vms) || vms_.size() + count > mac_room_)
    throw refused(Failure::not_enough_memory, template_name,
                  "room for " + std::to_string(count) + " more VMs (max_vms " + std::to_string(config_.max_vms) +
                      ", and mac_prefix leaves room for " + std::to_string(mac_room_) + ")");
  if (!leases_.empty()) {
    const auto net = network_of(*ti);
    if (leases_[net].room && leases_[net].free() < count + leases_[net].creating)
      throw refused(Failure::not_enough_memory, template_name,
                    "room for " + std::to_string(count) + " more addresses on network '" + config_.networks[net].name + "' (subnet " +
                        config_.networks[net].subnet + " has " + std::to_string(leases_[net].free()) + " free)");
  }
  std::vector<std::string> ids;
  ids.reserve(count);
  vms_.reserve(vms_.size() + count);
  for (std::size_t i = 0; i < count; ++i) ids.push_back(vm_id(new_vm(*ti, prefix + std::to_string(i + 1))));
  return ids;
}

// ---- the inventory file ----
// Line format, tab-separated: a header "deskfarm-hvsim-inventory<TAB>1<TAB>VENDOR<TAB>SLOTS", then one line
// per VM: INDEX STATE HOST TEMPLATE MEMORY_MB VCPUS NETWORK ISO BOOT_ORDER HA NAME ADDRESS ("-" for none). A line
// without ADDRESS (written before networks had subnets) is read as "-": the VM gets a lease at load.

void Engine::save(const std::filesystem::path& file) const {
  const auto tmp = std::filesystem::path(file.string() + ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(tmp.string() + ": cannot write the inventory; check the directory exists and is writable");
    out << "deskfarm-hvsim-inventory\t1\t" << vendor_.vendor << '\t' << vms_.size() << '\n';
    for (std::uint32_t i = 0; i < vms_.size(); ++i) {
      const auto& v = vms_[i];
      if (!v.alive) continue;
      std::string order;
      for (const auto& d : decode_boot_order(v.boot_order)) order += (order.empty() ? "" : ",") + d;
      out << i << '\t' << common_name(v.state) << '\t' << (v.host >= 0 ? hosts_[static_cast<std::size_t>(v.host)].spec.id : "-")
          << '\t' << config_.templates[v.template_idx].name << '\t' << v.memory_mb << '\t' << v.vcpus << '\t'
          << (config_.networks.empty() ? "-" : config_.networks[v.network].name) << '\t'
          << (v.iso >= 0 ? config_.isos[static_cast<std::size_t>(v.iso)] : "-") << '\t' << order << '\t' << (v.ha ? 1 : 0) << '\t'
          << v.name << '\t' << (v.lease ? address_of(v) : "-") << '\n';
    }
    out.flush();
    if (!out) throw std::runtime_error(tmp.string() + ": writing the inventory failed (disk full?)");
  }
  const int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::filesystem::rename(tmp, file);
  const int dir = ::open(file.parent_path().empty() ? "." : file.parent_path().c_str(), O_RDONLY | O_DIRECTORY);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  dirty_ = false;
}

void Engine::load(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error(file.string() + ": cannot read the inventory file");
  const std::string how = "; restore it from a backup or remove it (the instance then starts with its configured VMs)";
  std::string line;
  std::size_t n = 1;
  auto bad = [&](const std::string& what) { return std::runtime_error(file.string() + ":" + std::to_string(n) + ": " + what + how); };
  auto split = [](const std::string& l) {
    std::vector<std::string> f;
    std::size_t p = 0;
    for (;;) {
      const auto q = l.find('\t', p);
      f.push_back(l.substr(p, q == std::string::npos ? std::string::npos : q - p));
      if (q == std::string::npos) break;
      p = q + 1;
    }
    return f;
  };
  auto number = [&](const std::string& s, std::uint64_t max, const char* what) {
    if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string::npos) throw bad(std::string(what) + " '" + s + "' is not a number");
    const auto v = std::stoull(s);
    if (v > max) throw bad(std::string(what) + " " + s + " is out of range");
    return v;
  };
  if (!std::getline(in, line)) throw bad("the file is empty, not an inventory");
  const auto head = split(line);
  if (head.size() != 4 || head[0] != "deskfarm-hvsim-inventory") throw bad("not a deskfarm hypervisor inventory (bad header)");
  if (head[1] != "1") throw bad("inventory format version " + head[1] + " is not 1");
  if (head[2] != vendor_.vendor)
    throw bad("the inventory belongs to a '" + head[2] + "' adapter, this one is '" + std::string(vendor_.vendor) + "'");
  const auto slots = number(head[3], max_index, "slot count");
  if (slots > mac_room_)
    throw bad("the inventory has " + head[3] + " VM slots, more than mac_prefix leaves room for (" + std::to_string(mac_room_) + ")");
  std::vector<VmRec> vms(slots);
  std::size_t live = 0;
  std::vector<std::pair<std::uint32_t, std::string>> placed;  // VMs holding a host: place after reading all
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    const auto f = split(line);
    if (f.size() != 11 && f.size() != 12) throw bad("expected 12 tab-separated fields, found " + std::to_string(f.size()));
    const auto index = number(f[0], slots ? slots - 1 : 0, "VM index");
    if (slots == 0 || vms[index].alive) throw bad("VM index " + f[0] + " is out of range or given twice");
    VmRec v;
    std::optional<State> state;
    for (std::size_t s = 0; s < state_count; ++s)
      if (common_name(static_cast<State>(s)) == f[1]) state = static_cast<State>(s);
    if (!state) throw bad("power state '" + f[1] + "' is not one of off starting running paused suspended stopping");
    const auto ti = template_index(f[3]);
    if (!ti) throw bad("template '" + f[3] + "' is not in this instance's templates (was it removed from the manifest?)");
    v.template_idx = *ti;
    v.memory_mb = static_cast<std::uint32_t>(number(f[4], 0xffffffffull, "memory_mb"));
    v.vcpus = static_cast<std::uint16_t>(number(f[5], 0xffff, "vcpus"));
    if (f[6] != "-") {
      bool found = false;
      for (std::size_t i = 0; i < config_.networks.size(); ++i)
        if (config_.networks[i].name == f[6]) v.network = static_cast<std::uint16_t>(i), found = true;
      if (!found) throw bad("network '" + f[6] + "' is not in this instance's networks");
    }
    v.iso = f[7] == "-" ? -1 : iso_index(f[7]);
    if (f[7] != "-" && v.iso < 0) throw bad("ISO '" + f[7] + "' is not in this instance's ISO library");
    std::vector<std::string> order;
    for (std::size_t p = 0; p <= f[8].size();) {
      const auto q = std::min(f[8].find(',', p), f[8].size());
      order.push_back(f[8].substr(p, q - p));
      p = q + 1;
    }
    try {
      v.boot_order = encode_boot_order(order, "boot order");
    } catch (const Refused& e) {
      throw bad(std::string("boot order '") + f[8] + "': " + e.what());
    }
    if (f[9] != "0" && f[9] != "1") throw bad("HA flag '" + f[9] + "' is not 0 or 1");
    v.ha = f[9] == "1";
    v.name = f[10];
    if (f.size() == 12 && f[11] != "-") {
      const auto a = net::Subnet::address(f[11]);
      if (!a || a->family() != net::Family::ipv4) throw bad("address '" + f[11] + "' is not an IPv4 address");
      const auto& pool = leases_.empty() ? LeasePool{} : leases_[v.network];
      // Outside the network's subnet (the manifest changed it): the VM gets a new lease below.
      if (const auto host = pool.subnet ? pool.subnet->host_number(*a) : std::nullopt) v.lease = *host;
      else if (cb_.log) cb_.log("inventory: VM " + vm_id(static_cast<std::uint32_t>(index)) + " had address " + f[11] + ", outside its network's subnet now; it gets a new lease");
    }
    v.alive = true;
    // A transition the deployment's stop interrupted has finished on the hypervisor meanwhile.
    v.state = *state == State::starting ? State::running : *state == State::stopping ? State::off : *state;
    if (v.state != State::off && v.state != State::suspended) placed.emplace_back(static_cast<std::uint32_t>(index), f[2]);
    vms[index] = std::move(v);
    ++live;
  }
  if (in.bad()) throw bad("reading failed");
  // Leases: the file's stand; the rest (older files, a subnet added or changed) lease in VM order.
  std::vector<std::vector<std::uint32_t>> used(leases_.size());
  for (const auto& v : vms)
    if (v.alive && v.lease) used[v.network].push_back(v.lease);
  for (std::size_t net = 0; net < leases_.size(); ++net) {
    auto& u = used[net];
    std::sort(u.begin(), u.end());
    if (std::adjacent_find(u.begin(), u.end()) != u.end())
      throw bad("two VMs hold address " + leases_[net].subnet->host(*std::adjacent_find(u.begin(), u.end()))->text() + " of network '" +
                config_.networks[net].name + "'");
    auto& pool = leases_[net];
    pool.freed.clear();
    pool.next = u.empty() ? 1 : u.back() + 1;
    for (std::uint32_t h = 1, i = 0; h < pool.next; ++h) {
      if (i < u.size() && u[i] == h) ++i;
      else pool.freed.insert(h);
    }
  }
  for (std::uint32_t i = 0; i < vms.size(); ++i) {
    auto& v = vms[i];
    if (!v.alive || v.lease || leases_.empty() || leases_[v.network].room == 0) continue;
    if (leases_[v.network].free() == 0) {
      if (cb_.log) cb_.log("inventory: VM " + vm_id(i) + " gets no address: network '" + config_.networks[v.network].name + "' subnet " +
                           config_.networks[v.network].subnet + " is fully leased; give it a larger subnet");
      continue;
    }
    v.lease = take_lease(v.network);
  }
  for (auto& h : hosts_) h.used_memory = h.used_vcpus = 0;
  vms_ = std::move(vms);
  live_vms_ = live;
  for (const auto& [index, host] : placed) {
    auto& v = vms_[index];
    auto h = host_index(host);
    const bool fits = h >= 0 && hosts_[static_cast<std::size_t>(h)].spec.memory_mb - hosts_[static_cast<std::size_t>(h)].used_memory >= v.memory_mb;
    if (!fits) {
      if (cb_.log) cb_.log("inventory: VM " + vm_id(index) + " ran on host '" + host + "', which is gone or full now; it is off");
      v.state = State::off;
      continue;
    }
    reserve(v, h);
  }
  dirty_ = false;
}

}  // namespace deskfarm::hvsim
