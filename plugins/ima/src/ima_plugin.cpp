// ima: a server of a farm in a zone (Independent Management Architecture). The servers of a zone elect one zone
// data collector (ZDC) by newest version, then preference, then highest host ID; members report every change of
// their dynamic data to it at once, and it forwards each change to every other zone's ZDC. Elections are rounds:
// a call opens round `epoch`, every member answers with its rank, and after election_window_ms each member takes
// the best candidate it saw, the winner announcing itself; a message of an older round or a sender's repeated
// sequence number changes nothing (counted). All of it runs on the instance's executor, so it needs no locks.
#include <ctime>
#include <map>
#include <set>

#include <deskfarm/interfaces/ima/ima.hpp>
#include <deskfarm/sdk/plugin.hpp>

namespace {

using namespace deskfarm;
using namespace deskfarm::sdk;
namespace api = deskfarm::interfaces::ima;

constexpr const char* kPluginVersion = "1.0.0";
constexpr const char* provides[] = {"ima", nullptr};

struct ImaConfig {
  std::string farm;
  std::string zone;
  std::int64_t host_id = 0;
  std::string preference;
  std::string version;
  std::int64_t keepalive_s = 60;
  std::int64_t gateway_validation_s = 300;
  std::int64_t election_window_ms = 500;
};

constexpr auto ima_schema = schema<ImaConfig>(
    option("farm", &ImaConfig::farm, "\"farm\"", "the server farm (a bus subject token: letters, digits, '-', '_')"),
    option("zone", &ImaConfig::zone, "\"default\"", "the zone the server belongs to (a subject token, like farm)"),
    option("host_id", &ImaConfig::host_id, "0",
           "host ID, the last election criterion (highest wins); 0: derived stably from the instance name")
        .range(0, 2147483647),
    option("preference", &ImaConfig::preference, "\"default\"", "election preference, the second criterion")
        .one_of("most_preferred|preferred|default|not_preferred"),
    option("version", &ImaConfig::version, "\"\"",
           "the server's software version, the first criterion (newest wins); empty: the plugin's version"),
    option("keepalive_s", &ImaConfig::keepalive_s, "60",
           "KeepAliveInterval: the ZDC pings members silent this long; members check a ZDC silent half as long")
        .range(1, 86400),
    option("gateway_validation_s", &ImaConfig::gateway_validation_s, "300",
           "GatewayValidationInterval: seconds before retrying another zone's unreachable ZDC")
        .range(1, 86400),
    option("election_window_ms", &ImaConfig::election_window_ms, "500",
           "how long a round collects candidates before each member takes the best")
        .range(1, 60000));

bool subject_token(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') return false;
  return true;
}

void check(const ImaConfig& c) {
  if (!subject_token(c.farm))
    throw ConfigError("farm", "farm '" + c.farm + "': use 1 to 64 letters, digits, '-' or '_' (it is a bus subject token)");
  if (!subject_token(c.zone))
    throw ConfigError("zone", "zone '" + c.zone + "': use 1 to 64 letters, digits, '-' or '_' (it is a bus subject token)");
}

/// FNV-1a of the instance name into 1 … 65535: the same name gives the same host ID on every start.
std::int64_t derived_host_id(const std::string& name) {
  std::uint32_t h = 2166136261u;
  for (unsigned char c : name) h = (h ^ c) * 16777619u;
  return static_cast<std::int64_t>(h % 65535u) + 1;
}

std::string iso8601(TimePoint t) {
  const std::time_t s = std::chrono::system_clock::to_time_t(std::chrono::time_point_cast<std::chrono::system_clock::duration>(t));
  std::tm tm{};
  gmtime_r(&s, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

class Ima final : public Plugin {
 public:
  explicit Ima(Context& ctx) : ctx_(ctx), config_(ima_schema.bind(ctx.config())) {
    check(config_);
    zone_ = config_.zone;
    host_id_ = config_.host_id != 0 ? config_.host_id : derived_host_id(ctx_.name());
    version_ = config_.version.empty() ? kPluginVersion : config_.version;
    keepalive_ = std::chrono::seconds(config_.keepalive_s);
    auto& m = ctx_.metrics();
    m.declare_counter("deskfarm_ima_elections_total", "Elections this server called, per trigger");
    m.declare_counter("deskfarm_ima_rejected_total", "Messages on ima subjects refused, per reason (foreign, garbled, replay, stale_epoch, version_claim)");
    m.declare_counter("deskfarm_ima_changes_total", "Changes of dynamic data, per direction (reported, received, forwarded)");
    zdc_gauge_ = &m.gauge("deskfarm_ima_zdc", "1 while this server is its zone's data collector");
    forward_failures_ = &m.counter("deskfarm_ima_forward_failures_total", "Forwards to another zone's ZDC that failed (retried after gateway_validation_s)");
    members_lost_ = &m.counter("deskfarm_ima_members_lost_total", "Members that did not answer the ZDC's keep-alive ping and were dropped");
  }

  static void validate(const Config& config) { check(ima_schema.bind(config)); }

  void start() override {
    incarnation_ = std::chrono::duration_cast<std::chrono::microseconds>(ctx_.clock().now().time_since_epoch()).count();
    own_ = api::Change{config_.farm, zone_, ctx_.name(), host_id_, incarnation_, 0, 0, 0, false, iso8601(ctx_.clock().now())};
    auto& bus = ctx_.bus();
    const auto me = ctx_.name();
    serves_.push_back(serve<api::Change, api::Ack>(bus, api::subject(me, "change"), [this](const api::Change& c) { return on_change(c, false); }));
    serves_.push_back(serve<api::Change, api::Ack>(bus, api::subject(me, "forward"), [this](const api::Change& c) { return on_change(c, true); }));
    serves_.push_back(serve<Empty, api::Ack>(bus, api::subject(me, "ping"), [this](const Empty&) { return api::Ack{is_zdc(), zdc_, epoch_}; }));
    serves_.push_back(serve<Empty, api::Change>(bus, api::subject(me, "state"), [this](const Empty&) { return own_; }));
    for (const char* s : {"report", "admin.report"})
      serves_.push_back(serve<api::Report, api::Change>(bus, api::subject(me, s), [this](const api::Report& r) { return report(r); }));
    serves_.push_back(serve<Empty, api::Collectors>(bus, api::subject(me, "admin.querydc"), [this](const Empty&) { return collectors(); }));
    serves_.push_back(serve<Empty, api::DynamicData>(bus, api::subject(me, "admin.queryds"), [this](const Empty&) { return dynamic_data(); }));
    serves_.push_back(serve_async<Empty, api::Collectors>(bus, api::subject(me, "admin.elect"), [this](const Empty&, Responder<api::Collectors> r) {
      elect_waiting_.push_back(r);
      call_election("manual");
    }));
    serves_.push_back(serve<api::ZoneMove, Empty>(bus, api::subject(me, "admin.zone"), [this](const api::ZoneMove& z) {
      if (!subject_token(z.zone))
        throw RequestError("bad_request", "zone '" + z.zone + "': use 1 to 64 letters, digits, '-' or '_'");
      move_zone(z.zone);
      return Empty{};
    }));
    serves_.push_back(serve<api::Fault, Empty>(bus, api::subject(me, "admin.fault"), [this](const api::Fault& f) {
      if (f.fault != "crash") throw RequestError("bad_request", "fault '" + f.fault + "': the only fault is \"crash\"");
      ctx_.log().warning("crash injected: silent from now on (no resign, no leave)");
      silence();
      return Empty{};
    }));
    collectors_sub_ = bus.subscribe(api::collectors_subject(config_.farm), [this](const Message& m) { on_collector(m); });
    join_zone();
    const auto period = std::max<Duration>(keepalive_ / 8, std::chrono::milliseconds(50));
    tick_ = ctx_.every(period, [this] { tick(); });
    call_election("start");
  }

  void stop() override {
    if (silent_) return;
    leave_zone();  // a ZDC resigns (its members elect at once), a member leaves (its ZDC drops its record)
    silence();
  }

  void status(Value& out) const override {
    out.set("farm", config_.farm);
    out.set("zone", zone_);
    out.set("host_id", host_id_);
    out.set("version", version_);
    out.set("preference", config_.preference);
    out.set("zdc", zdc_);
    out.set("is_zdc", is_zdc());
    out.set("epoch", epoch_);
    out.set("records", static_cast<std::int64_t>(records_.size()));
    out.set("members", static_cast<std::int64_t>(members_.size()));
    Value peers = Value::object();
    for (const auto& [zone, p] : peers_) peers.set(zone, p.c.instance + (p.c.reachable ? "" : " (unreachable)"));
    out.set("other_zones", std::move(peers));
    Value rejected = Value::object();
    for (const auto& [reason, n] : rejected_counts_) rejected.set(reason, n);
    out.set("rejected", std::move(rejected));
  }

 private:
  struct Member {
    TimePoint last_heard;
    bool pinging = false;
  };
  struct Peer {
    api::Collector c;
    std::map<std::string, api::Change> pending;  ///< the latest change per origin while c is unreachable
    bool retry_scheduled = false;
  };
  struct Sender {
    std::int64_t incarnation = 0;
    std::int64_t seq = 0;
    std::string version;  ///< what it advertised first in this incarnation
  };

  bool is_zdc() const { return !zdc_.empty() && zdc_ == ctx_.name(); }
  bool in_round() const { return round_epoch_ > epoch_; }

  // ---- election --------------------------------------------------------------------------------------------

  api::Election message(const char* kind, std::int64_t epoch, std::string trigger = {}) {
    return api::Election{kind, config_.farm, zone_, epoch, ++seq_, incarnation_, ctx_.name(), host_id_, version_,
                         config_.preference, std::move(trigger)};
  }

  void send(const api::Election& e) { publish(ctx_.bus(), api::election_subject(config_.farm, e.zone), e); }

  void join_zone() {
    election_sub_ = ctx_.bus().subscribe(api::election_subject(config_.farm, zone_), [this](const Message& m) { on_election(m); });
  }

  /// Opens a round above every round this server has seen; the call is the caller's own candidacy.
  void call_election(const std::string& trigger) {
    const auto epoch = std::max(epoch_, round_epoch_) + 1;
    elections(trigger).inc();
    auto call = message(api::kCall, epoch, trigger);
    open_round(epoch);
    send(call);
  }

  void open_round(std::int64_t epoch) {
    round_epoch_ = epoch;
    round_started_ = ctx_.clock().now();
    answered_round_ = false;
    candidates_.clear();
    candidates_[ctx_.name()] = api::Rank{version_, config_.preference, host_id_, ctx_.name()};
    ctx_.after(std::chrono::milliseconds(config_.election_window_ms), [this, epoch] { close_round(epoch); });
  }

  void on_election(const Message& m) {
    if (silent_) return;
    auto body = decode<api::Election>(m);
    if (!body) return;
    const auto& e = *body;
    if (e.instance == ctx_.name()) return;  // our own, delivered to us too
    if (api::preference_rank(e.kind == api::kCall || e.kind == api::kCandidate || e.kind == api::kElected ? e.preference : api::kDefault) < 0 ||
        e.farm != config_.farm || e.zone != zone_ || e.instance.empty() || e.epoch < 1 || e.seq < 1 ||
        (e.kind != api::kCall && e.kind != api::kCandidate && e.kind != api::kElected && e.kind != api::kResign && e.kind != api::kLeave))
      return reject("garbled", "election message '" + e.kind + "' from '" + e.instance + "' (farm " + e.farm + ", zone " +
                                   e.zone + ", epoch " + std::to_string(e.epoch) + ", seq " + std::to_string(e.seq) + ")");
    auto& s = senders_[e.instance];
    if (e.incarnation < s.incarnation || (e.incarnation == s.incarnation && e.seq <= s.seq))
      return reject("replay", e.kind + " from " + e.instance + " with seq " + std::to_string(e.seq) + " (seen " +
                                  std::to_string(s.seq) + " in this incarnation)");
    const bool ranked = e.kind == api::kCall || e.kind == api::kCandidate || e.kind == api::kElected;
    if (e.incarnation > s.incarnation) s.version.clear();
    if (ranked && !s.version.empty() && api::compare_versions(e.version, s.version) > 0)
      return reject("version_claim", e.instance + " claims version " + e.version + " after advertising " + s.version +
                                         " in the same incarnation; its message is ignored");
    s.incarnation = e.incarnation;
    s.seq = e.seq;
    if (ranked && s.version.empty()) s.version = e.version;
    const api::Rank rank{e.version, e.preference, e.host_id, e.instance};

    if (e.kind == api::kCall || e.kind == api::kCandidate) {
      if (e.epoch > round_epoch_ && e.epoch > epoch_) {
        open_round(e.epoch);
        answered_round_ = true;
        send(message(api::kCandidate, e.epoch));
      }
      if (e.epoch == round_epoch_ && in_round()) {
        candidates_[e.instance] = rank;
        // A caller that subscribed after our own call missed it: answer its call with our candidacy, once a round.
        if (e.kind == api::kCall && !answered_round_) {
          answered_round_ = true;
          send(message(api::kCandidate, round_epoch_));
        }
        if (is_zdc()) members_[e.instance].last_heard = ctx_.clock().now();
      } else if (e.kind == api::kCall && !in_round()) {
        // A call for a round already decided (a server that just started knows no epoch): open a fresh one.
        call_election(e.trigger.empty() ? "start" : e.trigger);
      } else if (e.kind == api::kCall) {
        send(message(api::kCandidate, round_epoch_));  // the caller missed our round's candidates: it joins on this
      }
    } else if (e.kind == api::kElected) {
      if (e.epoch < epoch_) return reject("stale_epoch", "elected " + e.instance + " for epoch " + std::to_string(e.epoch) + ", now " + std::to_string(epoch_));
      if (e.epoch == epoch_ && e.instance == zdc_) last_heard_zdc_ = ctx_.clock().now();
      // Two winners of one round (each missed the other's candidate): both yield to the better one.
      else if (e.epoch > epoch_ || zdc_.empty() || api::outranks(rank, candidate_rank(zdc_))) take_office(e.instance, e.epoch, rank);
    } else if (e.kind == api::kResign) {
      if (e.instance == zdc_) {
        ctx_.log().info("ZDC " + e.instance + " resigned (shutdown): electing");
        zdc_.clear();
        call_election("shutdown");
      }
    } else if (e.kind == api::kLeave && is_zdc()) {
      members_.erase(e.instance);
      candidates_.erase(e.instance);
      drop_record(e.instance);
    }
  }

  api::Rank candidate_rank(const std::string& instance) const {
    if (instance == zdc_info_.instance) return api::Rank{zdc_info_.version, zdc_info_.preference, zdc_info_.host_id, instance};
    return api::Rank{"0", api::kNotPreferred, 0, instance};
  }

  void close_round(std::int64_t epoch) {
    if (silent_ || epoch != round_epoch_ || !in_round()) return;
    auto best = candidates_.begin();
    for (auto it = candidates_.begin(); it != candidates_.end(); ++it)
      if (api::outranks(it->second, best->second)) best = it;
    const auto winner = best->second;
    const auto members = candidates_;
    take_office(winner.instance, epoch, winner);
    if (is_zdc()) {
      send(message(api::kElected, epoch));
      for (const auto& [name, rank] : members)
        if (name != ctx_.name()) members_[name].last_heard = ctx_.clock().now();
      ask_full_state();
    }
  }

  /// `zdc` holds office for `epoch` in this zone.
  void take_office(const std::string& zdc, std::int64_t epoch, const api::Rank& rank) {
    const bool was = is_zdc();
    epoch_ = epoch;
    if (round_epoch_ < epoch) round_epoch_ = epoch;
    zdc_ = zdc;
    zdc_info_ = api::Collector{config_.farm, zone_, zdc, rank.host_id, rank.version, rank.preference, epoch, true};
    last_heard_zdc_ = ctx_.clock().now();
    pinging_zdc_ = false;
    zdc_gauge_->set(is_zdc() ? 1 : 0);
    ctx_.log().info("zone " + zone_ + ": ZDC " + zdc + " (epoch " + std::to_string(epoch) + ", version " + rank.version +
                    ", " + rank.preference + ", host ID " + std::to_string(rank.host_id) + ")");
    if (was && !is_zdc()) {
      members_.clear();
      records_.clear();
    }
    if (is_zdc()) {
      records_[ctx_.name()] = own_;
      publish(ctx_.bus(), api::collectors_subject(config_.farm), zdc_info_);
      for (auto& [zone, p] : peers_) send_zone_state(p);
    }
    auto waiting = std::exchange(elect_waiting_, {});
    for (auto& r : waiting) r.ok(collectors());
  }

  /// A newly elected ZDC asks every member for its full state.
  void ask_full_state() {
    for (const auto& [name, m] : members_) {
      request<Empty, api::Change>(ctx_.bus(), api::subject(name, "state"), Empty{}, ping_timeout(),
                                  [this, name, epoch = epoch_](Reply<api::Change> r) {
                                    if (silent_ || !is_zdc() || epoch != epoch_) return;
                                    if (!r) return lose_member(name, r.error().message);
                                    members_[name].last_heard = ctx_.clock().now();
                                    accept(*r, false);
                                  });
    }
  }

  // ---- dynamic data ----------------------------------------------------------------------------------------

  api::Change report(const api::Report& r) {
    if (r.sessions < 0 || r.load < 0 || r.load > 10000)
      throw RequestError("bad_request", "report: sessions must be >= 0 and load within 0 … 10000 (got " +
                                            std::to_string(r.sessions) + ", " + std::to_string(r.load) + ")");
    own_.sessions = r.sessions;
    own_.load = r.load;
    ++own_.seq;
    own_.updated = iso8601(ctx_.clock().now());
    changes("reported").inc();
    send_own();
    return own_;
  }

  void send_own() {
    if (is_zdc()) return void(accept(own_, false));
    if (zdc_.empty()) return;  // the next ZDC asks for it
    request<api::Change, api::Ack>(ctx_.bus(), api::subject(zdc_, "change"), own_, ping_timeout(), [this, to = zdc_](Reply<api::Ack> r) {
      if (silent_ || to != zdc_) return;
      if (r && r->accepted) return void(last_heard_zdc_ = ctx_.clock().now());
      zdc_lost(r ? to + " says it is not the ZDC" : r.error().message);
    });
  }

  api::Ack on_change(const api::Change& c, bool forwarded) {
    if (silent_) throw RequestError("unavailable", "server " + ctx_.name() + " is down");
    if (c.farm != config_.farm || c.instance.empty() || (forwarded ? c.zone == zone_ : c.zone != zone_)) {
      reject("garbled", std::string(forwarded ? "forward" : "change") + " of '" + c.instance + "' for farm " + c.farm + ", zone " + c.zone);
      throw RequestError("bad_request", "change of '" + c.instance + "' (farm " + c.farm + ", zone " + c.zone +
                                            ") does not belong at " + ctx_.name() + " (farm " + config_.farm + ", zone " + zone_ + ")");
    }
    if (!is_zdc()) return api::Ack{false, zdc_, epoch_};
    if (!forwarded) members_[c.instance].last_heard = ctx_.clock().now();
    accept(c, forwarded);
    return api::Ack{true, zdc_, epoch_};
  }

  /// Records a change if it is newer than what is held for its origin; a change of this zone goes on to every
  /// other zone's ZDC.
  void accept(const api::Change& c, bool forwarded) {
    auto it = records_.find(c.instance);
    if (it != records_.end() && std::pair(c.incarnation, c.seq) <= std::pair(it->second.incarnation, it->second.seq)) return;
    if (c.gone) records_.erase(c.instance);
    else records_[c.instance] = c;
    changes(forwarded ? "received" : "recorded").inc();
    if (!forwarded)
      for (auto& [zone, p] : peers_) forward(p, c);
  }

  void drop_record(const std::string& instance) {
    auto it = records_.find(instance);
    if (it == records_.end()) return;
    auto gone = it->second;
    gone.gone = true;
    ++gone.seq;
    accept(gone, false);
  }

  void forward(Peer& p, const api::Change& c) {
    if (!p.c.reachable) {
      p.pending[c.instance] = c;
      return;
    }
    changes("forwarded").inc();
    request<api::Change, api::Ack>(ctx_.bus(), api::subject(p.c.instance, "forward"), c, ping_timeout(),
                                   [this, zone = p.c.zone, to = p.c.instance, c](Reply<api::Ack> r) {
                                     auto it = peers_.find(zone);
                                     if (silent_ || !is_zdc() || it == peers_.end() || it->second.c.instance != to || r) return;
                                     unreachable(it->second, c, r.error().message);
                                   });
  }

  void unreachable(Peer& p, const api::Change& c, const std::string& why) {
    forward_failures_->inc();
    p.pending[c.instance] = c;
    if (p.c.reachable)
      ctx_.log().warning("ZDC " + p.c.instance + " of zone " + p.c.zone + " is unreachable (" + why + "); retrying in " +
                         std::to_string(config_.gateway_validation_s) + " s (gateway_validation_s)");
    p.c.reachable = false;
    if (p.retry_scheduled) return;
    p.retry_scheduled = true;
    ctx_.after(std::chrono::seconds(config_.gateway_validation_s), [this, zone = p.c.zone] {
      auto it = peers_.find(zone);
      if (silent_ || it == peers_.end()) return;
      auto& peer = it->second;
      peer.retry_scheduled = false;
      peer.c.reachable = true;
      auto pending = std::exchange(peer.pending, {});
      if (is_zdc())
        for (const auto& [name, change] : pending) forward(peer, change);
    });
  }

  /// Everything of this zone to another zone's ZDC that has just taken office.
  void send_zone_state(Peer& p) {
    for (const auto& [name, c] : records_)
      if (c.zone == zone_) forward(p, c);
  }

  void on_collector(const Message& m) {
    if (silent_) return;
    auto body = decode<api::Collector>(m);
    if (!body) return;
    const auto& c = *body;
    if (c.farm != config_.farm || !subject_token(c.zone) || c.instance.empty() || c.epoch < 1)
      return reject("garbled", "collector '" + c.instance + "' of zone '" + c.zone + "', farm " + c.farm);
    if (c.zone == zone_) return;  // this zone's ZDC is known from its election
    auto it = peers_.find(c.zone);
    if (it != peers_.end() && c.epoch < it->second.c.epoch)
      return reject("stale_epoch", "collector " + c.instance + " of zone " + c.zone + " for epoch " + std::to_string(c.epoch));
    // One round, two winners (each missed the other's candidate): the better one, as the zone itself settles it.
    if (it != peers_.end() && c.epoch == it->second.c.epoch &&
        (c.instance == it->second.c.instance ||
         !api::outranks(api::Rank{c.version, c.preference, c.host_id, c.instance},
                        api::Rank{it->second.c.version, it->second.c.preference, it->second.c.host_id, it->second.c.instance})))
      return;
    auto& p = peers_[c.zone];
    // A ZDC replaced by another has crashed, resigned or become a member: its record goes (a member's comes back
    // from the new ZDC, which asks it for its state). The zone's other records stay until superseded: the new ZDC's
    // forwards may arrive before its announcement.
    if (!p.c.instance.empty() && p.c.instance != c.instance) records_.erase(p.c.instance);
    p.c = c;
    p.c.reachable = true;
    p.pending.clear();
    if (is_zdc()) {
      send_zone_state(p);
      publish(ctx_.bus(), api::collectors_subject(config_.farm), zdc_info_);  // so that the newcomer learns us
    }
  }

  // ---- keep-alive ------------------------------------------------------------------------------------------

  std::chrono::milliseconds ping_timeout() const {
    return std::min<std::chrono::milliseconds>(std::chrono::duration_cast<std::chrono::milliseconds>(keepalive_) / 4, std::chrono::seconds(5));
  }

  void tick() {
    if (silent_) return;
    const auto now = ctx_.clock().now();
    if (in_round()) {
      // A round whose timer was lost behind a busy executor still ends.
      if (now - round_started_ > std::chrono::milliseconds(config_.election_window_ms) * 4) close_round(round_epoch_);
      return;
    }
    if (zdc_.empty()) return call_election("lost");
    if (!is_zdc()) {
      if (pinging_zdc_ || now - last_heard_zdc_ < keepalive_ / 2) return;
      pinging_zdc_ = true;
      request<Empty, api::Ack>(ctx_.bus(), api::subject(zdc_, "ping"), Empty{}, ping_timeout(), [this, to = zdc_](Reply<api::Ack> r) {
        if (silent_ || to != zdc_) return;
        pinging_zdc_ = false;
        if (r && r->accepted) return void(last_heard_zdc_ = ctx_.clock().now());
        zdc_lost(r ? to + " says it is not the ZDC" : r.error().message);
      });
      return;
    }
    for (auto& [name, m] : members_) {
      if (m.pinging || now - m.last_heard < keepalive_) continue;
      m.pinging = true;
      request<Empty, api::Ack>(ctx_.bus(), api::subject(name, "ping"), Empty{}, ping_timeout(), [this, name](Reply<api::Ack> r) {
        auto it = members_.find(name);
        if (silent_ || !is_zdc() || it == members_.end()) return;
        it->second.pinging = false;
        if (r) it->second.last_heard = ctx_.clock().now();
        else lose_member(name, r.error().message);
      });
    }
  }

  void zdc_lost(const std::string& why) {
    if (in_round()) return;
    ctx_.log().warning("ZDC " + zdc_ + " of zone " + zone_ + " lost (" + why + "): electing");
    zdc_.clear();
    call_election("lost");
  }

  void lose_member(const std::string& name, const std::string& why) {
    if (!members_.erase(name)) return;
    members_lost_->inc();
    ctx_.log().warning("member " + name + " did not answer (" + why + "): its dynamic data is dropped");
    drop_record(name);
  }

  // ---- zones and shutdown ----------------------------------------------------------------------------------

  void leave_zone() {
    if (is_zdc()) send(message(api::kResign, epoch_));
    else send(message(api::kLeave, std::max<std::int64_t>(epoch_, 1)));
  }

  void move_zone(const std::string& zone) {
    if (zone == zone_) return;
    ctx_.log().info("moving from zone " + zone_ + " to zone " + zone);
    leave_zone();
    election_sub_.reset();
    zone_ = zone;
    own_.zone = zone;
    ++own_.seq;
    zdc_.clear();
    members_.clear();
    records_.clear();
    epoch_ = round_epoch_ = 0;
    zdc_gauge_->set(0);
    senders_.clear();
    peers_.erase(zone);
    join_zone();
    call_election("zone_change");
  }

  /// Subscriptions and timers end; nothing more is sent (a crash, or the end of stop()).
  void silence() {
    silent_ = true;
    serves_.clear();
    election_sub_.reset();
    collectors_sub_.reset();
    ctx_.clock().cancel(tick_);
    zdc_gauge_->set(0);
    auto waiting = std::exchange(elect_waiting_, {});
    for (auto& r : waiting) r.fail("unavailable", "server " + ctx_.name() + " stopped before the election ended");
  }

  // ---- queries ---------------------------------------------------------------------------------------------

  api::Collectors collectors() const {
    api::Collectors out;
    if (!zdc_.empty()) out.collectors.push_back(zdc_info_);
    for (const auto& [zone, p] : peers_) out.collectors.push_back(p.c);
    return out;
  }

  api::DynamicData dynamic_data() const {
    api::DynamicData d{ctx_.name(), zone_, is_zdc(), {}};
    if (!is_zdc()) d.records.push_back(own_);
    else
      for (const auto& [name, c] : records_) d.records.push_back(c);
    std::sort(d.records.begin(), d.records.end(), [](const auto& a, const auto& b) { return std::tie(a.zone, a.instance) < std::tie(b.zone, b.instance); });
    return d;
  }

  /// The typed body of a message on an ima subject; nullptr (counted and logged) for another type or bad bytes.
  template <class T>
  std::shared_ptr<const T> decode(const Message& m) {
    try {
      if (auto body = body_of<T>(m)) return body;
      reject("foreign", "a " + std::string(m.type) + " on " + m.subject);
    } catch (const std::exception& e) {
      reject("garbled", std::string("on ") + m.subject + ": " + e.what());
    }
    return nullptr;
  }

  // ---- metrics ---------------------------------------------------------------------------------------------

  void reject(const std::string& reason, const std::string& what) {
    auto& n = rejected_counts_[reason];
    ++n;
    ctx_.metrics().counter("deskfarm_ima_rejected_total", "", {{"reason", reason}}).inc();
    if (n <= 10 || n % 1000 == 0) ctx_.log().warning("refused (" + reason + ", " + std::to_string(n) + " so far): " + what);
  }

  Counter& elections(const std::string& trigger) { return ctx_.metrics().counter("deskfarm_ima_elections_total", "", {{"trigger", trigger}}); }
  Counter& changes(const std::string& direction) {
    auto& c = changes_[direction];
    if (!c) c = &ctx_.metrics().counter("deskfarm_ima_changes_total", "", {{"direction", direction}});
    return *c;
  }

  Context& ctx_;
  ImaConfig config_;
  std::string zone_;
  std::int64_t host_id_ = 0;
  std::string version_;
  Duration keepalive_{};
  std::int64_t incarnation_ = 0;
  std::int64_t seq_ = 0;
  bool silent_ = false;

  std::int64_t epoch_ = 0;        ///< the round whose winner holds office
  std::int64_t round_epoch_ = 0;  ///< the latest round opened (> epoch_ while it collects candidates)
  TimePoint round_started_{};
  bool answered_round_ = false;  ///< a candidate message went out in this round (a call alone may have been missed)
  std::map<std::string, api::Rank> candidates_;
  std::string zdc_;
  api::Collector zdc_info_;
  TimePoint last_heard_zdc_{};
  bool pinging_zdc_ = false;
  std::vector<Responder<api::Collectors>> elect_waiting_;
  std::map<std::string, Sender> senders_;

  api::Change own_;
  std::map<std::string, Member> members_;         ///< as ZDC: the zone's other servers
  std::map<std::string, api::Change> records_;    ///< as ZDC: dynamic data of this zone and the others
  std::map<std::string, Peer> peers_;             ///< other zones' ZDCs, by zone

  std::vector<Subscription> serves_;
  Subscription election_sub_;
  Subscription collectors_sub_;
  TimerId tick_ = 0;
  std::map<std::string, std::int64_t> rejected_counts_;
  std::map<std::string, Counter*> changes_;
  Gauge* zdc_gauge_ = nullptr;
  Counter* forward_failures_ = nullptr;
  Counter* members_lost_ = nullptr;
};

}  // namespace

DESKFARM_PLUGIN(Ima, "ima", kPluginVersion,
                "A farm server in a zone: zone data collector elections, dynamic data reported to the ZDC and forwarded between zones",
                provides, nullptr, ima_schema)
