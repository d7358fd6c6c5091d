// ima: a server of a farm in a zone (Independent Management Architecture). The servers of a zone elect one zone
// data collector (ZDC) by newest version, then preference, then highest host ID; members report every change of
// their dynamic data to it at once, and it forwards each change to every other zone's ZDC. Elections are rounds:
// a call opens round `epoch`, every member answers with its rank, and after election_window_ms each member takes
// the best candidate it saw, the winner announcing itself; a message of an older round or a sender's repeated
// sequence number changes nothing (counted). All of it runs on the instance's executor, so it needs no locks.
// The farm's static data (each server's record) lives in the data store; every server keeps a local host cache of
// it (lhc.hpp), refreshed on the blocking pool, and works from it while the store is unreachable.
#include <future>
#include <map>
#include <set>

#include <deskfarm/interfaces/ima/ima.hpp>
#include <deskfarm/sdk/plugin.hpp>
#include <deskfarm/sdk/store.hpp>
#include <deskfarm/sdk/time_text.hpp>

#include "lhc.hpp"

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
  std::string lhc;
  std::int64_t dcn_poll_s = 1800;
  std::int64_t lhc_max_age_h = 96;
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
        .range(1, 60000),
    option("lhc", &ImaConfig::lhc, "\"\"",
           "the local host cache (an SQLite file); \"\": lhc.db in the instance's state directory; relative: to it"),
    option("dcn_poll_s", &ImaConfig::dcn_poll_s, "1800",
           "DCNChangePollingInterval: seconds between refreshes of the local host cache from the data store "
           "(a change notification from another server refreshes at once)")
        .range(1, 604800),
    option("lhc_max_age_h", &ImaConfig::lhc_max_age_h, "96",
           "hours a server works from its local host cache without a good refresh from the data store; then it is "
           "degraded and takes no part in elections")
        .range(1, 8760));

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
    m.declare_counter("deskfarm_ima_lhc_refreshes_total", "Refreshes of the local host cache from the data store, per result (ok, failed)");
    lhc_age_gauge_ = &m.gauge("deskfarm_ima_lhc_age_seconds", "Seconds since the local host cache was last refreshed from the data store");
  }

  static void validate(const Config& config) { check(ima_schema.bind(config)); }

  void start() override {
    incarnation_ = std::chrono::duration_cast<std::chrono::microseconds>(ctx_.clock().now().time_since_epoch()).count();
    own_ = api::Change{config_.farm, zone_, ctx_.name(), host_id_, incarnation_, 0, 0, 0, false, iso8601(ctx_.clock().now()), {}};
    open_cache();
    auto& bus = ctx_.bus();
    const auto me = ctx_.name();
    serves_.push_back(serve<api::Change, api::Ack>(bus, api::subject(me, "change"), [this](const api::Change& c) { return on_change(c, false); }));
    serves_.push_back(serve<api::Change, api::Ack>(bus, api::subject(me, "forward"), [this](const api::Change& c) { return on_change(c, true); }));
    serves_.push_back(serve<Empty, api::Ack>(bus, api::subject(me, "ping"), [this](const Empty&) { return api::Ack{is_zdc(), zdc_, epoch_}; }));
    serves_.push_back(serve<Empty, api::Change>(bus, api::subject(me, "state"), [this](const Empty&) { return own_; }));
    for (const char* s : {"report", "admin.report"})
      serves_.push_back(serve<api::Report, api::Change>(bus, api::subject(me, s), [this](const api::Report& r) { return report(r); }));
    serves_.push_back(serve<api::SessionChange, api::Change>(bus, api::subject(me, "session"), [this](const api::SessionChange& c) { return session_change(c); }));
    serves_.push_back(serve<Empty, api::Collector>(bus, api::subject(me, "zdc"), [this](const Empty&) { return own_collector(); }));
    serves_.push_back(serve<Empty, api::Collectors>(bus, api::subject(me, "admin.querydc"), [this](const Empty&) { return collectors(); }));
    serves_.push_back(serve<Empty, api::DynamicData>(bus, api::subject(me, "admin.queryds"), [this](const Empty&) { return dynamic_data(); }));
    serves_.push_back(serve_async<Empty, api::Collectors>(bus, api::subject(me, "admin.elect"), [this](const Empty&, Responder<api::Collectors> r) {
      if (lhc_expired())
        return r.fail("unavailable", "server " + ctx_.name() + " takes no part in elections: its local host cache expired (" +
                                         lhc_->file().string() + "); bring the data store back, then deskfarm dsmaint refreshlhc");
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
      fault(f);
      return Empty{};
    }));
    for (const auto& [request, recreate] : {std::pair{"admin.refreshlhc", false}, std::pair{"admin.recreatelhc", true}})
      serves_.push_back(serve_async<Empty, api::Lhc>(bus, api::subject(me, request), [this, recreate](const Empty&, Responder<api::Lhc> r) {
        refresh_lhc(recreate, std::move(r));
      }));
    collectors_sub_ = bus.subscribe(api::collectors_subject(config_.farm), [this](const Message& m) { on_collector(m); });
    dcn_sub_ = bus.subscribe(api::dcn_subject(config_.farm), [this](const Message& m) { on_dcn(m); });
    poll_ = ctx_.every(std::chrono::seconds(config_.dcn_poll_s), [this] { refresh_lhc(false); });
    refresh_lhc(false);  // migrates the store and writes this server's record first
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
    out.set("lhc", lhc_state_);
    out.set("lhc_file", lhc_ ? lhc_->file().string() : std::string());
    out.set("lhc_servers", static_cast<std::int64_t>(lhc_servers_.size()));
    out.set("lhc_age_s", lhc_age_s());
    out.set("lhc_refreshed", lhc_refreshed_ms_ ? iso8601(from_ms(lhc_refreshed_ms_)) : std::string());
    out.set("lhc_error", lhc_error_);
  }

  Health health() const override { return lhc_state_ == api::kLhcExpired ? Health::degraded : Health::ok; }

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
    api::Rank rank;               ///< as its last call, candidacy or announcement gave it
    bool rank_unanswered = false;  ///< heard since the collector last checked it against its own
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

  /// Opens a round above every round this server has seen (and above `above`: another collector's round); the
  /// call is the caller's own candidacy.
  void call_election(const std::string& trigger, std::int64_t above = 0) {
    if (lhc_expired()) return;  // said once when the cache expired
    const auto epoch = std::max({epoch_, round_epoch_, above}) + 1;
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
    candidates_[ctx_.name()] = own_rank();
    ctx_.after(std::chrono::milliseconds(config_.election_window_ms), [this, epoch] { close_round(epoch); });
  }

  void on_election(const Message& m) {
    if (silent_) return;
    auto body = decode<api::Election>(m);
    if (!body) return;
    const auto& e = *body;
    if (e.instance == ctx_.name() || cut_.contains(e.instance)) return;  // our own, delivered to us too; or across a cut
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
    if (ranked) {
      s.rank = rank;
      s.rank_unanswered = true;
    }
    // A server whose local host cache expired stands in no election: it neither answers nor opens rounds.
    if (lhc_expired() && (e.kind == api::kCall || e.kind == api::kCandidate)) return;

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
      } else if (is_zdc() && !in_round() && e.epoch == epoch_ &&
                 api::outranks(rank, own_rank())) {
        // A server that started during our round joined it late (its candidacy crossed our `elected`, across a WAN
        // link): it outranks this collector, so the round's outcome is wrong. Elect again; it answers the call.
        ctx_.log().info("candidate " + e.instance + " for epoch " + std::to_string(e.epoch) +
                        " came after the round closed and outranks this collector: electing again");
        s.rank_unanswered = false;  // this election is the answer to it
        call_election("start");
      }
    } else if (e.kind == api::kElected) {
      if (e.epoch < epoch_) {
        reject("stale_epoch", "elected " + e.instance + " for epoch " + std::to_string(e.epoch) + ", now " + std::to_string(epoch_));
        // An announcement of an older round: from a server no longer in office (counted, nothing else), or from the
        // collector of the other side of a healed partition, whose messages reached this side first (the links
        // come back one direction at a time: a route reconnecting, TCP retransmitting after its back-off). A
        // collector asks the announcer rather than trust the message, and merges if it still holds office.
        if (is_zdc() && !in_round()) ask_if_collector(e.instance);
        return;
      }
      if (e.epoch == epoch_ && e.instance == zdc_) last_heard_zdc_ = ctx_.clock().now();  // its announcement
      else if (is_zdc() && !in_round()) merge_with(e.instance, e.epoch);
      // Two winners of one round (each missed the other's candidate): members yield to the better one.
      else if (e.epoch > epoch_ || zdc_.empty() || api::outranks(rank, candidate_rank(zdc_))) take_office(e.instance, e.epoch, rank);
    } else if (e.kind == api::kResign) {
      if (e.instance == zdc_) {
        ctx_.log().info("ZDC " + e.instance + " resigned (shutdown): electing");
        zdc_.clear();
        announce_zdc();
        call_election("shutdown");
      }
    } else if (e.kind == api::kLeave && is_zdc()) {
      members_.erase(e.instance);
      candidates_.erase(e.instance);
      drop_record(e.instance);
    }
  }

  /// Two collectors of one zone see each other: a healed partition (each side elected its own), or two winners of
  /// one round. A round above both settles it by the election order, and its winner asks every member for its full
  /// state, so the changes either side took meanwhile reach it once.
  void merge_with(const std::string& other, std::int64_t other_epoch) {
    ctx_.log().warning("zone " + zone_ + " has two collectors: this server (epoch " + std::to_string(epoch_) + ") and " +
                       other + " (epoch " + std::to_string(other_epoch) + "): electing above both");
    call_election("merge", other_epoch);
  }

  void ask_if_collector(const std::string& other) {
    if (!asking_.insert(other).second) return;  // one question at a time per server
    call<Empty, api::Ack>(other, "ping", Empty{}, [this, other](Reply<api::Ack> r) {
      asking_.erase(other);
      if (silent_ || !is_zdc() || in_round() || !r || !r->accepted) return;
      merge_with(other, r->epoch);
    });
  }

  /// A member that outranks this collector missed the round it won (merge rounds called from both sides of a healed
  /// partition race across the WAN, and a side may take the other's collector from its `elected` before its own
  /// round closes). The collector elects again, once for each time such a member was heard from: one that does
  /// not stand (its cache expired) starts no stream of elections.
  bool elect_if_outranked() {
    const auto mine = own_rank();
    for (auto& [name, s] : senders_) {
      if (!s.rank_unanswered || !members_.contains(name)) continue;
      s.rank_unanswered = false;
      if (!api::outranks(s.rank, mine)) continue;
      ctx_.log().info("member " + name + " outranks this collector (it was no candidate of round " + std::to_string(epoch_) +
                      "): electing again");
      call_election("merge");
      return true;
    }
    return false;
  }

  api::Rank own_rank() const { return api::Rank{version_, config_.preference, host_id_, ctx_.name()}; }

  api::Rank candidate_rank(const std::string& instance) const {
    if (instance == zdc_info_.instance) return api::Rank{zdc_info_.version, zdc_info_.preference, zdc_info_.host_id, instance};
    return api::Rank{"0", api::kNotPreferred, 0, instance};
  }

  void close_round(std::int64_t epoch) {
    if (silent_ || epoch != round_epoch_ || !in_round()) return;
    if (lhc_expired()) candidates_.erase(ctx_.name());
    if (candidates_.empty()) {
      round_epoch_ = epoch_;  // no candidate left: the round ends without a winner
      return;
    }
    auto best = candidates_.begin();
    for (auto it = candidates_.begin(); it != candidates_.end(); ++it)
      if (api::outranks(it->second, best->second)) best = it;
    const auto winner = best->second;
    const auto members = candidates_;
    take_office(winner.instance, epoch, winner);
    if (is_zdc()) {
      announce_office();
      for (const auto& [name, rank] : members)
        if (name != ctx_.name()) members_[name].last_heard = ctx_.clock().now();
      ask_full_state();
    }
  }

  /// `zdc` holds office for `epoch` in this zone.
  void take_office(const std::string& zdc, std::int64_t epoch, const api::Rank& rank) {
    const bool was = is_zdc();
    const bool new_zdc = zdc != zdc_;
    epoch_ = epoch;
    if (round_epoch_ < epoch) round_epoch_ = epoch;
    zdc_ = zdc;
    zdc_info_ = api::Collector{config_.farm, zone_, zdc, rank.host_id, rank.version, rank.preference, epoch, true,
                               zdc == ctx_.name() ? incarnation_ : 0};
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
    announce_zdc();
    // A member reports its own record to a collector it follows anew: the collector asks only the candidates of
    // the round it won, and a member that took it from an announcement (a healed partition, rounds racing across
    // a WAN) was none of them. The collector keeps one record per server, so a report it also asked for is no
    // duplicate.
    if (!is_zdc() && new_zdc) send_own();
    auto waiting = std::exchange(elect_waiting_, {});
    for (auto& r : waiting) r.ok(collectors());
  }

  /// A newly elected ZDC asks every member for its full state.
  void ask_full_state() {
    for (const auto& [name, m] : members_) {
      call<Empty, api::Change>(name, "state", Empty{}, [this, name, epoch = epoch_](Reply<api::Change> r) {
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

  /// A session change from the controller beside this server: its sessions (by desktop) and their count change.
  api::Change session_change(const api::SessionChange& c) {
    const bool on = c.kind == "logon" || c.kind == "reconnect", off = c.kind == "logoff";
    if ((!on && !off && c.kind != "disconnect") || c.desktop.empty())
      throw RequestError("bad_request", "session change '" + c.kind + "' of desktop '" + c.desktop +
                                            "': the kind is logon, disconnect, reconnect or logoff, and the desktop is named");
    auto& list = own_.session_list;
    auto it = std::lower_bound(list.begin(), list.end(), c.desktop, [](const api::Session& s, const std::string& d) { return s.desktop < d; });
    const bool held = it != list.end() && it->desktop == c.desktop;
    if (off) {
      if (held) list.erase(it);
    } else {
      api::Session s{c.desktop, c.user, c.controller, on ? api::kSessionActive : api::kSessionDisconnected, c.endpoint};
      if (held) *it = std::move(s);
      else list.insert(it, std::move(s));
    }
    own_.sessions = static_cast<std::int64_t>(list.size());
    ++own_.seq;
    own_.updated = iso8601(ctx_.clock().now());
    changes("reported").inc();
    send_own();
    return own_;
  }

  void send_own() {
    if (is_zdc()) return void(accept(own_, false));
    if (zdc_.empty()) return;  // the next ZDC asks for it
    call<api::Change, api::Ack>(zdc_, "change", own_, [this, to = zdc_](Reply<api::Ack> r) {
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
    call<api::Change, api::Ack>(p.c.instance, "forward", c, [this, zone = p.c.zone, to = p.c.instance, c](Reply<api::Ack> r) {
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
    if (c.zone == zone_ || cut_.contains(c.instance)) return;  // this zone's ZDC is known from its election
    auto it = peers_.find(c.zone);
    // The same server announcing itself again from a newer incarnation was restarted: a zone of one server starts
    // again at epoch 1, so its epoch says nothing; it holds nothing of the other zones and knows none of them.
    const bool restarted = it != peers_.end() && c.instance == it->second.c.instance && c.incarnation > it->second.c.incarnation &&
                           it->second.c.incarnation != 0;
    if (it != peers_.end() && c.epoch < it->second.c.epoch && !restarted)
      return reject("stale_epoch", "collector " + c.instance + " of zone " + c.zone + " for epoch " + std::to_string(c.epoch));
    // One round, two winners (each missed the other's candidate): the better one, as the zone itself settles it.
    if (it != peers_.end() && c.epoch == it->second.c.epoch && !restarted &&
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
    check_lhc_age();
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
      call<Empty, api::Ack>(zdc_, "ping", Empty{}, [this, to = zdc_](Reply<api::Ack> r) {
        if (silent_ || to != zdc_) return;
        pinging_zdc_ = false;
        if (r && r->accepted) return void(last_heard_zdc_ = ctx_.clock().now());
        zdc_lost(r ? to + " says it is not the ZDC" : r.error().message);
      });
      return;
    }
    if (elect_if_outranked()) return;
    // The ZDC announces itself every half keep-alive: its members need not ping it, and a second collector of the
    // zone (a healed partition) hears it within that.
    if (now - announced_office_ >= keepalive_ / 2) announce_office();
    for (auto& [name, m] : members_) {
      if (m.pinging || now - m.last_heard < keepalive_) continue;
      m.pinging = true;
      call<Empty, api::Ack>(name, "ping", Empty{}, [this, name](Reply<api::Ack> r) {
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
    announce_zdc();
    call_election("lost");
  }

  void lose_member(const std::string& name, const std::string& why) {
    if (!members_.erase(name)) return;
    members_lost_->inc();
    ctx_.log().warning("member " + name + " did not answer (" + why + "): its dynamic data is dropped");
    drop_record(name);
  }

  /// The winner of round epoch_ announces itself (`elected`): once on taking office, then every half keep-alive.
  void announce_office() {
    announced_office_ = ctx_.clock().now();
    send(message(api::kElected, epoch_));
  }

  /// A request to another server's ima.<to>.<what>, answered within ping_timeout(); across a partition fault it
  /// fails as a timeout would, after as long.
  template <class Req, class Rep>
  void call(const std::string& to, const char* what, const Req& req, std::function<void(Reply<Rep>)> done) {
    if (!cut_.contains(to))
      return request<Req, Rep>(ctx_.bus(), api::subject(to, what), req, ping_timeout(), std::move(done));
    ctx_.after(ping_timeout(), [done = std::move(done), subject = api::subject(to, what)] {
      done(Reply<Rep>(Error{"timeout", "no reply on " + subject + " (a partition fault cuts this server off from it)"}));
    });
  }

  // ---- faults ----------------------------------------------------------------------------------------------

  /// "crash": silent at once, as kill -9 would be. "partition": the servers in f.peers can no longer be heard or
  /// reached (until "heal"); give each side of a drill the other side's names.
  void fault(const api::Fault& f) {
    if (f.fault == "crash") {
      ctx_.log().warning("crash injected: silent from now on (no resign, no leave)");
      return silence();
    }
    if (f.fault == "partition") {
      if (f.peers.empty()) throw RequestError("bad_request", "fault \"partition\" of " + ctx_.name() + ": name the servers cut off in \"peers\"");
      std::string names;
      for (const auto& p : f.peers) {
        cut_.insert(p);
        names += (names.empty() ? "" : ", ") + p;
      }
      return ctx_.log().warning("partition injected: " + names + " can no longer be heard or reached (until the fault \"heal\")");
    }
    if (f.fault == "heal") {
      ctx_.log().info("partition healed: " + std::to_string(cut_.size()) + " servers reachable again");
      return cut_.clear();
    }
    throw RequestError("bad_request", "fault '" + f.fault + "' on " + ctx_.name() + ": one of \"crash\", \"partition\" (with \"peers\"), \"heal\"");
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
    announce_zdc();
    senders_.clear();
    peers_.erase(zone);
    join_zone();
    own_dirty_ = true;  // the farm's static data changed: written to the store, then announced (dcn)
    refresh_lhc(false);
    call_election("zone_change");
  }

  /// Subscriptions and timers end; nothing more is sent (a crash, or the end of stop()).
  void silence() {
    if (!zdc_.empty()) {
      zdc_.clear();  // the controller beside this server stops following it
      announce_zdc();
    }
    silent_ = true;
    serves_.clear();
    election_sub_.reset();
    collectors_sub_.reset();
    dcn_sub_.reset();
    ctx_.clock().cancel(tick_);
    ctx_.clock().cancel(poll_);
    for (auto& r : std::exchange(lhc_next_.waiters, {})) r.fail("unavailable", "server " + ctx_.name() + " stopped");
    zdc_gauge_->set(0);
    auto waiting = std::exchange(elect_waiting_, {});
    for (auto& r : waiting) r.fail("unavailable", "server " + ctx_.name() + " stopped before the election ended");
  }

  // ---- queries ---------------------------------------------------------------------------------------------

  /// This server's zone's collector as it knows it; instance "" while there is none.
  api::Collector own_collector() const {
    if (!zdc_.empty()) return zdc_info_;
    return api::Collector{config_.farm, zone_, "", 0, "", "", epoch_, false};
  }

  /// Publishes the zone's collector on ima.<instance>.zdc.updates when it changed since the last time.
  void announce_zdc() {
    if (zdc_ == announced_zdc_ && epoch_ == announced_epoch_) return;
    announced_zdc_ = zdc_;
    announced_epoch_ = epoch_;
    publish(ctx_.bus(), api::zdc_updates_subject(ctx_.name()), own_collector());
  }

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

  // ---- local host cache -------------------------------------------------------------------------------------
  // One refresh job at a time on the blocking pool; requests during a job join the next one (a request must see
  // a read that began after it). A job migrates the store once, writes this server's record when it changed, reads
  // the farm's records and replaces the cache with them.

  struct LhcJob {
    bool recreate = false;
    std::vector<Responder<api::Lhc>> waiters;
  };
  struct LhcRead {
    std::vector<api::Server> servers;
    std::string cache_error;  ///< the store answered but the cache file could not be written
  };

  static TimePoint from_ms(std::int64_t ms) { return TimePoint(std::chrono::milliseconds(ms)); }
  std::int64_t now_ms() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(ctx_.clock().now().time_since_epoch()).count();
  }
  bool lhc_expired() const { return lhc_state_ == api::kLhcExpired; }
  std::int64_t lhc_age_s() const {
    const auto since = lhc_refreshed_ms_ ? lhc_refreshed_ms_ : lhc_created_ms_;
    return std::max<std::int64_t>(0, (now_ms() - since) / 1000);
  }
  api::Server own_server() const {
    return api::Server{config_.farm, ctx_.name(), zone_, host_id_, config_.preference, version_};
  }

  /// Reads the cache at start. A corrupt one is rebuilt from the store before start returns (waiting for the
  /// blocking pool here: the server cannot serve without its farm data); if the store cannot do it, start fails.
  void open_cache() {
    std::filesystem::path file = config_.lhc.empty() ? std::filesystem::path("lhc.db") : std::filesystem::path(config_.lhc);
    if (file.is_relative()) file = ctx_.state_dir() / file;
    lhc_ = std::make_shared<ima::LocalHostCache>(file);
    ima::CacheContent content;
    try {
      content = lhc_->open(now_ms());
    } catch (const ima::CorruptCache& e) {
      ctx_.log().warning("local host cache " + file.string() + " is corrupt (" + e.what() + "): rebuilding it from the data store");
      auto done = std::make_shared<std::promise<std::vector<api::Server>>>();
      auto result = done->get_future();
      ctx_.submit_blocking([done, store = &ctx_.store(), lhc = lhc_, own = own_server(), at = now_ms()](std::stop_token) {
        try {
          auto s = store->session();
          ima::migrate_store(s);
          ima::write_server(s, own, at);
          auto servers = ima::read_farm(s, own.farm);
          lhc->recreate(servers, at);
          done->set_value(std::move(servers));
        } catch (...) {
          done->set_exception(std::current_exception());
        }
      });
      std::string why = "no answer within 20 s";
      if (result.wait_for(std::chrono::seconds(20)) == std::future_status::ready) {
        try {
          content.servers = result.get();
          content.refreshed_ms = content.created_ms = now_ms();
          own_dirty_ = false;
          migrated_ = true;
          ctx_.log().info("local host cache " + file.string() + " rebuilt from the data store: " +
                          std::to_string(content.servers.size()) + " servers");
          why.clear();
        } catch (const std::exception& x) {
          why = x.what();
        }
      }
      if (!why.empty())
        throw std::runtime_error("local host cache " + file.string() + " is corrupt (" + e.what() +
                                 ") and the data store cannot rebuild it (" + why +
                                 "): bring the data store back and start again, or delete " + file.string() +
                                 " to start with an empty cache");
    }
    lhc_servers_ = std::move(content.servers);
    lhc_refreshed_ms_ = content.refreshed_ms;
    lhc_created_ms_ = content.created_ms;
    lhc_state_ = migrated_ ? api::kLhcFresh : api::kLhcLoading;
    lhc_age_gauge_->set(static_cast<double>(lhc_age_s()));
  }

  /// Queues a refresh (`recreate`: delete the cache file and write it anew); `waiter` is answered when it is done.
  void refresh_lhc(bool recreate, std::optional<Responder<api::Lhc>> waiter = std::nullopt) {
    if (silent_) return;
    lhc_next_.recreate = lhc_next_.recreate || recreate;
    if (waiter) lhc_next_.waiters.push_back(std::move(*waiter));
    lhc_queued_ = true;
    if (!lhc_running_) run_lhc_job();
  }

  void run_lhc_job() {
    if (!lhc_queued_ || silent_) return;
    lhc_running_ = true;
    lhc_queued_ = false;
    auto job = std::exchange(lhc_next_, {});
    const auto own = own_server();
    const bool migrate = !migrated_, write = own_dirty_;
    const auto at = now_ms();
    ctx_.run_blocking(
        [store = &ctx_.store(), lhc = lhc_, own, migrate, write, recreate = job.recreate, at](std::stop_token) {
          LhcRead read;
          if (migrate || write) {
            // This refresh wrote the server's own record: the read must see it, so it stays on the primary.
            auto s = store->session();
            if (migrate) ima::migrate_store(s);
            if (write) ima::write_server(s, own, at);
            read.servers = ima::read_farm(s, own.farm);
          } else {
            // A periodic refresh: the other servers' records may be a moment old, so the nearest replica serves it.
            auto s = store->read_session();
            read.servers = ima::read_farm(s, own.farm);
          }
          try {
            if (recreate) lhc->recreate(read.servers, at);
            else lhc->replace(read.servers, at);
          } catch (const std::exception& e) {
            read.cache_error = e.what();
          }
          return read;
        },
        [this, job = std::move(job), own, migrate, write, at](Reply<LhcRead> r) mutable {
          lhc_running_ = false;
          lhc_done(std::move(r), job, own, migrate, write, at);
          run_lhc_job();
        });
  }

  void lhc_done(Reply<LhcRead> r, LhcJob& job, const api::Server& own, bool migrate, bool write, std::int64_t at) {
    const auto file = lhc_->file().string();
    if (!r) {
      ctx_.metrics().counter("deskfarm_ima_lhc_refreshes_total", "", {{"result", "failed"}}).inc();
      lhc_error_ = r.error().message;
      if (lhc_state_ == api::kLhcFresh || lhc_state_ == api::kLhcLoading) {
        lhc_state_ = api::kLhcStale;
        ctx_.log().warning("data store unreachable (" + lhc_error_ + "): working from the local host cache " + file + " (" +
                           std::to_string(lhc_servers_.size()) + " servers, last good refresh " + std::to_string(lhc_age_s()) +
                           " s ago); retried every " + std::to_string(config_.dcn_poll_s) + " s (dcn_poll_s); after " +
                           std::to_string(config_.lhc_max_age_h) + " h (lhc_max_age_h) this server stops taking part in elections");
      }
      check_lhc_age();
      for (auto& w : job.waiters)
        w.fail("unavailable", "data store unreachable (" + lhc_error_ + "); the local host cache " + file + " was kept (" +
                                  lhc_state_ + ", " + std::to_string(lhc_age_s()) + " s old)");
      return;
    }
    ctx_.metrics().counter("deskfarm_ima_lhc_refreshes_total", "", {{"result", "ok"}}).inc();
    if (migrate) migrated_ = true;
    if (write && own.zone == zone_) own_dirty_ = false;
    if (write) publish(ctx_.bus(), api::dcn_subject(config_.farm), own);  // every server refreshes its cache at once
    if (!r->cache_error.empty())
      ctx_.log().warning("cannot write the local host cache " + file + " (" + r->cache_error +
                         "): keeping the data in memory; check the disk, or run deskfarm dsmaint recreatelhc");
    const auto was = lhc_state_;
    lhc_servers_ = std::move(r->servers);
    lhc_refreshed_ms_ = at;
    lhc_error_.clear();
    lhc_state_ = api::kLhcFresh;
    lhc_age_gauge_->set(static_cast<double>(lhc_age_s()));
    if (was == api::kLhcStale || was == api::kLhcExpired)
      ctx_.log().info("data store reachable again: local host cache " + file + " refreshed (" + std::to_string(lhc_servers_.size()) + " servers)");
    if (job.recreate) ctx_.log().info("local host cache " + file + " recreated from the data store (" + std::to_string(lhc_servers_.size()) + " servers)");
    if (was == api::kLhcExpired) call_election("start");  // back in service
    for (auto& w : job.waiters) w.ok(lhc_info());
  }

  /// Past lhc_max_age_h without a good refresh: degraded, out of elections (a ZDC resigns).
  void check_lhc_age() {
    lhc_age_gauge_->set(static_cast<double>(lhc_age_s()));
    if (lhc_state_ == api::kLhcFresh || lhc_expired() || lhc_age_s() < config_.lhc_max_age_h * 3600) return;
    lhc_state_ = api::kLhcExpired;
    ctx_.log().error("local host cache " + lhc_->file().string() + " expired: no good refresh from the data store for " +
                     std::to_string(config_.lhc_max_age_h) + " h (lhc_max_age_h; last error: " + lhc_error_ +
                     "); this server is degraded and takes no part in elections: bring the data store back (or point "
                     "data_store at a reachable one), then run deskfarm dsmaint refreshlhc");
    if (is_zdc()) {
      send(message(api::kResign, epoch_));
      zdc_.clear();
      members_.clear();
      records_.clear();
      zdc_gauge_->set(0);
      announce_zdc();
    }
    auto waiting = std::exchange(elect_waiting_, {});
    for (auto& w : waiting) w.fail("unavailable", "the local host cache of " + ctx_.name() + " expired during the election");
  }

  void on_dcn(const Message& m) {
    if (silent_) return;
    auto body = decode<api::Server>(m);
    if (!body) return;
    if (body->farm != config_.farm || body->instance.empty())
      return reject("garbled", "change notification of '" + body->instance + "' for farm " + body->farm);
    if (body->instance != ctx_.name() && !cut_.contains(body->instance)) refresh_lhc(false);
  }

  api::Lhc lhc_info() const {
    return api::Lhc{ctx_.name(), lhc_->file().string(), lhc_state_,
                    lhc_refreshed_ms_ ? iso8601(from_ms(lhc_refreshed_ms_)) : std::string(), lhc_age_s(), lhc_servers_};
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
  TimePoint announced_office_{};  ///< as ZDC: when its `elected` went out last
  std::set<std::string> cut_;     ///< servers a partition fault cuts this one off from
  bool pinging_zdc_ = false;
  std::vector<Responder<api::Collectors>> elect_waiting_;
  std::string announced_zdc_;  ///< what ima.<instance>.zdc.updates said last
  std::int64_t announced_epoch_ = 0;
  std::map<std::string, Sender> senders_;
  std::set<std::string> asking_;  ///< as ZDC: announcers of an older round asked whether they still hold office

  api::Change own_;
  std::map<std::string, Member> members_;         ///< as ZDC: the zone's other servers
  std::map<std::string, api::Change> records_;    ///< as ZDC: dynamic data of this zone and the others
  std::map<std::string, Peer> peers_;             ///< other zones' ZDCs, by zone

  std::vector<Subscription> serves_;
  Subscription election_sub_;
  Subscription collectors_sub_;
  Subscription dcn_sub_;
  TimerId tick_ = 0;
  TimerId poll_ = 0;

  std::shared_ptr<ima::LocalHostCache> lhc_;
  std::vector<api::Server> lhc_servers_;  ///< the farm's servers as the cache holds them
  std::int64_t lhc_refreshed_ms_ = 0;
  std::int64_t lhc_created_ms_ = 0;
  std::string lhc_state_ = api::kLhcLoading;
  std::string lhc_error_;
  bool migrated_ = false;
  bool own_dirty_ = true;  ///< this server's record is not yet in the store as it is now
  bool lhc_running_ = false;
  bool lhc_queued_ = false;
  LhcJob lhc_next_;
  Gauge* lhc_age_gauge_ = nullptr;
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
