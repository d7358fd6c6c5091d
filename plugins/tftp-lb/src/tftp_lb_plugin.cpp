// tftp-lb: a TFTP virtual server that balances transfers over pvs TFTP services (found through discovery) and
// foreign TFTP servers, follows each backend's new transfer port, and watches the backends with udp-ecv or
// tftp monitors (NetScaler semantics).
#include <sys/resource.h>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>

#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/interfaces/pvs/pvs.hpp>
#include <deskfarm/interfaces/tftp/tftp.hpp>
#include <deskfarm/sdk/plugin.hpp>

#include "balancing.hpp"
#include "monitor.hpp"
#include "relay.hpp"

namespace {

using namespace deskfarm;
using namespace deskfarm::sdk;
using namespace deskfarm::tftp_lb;
namespace api = deskfarm::interfaces::tftp;
namespace hv = deskfarm::interfaces::hypervisor;

constexpr const char* provides[] = {"tftp", nullptr};

struct BackendSeed {
  std::string name;
  std::string address;
  std::int64_t weight = 1;
};

struct LbConfig {
  std::string vip;
  std::string method;
  std::string relay;
  std::int64_t busy_poll_us = 0;
  std::string boot_file;
  std::vector<BackendSeed> backends;
  bool discover = true;
  std::int64_t discover_weight = 1;
  std::int64_t max_sessions = 10000;
  std::int64_t idle_timeout_s = 60;
  std::string monitor;
  std::int64_t interval_ms = 5000;
  std::int64_t response_timeout_ms = 2000;
  std::int64_t retries = 3;
  std::int64_t failure_retries = 0;
  std::int64_t success_retries = 1;
  std::int64_t downtime_ms = 30000;
  std::string send;
  std::string send_hex;
  std::string receive;
  std::int64_t expect_size = -1;
  std::string expect_sha256;
  std::string dhcp_next_server;
  std::vector<std::string> hypervisor_networks;
};

constexpr auto backend_schema = schema<BackendSeed>(
    option("name", &BackendSeed::name, nullptr, "backend name: a pvs instance's name, or any name for a foreign server"),
    option("address", &BackendSeed::address, "\"\"",
           "\"IPv4:port\" of a foreign TFTP server; \"\" = the TFTP endpoint the pvs instance `name` advertises"),
    option("weight", &BackendSeed::weight, "1", "share of new sessions relative to the others").range(1, 100));

constexpr auto lb_schema = schema<LbConfig>(
    option("vip", &LbConfig::vip, "\"127.0.0.1:69\"",
           "virtual server \"IPv4:port\" clients send their requests to (DHCP option 66); a specific address, port 0 = any free one (see status)"),
    option("method", &LbConfig::method, "\"source_ip\"",
           "backend choice for a new session: source_ip keeps a client address on one backend (UEFI's tsize probe and "
           "its download), least_sessions, round_robin (both weighted)")
        .one_of("round_robin|least_sessions|source_ip"),
    option("relay", &LbConfig::relay, "\"auto\"",
           "the relay's engine: io_uring (one system call per turn for all sessions' datagrams), epoll (one recvmmsg "
           "and one sendmmsg per ready socket), auto = io_uring where the kernel allows it (6.0+, not refused by "
           "seccomp or kernel.io_uring_disabled), else epoll (logged); tc-bpf = an established session's datagrams "
           "are relayed in the kernel by a tc ingress program on loopback (root, virtual server on 127.0.0.0/8), "
           "the rest as auto; falls back to auto with the reason logged when BPF is unavailable")
        .one_of("auto|io_uring|epoll|tc-bpf"),
    option("busy_poll_us", &LbConfig::busy_poll_us, "0",
           "after a turn that relayed datagrams, poll for the next ones this long without sleeping (a lockstep "
           "transfer's next datagram comes one round trip later; a sleep costs a wake-up per hop); 0 = never (the "
           "default: on a box without a core to spare it did not pay, docs/benchmarks.md); after 8 empty windows in a "
           "row the relay sleeps at once for 256 turns, and idle it sleeps")
        .range(0, 1000),
    option("boot_file", &LbConfig::boot_file, "\"ARDBP32.BIN\"", "the bootstrap: DHCP option 67, and what the monitors request"),
    option("backends", &LbConfig::backends, "[]", "backends listed by name (pvs instances) or address (foreign servers)",
           backend_schema),
    option("discover", &LbConfig::discover, "true", "every running pvs instance with a TFTP endpoint is a backend too"),
    option("discover_weight", &LbConfig::discover_weight, "1", "weight of discovered backends not listed in backends")
        .range(1, 100),
    option("max_sessions", &LbConfig::max_sessions, "10000",
           "sessions at once; a new one beyond it evicts the oldest idle session (each holds one socket)")
        .range(1, 1000000),
    option("idle_timeout_s", &LbConfig::idle_timeout_s, "60",
           "a session with no packet this long ends; keep it above the clients' retry span (PXE ~ 30 s)")
        .range(1, 3600),
    option("monitor", &LbConfig::monitor, "\"udp-ecv\"",
           "udp-ecv: one request, a reply decides; tftp: a full download checked against expect_size/expect_sha256; none: always UP")
        .one_of("udp-ecv|tftp|none"),
    option("interval_ms", &LbConfig::interval_ms, "5000", "between probes of a backend").range(50, 3600000),
    option("response_timeout_ms", &LbConfig::response_timeout_ms, "2000",
           "a probe without a verdict this long failed (tftp: the whole download); below interval_ms")
        .range(10, 3600000),
    option("retries", &LbConfig::retries, "3", "probes that decide DOWN (see failure_retries)").range(1, 32),
    option("failure_retries", &LbConfig::failure_retries, "0",
           "failed probes among the last `retries` that mark a backend DOWN; 0 = all of them")
        .range(0, 32),
    option("success_retries", &LbConfig::success_retries, "1", "successful probes in a row that mark a DOWN backend UP")
        .range(1, 32),
    option("downtime_ms", &LbConfig::downtime_ms, "30000", "wait before probing a backend again after it was marked DOWN")
        .range(0, 3600000),
    option("send", &LbConfig::send, "\"\"", "udp-ecv send string as text; \"\" (and no send_hex) = an octet RRQ for boot_file"),
    option("send_hex", &LbConfig::send_hex, "\"\"", "udp-ecv send string as hex bytes (\"00014152...\"), instead of send"),
    option("receive", &LbConfig::receive, "\"\"",
           "udp-ecv: text the reply must contain; \"\" = DATA or OACK for the default RRQ, else any reply or silence (only ICMP port-unreachable fails)"),
    option("expect_size", &LbConfig::expect_size, "-1", "tftp monitor: the bootstrap's size in bytes; -1 = not checked")
        .range(-1, 4294967295.0),
    option("expect_sha256", &LbConfig::expect_sha256, "\"\"", "tftp monitor: the bootstrap's SHA-256 (hex); \"\" = not checked"),
    option("dhcp_next_server", &LbConfig::dhcp_next_server, "\"\"",
           "address written into DHCP option 66 by the dhcp request; \"\" = the virtual server's address"),
    option("hypervisor_networks", &LbConfig::hypervisor_networks, "[]",
           "simulated hypervisor networks (\"INSTANCE/NETWORK\") whose options 66/67 this balancer sets to the virtual server "
           "and boot_file, at its start and whenever that hypervisor instance starts"));

bool safe_text(const std::string& s) {
  return std::none_of(s.begin(), s.end(), [](unsigned char c) { return c < 0x20 || c == '"' || c == '\\' || c == 0x7f; });
}

/// The checks the schema cannot make (run by `deskfarm check` too).
struct Checked {
  sockaddr_in vip{};
  Method method = Method::source_ip;
  std::vector<std::byte> payload;
  std::map<std::string, std::optional<sockaddr_in>> listed;  // name -> address (nullopt: through discovery)
};

Checked check(const LbConfig& c) {
  Checked out;
  const auto vip = parse_ipv4_endpoint(c.vip);
  if (!vip) throw ConfigError("vip", "'" + c.vip + "' is not \"IPv4:port\" (like \"10.0.0.10:69\")");
  if (vip->sin_addr.s_addr == INADDR_ANY)
    throw ConfigError("vip", "0.0.0.0 is not a virtual server: replies must leave from the address clients asked; name one");
  out.vip = *vip;
  out.method = *parse_method(c.method);
  if (c.boot_file.empty() || c.boot_file.size() > 128 || !safe_text(c.boot_file))
    throw ConfigError("boot_file", "'" + c.boot_file + "' must be 1..128 printable characters without quotes or backslashes");
  if (!c.dhcp_next_server.empty() && !safe_text(c.dhcp_next_server))
    throw ConfigError("dhcp_next_server", "'" + c.dhcp_next_server + "' must be printable, without quotes or backslashes");
  for (std::size_t i = 0; i < c.hypervisor_networks.size(); ++i) {
    const auto& n = c.hypervisor_networks[i];
    const auto slash = n.find('/');
    if (slash == 0 || slash == std::string::npos || slash + 1 == n.size() || !safe_text(n))
      throw ConfigError("hypervisor_networks[" + std::to_string(i) + "]",
                        "'" + n + "' is not \"INSTANCE/NETWORK\" (like \"farm-hv/desktops\")");
  }
  for (std::size_t i = 0; i < c.backends.size(); ++i) {
    const auto& b = c.backends[i];
    const std::string key = "backends[" + std::to_string(i) + "]";
    if (b.name.empty() || !safe_text(b.name)) throw ConfigError(key + ".name", "a backend needs a printable name");
    if (out.listed.count(b.name)) throw ConfigError(key + ".name", "backend '" + b.name + "' is listed twice");
    std::optional<sockaddr_in> addr;
    if (!b.address.empty()) {
      addr = parse_ipv4_endpoint(b.address);
      if (!addr || addr->sin_port == 0 || addr->sin_addr.s_addr == INADDR_ANY)
        throw ConfigError(key + ".address", "'" + b.address + "' is not \"IPv4:port\" with a port (like \"10.0.0.5:69\")");
    }
    out.listed[b.name] = addr;
  }
  std::string error;
  auto payload = ecv_payload(c.send, c.send_hex, c.boot_file, error);
  if (!payload) throw ConfigError(c.send_hex.empty() ? "send" : "send_hex", error);
  out.payload = std::move(*payload);
  if (c.response_timeout_ms >= c.interval_ms)
    throw ConfigError("response_timeout_ms", std::to_string(c.response_timeout_ms) + " must be below interval_ms (" +
                                                 std::to_string(c.interval_ms) + "): one probe at a time per backend");
  if (!c.expect_sha256.empty() &&
      (c.expect_sha256.size() != 64 || !std::all_of(c.expect_sha256.begin(), c.expect_sha256.end(), [](char ch) {
         return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f');
       })))
    throw ConfigError("expect_sha256", "must be 64 lower-case hex digits (sha256sum prints them)");
  return out;
}

class TftpLb final : public Plugin {
 public:
  explicit TftpLb(Context& ctx) : ctx_(ctx), config_(lb_schema.bind(ctx.config())), checked_(check(config_)) {
    auto& m = ctx_.metrics();
    m.declare_gauge("deskfarm_tftp_lb_backend_up", "1 while a backend is UP (0 DOWN or DRAINING)");
    m.declare_gauge("deskfarm_tftp_lb_backend_sessions", "Sessions in flight per backend");
    m.declare_counter("deskfarm_tftp_lb_backend_transitions_total", "Backend state changes, by the new state");
  }

  static void validate(const Config& config) { (void)check(lb_schema.bind(config)); }

  void start() override {
    raise_open_files();
    RelayOptions o;
    o.vip = checked_.vip;
    o.max_sessions = static_cast<std::size_t>(config_.max_sessions);
    o.idle_timeout = std::chrono::seconds(config_.idle_timeout_s);
    o.method = checked_.method;
    o.engine = *relay_engine_from(config_.relay);
    o.busy_poll = std::chrono::microseconds(config_.busy_poll_us);
    o.log = [this, line = ctx_.lifeline()](std::string_view text) {
      line->post([this, text = std::string(text)] { ctx_.log().warning(text); });
    };
    relay_ = std::make_unique<Relay>(o);
    relay_->start();
    vip_ = host_of(checked_.vip) + ":" + std::to_string(relay_->port());
    ctx_.advertise("tftp", vip_);

    auto& bus = ctx_.bus();
    subs_.push_back(subscribe<InstanceInfo>(bus, instance_up_subject, [this](const InstanceInfo& i, const Message&) {
      discover();
      point_networks(i.name);
    }));
    // Published before the instance's stop() runs, while discovery may still list it: leave it out by name.
    subs_.push_back(subscribe<InstanceInfo>(bus, instance_down_subject,
                                            [this](const InstanceInfo& i, const Message&) { discover(i.name); }));
    subs_.push_back(serve<Empty, api::BackendList>(bus, api::admin_subject(ctx_.name(), "backend.list"),
                                                   [this](const Empty&) { return list(); }));
    subs_.push_back(serve<api::Drain, api::BackendList>(bus, api::admin_subject(ctx_.name(), "backend.drain"),
                                                        [this](const api::Drain& d) { return drain(d); }));
    subs_.push_back(serve<api::DhcpRequest, api::DhcpConfig>(bus, api::admin_subject(ctx_.name(), "dhcp.config"),
                                                             [this](const api::DhcpRequest& r) { return dhcp(r); }));
    discover();
    point_networks("");
    ctx_.every(std::chrono::seconds(1), [this] { sync_metrics(); });
    ctx_.log().info("virtual server " + vip_ + " (" + config_.method + ", relay " + std::string(relay_->engine()) +
                    " [relay = \"" + config_.relay + "\"], busy poll " + std::to_string(config_.busy_poll_us) +
                    " us, monitor " + config_.monitor + ", " +
                    std::to_string(backends_.size()) + " backends so far)");
  }

  void stop() override {
    subs_.clear();
    if (relay_) relay_->stop();
  }

  void status(Value& out) const override {
    out.set("vip", vip_);
    out.set("method", config_.method);
    out.set("monitor", config_.monitor);
    if (relay_) {
      out.set("relay_engine", std::string(relay_->engine()));
      const auto s = relay_->stats();
      Value r = Value::object();
      r.set("sessions_active", s.sessions_active);
      r.set("sessions_lingering", s.sessions_lingering);
      r.set("sessions_peak", s.sessions_peak);
      r.set("sessions_started", s.sessions_started);
      r.set("sessions_finished", s.sessions_finished);
      r.set("sessions_idle_closed", s.sessions_idle_closed);
      r.set("sessions_evicted", s.sessions_evicted);
      r.set("no_backend", s.no_backend);
      r.set("malformed_client", s.malformed_client);
      r.set("malformed_backend", s.malformed_backend);
      r.set("not_a_request", s.not_a_request);
      r.set("foreign_dropped", s.foreign_dropped);
      r.set("wrong_tid", s.wrong_tid);
      r.set("socket_errors", s.socket_errors);
      r.set("packets_to_backend", s.packets_to_backend);
      r.set("packets_to_client", s.packets_to_client);
      r.set("bytes_to_client", s.bytes_to_client);
      r.set("receive_calls", s.receive_calls);
      r.set("send_calls", s.send_calls);
      r.set("ring_enters", s.ring_enters);
      r.set("busy_polls", s.busy_polls);
      r.set("busy_poll_hits", s.busy_poll_hits);
      if (relay_->tc_priority() != 0) {
        r.set("kernel_sessions", s.kernel_sessions);
        r.set("kernel_first_replies", s.kernel_first_replies);
        r.set("kernel_entries", s.kernel_entries);
        r.set("kernel_packets_to_client", s.kernel_packets_to_client);
        r.set("kernel_packets_to_backend", s.kernel_packets_to_backend);
        r.set("kernel_install_errors", s.kernel_install_errors);
        r.set("kernel_orphans_deleted", s.kernel_orphans_deleted);
        r.set("tc_priority", static_cast<std::int64_t>(relay_->tc_priority()));
      }
      out.set("relay", std::move(r));
    }
    Value backends = Value::array();
    for (const auto& v : list().backends) backends.push(to_value(v));
    out.set("backends", std::move(backends));
  }

  Health health() const override {
    if (!relay_) return Health::failed;
    for (const auto& [name, b] : backends_)
      if (b.present && b.up && !b.drained) return Health::ok;
    return Health::degraded;
  }

 private:
  struct Backend {
    std::string name;
    std::string source;
    sockaddr_in address{};
    std::uint32_t weight = 1;
    bool present = true;   // listed, or discovered and running
    bool up = false;
    bool drained = false;
    std::string reason = "not probed yet";
    HealthTracker tracker;
    std::uint64_t generation = 0;  // a probe chain of an older generation stops (the backend left or moved)
    bool probing = false;
    bool just_down = false;  // the next probe waits downtime_ms
    explicit Backend(HealthRules rules) : tracker(rules) {}
    const char* state() const { return drained ? api::kDraining : up ? api::kUp : api::kDown; }
  };

  HealthRules rules() const {
    return {static_cast<int>(config_.retries), static_cast<int>(config_.failure_retries),
            static_cast<int>(config_.success_retries)};
  }

  /// 10,000 sessions hold 10,000 sockets: take the hard limit of open files, not the usual soft 1,024.
  void raise_open_files() {
    rlimit r{};
    if (::getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur >= r.rlim_max) return;
    const rlim_t want = std::min<rlim_t>(r.rlim_max, static_cast<rlim_t>(config_.max_sessions) + 4096);
    if (want <= r.rlim_cur) return;
    r.rlim_cur = want;
    ::setrlimit(RLIMIT_NOFILE, &r);
  }

  /// Rebuilds the backend set from the manifest and discovery (less the instance `stopping`); new backends start
  /// DOWN and are probed at once.
  void discover(const std::string& stopping = "") {
    std::map<std::string, std::pair<sockaddr_in, std::string>> found;  // name -> address, source
    std::map<std::string, sockaddr_in> pvs;
    for (const auto& i : ctx_.instances("pvs")) {
      const auto e = i.endpoints.find(interfaces::pvs::tftp_endpoint);
      if (e == i.endpoints.end() || i.name == stopping) continue;
      auto a = parse_ipv4_endpoint(e->second);
      if (!a) continue;
      // A pvs instance on a wildcard runs in this process's host: reach it on loopback.
      if (a->sin_addr.s_addr == INADDR_ANY) a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      pvs[i.name] = *a;
    }
    for (const auto& [name, addr] : checked_.listed) {
      if (addr) found[name] = {*addr, "manifest"};
      else if (const auto p = pvs.find(name); p != pvs.end()) found[name] = {p->second, "discovery"};
    }
    if (config_.discover)
      for (const auto& [name, addr] : pvs)
        if (!found.count(name)) found[name] = {addr, "discovery"};

    for (auto& [name, b] : backends_)
      if (b.present && !found.count(name)) {
        const std::string previous = b.state();
        b.present = false;
        b.up = false;
        b.reason = "its pvs instance stopped; no new sessions go to it";
        ++b.generation;
        announce(b, previous, "discovery");
      }
    for (const auto& [name, where] : found) {
      auto it = backends_.find(name);
      const bool moved = it != backends_.end() && (it->second.address.sin_addr.s_addr != where.first.sin_addr.s_addr ||
                                                   it->second.address.sin_port != where.first.sin_port);
      if (it == backends_.end()) it = backends_.emplace(name, Backend(rules())).first;
      auto& b = it->second;
      if (b.present && !moved && b.generation != 0) continue;
      const bool was_known = b.generation != 0;
      b.name = name;
      b.source = where.second;
      b.address = where.first;
      b.present = true;
      b.weight = 1;
      for (const auto& s : config_.backends)
        if (s.name == name) b.weight = static_cast<std::uint32_t>(s.weight);
      if (where.second == "discovery" && !checked_.listed.count(name)) b.weight = static_cast<std::uint32_t>(config_.discover_weight);
      b.tracker = HealthTracker(rules());
      b.up = false;
      b.reason = "not probed yet";
      b.probing = false;  // a probe still running for the old address is ignored when it ends
      ++b.generation;
      ctx_.log().info(std::string(was_known ? "backend " + name + " is back" : "backend " + name) + " at " +
                      to_string(b.address) + " (" + b.source + ", weight " + std::to_string(b.weight) + ")");
      if (config_.monitor == "none") transition(b, true, "none", "no monitor");
      else probe(name, b.generation);
    }
    push();
  }

  void probe(const std::string& name, std::uint64_t generation) {
    const auto it = backends_.find(name);
    if (it == backends_.end() || it->second.generation != generation || !it->second.present || it->second.probing) return;
    auto& target = it->second;
    target.probing = true;
    const auto timeout = std::chrono::milliseconds(config_.response_timeout_ms);
    const auto done = [this, name, generation](Reply<ProbeResult> r) {
      const auto found = backends_.find(name);
      if (found == backends_.end() || found->second.generation != generation) return;
      auto& b = found->second;
      b.probing = false;
      const ProbeResult result = r ? *r : ProbeResult{false, "probe failed: " + r.error().message};
      if (const auto change = b.tracker.record(result.ok)) transition(b, *change, config_.monitor, result.reason);
      else if (!result.ok && b.up)
        b.reason = result.reason + " (" + std::to_string(b.tracker.consecutive_failures()) + " failed in a row)";
      else if (!result.ok)
        b.reason = result.reason;
      // NetScaler's downtime: a backend just marked DOWN is left alone for a while before the next probe.
      const auto wait = b.just_down
                            ? std::chrono::milliseconds(config_.downtime_ms)
                            : std::chrono::milliseconds(config_.interval_ms);
      b.just_down = false;
      ctx_.after(wait, [this, name, generation] { probe(name, generation); });
    };
    if (config_.monitor == "tftp") {
      TftpProbe p{target.address, config_.boot_file,
                  config_.expect_size >= 0 ? std::optional<std::uint64_t>(static_cast<std::uint64_t>(config_.expect_size))
                                           : std::nullopt,
                  config_.expect_sha256, timeout};
      ctx_.run_blocking([p](std::stop_token) { return probe_tftp(p); }, done);
    } else {
      EcvProbe p{target.address, checked_.payload, config_.receive, config_.send.empty() && config_.send_hex.empty(), timeout};
      ctx_.run_blocking([p](std::stop_token stop) { return probe_udp_ecv(p, stop); }, done);
    }
  }

  /// Applies a monitor's verdict (or a drain): logs it with its reason, publishes BackendHealth, tells the relay.
  void transition(Backend& b, bool up, const std::string& monitor, const std::string& reason) {
    const std::string previous = b.state();
    b.up = up;
    b.reason = reason;
    if (!up) b.just_down = true;
    announce(b, previous, monitor);
    push();
  }

  void announce(const Backend& b, const std::string& previous, const std::string& monitor) {
    const std::string state = b.state();
    if (state == previous) return;
    ctx_.log().info("backend " + b.name + " " + to_string(b.address) + ": " + previous + " -> " + state + " (" + monitor +
                    ": " + b.reason + ")");
    api::BackendHealth h;
    h.backend = {b.name, to_string(b.address), config_.boot_file};
    h.state = state;
    h.previous = previous;
    h.monitor = monitor;
    h.reason = b.reason;
    h.balancer = ctx_.name();
    publish(ctx_.bus(), api::health_subject(ctx_.name(), b.name), h);
    ctx_.metrics()
        .counter("deskfarm_tftp_lb_backend_transitions_total", "Backend state changes, by the new state",
                 {{"backend", b.name}, {"state", state}})
        .inc();
    ctx_.metrics()
        .gauge("deskfarm_tftp_lb_backend_up", "1 while a backend is UP (0 DOWN or DRAINING)", {{"backend", b.name}})
        .set(state == api::kUp ? 1 : 0);
  }

  /// Hands the backends' addresses, weights and eligibility to the relay.
  void push() {
    std::vector<RelayBackend> out;
    for (const auto& [name, b] : backends_)
      if (b.present) out.push_back({name, b.address, b.weight, b.up && !b.drained});
    if (relay_) relay_->set_backends(std::move(out));
  }

  api::BackendList list() const {
    api::BackendList out;
    out.balancer = ctx_.name();
    std::map<std::string, RelayBackendStats> sessions;
    if (relay_)
      for (auto& s : relay_->stats().backends) sessions[s.name] = s;
    for (const auto& [name, b] : backends_) {
      if (!b.present) continue;
      api::BackendView v;
      v.name = name;
      v.address = to_string(b.address);
      v.source = b.source;
      v.state = b.state();
      v.reason = b.drained ? "drained by an operator; monitor: " + b.reason : b.reason;
      v.weight = b.weight;
      v.active_sessions = static_cast<std::int64_t>(sessions[name].active);
      v.sessions_total = static_cast<std::int64_t>(sessions[name].total);
      out.backends.push_back(std::move(v));
    }
    return out;
  }

  api::BackendList drain(const api::Drain& d) {
    const auto it = backends_.find(d.backend);
    if (it == backends_.end() || !it->second.present) {
      std::string names;
      for (const auto& [name, b] : backends_)
        if (b.present) names += (names.empty() ? "" : ", ") + name;
      throw RequestError("not_found", "tftp-lb " + ctx_.name() + ": no backend '" + d.backend + "' (backends: " +
                                          (names.empty() ? "none" : names) + ")");
    }
    auto& b = it->second;
    if (b.drained != d.drain) {
      const std::string previous = b.state();
      b.drained = d.drain;
      announce(b, previous, "operator");
      push();
    }
    return list();
  }

  std::string next_server() const { return config_.dhcp_next_server.empty() ? host_of(checked_.vip) : config_.dhcp_next_server; }

  /// Points the listed hypervisor networks (of `instance` only, unless "") at the virtual server: option 66 its
  /// address (with the port when it is not 69: a simulated PC asks the port it is given), option 67 boot_file.
  /// A hypervisor instance not running yet gets them when it comes up (kernel.instance.up).
  void point_networks(const std::string& instance) {
    const auto port = relay_ ? relay_->port() : 69;
    const auto option66 = next_server() + (port == 69 ? "" : ":" + std::to_string(port));
    for (const auto& target : config_.hypervisor_networks) {
      const auto slash = target.find('/');
      const auto hypervisor = target.substr(0, slash);
      if (!instance.empty() && hypervisor != instance) continue;
      hv::NetworkBoot b{target.substr(slash + 1), option66, config_.boot_file};
      request<hv::NetworkBoot, hv::NetworkReply>(
          ctx_.bus(), hv::request_subject(hypervisor, "network.boot"), b, std::chrono::seconds(10),
          [this, target, option66](Reply<hv::NetworkReply> r) {
            if (r) return ctx_.log().info("hypervisor network " + target + " boots through " + option66 + " (" + config_.boot_file + ")");
            // Not up yet: it gets the options when it starts.
            if (r.error().code == "no_responders") return;
            ctx_.log().warning("cannot set options 66/67 of hypervisor network " + target + ": " + r.error().code + ": " +
                               r.error().message + "; check the name in hypervisor_networks");
          });
    }
  }

  api::DhcpConfig dhcp(const api::DhcpRequest& r) {
    api::DhcpConfig out;
    out.format = r.format;
    out.next_server = next_server();
    out.boot_file = config_.boot_file;
    auto text = dhcp_config(r.format, out.next_server, out.boot_file);
    if (!text) throw RequestError("bad_request", "format '" + r.format + "' is not one of isc, kea, dnsmasq");
    // PXE firmware always asks port 69; a test deployment on another port says so (Kea's JSON gets no comment).
    if (relay_ && relay_->port() != 69 && r.format != "kea")
      *text += "# note: this virtual server listens on port " + std::to_string(relay_->port()) + ", PXE clients ask port 69\n";
    out.text = std::move(*text);
    return out;
  }

  void sync_metrics() {
    if (!relay_) return;
    const auto s = relay_->stats();
    auto& m = ctx_.metrics();
    const auto counter = [&](const char* name, const char* help, std::uint64_t value) {
      auto& c = m.counter(name, help);
      if (value > c.value()) c.inc(value - c.value());
    };
    m.gauge("deskfarm_tftp_lb_sessions_active", "Sessions in the table").set(static_cast<double>(s.sessions_active));
    counter("deskfarm_tftp_lb_sessions_total", "Sessions started", s.sessions_started);
    counter("deskfarm_tftp_lb_sessions_evicted_total", "Sessions evicted because the table was full", s.sessions_evicted);
    counter("deskfarm_tftp_lb_sessions_idle_closed_total", "Sessions ended by the idle timeout", s.sessions_idle_closed);
    counter("deskfarm_tftp_lb_no_backend_total", "Requests refused because no backend was UP", s.no_backend);
    counter("deskfarm_tftp_lb_malformed_dropped_total", "Datagrams that are not TFTP, dropped",
            s.malformed_client + s.malformed_backend);
    counter("deskfarm_tftp_lb_foreign_dropped_total", "Datagrams from neither a session's client nor its backend", s.foreign_dropped);
    counter("deskfarm_tftp_lb_wrong_tid_total", "Packets from a known address on an unknown port (ERROR 5 sent)", s.wrong_tid);
    counter("deskfarm_tftp_lb_bytes_to_client_total", "Bytes relayed to clients", s.bytes_to_client);
    for (const auto& b : s.backends)
      m.gauge("deskfarm_tftp_lb_backend_sessions", "Sessions in flight per backend", {{"backend", b.name}})
          .set(static_cast<double>(b.active));
  }

  Context& ctx_;
  LbConfig config_;
  Checked checked_;
  std::unique_ptr<Relay> relay_;
  std::string vip_;
  std::map<std::string, Backend> backends_;
  std::vector<Subscription> subs_;
};

}  // namespace

DESKFARM_PLUGIN(TftpLb, "tftp-lb", "1.0.0",
                "TFTP load balancer: a virtual server over pvs and foreign TFTP services, udp-ecv and tftp monitors",
                provides, nullptr, lb_schema)
