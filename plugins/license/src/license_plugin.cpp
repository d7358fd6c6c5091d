// license: the licence server role. Concurrent licences per farm, one per user however many sessions; decisions
// are taken on the executor from the in-memory ledger, and answered once the data store has recorded them (many
// changes per transaction), so a granted licence survives a restart of the server.
#include <deque>
#include <map>
#include <set>

#include <deskfarm/interfaces/license/license.hpp>
#include <deskfarm/sdk/plugin.hpp>

#include "ledger.hpp"
#include "store.hpp"

namespace {

using namespace deskfarm;
using namespace deskfarm::sdk;
namespace api = deskfarm::interfaces::license;

constexpr const char* provides[] = {"license", nullptr};

struct FarmSeed {
  std::string name;
  std::int64_t licenses = 0;
};

struct LicenseConfig {
  std::vector<FarmSeed> farms;
  std::int64_t max_waiting = 10000;
  std::int64_t retry_s = 5;
};

constexpr auto farm_schema = schema<FarmSeed>(
    option("name", &FarmSeed::name, nullptr, "the farm (controllers send it with every checkout)"),
    option("licenses", &FarmSeed::licenses, nullptr, "concurrent licences: users with at least one session").range(0, 10000000));

constexpr auto license_schema = schema<LicenseConfig>(
    option("farms", &LicenseConfig::farms, nullptr, "farms and their licence counts", farm_schema),
    option("max_waiting", &LicenseConfig::max_waiting, "10000",
           "requests held while the data store loads or writes; beyond, they are answered \"unavailable\"")
        .range(1, 1000000),
    option("retry_s", &LicenseConfig::retry_s, "5", "seconds between attempts to load an unreachable data store")
        .range(1, 3600));

void check(const LicenseConfig& c) {
  std::set<std::string> seen;
  for (const auto& f : c.farms) {
    if (f.name.empty()) throw ConfigError("farms", "farms: a farm has an empty name");
    if (!seen.insert(f.name).second) throw ConfigError("farms", "farms: farm '" + f.name + "' is listed twice");
  }
}

class License final : public Plugin {
 public:
  explicit License(Context& ctx) : ctx_(ctx), config_(license_schema.bind(ctx.config())) {
    check(config_);
    for (const auto& f : config_.farms) ledger_.set_farm(f.name, f.licenses);
    auto& m = ctx_.metrics();
    m.declare_gauge("deskfarm_license_in_use", "Licences held (users with at least one session), per farm");
    m.declare_gauge("deskfarm_license_total", "Licences of the farm");
    m.declare_gauge("deskfarm_license_sessions", "Sessions holding licences, per farm");
    m.declare_counter("deskfarm_license_checkouts_total", "Checkouts answered, per farm and result");
    checkins_ = &m.counter("deskfarm_license_checkins_total", "Checkins of known sessions");
    released_ = &m.counter("deskfarm_license_released_total", "Licences given back (a user's last session ended)");
    store_failures_ = &m.counter("deskfarm_license_store_failures_total", "Data-store writes that failed (requests answered unavailable)");
  }

  static void validate(const Config& config) { check(license_schema.bind(config)); }

  void start() override {
    subs_.push_back(serve_async<api::Checkout, api::CheckoutReply>(
        ctx_.bus(), api::subject(ctx_.name(), "checkout"),
        [this](const api::Checkout& req, Responder<api::CheckoutReply> r) { when_loaded([this, req, r]() mutable { checkout(req, r); }, r); }));
    subs_.push_back(serve_async<api::Checkin, api::CheckinReply>(
        ctx_.bus(), api::subject(ctx_.name(), "checkin"),
        [this](const api::Checkin& req, Responder<api::CheckinReply> r) { when_loaded([this, req, r]() mutable { checkin(req, r); }, r); }));
    subs_.push_back(serve_async<Empty, api::LicenseStatus>(
        ctx_.bus(), api::subject(ctx_.name(), "status"), [this](const Empty&, Responder<api::LicenseStatus> r) {
          when_loaded([this, r]() mutable { r.ok(api::LicenseStatus{ledger_.farms()}); }, r);
        }));
    load();
  }

  void stop() override {
    subs_.clear();
    waiting_.clear();
  }

  void status(Value& out) const override {
    out.set("loaded", loaded_);
    if (!store_error_.empty()) out.set("store_error", store_error_);
    Value farms = Value::array();
    for (const auto& f : ledger_.farms()) farms.push(to_value(f));
    out.set("farms", std::move(farms));
    out.set("waiting", static_cast<std::int64_t>(waiting_.size()));
    out.set("writes_pending", static_cast<std::int64_t>(batch_.size() + (writing_ ? 1 : 0)));
  }

  Health health() const override { return loaded_ && store_error_.empty() ? Health::ok : Health::degraded; }

 private:
  /// Runs `work` now once the ledger is loaded; before that it waits (bounded) for the load.
  template <class Rep>
  void when_loaded(std::function<void()> work, Responder<Rep> r) {
    if (loaded_ && waiting_.empty()) return work();
    if (static_cast<std::int64_t>(waiting_.size()) >= config_.max_waiting)
      return r.fail("unavailable", "licence server " + ctx_.name() + ": " + std::to_string(waiting_.size()) +
                                       " requests already wait for the data store (" +
                                       (store_error_.empty() ? std::string("loading") : store_error_) + ")");
    waiting_.push_back(std::move(work));
  }

  void load() {
    ctx_.run_blocking(
        [store = &ctx_.store()](std::stop_token) {
          license::migrate(*store);
          return license::load(*store);
        },
        [this](Reply<std::vector<license::Change>> r) {
          if (!r) {
            store_error_ = "cannot load the licence ledger from the data store: " + r.error().message;
            ctx_.log().error(store_error_ + " (retrying in " + std::to_string(config_.retry_s) + " s)");
            ctx_.after(std::chrono::seconds(config_.retry_s), [this] { load(); });
            return;
          }
          for (const auto& c : *r) ledger_.apply(c);
          loaded_ = true;
          store_error_.clear();
          update_gauges();
          std::string farms;
          for (const auto& f : ledger_.farms())
            farms += (farms.empty() ? "" : ", ") + f.farm + " " + std::to_string(f.in_use) + "/" + std::to_string(f.total);
          ctx_.log().info("ledger loaded: " + std::to_string(r->size()) + " sessions; licences in use " + farms);
          auto waiting = std::exchange(waiting_, {});
          for (auto& w : waiting) w();
        });
  }

  void checkout(const api::Checkout& req, Responder<api::CheckoutReply> r) {
    std::vector<license::Change> changes;
    auto reply = ledger_.checkout(req, now_ms(), changes);
    checkouts(ledger_.has_farm(req.farm) ? req.farm : "unknown", reply.granted ? "granted" : reply.code).inc();
    if (!reply.granted) ctx_.log().info("refused " + req.user + " session " + req.session_id + ": " + reply.reason);
    if (changes.empty()) return r.ok(reply);
    write(std::move(changes), [r, reply](const std::string& error) mutable {
      if (error.empty()) r.ok(reply);
      else r.fail("unavailable", error);
    });
  }

  void checkin(const api::Checkin& req, Responder<api::CheckinReply> r) {
    std::vector<license::Change> changes;
    auto reply = ledger_.checkin(req, changes);
    if (changes.empty()) return r.ok(reply);
    checkins_->inc();
    if (reply.released) released_->inc();
    write(std::move(changes), [r, reply](const std::string& error) mutable {
      if (error.empty()) r.ok(reply);
      else r.fail("unavailable", error);
    });
  }

  /// Queues changes for the data store; `done("")` once recorded, `done(error)` when the store refused them (the
  /// ledger is then put back as it was). One transaction at a time; what arrives meanwhile goes into the next.
  void write(std::vector<license::Change> changes, std::function<void(const std::string&)> done) {
    update_gauges();
    for (auto& c : changes) batch_.push_back(std::move(c));
    batch_done_.push_back(std::move(done));
    flush();
  }

  void flush() {
    if (writing_ || batch_.empty()) return;
    writing_ = true;
    auto changes = std::make_shared<std::vector<license::Change>>(std::exchange(batch_, {}));
    auto done = std::make_shared<std::vector<std::function<void(const std::string&)>>>(std::exchange(batch_done_, {}));
    ctx_.run_blocking([store = &ctx_.store(), changes](std::stop_token) { license::record(*store, *changes); },
                      [this, changes, done](Reply<Empty> r) {
                        writing_ = false;
                        std::string error;
                        if (!r) {
                          store_failures_->inc();
                          error = "licence server " + ctx_.name() + ": the data store did not record " +
                                  std::to_string(changes->size()) + " licence changes: " + r.error().message;
                          ctx_.log().error(error);
                          for (auto c = changes->rbegin(); c != changes->rend(); ++c) ledger_.undo(*c);
                          update_gauges();
                        }
                        for (auto& d : *done) d(error);
                        flush();
                      });
  }

  // Metrics are looked up once per label set and kept: farms are the manifest's and the data store's (a checkout
  // naming another farm counts under "unknown"), results the four of CheckoutReply, so the sets stay bounded.
  struct FarmGauges {
    Gauge* in_use;
    Gauge* total;
    Gauge* sessions;
  };

  void update_gauges() {
    auto& m = ctx_.metrics();
    for (const auto& f : ledger_.farms()) {
      auto it = gauges_.find(f.farm);
      if (it == gauges_.end())
        it = gauges_.emplace(f.farm, FarmGauges{&m.gauge("deskfarm_license_in_use", "", {{"farm", f.farm}}),
                                                &m.gauge("deskfarm_license_total", "", {{"farm", f.farm}}),
                                                &m.gauge("deskfarm_license_sessions", "", {{"farm", f.farm}})})
                 .first;
      it->second.in_use->set(static_cast<double>(f.in_use));
      it->second.total->set(static_cast<double>(f.total));
      it->second.sessions->set(static_cast<double>(f.sessions));
    }
  }

  Counter& checkouts(const std::string& farm, const std::string& result) {
    auto& c = checkouts_[{farm, result}];
    if (!c) c = &ctx_.metrics().counter("deskfarm_license_checkouts_total", "", {{"farm", farm}, {"result", result}});
    return *c;
  }

  std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(ctx_.clock().now().time_since_epoch()).count();
  }

  Context& ctx_;
  LicenseConfig config_;
  license::Ledger ledger_;
  bool loaded_ = false;
  std::string store_error_;
  std::deque<std::function<void()>> waiting_;
  std::vector<license::Change> batch_;
  std::vector<std::function<void(const std::string&)>> batch_done_;
  bool writing_ = false;
  std::vector<Subscription> subs_;
  std::map<std::string, FarmGauges> gauges_;
  std::map<std::pair<std::string, std::string>, Counter*> checkouts_;
  Counter* checkins_ = nullptr;
  Counter* released_ = nullptr;
  Counter* store_failures_ = nullptr;
};

}  // namespace

DESKFARM_PLUGIN(License, "license", "1.0.0",
                "Licence server: concurrent licences per farm, one per user however many sessions, kept in the data store",
                provides, nullptr, license_schema)
