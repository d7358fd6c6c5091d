#pragma once
// The controller's side of licensing: LicenseClient checks sessions out and in on a licence server over the bus
// and, while the server does not answer, allows sessions for a grace period (30 days, 720 h, as Citrix's servers
// keep working without their licence server) measured on the deployment's clock from the first unanswered
// request; after it, new sessions are refused (grace_expired) until the server answers again. Sessions granted in
// grace and checkins the server missed are sent to it once it answers. Header-only: a controller includes it,
// constructs one client per licence server on its executor, and calls it from there.
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <deskfarm/sdk/clock.hpp>
#include <deskfarm/sdk/service.hpp>
#include <deskfarm/sdk/time_text.hpp>

#include "deskfarm/interfaces/license/license.hpp"

namespace deskfarm::interfaces::license {

/// 30 days, in hours as Citrix counts it (LicensingGraceHoursLeft).
inline constexpr std::chrono::hours kGracePeriod{720};

using sdk::iso8601;

/// The grace rule alone: no answer since `since` → sessions allowed while now < since + period.
class Grace {
 public:
  explicit Grace(sdk::Duration period = kGracePeriod) : period_(period) {}
  /// The server answered: grace ends.
  void answered() { since_.reset(); }
  /// A request went unanswered at `now`; the first one starts the grace period.
  void unanswered(sdk::TimePoint now) {
    if (!since_) since_ = now;
  }
  bool failing() const { return since_.has_value(); }
  /// Sessions are allowed without the server.
  bool active(sdk::TimePoint now) const { return since_ && now - *since_ < period_; }
  /// The grace period has ended: sessions are refused.
  bool expired(sdk::TimePoint now) const { return since_ && now - *since_ >= period_; }
  std::optional<sdk::TimePoint> since() const { return since_; }
  sdk::TimePoint ends() const { return since_ ? *since_ + period_ : sdk::TimePoint{}; }
  std::int64_t hours_left(sdk::TimePoint now) const {
    if (!active(now)) return 0;
    return std::chrono::duration_cast<std::chrono::hours>(*since_ + period_ - now).count();
  }
  sdk::Duration period() const { return period_; }

 private:
  sdk::Duration period_;
  std::optional<sdk::TimePoint> since_;
};

struct ClientOptions {
  std::string server;  ///< the licence server's instance name (subjects license.<server>.…)
  std::string farm;    ///< the farm whose licences this controller uses
  sdk::Duration timeout = std::chrono::seconds(2);  ///< a request unanswered this long counts as a failure
  sdk::Duration grace = kGracePeriod;
  std::size_t max_remembered = 100000;  ///< grace sessions and missed checkins kept for the server, at most
};

/// True for a reply that says the server did not answer (as opposed to an answer, or a request it refused).
inline bool unanswered(const sdk::Error& e) {
  return e.code == "timeout" || e.code == "no_responders" || e.code == "unavailable";
}

/// A controller's licence client. Use it on one executor (the controller's); callbacks run there.
class LicenseClient {
 public:
  LicenseClient(sdk::Bus& bus, sdk::Clock& clock, ClientOptions options)
      : state_(std::make_shared<State>(bus, clock, std::move(options))) {}

  /// A session of `user` starts: `done` gets the server's answer, a grant in grace (grace = true), or a refusal
  /// (no_licenses, unknown_farm, session_conflict from the server; grace_expired, server_error from here).
  void checkout(const std::string& user, const std::string& session_id, std::function<void(CheckoutReply)> done) {
    auto s = state_;
    Checkout req{user, session_id, s->options.farm};
    sdk::request<Checkout, CheckoutReply>(
        s->bus, subject(s->options.server, "checkout"), req, s->options.timeout,
        [s, req, done = std::move(done)](sdk::Reply<CheckoutReply> r) {
          if (r) {
            s->answered();
            s->remember_counts(*r);
            s->flush();
            return done(*r);
          }
          if (!unanswered(r.error())) {
            CheckoutReply no;
            no.code = kServerError;
            no.reason = "licence server " + s->options.server + " refused the checkout: " + r.error().code + ": " +
                        r.error().message;
            return done(no);
          }
          const auto now = s->clock.now();
          s->grace.unanswered(now);
          CheckoutReply g;
          if (s->grace.expired(now)) {
            g.code = kGraceExpired;
            g.reason = "licence server " + s->options.server + " has not answered since " + iso8601(*s->grace.since()) +
                       "; the " + std::to_string(std::chrono::duration_cast<std::chrono::hours>(s->options.grace).count()) +
                       " h grace period ended at " + iso8601(s->grace.ends()) + " (" + r.error().message +
                       "): start the licence server to allow new sessions";
            ++s->refused_in_grace;
            return done(g);
          }
          if (s->grace_sessions.size() < s->options.max_remembered) s->grace_sessions[req.session_id] = req.user;
          g.granted = true;
          g.grace = true;
          g.grace_hours_left = s->grace.hours_left(now);
          g.reason = "licence server " + s->options.server + " does not answer (" + r.error().message +
                     "): allowed in grace, " + std::to_string(g.grace_hours_left) + " h left";
          done(g);
        });
  }

  /// A session ended. A checkin the server misses is kept and sent once it answers.
  void checkin(const std::string& user, const std::string& session_id, std::function<void(CheckinReply)> done = {}) {
    auto s = state_;
    if (s->grace_sessions.erase(session_id) > 0) {  // the server never saw it
      if (done) done(CheckinReply{true, false, 0, 0});
      return;
    }
    s->send_checkin(Checkin{user, session_id, s->options.farm}, std::move(done));
  }

  /// Asks the server for its counts (an answer ends the grace, like any other); `done` gets status().
  void refresh(std::function<void(LicenseStatus)> done = {}) {
    auto s = state_;
    sdk::request<sdk::Empty, LicenseStatus>(s->bus, subject(s->options.server, "status"), sdk::Empty{}, s->options.timeout,
                                            [s, done = std::move(done)](sdk::Reply<LicenseStatus> r) {
                                              if (r) {
                                                s->answered();
                                                s->farms = r->farms;
                                                s->flush();
                                              } else if (unanswered(r.error())) {
                                                s->grace.unanswered(s->clock.now());
                                              }
                                              if (done) done(s->status());
                                            });
  }

  /// The last counts the server gave, and the grace state now.
  LicenseStatus status() const { return state_->status(); }
  const Grace& grace() const { return state_->grace; }
  /// Checkouts refused because the grace period had ended.
  std::int64_t refused_in_grace() const { return state_->refused_in_grace; }
  const ClientOptions& options() const { return state_->options; }

 private:
  // Shared with the callbacks of requests in flight, so a reply after the client is gone touches nothing freed.
  struct State : std::enable_shared_from_this<State> {
    State(sdk::Bus& b, sdk::Clock& c, ClientOptions o) : bus(b), clock(c), options(std::move(o)), grace(options.grace) {}
    sdk::Bus& bus;
    sdk::Clock& clock;
    ClientOptions options;
    Grace grace;
    bool reachable = true;
    std::map<std::string, std::string> grace_sessions;  // session id → user: granted without the server
    std::deque<Checkin> missed_checkins;
    std::vector<FarmLicenses> farms;
    std::int64_t refused_in_grace = 0;
    bool flushing = false;

    void answered() {
      reachable = true;
      grace.answered();
    }
    void remember_counts(const CheckoutReply& r) {
      for (auto& f : farms)
        if (f.farm == options.farm) {
          f.in_use = r.in_use;
          f.total = r.total;
          return;
        }
      if (r.total > 0) farms.push_back(FarmLicenses{options.farm, r.total, r.in_use, 0, 0});
    }
    LicenseStatus status() const {
      LicenseStatus st;
      st.farms = farms;
      const auto now = clock.now();
      st.reachable = !grace.failing();
      st.grace_active = grace.active(now);
      st.grace_expired = grace.expired(now);
      st.grace_since = grace.since() ? iso8601(*grace.since()) : "";
      st.grace_hours_left = grace.hours_left(now);
      st.grace_days_left = st.grace_hours_left / 24;
      st.grace_sessions = static_cast<std::int64_t>(grace_sessions.size());
      return st;
    }
    void send_checkin(Checkin c, std::function<void(CheckinReply)> done) {
      sdk::request<Checkin, CheckinReply>(bus, subject(options.server, "checkin"), c, options.timeout,
                                          [self = shared_from_this(), c, done = std::move(done)](sdk::Reply<CheckinReply> r) {
                                            if (r) {
                                              self->answered();
                                              self->flush();
                                            } else if (unanswered(r.error())) {
                                              self->grace.unanswered(self->clock.now());
                                              if (self->missed_checkins.size() < self->options.max_remembered)
                                                self->missed_checkins.push_back(c);
                                            }
                                            if (done) done(r ? *r : CheckinReply{});
                                          });
    }
    /// The server answers again: it learns the sessions granted in grace and the checkins it missed.
    void flush() {
      if (flushing || (grace_sessions.empty() && missed_checkins.empty())) return;
      flushing = true;  // one pass at a time; what fails again is kept for the next answer
      auto sessions = std::exchange(grace_sessions, {});
      auto checkins = std::exchange(missed_checkins, {});
      for (auto& c : checkins) send_checkin(std::move(c), {});
      for (const auto& [session, user] : sessions) {
        Checkout req{user, session, options.farm};
        sdk::request<Checkout, CheckoutReply>(bus, subject(options.server, "checkout"), req, options.timeout,
                                              [self = shared_from_this(), req](sdk::Reply<CheckoutReply> r) {
                                                if (!r && unanswered(r.error()) &&
                                                    self->grace_sessions.size() < self->options.max_remembered)
                                                  self->grace_sessions[req.session_id] = req.user;
                                              });
      }
      flushing = false;
    }
  };
  std::shared_ptr<State> state_;
};

}  // namespace deskfarm::interfaces::license
