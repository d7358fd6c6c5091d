// ddc: a Desktop Delivery Controller. Agents register with it (farm key, nonce, time) and heartbeat; a silent
// agent is deregistered after 60 s. Desktop groups (pooled-random, pooled-static, assigned) come from the
// manifest; the controller brokers users onto desktops (their disconnected session first, else an idle
// desktop, else one it starts through the hypervisor), with a "why" on every decision. Every controller of the
// farm sees every registration (published on ddc.<instance>.desktops); the controller a desktop is registered
// with is the only one that hands it to a user, the others forward to it. The pool master (the controller beside its
// zone's data collector when `ima` names the ima server it runs beside, else the first controller by name in this
// process) keeps each group's idle target for the time of day through the hypervisor and starts desktops for the
// others. With `ima`, every session change of its desktops goes to that server as dynamic data. With `xml_address`
// it serves the XML service (POST /scripts/wpnbr.dll): credentials checked by the directory role on every request,
// desktops brokered by the same code path as admin.broker, and ICA launch files for the tickets it hands out.
#include <algorithm>
#include <cctype>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <Poco/Data/Session.h>
#include <Poco/Data/Transaction.h>

#include <deskfarm/interfaces/ddc/ddc.hpp>
#include <deskfarm/interfaces/directory/directory.hpp>
#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/interfaces/ima/ima.hpp>
#include <deskfarm/interfaces/license/grace.hpp>
#include <deskfarm/sdk/plugin.hpp>
#include <deskfarm/sdk/store.hpp>

#include "executor_broker.hpp"
#include "farm_key.hpp"
#include "schedule.hpp"

namespace {

using namespace deskfarm::sdk;
using namespace std::chrono_literals;
using Poco::Data::Keywords::into;
using Poco::Data::Keywords::now;
using Poco::Data::Keywords::use;
namespace ddc = deskfarm::interfaces::ddc;
namespace hv = deskfarm::interfaces::hypervisor;
namespace lic = deskfarm::interfaces::license;
namespace dir = deskfarm::interfaces::directory;
namespace ima = deskfarm::interfaces::ima;
namespace nfuse = deskfarm::nfuse;

struct GroupConf {
  std::string name, kind, reconnect, hypervisor;
  std::vector<std::string> desktops, users, directory_groups;
  std::int64_t idle_peak = 0, idle_business = 0, idle_off_hours = 0;
  bool restart_after_logoff = false;
};

struct DdcConfig {
  std::vector<GroupConf> groups;
  Secret farm_key;
  std::int64_t heartbeat_s = 30, deregister_after_s = 60, replay_window_s = 120;
  std::int64_t quarantine_failures = 5, quarantine_window_s = 600, quarantine_s = 600;
  std::string license;
  std::string license_farm;
  std::int64_t request_timeout_ms = 5000, pool_interval_s = 10, max_starts_per_tick = 10, boot_timeout_s = 600;
  std::vector<std::string> business_days;
  std::string business_hours;
  std::vector<std::string> peak_hours;
  std::int64_t utc_offset_min = 0;
  std::int64_t seed = 1;
  std::string xml_address;
  std::string xml_tls_certificate;
  std::string xml_tls_key;
  std::string directory;
  std::int64_t launch_ttl_s = 300;
  std::string ima;
};

inline constexpr auto group_schema = schema<GroupConf>(
    option("name", &GroupConf::name, nullptr, "desktop group name, unique in the farm"),
    option("kind", &GroupConf::kind, "\"pooled-random\"", "pooled-random: any idle desktop; pooled-static: the same desktop each time; assigned: the user's own desktop, assigned on first use")
        .one_of("pooled-random|pooled-static|assigned"),
    option("desktops", &GroupConf::desktops, nullptr, "VM names of its desktops; a name ending in * matches every VM name with that prefix"),
    option("users", &GroupConf::users, "[]", "users entitled to it (as the directory spells them); [] with no directory_groups = every user"),
    option("directory_groups", &GroupConf::directory_groups, "[]", "directory groups whose members are entitled to it (the ddc's `directory` says who is in them)"),
    option("reconnect", &GroupConf::reconnect, "\"always\"", "SessionReconnection: always (also roams an active session), disconnected_only, same_endpoint_only")
        .one_of("always|disconnected_only|same_endpoint_only"),
    option("hypervisor", &GroupConf::hypervisor, "\"\"", "the hypervisor instance that runs its VMs (power management); \"\" = none"),
    option("idle_peak", &GroupConf::idle_peak, "0", "idle desktops kept started during peak hours").range(0, 1000000),
    option("idle_business", &GroupConf::idle_business, "0", "idle desktops kept started during business hours").range(0, 1000000),
    option("idle_off_hours", &GroupConf::idle_off_hours, "0", "idle desktops kept started outside business hours").range(0, 1000000),
    option("restart_after_logoff", &GroupConf::restart_after_logoff, "false", "pooled groups: restart a desktop after logoff, back to its clean base image"));

constexpr auto config_schema = schema<DdcConfig>(
    option("groups", &DdcConfig::groups, "[]", "desktop groups", group_schema),
    option("farm_key", &DdcConfig::farm_key, "\"\"", "the farm key agents sign registrations with; \"\" = no authentication (logged); a secret, give it as \"${ENV_VAR}\""),
    option("heartbeat_s", &DdcConfig::heartbeat_s, "30", "heartbeat period the controller asks agents for").range(1, 3600),
    option("deregister_after_s", &DdcConfig::deregister_after_s, "60", "an agent silent this long is deregistered (HeartbeatPeriodMS)").range(2, 86400),
    option("replay_window_s", &DdcConfig::replay_window_s, "120", "a registration signed further than this from now is refused as replayed").range(1, 86400),
    option("quarantine_failures", &DdcConfig::quarantine_failures, "5", "refused registrations of a desktop within quarantine_window_s that quarantine it").range(1, 1000),
    option("quarantine_window_s", &DdcConfig::quarantine_window_s, "600", "the window quarantine_failures are counted in").range(1, 86400),
    option("quarantine_s", &DdcConfig::quarantine_s, "600", "how long a quarantined desktop is neither registered nor started").range(1, 604800),
    option("license", &DdcConfig::license, "\"\"", "licence server instance (license.<instance>.checkout); \"\" = broker without licences (logged)"),
    option("license_farm", &DdcConfig::license_farm, "\"farm\"", "the farm whose licences this controller checks out (a farm of the licence server)"),
    option("request_timeout_ms", &DdcConfig::request_timeout_ms, "5000", "how long the controller waits for an agent, a peer, the hypervisor or the licence server").range(10, 600000),
    option("pool_interval_s", &DdcConfig::pool_interval_s, "10", "seconds between pool-service passes (pool master only)").range(1, 3600),
    option("max_starts_per_tick", &DdcConfig::max_starts_per_tick, "10", "desktops the pool service starts per pass at most").range(0, 100000),
    option("boot_timeout_s", &DdcConfig::boot_timeout_s, "600", "a started desktop not registered within this counts as a failed registration").range(10, 86400),
    option("business_days", &DdcConfig::business_days, "[\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]", "weekdays with business and peak hours (mon..sun)"),
    option("business_hours", &DdcConfig::business_hours, "\"08:00-18:00\"", "HH:MM-HH:MM of business hours"),
    option("peak_hours", &DdcConfig::peak_hours, "[\"08:00-10:00\"]", "HH:MM-HH:MM ranges of peak hours within business days"),
    option("utc_offset_min", &DdcConfig::utc_offset_min, "0", "minutes the farm's local time is ahead of UTC").range(-1440, 1440),
    option("seed", &DdcConfig::seed, "1", "seed of random desktop picks").range(0, 9.0e15),
    option("xml_address", &DdcConfig::xml_address, "\"\"", "HOST:PORT of the XML service (POST /scripts/wpnbr.dll, GET /scripts/launch.ica); \"\" = off; port 0 picks a free one (status shows it); needs `directory`"),
    option("xml_tls_certificate", &DdcConfig::xml_tls_certificate, "\"\"", "PEM certificate chain: the XML service speaks HTTPS (TLS 1.2+) with xml_tls_key; \"\" = plain HTTP"),
    option("xml_tls_key", &DdcConfig::xml_tls_key, "\"\"", "PEM private key of xml_tls_certificate"),
    option("directory", &DdcConfig::directory, "\"\"", "directory instance (directory.<instance>.authenticate) that checks the XML service's credentials and gives users' groups"),
    option("launch_ttl_s", &DdcConfig::launch_ttl_s, "300", "how long the ticket tag of a RequestAddress answer may be turned into a logon ticket").range(1, 86400),
    option("ima", &DdcConfig::ima, "\"\"", "the ima server this controller runs beside (one controller per server): the controller beside its zone's data collector is the pool master, and session changes go to that server; \"\" = the first controller by name in this process is the master"));

constexpr const char* provides[] = {"ddc", nullptr};

const std::vector<Migration> migrations = {
    {1,
     {"CREATE TABLE ddc_assignments (desktop VARCHAR(128) PRIMARY KEY, user_name VARCHAR(128) NOT NULL, "
      "grp VARCHAR(128) NOT NULL, since_ms BIGINT NOT NULL)"}},
};

/// A set with O(1) insert, erase and random pick (idle desktops of a group).
class PickSet {
 public:
  void insert(const std::string& s) {
    if (pos_.contains(s)) return;
    pos_[s] = items_.size();
    items_.push_back(s);
  }
  void erase(const std::string& s) {
    auto it = pos_.find(s);
    if (it == pos_.end()) return;
    const std::size_t i = it->second;
    pos_.erase(it);
    if (i + 1 != items_.size()) {
      items_[i] = std::move(items_.back());
      pos_[items_[i]] = i;
    }
    items_.pop_back();
  }
  std::size_t size() const { return items_.size(); }
  template <class Rng>
  const std::string& pick(Rng& rng) const { return items_[std::uniform_int_distribution<std::size_t>(0, items_.size() - 1)(rng)]; }

 private:
  std::vector<std::string> items_;
  std::unordered_map<std::string, std::size_t> pos_;
};

struct Group {
  GroupConf conf;
  PickSet idle;  ///< registered, no session, not in maintenance, unassigned
  bool maintenance = false;
};

struct Desk {
  ddc::DesktopStatus s;
  // owner side (this controller holds the registration)
  std::string token;
  TimePoint last_heartbeat{};
  bool reserved = false;
  // pool side
  TimePoint start_requested{};
  std::vector<TimePoint> failures;  ///< recent failed registrations (a deque would cost 600 B per desktop)
  TimePoint quarantined_until{};
  bool maintenance = false;  ///< the desktop's own flag (its group's flag is Group::maintenance)
};

struct Candidate {
  std::string desktop, kind, why;
  bool assign = false;
};

class Ddc final : public Plugin, public nfuse::Broker {
 public:
  explicit Ddc(Context& ctx)
      : ctx_(ctx), config_(config_schema.bind(ctx.config())), rng_(static_cast<std::uint64_t>(config_.seed) ^ std::hash<std::string>{}(ctx.name())) {
    schedule_ = schedule_of(config_);
    for (const auto& g : config_.groups) groups_.emplace(g.name, Group{g, {}, false});
    auto& m = ctx_.metrics();
    registrations_ = &m.counter("deskfarm_ddc_registrations_total", "registrations accepted");
    refused_ = &m.counter("deskfarm_ddc_registrations_refused_total", "registrations refused (forged, replayed, not provisioned, quarantined)");
    hb_refused_ = &m.counter("deskfarm_ddc_heartbeats_refused_total", "heartbeats and events from agents not registered here");
    deregistered_ = &m.counter("deskfarm_ddc_deregistered_silent_total", "agents deregistered after deregister_after_s of silence");
    decisions_ = &m.counter("deskfarm_ddc_broker_decisions_total", "brokering decisions answered");
    starts_ = &m.counter("deskfarm_ddc_power_starts_total", "desktops started through the hypervisor");
    master_fallbacks_ = &m.counter("deskfarm_ddc_master_fallbacks_total", "desktops started here because the pool master did not answer (or none was known)");
    ima_failures_ = &m.counter("deskfarm_ddc_ima_reports_failed_total", "session changes the ima server beside this controller did not take");
    registered_gauge_ = &m.gauge("deskfarm_ddc_registered", "desktops registered with this controller");
    m.declare_counter("deskfarm_ddc_xml_answers_total", "XML service answers by result: ok, bad_credentials, account_disabled, refused, directory_unavailable, protocol_error, timeout");
  }

  static void validate(const Config& c) {
    const auto conf = config_schema.bind(c);
    std::set<std::string> names;
    for (const auto& g : conf.groups) {
      if (!names.insert(g.name).second) throw ConfigError("groups", "group '" + g.name + "' is named twice; give each group its own name");
      if (g.desktops.empty()) throw ConfigError("groups", "group '" + g.name + "' lists no desktops; give it desktops = [\"NAME\", \"PREFIX*\"]");
    }
    schedule_of(conf);
    if (!conf.xml_address.empty()) {
      if (conf.directory.empty())
        throw ConfigError("directory", "xml_address is set but directory is not: name the directory instance that checks the XML service's credentials");
      if (conf.xml_tls_certificate.empty() != conf.xml_tls_key.empty())
        throw ConfigError(conf.xml_tls_key.empty() ? "xml_tls_key" : "xml_tls_certificate",
                          "xml_tls_certificate and xml_tls_key go together (the certificate and its private key, PEM)");
      const auto colon = conf.xml_address.rfind(':');
      const std::string port = colon == std::string::npos ? "" : conf.xml_address.substr(colon + 1);
      if (colon == std::string::npos || colon == 0 || port.empty() || port.size() > 5 ||
          !std::all_of(port.begin(), port.end(), [](char ch) { return ch >= '0' && ch <= '9'; }) || std::stoi(port) > 65535)
        throw ConfigError("xml_address", "xml_address '" + conf.xml_address + "' is not HOST:PORT (e.g. \"127.0.0.1:8080\"; port 0 picks a free one)");
    }
  }

  void start() override {
    {
      auto s = ctx_.store().session();
      for (int attempt = 0;; ++attempt) {  // two controllers started together migrate the same store: the loser retries
        try {
          migrate(s, "ddc", migrations);
          break;
        } catch (const std::exception&) {
          if (attempt == 4) throw;
          std::this_thread::sleep_for(100ms);
        }
      }
      std::vector<std::string> desks, users;
      s << "SELECT desktop, user_name FROM ddc_assignments", into(desks), into(users), now;
      for (std::size_t i = 0; i < desks.size(); ++i) {
        Desk& d = desk(desks[i]);
        auto next = d.s;
        next.assigned_to = users[i];
        apply(d, std::move(next));
      }
    }
    if (config_.farm_key.reveal().empty()) ctx_.log().warning("no farm_key: agents register without authentication");
    if (config_.license.empty())
      ctx_.log().info("no licence server configured: brokering without licences");
    else
      licenses_ = std::make_unique<lic::LicenseClient>(
          ctx_.bus(), ctx_.clock(), lic::ClientOptions{.server = config_.license, .farm = config_.license_farm, .timeout = timeout()});
    auto& bus = ctx_.bus();
    const auto& me = ctx_.name();
    subs_.push_back(serve<ddc::Register, ddc::Registered>(bus, ddc::subject(me, "register"), [this](const ddc::Register& r) { return on_register(r); }));
    subs_.push_back(serve<ddc::Heartbeat, ddc::Ack>(bus, ddc::subject(me, "heartbeat"), [this](const ddc::Heartbeat& h) { return on_heartbeat(h); }));
    subs_.push_back(serve<ddc::Deregister, ddc::Ack>(bus, ddc::subject(me, "deregister"), [this](const ddc::Deregister& d) { return on_deregister(d); }));
    subs_.push_back(serve<ddc::SessionEvent, ddc::Ack>(bus, ddc::subject(me, "session"), [this](const ddc::SessionEvent& e) { return on_session(e); }));
    subs_.push_back(serve_async<ddc::Prepare, ddc::BrokerDecision>(bus, ddc::subject(me, "prepare"),
        [this](const ddc::Prepare& p, Responder<ddc::BrokerDecision> r) { prepare(p, [r](ddc::BrokerDecision d) mutable { r.ok(std::move(d)); }); }));
    subs_.push_back(serve<ddc::StartDesktop, ddc::BrokerDecision>(bus, ddc::subject(me, "start"), [this](const ddc::StartDesktop& r) { return start_here(r); }));
    subs_.push_back(serve_async<ddc::BrokerRequest, ddc::BrokerDecision>(bus, ddc::subject(me, "admin.broker"),
        [this](const ddc::BrokerRequest& q, Responder<ddc::BrokerDecision> r) { broker_admin(q, [r](ddc::BrokerDecision d) mutable { r.ok(std::move(d)); }); }));
    subs_.push_back(serve<ddc::DesktopQuery, ddc::DesktopList>(bus, ddc::subject(me, "admin.desktops"), [this](const ddc::DesktopQuery& q) { return list(q); }));
    subs_.push_back(serve<Empty, ddc::GroupList>(bus, ddc::subject(me, "admin.groups"), [this](const Empty&) { return group_list(); }));
    subs_.push_back(serve<ddc::Maintenance, ddc::Ack>(bus, ddc::subject(me, "admin.maintenance"), [this](const ddc::Maintenance& m) {
      auto ack = maintenance(m);
      if (ack.ok) publish(ctx_.bus(), ddc::maintenance_updates, m);
      return ack;
    }));
    subs_.push_back(subscribe<ddc::Maintenance>(bus, ddc::maintenance_updates, [this](const ddc::Maintenance& m, const Message&) { maintenance(m); }));
    subs_.push_back(subscribe<ddc::DesktopStatus>(bus, ddc::all_desktop_updates, [this](const ddc::DesktopStatus& s, const Message& m) {
      if (m.subject != ddc::subject(ctx_.name(), "desktops")) on_peer_update(s);
    }));
    subs_.push_back(subscribe<InstanceInfo>(bus, instance_down_subject, [this](const InstanceInfo& i, const Message&) { on_peer_down(i); }));
    if (!config_.ima.empty()) follow_ima();
    ctx_.every(1s, [this] { sweep(); });
    ctx_.every(std::chrono::seconds(config_.pool_interval_s), [this] { pool_pass(); });
    if (!config_.xml_address.empty()) start_xml();
  }

  void stop() override {
    stopped_ = true;  // timers end with the instance; a test may stop() it early to play a dead controller
    if (xml_) xml_->stop();
    subs_.clear();
  }

  void status(Value& out) const override {
    out["master"] = is_master();
    if (!config_.ima.empty()) out["zdc"] = zdc_;  // the ima server whose controller is the master; "" during an election
    out["registered"] = static_cast<std::int64_t>(registered_here_);
    out["period"] = std::string(deskfarm::ddc::period_name(schedule_.at(ctx_.clock().now())));
    Value groups = Value::array();
    for (const auto& g : group_list().groups) groups.as_array().push_back(to_value(g));
    out["groups"] = std::move(groups);
    out["registrations_refused"] = static_cast<std::int64_t>(refused_->value());
    out["heartbeats_refused"] = static_cast<std::int64_t>(hb_refused_->value());
    out["deregistered_silent"] = static_cast<std::int64_t>(deregistered_->value());
    out["decisions"] = static_cast<std::int64_t>(decisions_->value());
    out["assignments_unsaved"] = static_cast<std::int64_t>(unsaved_.size());  // waiting for the data store
    if (xml_) {
      const auto st = xml_->stats();
      Value x = Value::object();
      x["address"] = xml_endpoint_;
      x["requests"] = static_cast<std::int64_t>(st.requests);
      x["protocol_errors"] = static_cast<std::int64_t>(st.protocol_errors);
      x["broker_timeouts"] = static_cast<std::int64_t>(st.broker_timeouts);
      x["not_found"] = static_cast<std::int64_t>(st.not_found);
      x["launches"] = static_cast<std::int64_t>(st.launches);
      x["launches_pending"] = static_cast<std::int64_t>(launches_.size());
      x["tickets"] = static_cast<std::int64_t>(tickets_.size());
      out["xml"] = std::move(x);
    }
  }

 private:
  static deskfarm::ddc::Schedule schedule_of(const DdcConfig& c) {
    deskfarm::ddc::Schedule s;
    for (const auto& d : c.business_days) {
      auto day = deskfarm::ddc::parse_day(d);
      if (!day) throw ConfigError("business_days", "business_days: '" + d + "' is not a weekday; write mon, tue, wed, thu, fri, sat or sun");
      s.business_days.push_back(*day);
    }
    auto bh = deskfarm::ddc::parse_range(c.business_hours);
    if (!bh) throw ConfigError("business_hours", "business_hours '" + c.business_hours + "' is not HH:MM-HH:MM (e.g. \"08:00-18:00\")");
    s.business_hours = *bh;
    for (const auto& p : c.peak_hours) {
      auto r = deskfarm::ddc::parse_range(p);
      if (!r) throw ConfigError("peak_hours", "peak_hours: '" + p + "' is not HH:MM-HH:MM (e.g. \"08:00-10:00\")");
      s.peak_hours.push_back(*r);
    }
    s.utc_offset_min = c.utc_offset_min;
    return s;
  }

  std::chrono::milliseconds timeout() const { return std::chrono::milliseconds(config_.request_timeout_ms); }
  std::int64_t now_ms() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(ctx_.clock().now().time_since_epoch()).count();
  }

  const Group* group_of(const std::string& desktop) const {
    for (const auto& [name, g] : groups_)
      for (const auto& pattern : g.conf.desktops) {
        if (!pattern.empty() && pattern.back() == '*') {
          if (desktop.compare(0, pattern.size() - 1, pattern, 0, pattern.size() - 1) == 0) return &g;
        } else if (pattern == desktop) {
          return &g;
        }
      }
    return nullptr;
  }

  Desk& desk(const std::string& name) {
    auto [it, fresh] = desks_.try_emplace(name);
    if (fresh) {
      it->second.s.desktop = name;
      if (const Group* g = group_of(name)) it->second.s.group = g->conf.name;
    }
    return it->second;
  }

  bool in_maintenance(const Desk& d) const {
    if (d.maintenance) return true;
    auto g = groups_.find(d.s.group);
    return g != groups_.end() && g->second.maintenance;
  }
  bool idle(const Desk& d) const {
    return d.s.registration == ddc::kRegistered && d.s.session_state == ddc::kNoSession && !in_maintenance(d) && d.s.assigned_to.empty();
  }

  /// Applies a new state of a desktop to the view and its indexes (idle sets, user sessions, assignments).
  void apply(Desk& d, ddc::DesktopStatus next) {
    auto g = groups_.find(d.s.group);
    if (g != groups_.end()) g->second.idle.erase(d.s.desktop);
    if (!d.s.user.empty()) user_desks_[d.s.user].erase(d.s.desktop);
    if (!d.s.assigned_to.empty()) assigned_[d.s.assigned_to].erase(d.s.desktop);
    next.group = d.s.group;
    next.maintenance = in_maintenance(d);
    if (next.registration == ddc::kRegistered) d.start_requested = {};
    d.s = std::move(next);
    if (!d.s.user.empty()) user_desks_[d.s.user].insert(d.s.desktop);
    if (!d.s.assigned_to.empty()) assigned_[d.s.assigned_to].insert(d.s.desktop);
    if (g != groups_.end() && idle(d)) g->second.idle.insert(d.s.desktop);
  }
  void reindex(Desk& d) { apply(d, d.s); }

  /// Applies and tells the other controllers (and the farm's data collector) about a desktop this controller owns.
  void commit(Desk& d, ddc::DesktopStatus next) {
    next.since_ms = std::max(now_ms(), d.s.since_ms + 1);
    const auto before = d.s;
    apply(d, std::move(next));
    publish(ctx_.bus(), ddc::subject(ctx_.name(), "desktops"), d.s);
    if (!config_.ima.empty()) report_session(before, d.s);
  }

  /// Tells the ima server beside this controller what changed in a desktop's session (logon, disconnect,
  /// reconnect, logoff); a user replaced on a desktop is the old one's logoff and the new one's logon.
  void report_session(const ddc::DesktopStatus& before, const ddc::DesktopStatus& after) {
    const bool had = before.session_state != ddc::kNoSession && !before.user.empty();
    const bool has = after.session_state != ddc::kNoSession && !after.user.empty();
    const auto send = [&](const char* kind, const ddc::DesktopStatus& s) {
      request<ima::SessionChange, ima::Change>(
          ctx_.bus(), ima::subject(config_.ima, "session"), ima::SessionChange{kind, s.desktop, s.user, ctx_.name(), s.endpoint}, timeout(),
          [this, kind = std::string(kind), desktop = s.desktop](Reply<ima::Change> r) {
            if (r) return;
            ima_failures_->inc();
            const auto n = ima_failures_->value();
            if (n <= 10 || n % 1000 == 0)
              ctx_.log().warning("ima server " + config_.ima + " did not take the " + kind + " on " + desktop + " (" + r.error().message +
                                 ", " + std::to_string(n) + " so far): its zone's data collector misses it until the next change");
          });
    };
    if (had && (!has || before.user != after.user)) send("logoff", before);
    if (has && (!had || before.user != after.user)) return send(after.session_state == ddc::kActive ? "logon" : "disconnect", after);
    if (!had || !has) return;
    if (before.session_state != after.session_state) send(after.session_state == ddc::kActive ? "reconnect" : "disconnect", after);
    else if (before.endpoint != after.endpoint) send("reconnect", after);  // roamed to another endpoint
  }

  void on_peer_update(const ddc::DesktopStatus& s) {
    Desk& d = desk(s.desktop);
    if (s.since_ms < d.s.since_ms) return;  // an older word than the one we hold
    // Only the owner says a desktop left; a controller that lost an agent to another (or is partitioned) does not.
    if (s.registration != ddc::kRegistered && d.s.registration == ddc::kRegistered && s.controller != d.s.controller) return;
    if (d.s.controller == ctx_.name() && s.controller != ctx_.name() && d.s.registration == ddc::kRegistered &&
        s.registration == ddc::kRegistered) {
      // The agent moved to a peer (it lost us): forget its registration here.
      d.token.clear();
      --registered_here_;
    }
    apply(d, s);
    registered_gauge_->set(static_cast<double>(registered_here_));
  }

  void on_peer_down(const InstanceInfo& i) {
    if (i.plugin != "ddc" || i.name == ctx_.name()) return;
    for (auto& [name, d] : desks_)
      if (d.s.controller == i.name && d.s.registration == ddc::kRegistered) {
        auto next = d.s;
        next.registration = ddc::kUnregistered;
        apply(d, std::move(next));  // its agents register again with a survivor, carrying their sessions
      }
  }

  // ---- registration ----
  ddc::Registered refuse_registration(const ddc::Register& r, const char* reason, std::string detail, bool counts_for_quarantine) {
    refused_->inc();
    ctx_.log().warning("registration of " + r.desktop + " (" + r.mac + ") refused: " + reason + ": " + detail);
    if (counts_for_quarantine && desks_.contains(r.desktop)) failed_registration(desk(r.desktop), reason);
    ddc::Registered out;
    out.controller = ctx_.name();
    out.reason = reason;
    out.detail = std::move(detail);
    return out;
  }

  void failed_registration(Desk& d, std::string_view why) {
    const auto t = ctx_.clock().now();
    d.failures.push_back(t);
    std::erase_if(d.failures, [&](TimePoint f) { return f < t - std::chrono::seconds(config_.quarantine_window_s); });
    if (static_cast<std::int64_t>(d.failures.size()) >= config_.quarantine_failures && d.quarantined_until <= t) {
      d.quarantined_until = t + std::chrono::seconds(config_.quarantine_s);
      d.failures.clear();
      ctx_.log().warning(d.s.desktop + " quarantined for " + std::to_string(config_.quarantine_s) + " s after " +
                         std::to_string(config_.quarantine_failures) + " failed registrations (last: " + std::string(why) + ")");
    }
  }

  ddc::Registered on_register(const ddc::Register& r) {
    const Group* g = group_of(r.desktop);
    if (!g) return refuse_registration(r, ddc::kNotProvisioned, "no desktop group holds " + r.desktop + "; add it to a group's desktops", false);
    Desk& d = desk(r.desktop);
    const auto t = ctx_.clock().now();
    if (d.quarantined_until > t)
      return refuse_registration(r, ddc::kQuarantined, r.desktop + " is quarantined after repeated failed registrations; it is released at the end of quarantine_s", false);
    const auto& key = config_.farm_key.reveal();
    if (!key.empty() && !deskfarm::farm_key::verify(key, r.signing_text(ctx_.name()), r.signature))
      return refuse_registration(r, ddc::kBadSignature, "the signature does not verify with the farm key; give the agent the controllers' farm_key", true);
    if (!key.empty()) {
      const std::int64_t skew = now_ms() - r.time_ms;
      if (skew > config_.replay_window_s * 1000 || -skew > config_.replay_window_s * 1000)
        return refuse_registration(r, ddc::kReplayed, "signed " + std::to_string(skew / 1000) + " s from now, outside replay_window_s", true);
      if (!nonces_.emplace(r.nonce, t + std::chrono::seconds(config_.replay_window_s)).second)
        return refuse_registration(r, ddc::kReplayed, "nonce " + r.nonce + " was used before", true);
    }
    auto next = d.s;
    const std::string had_user = d.s.user;  ///< who the farm last saw on it (from its previous owner)
    if (next.controller != ctx_.name() || next.registration != ddc::kRegistered) ++registered_here_;
    next.registration = ddc::kRegistered;
    next.controller = ctx_.name();
    next.agent = r.agent;
    next.vm = r.vm;
    next.mac = r.mac;
    next.hypervisor = r.hypervisor;
    next.session_state = r.session_state.empty() ? ddc::kNoSession : r.session_state;
    next.user = r.user;
    next.endpoint = r.endpoint;
    next.address = usable_address(r);
    d.token = deskfarm::farm_key::random_hex(tokens_);
    d.last_heartbeat = t;
    d.reserved = false;
    d.start_requested = {};
    commit(d, std::move(next));
    // The agent says the session the farm knew ended while it had no controller (its logoff never reached the dead
    // one): the licence goes back now, or it would stay checked out for good.
    if (!had_user.empty() && r.user != had_user) checkin(had_user, r.desktop);
    registrations_->inc();
    registered_gauge_->set(static_cast<double>(registered_here_));
    ddc::Registered out;
    out.accepted = true;
    out.controller = ctx_.name();
    out.token = d.token;
    out.proof = deskfarm::farm_key::sign(key, ddc::Registered::proof_text(ctx_.name(), r.nonce));
    out.heartbeat_s = config_.heartbeat_s;
    return out;
  }

  /// The address an agent registered, when it can go into an XML answer and an ICA file's Address= line as it is.
  std::string usable_address(const ddc::Register& r) {
    const auto& a = r.address;
    const bool fine = a.size() <= 255 && std::all_of(a.begin(), a.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == ':' || c == '-' || c == '[' || c == ']';
    });
    if (fine) return a;
    ctx_.log().warning("registration of " + r.desktop + ": address '" + a.substr(0, 64) +
                       "' is not HOST:PORT; clients get the desktop's name until its agent registers a usable address");
    return "";
  }

  /// The desktop this agent holds a registration for here, or nothing (counted).
  Desk* registered(const std::string& desktop, const std::string& token) {
    auto it = desks_.find(desktop);
    if (it == desks_.end() || it->second.s.controller != ctx_.name() || it->second.s.registration != ddc::kRegistered ||
        it->second.token.empty() || it->second.token != token) {
      hb_refused_->inc();
      return nullptr;
    }
    return &it->second;
  }
  static ddc::Ack unknown(const std::string& desktop) {
    return {false, ddc::kUnknownAgent, desktop + " is not registered here; register first"};
  }

  ddc::Ack on_heartbeat(const ddc::Heartbeat& h) {
    Desk* d = registered(h.desktop, h.token);
    if (!d) return unknown(h.desktop);
    d->last_heartbeat = ctx_.clock().now();
    return {true, "", ""};
  }

  void unregister(Desk& d, const std::string& why) {
    auto next = d.s;
    next.registration = ddc::kUnregistered;
    d.token.clear();
    d.reserved = false;
    --registered_here_;
    registered_gauge_->set(static_cast<double>(registered_here_));
    commit(d, std::move(next));
    ctx_.log().info(d.s.desktop + " deregistered: " + why);
  }

  ddc::Ack on_deregister(const ddc::Deregister& r) {
    Desk* d = registered(r.desktop, r.token);
    if (!d) return unknown(r.desktop);
    unregister(*d, "the agent said " + (r.reason.empty() ? std::string("goodbye") : r.reason));
    return {true, "", ""};
  }

  ddc::Ack on_session(const ddc::SessionEvent& e) {
    Desk* d = registered(e.desktop, e.token);
    if (!d) return unknown(e.desktop);
    d->last_heartbeat = ctx_.clock().now();
    auto next = d->s;
    if (e.kind == ddc::kLogon || e.kind == ddc::kReconnect) {
      next.session_state = ddc::kActive;
      next.user = e.user;
      next.endpoint = e.endpoint;
    } else if (e.kind == ddc::kDisconnect) {
      next.session_state = ddc::kDisconnected;
    } else if (e.kind == ddc::kLogoff) {
      const std::string user = next.user;
      next.session_state = ddc::kNoSession;
      next.user.clear();
      next.endpoint.clear();
      commit(*d, std::move(next));
      checkin(user, e.desktop);
      after_logoff(*d);
      return {true, "", ""};
    } else {
      return {false, "bad_request", "session event '" + e.kind + "' is not logon, disconnect, reconnect or logoff"};
    }
    commit(*d, std::move(next));
    return {true, "", ""};
  }

  void after_logoff(Desk& d) {
    const auto g = groups_.find(d.s.group);
    if (g == groups_.end() || !g->second.conf.restart_after_logoff || g->second.conf.kind == "assigned" || d.s.hypervisor.empty()) return;
    ctx_.log().info(d.s.desktop + ": logged off; restarting it back to its base image");
    power(d, "reboot");
  }

  void power(Desk& d, const std::string& action) {
    if (action == "start") {
      d.start_requested = ctx_.clock().now();
      starts_->inc();
    }
    hv::VmAction a;
    a.action = action;
    a.vm = d.s.vm;
    request<hv::VmAction, hv::Task>(ctx_.bus(), hv::request_subject(d.s.hypervisor, "vm.action"), a, timeout(),
                                    [this, name = d.s.desktop, action](Reply<hv::Task> t) {
                                      if (!t) ctx_.log().warning(name + ": " + action + " not sent to the hypervisor: " + t.error().message);
                                      else if (t->state == "failed") ctx_.log().warning(name + ": " + action + " failed: " + t->error_code + " " + t->error);
                                    });
  }

  void sweep() {
    if (stopped_) return;
    const auto t = ctx_.clock().now();
    const auto limit = std::chrono::seconds(config_.deregister_after_s);
    for (auto& [name, d] : desks_) {
      if (d.s.controller == ctx_.name() && d.s.registration == ddc::kRegistered && t - d.last_heartbeat >= limit) {
        deregistered_->inc();
        unregister(d, "no heartbeat for " + std::to_string(config_.deregister_after_s) + " s");
      }
      if (booting(d) && t - d.start_requested > std::chrono::seconds(config_.boot_timeout_s)) {
        d.start_requested = {};
        failed_registration(d, "started but never registered");
      }
    }
    std::erase_if(started_for_, [&](const auto& e) {
      auto d = desks_.find(e.second);
      return d == desks_.end() || !booting(d->second);
    });
    retry_unsaved();
    std::erase_if(nonces_, [&](const auto& n) { return n.second < t; });
    std::erase_if(launches_, [&](const auto& l) { return l.second.expires <= t; });
    std::erase_if(tickets_, [&](const auto& l) { return l.second.expires <= t; });
    sync_xml_counters();
  }

  // ---- brokering ----
  using Done = std::function<void(ddc::BrokerDecision)>;

  static ddc::BrokerDecision refusal(const char* reason, std::string why) {
    ddc::BrokerDecision d;
    d.outcome = "refused";
    d.reason = reason;
    d.why = std::move(why);
    return d;
  }

  /// A group's `users` and `directory_groups` entitle; neither given = every user.
  static bool entitled(const Group& g, const std::string& user, const std::vector<std::string>& user_groups) {
    const auto& c = g.conf;
    if (c.users.empty() && c.directory_groups.empty()) return true;
    if (std::find(c.users.begin(), c.users.end(), user) != c.users.end()) return true;
    return std::any_of(c.directory_groups.begin(), c.directory_groups.end(), [&](const std::string& dg) {
      return std::find(user_groups.begin(), user_groups.end(), dg) != user_groups.end();
    });
  }

  /// admin.broker: the user's directory groups first when a group is entitled by them (the XML service has them
  /// from the authentication already), then the same brokering.
  void broker_admin(const ddc::BrokerRequest& q, Done done) {
    const bool by_groups = std::any_of(groups_.begin(), groups_.end(), [](const auto& g) { return !g.second.conf.directory_groups.empty(); });
    if (config_.directory.empty() || !by_groups || q.user.empty()) return broker(q, {}, std::move(done));
    request<dir::GroupsOf, dir::Groups>(ctx_.bus(), dir::subject(config_.directory, "groups-of"), dir::GroupsOf{q.user, ""}, timeout(),
                                        [this, q, done = std::move(done)](Reply<dir::Groups> g) mutable {
                                          if (!g) ctx_.log().warning("groups of " + q.user + " not known: directory " + config_.directory + " did not answer (" +
                                                                     g.error().message + "); brokering by user name only");
                                          broker(q, g ? g->groups : std::vector<std::string>{}, std::move(done));
                                        });
  }

  void broker(const ddc::BrokerRequest& q, const std::vector<std::string>& user_groups, Done done) {
    auto finish = [this, done = std::move(done)](ddc::BrokerDecision d) {
      decisions_->inc();
      d.broker = ctx_.name();
      done(std::move(d));
    };
    if (q.user.empty()) return finish(refusal(ddc::kNotEntitled, "no user named; give user (and endpoint)"));
    std::vector<const Group*> groups;
    for (const auto& [name, g] : groups_)
      if ((q.group.empty() || q.group == name) && entitled(g, q.user, user_groups)) groups.push_back(&g);
    if (groups.empty())
      return finish(refusal(ddc::kNotEntitled, q.user + " is entitled to " + (q.group.empty() ? "no desktop group" : "group " + q.group)));
    auto in_groups = [&](const Desk& d) {
      return std::any_of(groups.begin(), groups.end(), [&](const Group* g) { return g->conf.name == d.s.group; });
    };
    std::vector<Candidate> candidates;
    std::vector<std::string> notes;
    bool maintenance_seen = false;
    // 1. The user's own session, by the group's reconnect rule.
    if (auto u = user_desks_.find(q.user); u != user_desks_.end())
      for (const auto& name : u->second) {
        const Desk& d = desks_.at(name);
        if (!in_groups(d) || d.s.registration != ddc::kRegistered) continue;
        const auto& rule = groups_.at(d.s.group).conf.reconnect;
        if (in_maintenance(d)) {
          maintenance_seen = true;
          notes.push_back(name + " holds a session of " + q.user + " but is in maintenance mode (no reconnect to a desktop OS in maintenance)");
        } else if (d.s.session_state == ddc::kDisconnected) {
          if (rule == "same_endpoint_only" && d.s.endpoint != q.endpoint)
            notes.push_back(name + " holds a disconnected session of " + q.user + " from " + d.s.endpoint +
                            ", and the rule same_endpoint_only does not reconnect it from " + q.endpoint);
          else
            candidates.push_back({name, ddc::kReconnect, "reconnects " + q.user + " to the disconnected session on " + name + " (rule " + rule + ")", false});
        } else if (d.s.session_state == ddc::kActive) {
          if (rule == "always")
            candidates.push_back({name, ddc::kReconnect, "roams the active session of " + q.user + " on " + name + " from " + d.s.endpoint + " to " + q.endpoint + " (rule always)", false});
          else
            notes.push_back(name + " holds an active session of " + q.user + "; rule " + rule + " does not roam it");
        }
      }
    // 2. The user's assigned (or static) desktop.
    if (candidates.empty())
      if (auto a = assigned_.find(q.user); a != assigned_.end())
        for (const auto& name : a->second) {
          Desk& d = desks_.at(name);
          if (!in_groups(d)) continue;
          if (in_maintenance(d)) {
            maintenance_seen = true;
            notes.push_back(name + " is assigned to " + q.user + " but in maintenance mode");
          } else if (d.s.registration == ddc::kRegistered && d.s.session_state == ddc::kNoSession) {
            candidates.push_back({name, ddc::kLogon, name + " is assigned to " + q.user + " (group " + d.s.group + ")", false});
          } else if (d.s.registration != ddc::kRegistered && !d.s.hypervisor.empty() && d.s.vm.size()) {
            return start_desktop(ddc::StartDesktop{name, {}, q.user, ctx_.name()}, finish);
          }
        }
    // 3. An idle desktop: up to three, so one taken meanwhile or refused by its agent does not fail the request.
    if (candidates.empty()) {
      for (const Group* g : groups) {
        const bool keeps = g->conf.kind != "pooled-random";
        if (keeps && assigned_.contains(q.user) &&
            std::any_of(assigned_.at(q.user).begin(), assigned_.at(q.user).end(), [&](const std::string& n) { return desks_.at(n).s.group == g->conf.name; }))
          continue;  // the user's own desktop in this group is busy or starting: not a second one
        std::set<std::string> picked;
        for (int i = 0; i < 3 && picked.size() < g->idle.size(); ++i) {
          const std::string& name = g->idle.pick(rng_);
          if (!picked.insert(name).second) continue;
          candidates.push_back({name, ddc::kLogon,
                                name + " is idle in group " + g->conf.name + " (" + g->conf.kind + ", picked at random among " +
                                    std::to_string(g->idle.size()) + " idle)" + (keeps ? "; now assigned to " + q.user : ""),
                                keeps});
        }
      }
    }
    if (candidates.empty()) {
      // 4. Start one: the pool service's job, done now for this user, by the pool master.
      ddc::StartDesktop start{"", {}, q.user, ctx_.name()};
      for (const Group* g : groups) {
        if (!g->conf.hypervisor.empty()) start.groups.push_back(g->conf.name);
        if (g->maintenance) maintenance_seen = true;
      }
      std::string why = maintenance_seen ? "the only desktops for " + q.user + " are in maintenance mode" : "no idle desktop for " + q.user + " and none left to start";
      for (const auto& n : notes) why += "; " + n;
      auto refuse = [finish, maintenance_seen, why](const std::string& master_why) mutable {
        finish(refusal(maintenance_seen ? ddc::kMaintenance : ddc::kNoDesktop, master_why.empty() ? why : why + " (" + master_why + ")"));
      };
      if (start.groups.empty()) return refuse("");
      return start_desktop(std::move(start), [finish, refuse](ddc::BrokerDecision d) mutable {
        if (d.outcome == "starting") return finish(std::move(d));
        refuse(d.why);
      });
    }
    auto job = std::make_shared<std::vector<Candidate>>(std::move(candidates));
    try_candidate(q, job, 0, {}, finish);
  }

  /// One candidate after another: a licence for the session on it (license_session: the desktop and the user), then
  /// its owner prepares it. A licence taken for a candidate that refuses goes back at once.
  void try_candidate(const ddc::BrokerRequest& q, std::shared_ptr<std::vector<Candidate>> job, std::size_t i,
                     std::string refusals, Done finish) {
    if (i >= job->size()) return finish(refusal(ddc::kAgentRefused, "every candidate was refused: " + refusals));
    const Candidate c = (*job)[i];
    checkout(q.user, c.desktop, [this, q, job, i, c, refusals, finish](bool ok, bool licensed, std::string note) mutable {
      if (!ok) return finish(refusal(ddc::kNoLicense, note));
      const auto d = desks_.find(c.desktop);
      if (d == desks_.end()) return try_candidate(q, job, i + 1, refusals, finish);
      ddc::Prepare p{c.desktop, q.user, q.endpoint, c.kind, ctx_.name(), c.why, c.assign};
      auto next = [this, q, job, i, c, licensed, note, refusals, finish](ddc::BrokerDecision r) mutable {
        if (r.outcome == "connect") {
          r.licensed = licensed;
          if (!note.empty()) r.why += "; " + note;
          return finish(std::move(r));
        }
        // A reconnect keeps the licence its session holds; a new session that did not happen gives it back.
        if (licensed && c.kind != ddc::kReconnect) checkin(q.user, c.desktop);
        try_candidate(q, job, i + 1, refusals + (refusals.empty() ? "" : "; ") + r.why, finish);
      };
      prepare_on_owner(d->second, p, std::move(next));
    });
  }

  /// The desktop's owner decides: this controller, or the one it is registered with (forwarded), so two
  /// controllers never hand one desktop to two users.
  template <class Next>
  void prepare_on_owner(const Desk& d, const ddc::Prepare& p, Next next) {
    if (d.s.controller == ctx_.name()) return prepare(p, next);
    request<ddc::Prepare, ddc::BrokerDecision>(ctx_.bus(), ddc::subject(d.s.controller, "prepare"), p, timeout(),
                                              [next, owner = d.s.controller, name = p.desktop](Reply<ddc::BrokerDecision> r) mutable {
                                                if (r) return next(*r);
                                                next(refusal(ddc::kNoDesktop, "owner " + owner + " of " + name + " did not answer: " + r.error().message));
                                              });
  }

  /// The owner's half: reserve the desktop, ask its agent, record the session.
  void prepare(const ddc::Prepare& p, Done done) {
    auto it = desks_.find(p.desktop);
    if (it == desks_.end() || it->second.s.controller != ctx_.name() || it->second.s.registration != ddc::kRegistered)
      return done(refusal(ddc::kNoDesktop, p.desktop + " is not registered with " + ctx_.name()));
    Desk& d = it->second;
    if (in_maintenance(d)) return done(refusal(ddc::kMaintenance, p.desktop + " is in maintenance mode"));
    if (d.reserved) return done(refusal(ddc::kNoDesktop, p.desktop + " is being handed to another user"));
    if (p.kind == ddc::kLogon && (d.s.session_state != ddc::kNoSession || (!d.s.assigned_to.empty() && d.s.assigned_to != p.user)))
      return done(refusal(ddc::kNoDesktop, p.desktop + " was taken meanwhile"));
    if (p.kind == ddc::kReconnect && d.s.user != p.user) return done(refusal(ddc::kNoDesktop, p.desktop + " no longer holds a session of " + p.user));
    d.reserved = true;
    ddc::PrepareSession ps{p.desktop, ctx_.name(), p.kind, p.user, p.endpoint};
    request<ddc::PrepareSession, ddc::Ack>(
        ctx_.bus(), ddc::agent_subject(d.s.agent, "prepare"), ps, timeout(),
        [this, p, token = d.token, done = std::move(done)](Reply<ddc::Ack> ack) {
          auto found = desks_.find(p.desktop);
          if (found == desks_.end() || found->second.token != token) return done(refusal(ddc::kNoDesktop, p.desktop + " deregistered meanwhile"));
          Desk& dk = found->second;
          dk.reserved = false;
          if (!ack || !ack->ok)
            return done(refusal(ddc::kAgentRefused, "the agent of " + p.desktop + " refused: " + (ack ? ack->detail : ack.error().message)));
          if (!(p.assign && dk.s.assigned_to.empty())) return connect(dk, p, "", done);
          // A new assignment is in the store before the user is told (a controller restart right after must not
          // lose it). The write runs on the blocking pool: a slow or restarting data store never stalls brokering.
          dk.reserved = true;
          Assignment a{p.user, dk.s.group, now_ms()};
          ctx_.run_blocking([this, desktop = p.desktop, a](std::stop_token) { write_assignment(desktop, a); },
                            [this, p, a, token, done](Reply<Empty> written) {
                              std::string note;
                              if (!written) {
                                unsaved_[p.desktop] = a;
                                ctx_.log().error("assignment of " + p.desktop + " to " + p.user + " not stored: " + written.error().message +
                                                 "; kept in memory and written when the data store answers again");
                                note = "the assignment is not stored yet (data store: " + written.error().message + "); it is retried";
                              }
                              auto back = desks_.find(p.desktop);
                              if (back == desks_.end() || back->second.token != token) {
                                Desk& gone = desk(p.desktop);  // the assignment stands; the session did not happen
                                auto next = gone.s;
                                next.assigned_to = p.user;
                                apply(gone, std::move(next));
                                return done(refusal(ddc::kNoDesktop, p.desktop + " deregistered meanwhile; it stays assigned to " + p.user));
                              }
                              back->second.reserved = false;
                              connect(back->second, p, note, done);
                            });
        });
  }

  /// The session on `dk` is on: record it (and the assignment `p` asks for) and tell the broker.
  void connect(Desk& dk, const ddc::Prepare& p, const std::string& note, const Done& done) {
    auto next = dk.s;
    next.session_state = ddc::kActive;
    next.user = p.user;
    next.endpoint = p.endpoint;
    if (p.assign && next.assigned_to.empty()) next.assigned_to = p.user;
    commit(dk, std::move(next));
    ddc::BrokerDecision out;
    out.outcome = "connect";
    out.desktop = p.desktop;
    out.group = dk.s.group;
    out.kind = p.kind;
    out.controller = ctx_.name();
    out.address = dk.s.address;
    if (out.address.empty()) {
      // An agent older than Register::address (or a VM on a network without a subnet): the name is all there is.
      // Said once per controller, not per desktop: a farm of old agents would otherwise log every desktop.
      out.address = dk.s.desktop;
      if (!named_only_logged_)
        ctx_.log().info(dk.s.desktop + " is handed out by name (and so is any other desktop without an address): its agent registered "
                        "no address; update the agent, or give its VM's hypervisor network a subnet");
      named_only_logged_ = true;
    }
    out.why = p.why + (p.broker == ctx_.name() ? "" : "; decided by its owner " + ctx_.name());
    if (!note.empty()) out.why += "; " + note;
    done(std::move(out));
  }

  struct Assignment {
    std::string user, group;
    std::int64_t since_ms = 0;
  };
  /// One assignment into the store, on the blocking pool. Replace, not insert: a retry after a write whose answer was
  /// lost leaves one row, never two.
  void write_assignment(const std::string& desktop, const Assignment& a) {
    auto s = ctx_.store().session();
    std::string d = desktop, u = a.user, g = a.group;
    Poco::Int64 t = a.since_ms;
    Poco::Data::Transaction tx(s);
    s << sql(s, "DELETE FROM ddc_assignments WHERE desktop = ?"), use(d), now;
    s << sql(s, "INSERT INTO ddc_assignments (desktop, user_name, grp, since_ms) VALUES (?, ?, ?, ?)"), use(d), use(u), use(g), use(t), now;
    tx.commit();
  }

  /// Every sweep: the assignments the store refused, written again (one job at a time) until it takes them.
  void retry_unsaved() {
    if (unsaved_.empty() || saving_) return;
    saving_ = true;
    auto batch = std::make_shared<const std::map<std::string, Assignment>>(unsaved_);  // one copy, read by both halves
    ctx_.run_blocking(
        [this, batch](std::stop_token) {
          for (const auto& [desktop, a] : *batch) write_assignment(desktop, a);
          return batch->size();
        },
        [this, batch](Reply<std::size_t> r) {
          saving_ = false;
          if (!r) return;  // still down: the next sweep tries again (logged once, when it failed first)
          for (const auto& [desktop, a] : *batch) {
            auto it = unsaved_.find(desktop);
            if (it != unsaved_.end() && it->second.user == a.user && it->second.since_ms == a.since_ms) unsaved_.erase(it);
          }
          ctx_.log().info(std::to_string(*r) + " assignment(s) written to the data store now that it answers again");
        });
  }

  // ---- licences (plugins/license serves them; interfaces/license's client keeps the 30-day grace) ----
  /// The licence session of `user` on `desktop`. The user is part of it: a desktop freed by one user's logoff may
  /// be brokered to the next through another controller before the first checkin reached the server, and the two
  /// must not collide (the server would refuse the second as session_conflict).
  static std::string license_session(const std::string& desktop, const std::string& user) { return desktop + "/" + user; }
  /// `then(ok, licensed, note)`: ok = the session may start; licensed = it holds a licence (or a grace grant).
  void checkout(const std::string& user, const std::string& desktop, std::function<void(bool, bool, std::string)> then) {
    if (!licenses_) return then(true, false, "");
    licenses_->checkout(user, license_session(desktop, user), [this, then = std::move(then)](lic::CheckoutReply r) {
      if (!r.granted) return then(false, false, "licence server " + config_.license + " refused (" + r.code + "): " + r.reason);
      then(true, true, r.grace ? "licence granted in grace (" + std::to_string(r.grace_hours_left) + " h left): " + r.reason : "");
    });
  }
  /// The session on `desktop` ended; the user's licence goes back with the last one (the server counts them).
  void checkin(const std::string& user, const std::string& desktop) {
    if (licenses_ && !user.empty()) licenses_->checkin(user, license_session(desktop, user));
  }

  // ---- pool service ----
  /// The controller that issues power actions (the farm master of XenDesktop 2-4) without `ima`: the first by name
  /// in this process.
  std::string pool_master() const {
    std::string first = ctx_.name();
    for (const auto& i : ctx_.instances("ddc"))
      if (i.name < first) first = i.name;
    return first;
  }
  /// With `ima`: while the server beside this controller is its zone's data collector; else the first by name.
  bool is_master() const { return config_.ima.empty() ? pool_master() == ctx_.name() : zdc_ == config_.ima; }

  /// Follows the zone's data collector as the ima server beside this controller knows it: its updates, and a
  /// question at start and every pool pass (an update published before the subscription is not lost for long).
  void follow_ima() {
    subs_.push_back(subscribe<ima::Collector>(ctx_.bus(), ima::zdc_updates_subject(config_.ima),
                                              [this](const ima::Collector& c, const Message&) { set_zdc(c.instance); }));
    subs_.push_back(serve<ddc::StartDesktop, ddc::BrokerDecision>(ctx_.bus(), ddc::beside_subject(config_.ima, "start"),
                                                                  [this](const ddc::StartDesktop& r) { return start_here(r); }));
    ask_zdc();
  }
  void ask_zdc() {
    request<Empty, ima::Collector>(ctx_.bus(), ima::subject(config_.ima, "zdc"), Empty{}, timeout(), [this](Reply<ima::Collector> c) {
      if (stopped_) return;
      if (c) return set_zdc(c->instance);
      if (!ima_unanswered_) ctx_.log().warning("ima server " + config_.ima + " does not answer (" + c.error().message +
                                               "): check the ima key; until it answers, starts are done here");
      ima_unanswered_ = true;
    });
  }
  void set_zdc(const std::string& zdc) {
    ima_unanswered_ = false;
    if (stopped_ || zdc == zdc_) return;
    const bool was = is_master();
    zdc_ = zdc;
    ctx_.log().info(zdc.empty() ? "zone data collector unknown (an election runs): starts are done here meanwhile"
                                : "zone data collector " + zdc + (is_master() ? ": this controller is the pool master"
                                                                             : ": the pool master is the controller beside it"));
    if (was != is_master()) ctx_.log().info(std::string("pool master: ") + (is_master() ? "now this controller" : "no longer this controller"));
  }

  static ddc::BrokerDecision starting(const Desk& d, std::string why) {
    ddc::BrokerDecision s;
    s.outcome = "starting";
    s.reason = ddc::kStarting;
    s.desktop = d.s.desktop;
    s.group = d.s.group;
    s.why = std::move(why);
    return s;
  }

  /// Starts a desktop for a user through the pool master: here when this controller is the master, else by asking
  /// it (ddc.<master>.start); a master that does not answer is worked around by starting here, logged.
  void start_desktop(ddc::StartDesktop r, Done done) {
    if (is_master()) return done(start_here(r));
    std::string master = pool_master(), subject = ddc::subject(master, "start");
    if (!config_.ima.empty()) {
      if (zdc_.empty()) {
        master_fallbacks_->inc();
        ctx_.log().warning("no zone data collector known to ima server " + config_.ima + " (an election runs, or it does not answer): starting for " +
                           r.user + " here");
        return done(start_here(r));
      }
      master = "the controller beside " + zdc_;
      subject = ddc::beside_subject(zdc_, "start");
    }
    request<ddc::StartDesktop, ddc::BrokerDecision>(ctx_.bus(), subject, r, timeout(),
                                                    [this, r, master, done](Reply<ddc::BrokerDecision> d) {
                                                      if (d) return done(*d);
                                                      master_fallbacks_->inc();
                                                      ctx_.log().warning("pool master " + master + " did not answer a start for " + r.user + " (" +
                                                                         d.error().message + "); starting here");
                                                      done(start_here(r));
                                                    });
  }

  /// The master's half: the named desktop (unless it is starting already), else an off desktop of the first group
  /// that has one. Its start_requested marks are what keep two starts of one machine apart.
  ddc::BrokerDecision start_here(const ddc::StartDesktop& r) {
    if (!r.desktop.empty()) {
      auto it = desks_.find(r.desktop);
      if (it == desks_.end() || it->second.s.hypervisor.empty() || it->second.s.vm.empty())
        return refusal(ddc::kNoDesktop, r.desktop + " is not a machine the pool master " + ctx_.name() + " knows how to start");
      Desk& d = it->second;
      if (d.s.registration == ddc::kRegistered) return starting(d, r.desktop + " has registered: ask again");
      const bool already = d.start_requested != TimePoint{};
      if (!already) power(d, "start");
      return starting(d, r.desktop + " is assigned to " + r.user + " and not registered; it is " + (already ? "starting" : "being started") +
                             " through " + d.s.hypervisor + ": ask again");
    }
    // A user who asks again while the desktop started for them boots gets that one, not one more start each time.
    if (auto it = started_for_.find(r.user); it != started_for_.end()) {
      auto d = desks_.find(it->second);
      if (d != desks_.end() && booting(d->second) && std::find(r.groups.begin(), r.groups.end(), d->second.s.group) != r.groups.end())
        return starting(d->second, d->first + " is starting for " + r.user + ": ask again");
      started_for_.erase(it);
    }
    for (const auto& name : r.groups) {
      auto g = groups_.find(name);
      if (g == groups_.end() || g->second.conf.hypervisor.empty()) continue;
      if (Desk* d = startable(g->second)) {
        power(*d, "start");
        if (!r.user.empty()) started_for_[r.user] = d->s.desktop;
        return starting(*d, "no idle desktop in group " + name + "; started " + d->s.desktop + " through " + g->second.conf.hypervisor + ": ask again");
      }
    }
    return refusal(ddc::kNoDesktop, "the pool master " + ctx_.name() + " has nothing left to start");
  }

  /// Started by the pool and not registered yet (within boot_timeout_s: past it the sweep gives up on the start).
  static bool booting(const Desk& d) { return d.start_requested != TimePoint{} && d.s.registration != ddc::kRegistered; }

  /// An off desktop of the group the pool may start (known from the hypervisor's inventory).
  Desk* startable(const Group& g) {
    const auto t = ctx_.clock().now();
    auto inv = inventories_.find(g.conf.hypervisor);
    if (inv == inventories_.end()) return nullptr;
    for (const auto& vm : inv->second.vms) {
      if (vm.power_state != hv::kOff) continue;
      const Group* owner = group_of(vm.name);
      if (owner != &g) continue;
      Desk& d = desk(vm.name);
      if (d.s.registration == ddc::kRegistered || in_maintenance(d) || d.quarantined_until > t || d.start_requested != TimePoint{}) continue;
      if (!d.s.assigned_to.empty() && g.conf.kind != "pooled-random") continue;  // someone's own desktop starts for its owner
      if (d.s.vm.empty()) {
        auto next = d.s;
        next.vm = vm.id;
        next.mac = vm.mac;
        next.hypervisor = g.conf.hypervisor;
        apply(d, std::move(next));
      }
      return &d;
    }
    return nullptr;
  }

  std::int64_t target(const Group& g) const {
    switch (schedule_.at(ctx_.clock().now())) {
      case deskfarm::ddc::Period::peak: return g.conf.idle_peak;
      case deskfarm::ddc::Period::business: return g.conf.idle_business;
      default: return g.conf.idle_off_hours;
    }
  }

  void pool_pass() {
    if (stopped_) return;
    if (!config_.ima.empty()) ask_zdc();
    std::set<std::string> hypervisors;
    for (const auto& [name, g] : groups_)
      if (!g.conf.hypervisor.empty()) hypervisors.insert(g.conf.hypervisor);
    for (const auto& h : hypervisors)
      request<Empty, hv::Inventory>(ctx_.bus(), hv::request_subject(h, "inventory"), Empty{}, timeout(), [this, h](Reply<hv::Inventory> inv) {
        if (!inv) return;
        inventories_[h] = *inv;
        if (is_master()) keep_targets(h);
      });
  }

  void keep_targets(const std::string& hypervisor) {
    const auto t = ctx_.clock().now();
    std::int64_t budget = config_.max_starts_per_tick;
    for (auto& [name, g] : groups_) {
      if (g.conf.hypervisor != hypervisor || g.maintenance) continue;
      const std::int64_t want = target(g);
      std::int64_t boots = 0;
      for (const auto& [dn, d] : desks_)
        if (d.s.group == name && booting(d) && t - d.start_requested <= std::chrono::seconds(config_.boot_timeout_s)) ++boots;
      std::int64_t deficit = want - static_cast<std::int64_t>(g.idle.size()) - boots;
      std::vector<std::string> started;
      while (deficit > 0 && budget > 0) {
        Desk* d = startable(g);
        if (!d) break;
        power(*d, "start");
        started.push_back(d->s.desktop);
        --deficit;
        --budget;
      }
      if (!started.empty()) {
        std::string list;
        for (const auto& s : started) list += (list.empty() ? "" : ", ") + s;
        ctx_.log().info("pool " + name + " (" + std::string(deskfarm::ddc::period_name(schedule_.at(t))) + "): " +
                        std::to_string(g.idle.size()) + " idle of target " + std::to_string(want) + "; starting " + list);
      }
    }
  }

  // ---- XML service (nfuse::Broker; ExecutorBroker calls these on the executor) ----
  /// A desktop handed out by RequestAddress (keyed by its ticket tag), then by RequestTicket (keyed by the ticket).
  struct Launch {
    std::string user, group, desktop, address, endpoint;
    TimePoint expires{};
  };
  /// The directory's answer (valid during the call only) or nullptr and the ErrorId to answer with.
  using Authenticated = std::function<void(const dir::AuthResult*, const char* error_id)>;

  void start_xml() {
    const auto colon = config_.xml_address.rfind(':');
    nfuse::XmlServiceOptions o;
    o.host = config_.xml_address.substr(0, colon);
    o.port = static_cast<std::uint16_t>(std::stoi(config_.xml_address.substr(colon + 1)));
    // The controller's own waits (directory, licence server, agent) end first and answer with their reason.
    o.answer_timeout = std::chrono::milliseconds(3 * config_.request_timeout_ms + 1000);
    o.tls_certificate = config_.xml_tls_certificate;
    o.tls_key = config_.xml_tls_key;
    const bool tls = !o.tls_certificate.empty();
    xml_ = std::make_unique<nfuse::XmlService>(o, std::make_shared<deskfarm::ddc::ExecutorBroker>(ctx_.lifeline(), *this));
    xml_->start();  // throws naming the address: the instance fails to start
    xml_endpoint_ = o.host + ":" + std::to_string(xml_->port());
    ctx_.advertise("xml", xml_endpoint_);
    ctx_.log().info("XML service on " + std::string(tls ? "https://" : "http://") + xml_endpoint_ + std::string(nfuse::kPath) + ", credentials checked by directory " + config_.directory);
    if (!tls && !o.host.starts_with("127.") && o.host != "localhost" && o.host != "::1")
      ctx_.log().warning("XML service on " + xml_endpoint_ + " has no TLS: passwords cross the network in clear; set xml_tls_certificate "
                         "and xml_tls_key, or bind it to loopback");
  }

  void count_xml(const std::string& result) {
    ctx_.metrics().counter("deskfarm_ddc_xml_answers_total", "XML service answers by result", {{"result", result}}).inc();
  }

  /// The service counts what never reaches the broker (malformed documents, unknown types, its own timeouts).
  void sync_xml_counters() {
    if (!xml_) return;
    const auto st = xml_->stats();
    if (st.protocol_errors > xml_synced_.protocol_errors)
      ctx_.metrics().counter("deskfarm_ddc_xml_answers_total", "", {{"result", "protocol_error"}}).inc(st.protocol_errors - xml_synced_.protocol_errors);
    if (st.broker_timeouts > xml_synced_.broker_timeouts)
      ctx_.metrics().counter("deskfarm_ddc_xml_answers_total", "", {{"result", "timeout"}}).inc(st.broker_timeouts - xml_synced_.broker_timeouts);
    xml_synced_ = st;
  }

  /// Every request that carries credentials is checked by the directory; `then(result, "")` or `then(nullptr, error_id)`.
  void authenticate(const std::optional<nfuse::Credentials>& c, const std::string& request, Authenticated then) {
    if (!c || c->user.empty()) {
      count_xml("bad_credentials");
      ctx_.log().info("XML service: " + request + " without credentials refused");
      return then(nullptr, nfuse::kBadCredentials);
    }
    request_directory_auth(*c, request, std::move(then));
  }

  void request_directory_auth(const nfuse::Credentials& c, const std::string& what, Authenticated then) {
    dir::Authenticate a{c.user, Secret(c.password), c.domain};
    request<dir::Authenticate, dir::AuthResult>(
        ctx_.bus(), dir::subject(config_.directory, "authenticate"), std::move(a), timeout(),
        [this, user = c.user, what, then = std::move(then)](Reply<dir::AuthResult> r) {
          if (!r) {
            count_xml("directory_unavailable");
            ctx_.log().warning("XML service: " + what + " of " + user + " not answered: directory " + config_.directory + " did not answer (" +
                               r.error().message + "); check that instance");
            return then(nullptr, nfuse::kUnspecified);
          }
          if (!r->ok) {
            const bool disabled = r->code == dir::kDisabled;
            count_xml(disabled ? "account_disabled" : "bad_credentials");
            ctx_.log().info("XML service: " + what + " of " + user + " refused by directory " + config_.directory + " (" + r->code + ")");
            return then(nullptr, disabled ? nfuse::kAccountDisabled : nfuse::kBadCredentials);
          }
          then(&r.value(), nullptr);
        });
  }

  void validate_credentials(const nfuse::ValidateCredentials& req, std::function<void(nfuse::ValidateCredentialsReply)> done) override {
    authenticate(req.credentials, "RequestValidateCredentials", [this, done = std::move(done)](const dir::AuthResult* a, const char* error) {
      if (!a) return done({-1, false, error});
      count_xml("ok");
      done({-1, false, ""});  // the directory keeps no password expiry yet (plugins/directory/README.md, Limits)
    });
  }

  void app_data(const nfuse::AppDataRequest& req, std::function<void(nfuse::AppDataReply)> done) override {
    authenticate(req.credentials, "RequestAppData", [this, done = std::move(done)](const dir::AuthResult* a, const char* error) {
      if (!a) return done({{}, error});
      nfuse::AppDataReply out;
      for (const auto& [name, g] : groups_) {
        if (!entitled(g, a->user, a->groups)) continue;
        nfuse::AppData app;
        app.in_name = name;
        app.f_name = name;
        app.disabled = g.maintenance;
        for (const auto& u : g.conf.users) app.users.push_back(a->domain + "\\" + u);
        for (const auto& dg : g.conf.directory_groups) app.groups.push_back(a->domain + "\\" + dg);
        app.anonymous = false;
        if (g.conf.users.empty() && g.conf.directory_groups.empty()) app.groups.push_back(a->domain + "\\Domain Users");
        out.apps.push_back(std::move(app));
      }
      count_xml("ok");
      done(std::move(out));
    });
  }

  void address(const nfuse::AddressRequest& req, std::function<void(nfuse::AddressReply)> done) override {
    authenticate(req.credentials, "RequestAddress", [this, req, done = std::move(done)](const dir::AuthResult* a, const char* error) mutable {
      if (!a) return done({"", "dot", "", error});
      if (!groups_.contains(req.app_name)) {
        count_xml("refused");
        ctx_.log().info("XML service: RequestAddress of " + a->user + " for unknown desktop group '" + req.app_name + "'");
        return done({"", "dot", "", nfuse::kAppRemoved});
      }
      const std::string endpoint = !req.client_name.empty() ? req.client_name : !req.client_address.empty() ? req.client_address : "xml-service";
      ddc::BrokerRequest q{a->user, endpoint, req.app_name};
      broker(q, a->groups, [this, q, done = std::move(done)](ddc::BrokerDecision d) {
        if (d.outcome != "connect") {
          count_xml("refused");
          ctx_.log().info("XML service: no desktop of " + q.group + " for " + q.user + " (" + d.outcome + " " + d.reason + "): " + d.why);
          return done({"", "dot", "", d.reason == ddc::kNotEntitled ? nfuse::kAppRemoved : nfuse::kNoAvailableWorkstation});
        }
        std::string tag = deskfarm::farm_key::random_hex(tokens_);
        launches_[tag] = Launch{q.user, d.group, d.desktop, d.address, q.endpoint, ctx_.clock().now() + std::chrono::seconds(config_.launch_ttl_s)};
        count_xml("ok");
        ctx_.log().info("XML service: " + q.user + " gets " + d.desktop + " of " + d.group + ": " + d.why);
        done({d.address, nfuse::address_type(d.address), tag, ""});
      });
    });
  }

  void ticket(const nfuse::TicketRequest& req, std::function<void(nfuse::TicketReply)> done) override {
    authenticate(req.credentials, "RequestTicket", [this, req, done = std::move(done)](const dir::AuthResult* a, const char* error) {
      if (!a) return done({"", error});
      auto l = launches_.find(req.ticket_tag);
      if (l == launches_.end() || l->second.user != a->user || l->second.expires <= ctx_.clock().now()) {
        count_xml("refused");
        ctx_.log().info("XML service: RequestTicket of " + a->user + " names no launch of theirs (unknown or expired ticket tag)");
        return done({"", nfuse::kUnspecified});
      }
      // 30 characters, as Citrix's CTXS1 logon tickets are; tied to this launch only.
      std::string t = deskfarm::farm_key::random_hex(tokens_) + deskfarm::farm_key::random_hex(tokens_);
      t.resize(30);
      for (auto& c : t) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      Launch launch = std::move(l->second);
      launches_.erase(l);  // a tag yields one ticket: a replayed RequestTicket is refused
      launch.expires = ctx_.clock().now() + std::chrono::seconds(req.time_to_live);
      tickets_[t] = std::move(launch);
      count_xml("ok");
      done({t, ""});
    });
  }

  void launch(const std::string& ticket, std::function<void(std::optional<nfuse::IcaFile>)> done) override {
    auto l = tickets_.find(ticket);
    if (l == tickets_.end() || l->second.expires <= ctx_.clock().now()) return done(std::nullopt);
    // Single use: the launch file is where the ticket is redeemed here, so a replayed or leaked link gets nothing.
    const Launch used = std::move(l->second);
    tickets_.erase(l);
    nfuse::IcaFile f;
    f.name = used.group;
    f.title = used.group + " (" + used.desktop + ")";
    f.address = used.address;
    f.logon_ticket = ticket;
    f.client_name = used.endpoint;
    done(std::move(f));
  }

  // ---- admin ----
  ddc::Ack maintenance(const ddc::Maintenance& m) {
    if (!m.group.empty()) {
      auto g = groups_.find(m.group);
      if (g == groups_.end()) return {false, "unknown_group", "no group '" + m.group + "'; see admin.groups"};
      g->second.maintenance = m.on;
      for (auto& [name, d] : desks_)
        if (d.s.group == m.group) reindex(d);
    }
    if (!m.desktop.empty()) {
      if (!group_of(m.desktop)) return {false, ddc::kNotProvisioned, "no group holds desktop '" + m.desktop + "'"};
      Desk& d = desk(m.desktop);
      d.maintenance = m.on;
      reindex(d);
    }
    if (m.group.empty() && m.desktop.empty()) return {false, "bad_request", "name a desktop or a group"};
    ctx_.log().info("maintenance " + std::string(m.on ? "on" : "off") + " for " + (m.group.empty() ? m.desktop : "group " + m.group));
    return {true, "", ""};
  }

  ddc::DesktopList list(const ddc::DesktopQuery& q) const {
    ddc::DesktopList out;
    std::map<std::string, const Desk*> sorted;
    for (const auto& [name, d] : desks_)
      if (!d.s.group.empty() && (q.group.empty() || d.s.group == q.group) && (q.user.empty() || d.s.user == q.user || d.s.assigned_to == q.user))
        sorted.emplace(name, &d);
    for (const auto& [name, d] : sorted) {
      auto s = d->s;
      if (d->quarantined_until > ctx_.clock().now()) s.registration = ddc::kQuarantined;
      out.desktops.push_back(std::move(s));
    }
    return out;
  }

  ddc::GroupList group_list() const {
    ddc::GroupList out;
    const auto t = ctx_.clock().now();
    for (const auto& [name, g] : groups_) {
      ddc::GroupStatus s;
      s.name = name;
      s.kind = g.conf.kind;
      s.reconnect = g.conf.reconnect;
      s.period = std::string(deskfarm::ddc::period_name(schedule_.at(t)));
      s.idle_target = target(g);
      s.idle = static_cast<std::int64_t>(g.idle.size());
      for (const auto& [dn, d] : desks_) {
        if (d.s.group != name) continue;
        ++s.desktops;
        if (d.s.registration == ddc::kRegistered) ++s.registered;
        if (d.s.session_state == ddc::kActive) ++s.in_use;
        if (d.s.session_state == ddc::kDisconnected) ++s.disconnected;
        if (in_maintenance(d)) ++s.maintenance;
        if (d.quarantined_until > t) ++s.quarantined;
      }
      out.groups.push_back(std::move(s));
    }
    return out;
  }

  Context& ctx_;
  DdcConfig config_;
  std::unique_ptr<lic::LicenseClient> licenses_;  ///< none without a `license` key
  std::mt19937_64 rng_;
  std::mt19937_64 tokens_{std::random_device{}()};  ///< tokens are credentials: never from the seed
  deskfarm::ddc::Schedule schedule_;
  std::map<std::string, Group> groups_;
  std::unordered_map<std::string, Desk> desks_;
  std::unordered_map<std::string, std::set<std::string>> user_desks_;  ///< user → desktops holding a session of theirs
  /// Master side: user → the pooled desktop last started for them; an entry whose desktop is no longer booting is
  /// dropped when that user asks again or by the sweep.
  std::unordered_map<std::string, std::string> started_for_;
  std::unordered_map<std::string, std::set<std::string>> assigned_;    ///< user → desktops assigned to them
  std::unordered_map<std::string, TimePoint> nonces_;                  ///< registration nonces seen, until they expire
  std::unordered_map<std::string, hv::Inventory> inventories_;
  std::size_t registered_here_ = 0;
  bool stopped_ = false;
  std::vector<Subscription> subs_;
  bool named_only_logged_ = false;  ///< a desktop without a registered address was handed out by name (logged once)
  std::unique_ptr<nfuse::XmlService> xml_;  ///< with xml_address; stopped in stop()
  std::string xml_endpoint_;
  nfuse::XmlServiceStats xml_synced_;  ///< what sync_xml_counters() already counted
  std::map<std::string, Assignment> unsaved_;  ///< desktop → an assignment the data store has not taken yet
  bool saving_ = false;                        ///< a retry_unsaved job is running
  std::unordered_map<std::string, Launch> launches_;  ///< ticket tag → launch (RequestAddress)
  std::unordered_map<std::string, Launch> tickets_;   ///< logon ticket → launch (RequestTicket)
  Counter* registrations_ = nullptr;
  Counter* refused_ = nullptr;
  Counter* hb_refused_ = nullptr;
  Counter* deregistered_ = nullptr;
  Counter* decisions_ = nullptr;
  Counter* starts_ = nullptr;
  Counter* master_fallbacks_ = nullptr;
  Counter* ima_failures_ = nullptr;
  Gauge* registered_gauge_ = nullptr;
  std::string zdc_;               ///< with `ima`: its zone's data collector ("" while unknown)
  bool ima_unanswered_ = false;   ///< said once until it answers
};

}  // namespace

DESKFARM_PLUGIN(Ddc, "ddc", "1.0.0", "Desktop Delivery Controller: agent registration and heartbeats, desktop groups, pool service, brokering with a why",
                provides, nullptr, config_schema)
