#include "storm.hpp"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <optional>
#include <queue>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include <Poco/Exception.h>

#include <deskfarm/interfaces/ddc/ddc.hpp>
#include <deskfarm/interfaces/license/license.hpp>
#include <deskfarm/sdk/record.hpp>
#include <deskfarm/sdk/service.hpp>

namespace deskfarm::cli::storm {

namespace ddc = deskfarm::interfaces::ddc;
namespace lic = deskfarm::interfaces::license;
using Clock = std::chrono::steady_clock;

double parse_rate(const std::string& text) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (...) {
    throw std::invalid_argument("--rate '" + text + "' is not a rate like 50/s, 300/m or 3600/h");
  }
  const std::string unit = text.substr(used);
  double per_s = value;
  if (unit.empty() || unit == "/s") per_s = value;
  else if (unit == "/m") per_s = value / 60;
  else if (unit == "/h") per_s = value / 3600;
  else throw std::invalid_argument("--rate '" + text + "' has an unknown unit '" + unit + "' (/s, /m, /h)");
  if (!(per_s > 0) || !std::isfinite(per_s)) throw std::invalid_argument("--rate '" + text + "' must be more than 0");
  return per_s;
}

double parse_ratio(const std::string& text, const std::string& option) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (...) {
    throw std::invalid_argument(option + " '" + text + "' is not a ratio like 0.2 or 20%");
  }
  const std::string unit = text.substr(used);
  if (unit == "%") value /= 100;
  else if (!unit.empty()) throw std::invalid_argument(option + " '" + text + "' is not a ratio like 0.2 or 20%");
  if (!(value >= 0 && value <= 1)) throw std::invalid_argument(option + " '" + text + "' must be between 0 and 1 (0% and 100%)");
  return value;
}

UserPlan plan_user(std::int64_t index, const Options& o) {
  UserPlan p;
  const std::int64_t n = o.first_user + index;
  p.name = o.user_prefix + std::to_string(n);
  p.endpoint = "client-" + std::to_string(n);
  p.arrive = Millis(static_cast<std::int64_t>(std::llround(static_cast<double>(index) * 1000.0 / o.rate_per_s)));
  // Each user's own generator: the plan of user i does not depend on how many users the storm has.
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ULL + static_cast<std::uint64_t>(n));
  std::uniform_real_distribution<double> dice(0.0, 1.0);
  p.disconnects = dice(rng) < o.disconnect_ratio;
  const bool back = dice(rng) < o.reconnect_ratio;
  p.reconnects = p.disconnects && back;
  return p;
}

const std::string& pick_controller(const std::vector<std::string>& controllers, std::int64_t user, std::int64_t attempt) {
  if (controllers.empty()) throw std::invalid_argument("no controller to broker through");
  const auto n = static_cast<std::int64_t>(controllers.size());
  return controllers[static_cast<std::size_t>(((user % n) + attempt % n) % n)];
}

Latency latency_of(std::vector<double> ms) {
  Latency l;
  l.count = ms.size();
  if (ms.empty()) return l;
  std::sort(ms.begin(), ms.end());
  // Nearest rank: the smallest value with at least p of the samples at or below it.
  const auto rank = [&](double p) {
    const auto r = static_cast<std::size_t>(std::ceil(p * static_cast<double>(ms.size())));
    return ms[std::clamp<std::size_t>(r, 1, ms.size()) - 1];
  };
  l.p50 = rank(0.50);
  l.p99 = rank(0.99);
  l.max = ms.back();
  return l;
}

namespace {

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

std::string summary_text(const Summary& s) {
  std::ostringstream out;
  out << "storm: " << s.users << " users through " << s.controllers.size() << " controllers in " << fixed(s.seconds, 1) << " s\n";
  out << "  brokered:        " << s.brokered << " (refused " << s.refused << ", failed " << s.failed << ", unfinished " << s.unfinished << ")\n";
  out << "  decisions:       " << s.decisions << " (" << fixed(s.decisions_per_s(), 1) << "/s; " << s.starting_answers
      << " 'starting, ask again'; " << s.refusals_retried << " refusals asked again; " << s.retries_elsewhere
      << " retried on another controller)\n";
  out << "  brokering:       p50 " << fixed(s.broker.p50, 2) << " ms, p99 " << fixed(s.broker.p99, 2) << " ms, max "
      << fixed(s.broker.max, 2) << " ms (through the admin endpoint)\n";
  out << "  sessions:        " << s.disconnected << " disconnected, " << s.reconnected << " reconnected to their session, "
      << s.sessions_lost << " lost\n";
  out << "  pool starts:     " << (s.pool_starts < 0 ? std::string("unknown") : std::to_string(s.pool_starts)) << "\n";
  if (s.licenses_peak < 0) {
    out << "  licences:        no licence server\n";
  } else {
    out << "  licences:        peak " << s.licenses_peak << " in use of " << s.licenses_total << ", " << s.licenses_end
        << " at the end (" << s.license << ")\n";
  }
  out << "  refusals:       ";
  if (s.refusals.empty()) out << " none";
  for (const auto& [reason, n] : s.refusals) out << " " << reason << "=" << n;
  out << "\n  errors:         ";
  if (s.errors.empty()) out << " none";
  for (const auto& [kind, n] : s.errors) out << " " << kind << "=" << n;
  out << "\n";
  for (const auto& [reason, text] : s.refusal_examples) out << "  first " << reason << ": " << text << "\n";
  for (const auto& [kind, text] : s.error_examples) out << "  first " << kind << ": " << text << "\n";
  return out.str();
}

std::string summary_json(const Summary& s) {
  sdk::Value v = sdk::Value::object();
  v["users"] = s.users;
  v["brokered"] = s.brokered;
  v["refused"] = s.refused;
  v["failed"] = s.failed;
  v["unfinished"] = s.unfinished;
  v["decisions"] = s.decisions;
  v["decisions_per_s"] = s.decisions_per_s();
  v["starting_answers"] = s.starting_answers;
  v["retries_elsewhere"] = s.retries_elsewhere;
  v["refusals_retried"] = s.refusals_retried;
  v["broker_p50_ms"] = s.broker.p50;
  v["broker_p99_ms"] = s.broker.p99;
  v["broker_max_ms"] = s.broker.max;
  v["disconnected"] = s.disconnected;
  v["reconnected"] = s.reconnected;
  v["sessions_lost"] = s.sessions_lost;
  v["pool_starts"] = s.pool_starts;
  v["licenses_peak"] = s.licenses_peak;
  v["licenses_end"] = s.licenses_end;
  v["licenses_total"] = s.licenses_total;
  v["seconds"] = s.seconds;
  v["started_unix_ms"] = s.started_unix_ms;
  sdk::Value refusals = sdk::Value::object();
  for (const auto& [reason, n] : s.refusals) refusals[reason] = n;
  v["refusals"] = std::move(refusals);
  sdk::Value errors = sdk::Value::object();
  for (const auto& [kind, n] : s.errors) errors[kind] = n;
  v["errors"] = std::move(errors);
  sdk::Value examples = sdk::Value::object();
  for (const auto& [kind, text] : s.error_examples) examples[kind] = text;
  v["error_examples"] = std::move(examples);
  sdk::Value cs = sdk::Value::array();
  for (const auto& c : s.controllers) cs.push(c);
  v["controllers"] = std::move(cs);
  return v.to_json();
}

std::string progress_line(const Progress& p, std::int64_t users) {
  std::string line = "storm " + fixed(p.seconds, 1) + " s: " + std::to_string(p.arrived) + "/" + std::to_string(users) +
                     " arrived, " + std::to_string(p.in_session) + " in session, " + std::to_string(p.done) + " done, " +
                     std::to_string(p.refused) + " refused, " + std::to_string(p.failed) + " failed; " +
                     std::to_string(p.decisions) + " decisions, " +
                     fixed(p.seconds > 0 ? static_cast<double>(p.decisions) / p.seconds : 0, 0) + "/s, p99 " + fixed(p.p99_ms, 1) + " ms";
  if (p.licenses >= 0) line += "; " + std::to_string(p.licenses) + " licences in use";
  return line;
}

std::optional<double> metric_sum(const std::string& text, const std::string& family) {
  std::istringstream in(text);
  std::optional<double> sum;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#' || line.compare(0, family.size(), family) != 0) continue;
    const char next = line.size() > family.size() ? line[family.size()] : '\0';
    if (next != '{' && next != ' ') continue;  // another family with this one's name as a prefix
    const auto space = line.rfind(' ');
    if (space == std::string::npos) continue;
    try {
      sum = sum.value_or(0) + std::stod(line.substr(space + 1));
    } catch (...) {
    }
  }
  return sum;
}

namespace {

enum class Step { broker, disconnect, come_back, logoff };

struct User {
  std::int64_t index = 0;
  UserPlan plan;
  Step step = Step::broker;
  std::int64_t attempt = 0;   ///< the controller rotation (a retry moves on)
  std::int64_t starting = 0;  ///< "starting" answers so far
  bool returning = false;     ///< this brokering is the comeback after a disconnect
  bool in_session = false;
  std::string desktop, agent, controller;
};

struct Task {
  Clock::time_point due;
  std::int64_t user;
  bool operator>(const Task& o) const { return due > o.due; }
};

/// The users, their scheduled steps and the worker threads that run them. A user has at most one step scheduled
/// or running at a time, so its state needs no lock; what the users share (figures, the agent cache) has one.
class Driver {
 public:
  Driver(const Options& o, const AdminClient& admin, std::vector<std::string> controllers)
      : o_(o), admin_(admin), controllers_(std::move(controllers)), users_(static_cast<std::size_t>(o.users)) {
    for (std::int64_t i = 0; i < o_.users; ++i) {
      auto& u = users_[static_cast<std::size_t>(i)];
      u.index = i;
      u.plan = plan_user(i, o_);
    }
  }
  ~Driver() { halt(); }

  void start() {
    start_ = Clock::now();
    summary_.started_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch()).count();
    {
      std::lock_guard lock(mutex_);
      for (const auto& u : users_) tasks_.push(Task{start_ + u.plan.arrive, u.index});
    }
    for (std::int64_t i = 0; i < o_.concurrency; ++i) workers_.emplace_back([this] { work(); });
  }

  void halt() {
    {
      std::lock_guard lock(mutex_);
      halting_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  /// Fills the desktop → agent cache from one controller's view (it sees every registration of the farm).
  void prefetch_agents() {
    for (const auto& c : controllers_) {
      if (learn_agents(c, ddc::DesktopQuery{})) return;
    }
  }

  Clock::time_point started() const { return start_; }
  std::int64_t done() const { return done_; }
  Progress progress() {
    Progress p;
    p.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
    p.arrived = arrived_;
    p.in_session = in_session_;
    p.done = done_;
    p.refused = refused_;
    p.failed = failed_;
    std::lock_guard lock(stats_);
    p.decisions = summary_.decisions;
    if (!latencies_.empty()) {
      // The last thousand answers: what the storm feels now.
      const auto from = latencies_.size() > 1000 ? latencies_.end() - 1000 : latencies_.begin();
      p.p99_ms = latency_of(std::vector<double>(from, latencies_.end())).p99;
    }
    return p;
  }

  Summary finish() {
    std::lock_guard lock(stats_);
    Summary s = summary_;
    s.users = o_.users;
    s.refused = refused_;
    s.failed = failed_;
    s.unfinished = o_.users - done_;
    s.broker = latency_of(latencies_);
    s.broker_seconds = std::chrono::duration<double>(last_decision_ - first_decision_).count();
    s.controllers = controllers_;
    return s;
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    while (!halting_) {
      if (tasks_.empty()) {
        wake_.wait_for(lock, std::chrono::milliseconds(100));
        continue;
      }
      const Task t = tasks_.top();
      if (t.due > Clock::now()) {
        wake_.wait_until(lock, std::min(t.due, Clock::now() + std::chrono::milliseconds(100)));
        continue;
      }
      tasks_.pop();
      lock.unlock();
      run_step(users_[static_cast<std::size_t>(t.user)]);
      lock.lock();
    }
  }

  void later(User& u, Step step, Millis delay) {
    u.step = step;
    {
      std::lock_guard lock(mutex_);
      tasks_.push(Task{Clock::now() + delay, u.index});
    }
    wake_.notify_one();
  }

  void end_user(User& u) {
    if (u.in_session) --in_session_;
    u.in_session = false;
    ++done_;
  }

  void fail(User& u, const std::string& kind, const std::string& text) {
    {
      std::lock_guard lock(stats_);
      ++summary_.errors[kind];
      summary_.error_examples.try_emplace(kind, u.plan.name + ": " + text);
    }
    ++failed_;
    end_user(u);
  }

  void run_step(User& u) {
    switch (u.step) {
      case Step::broker:
        if (u.attempt == 0 && u.starting == 0 && !u.returning) ++arrived_;
        return broker(u);
      case Step::disconnect:
        if (!session_action(u, "disconnect")) return;
        {
          std::lock_guard lock(stats_);
          ++summary_.disconnected;
        }
        return later(u, Step::come_back, o_.away);
      case Step::come_back:
        if (u.plan.reconnects) {
          u.returning = true;
          u.attempt = 0;
          u.starting = 0;
          return broker(u);
        }
        // Nobody comes back: the disconnected session's time limit logs it off, which the agent reports.
        return logoff(u);
      case Step::logoff:
        return logoff(u);
    }
  }

  void logoff(User& u) {
    if (!session_action(u, "logoff")) return;
    end_user(u);
  }

  /// The user's own action in their session, through the desktop's agent; false (and the user failed) when it fails.
  bool session_action(User& u, const std::string& action) {
    const ddc::SessionAction a{u.desktop, action, u.plan.endpoint};
    try {
      const auto answer = admin_.request(ddc::agent_subject(u.agent, "admin.session"), sdk::to_value(a).to_json(), o_.request_timeout);
      if (answer.status != 200) {
        fail(u, "session_" + action, "vda " + u.agent + " on " + u.desktop + ": " + envelope_text(answer));
        return false;
      }
      const auto ack = sdk::from_value<ddc::Ack>(sdk::Value::parse_json(answer.body), "Ack");
      if (!ack.ok) {
        if (ack.reason == ddc::kNoSession || ack.reason == ddc::kUnknownAgent) {
          std::lock_guard lock(stats_);
          ++summary_.sessions_lost;
        }
        fail(u, "session_" + action, u.desktop + " (" + u.agent + "): " + ack.reason + ": " + ack.detail);
        return false;
      }
      return true;
    } catch (const Poco::Exception& e) {
      fail(u, "admin_unreachable", admin_.address() + ": " + e.displayText());
    } catch (const std::exception& e) {
      fail(u, "bad_reply", std::string("session ") + action + ": " + e.what());
    }
    return false;
  }

  static std::string envelope_text(const HttpAnswer& a) {
    try {
      const auto e = sdk::from_value<sdk::Error>(sdk::Value::parse_json(a.body), "Error");
      return e.code + ": " + e.message;
    } catch (const std::exception&) {
      return "HTTP " + std::to_string(a.status) + ": " + a.body;
    }
  }
  static std::string envelope_code(const HttpAnswer& a) {
    if (a.status == 503) return "busy";
    try {
      return sdk::from_value<sdk::Error>(sdk::Value::parse_json(a.body), "Error").code;
    } catch (const std::exception&) {
      return "http_" + std::to_string(a.status);
    }
  }

  void record(const Clock::time_point asked, double ms, const std::string& controller, const std::string& outcome, bool decision) {
    std::lock_guard lock(stats_);
    summary_.samples.push_back(Sample{std::chrono::duration<double, std::milli>(asked - start_).count(), ms, controller, outcome});
    if (!decision) return;
    ++summary_.decisions;
    latencies_.push_back(ms);
    if (first_decision_ == Clock::time_point{} || asked < first_decision_) first_decision_ = asked;
    last_decision_ = std::max(last_decision_, Clock::now());
  }

  void broker(User& u) {
    const ddc::BrokerRequest q{u.plan.name, u.plan.endpoint, o_.group};
    const std::string json = sdk::to_value(q).to_json();
    std::string failures;
    for (std::size_t tried = 0; tried < controllers_.size(); ++tried, ++u.attempt) {
      const std::string& c = pick_controller(controllers_, u.index, u.attempt);
      HttpAnswer answer;
      const auto asked = Clock::now();
      try {
        // The endpoint queues a few requests and answers 503 beyond: wait briefly, bounded, and ask again.
        for (int busy = 0; busy < 200; ++busy) {
          answer = admin_.request(ddc::subject(c, "admin.broker"), json, o_.request_timeout);
          if (answer.status != 503) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      } catch (const Poco::Exception& e) {
        return fail(u, "admin_unreachable", admin_.address() + ": " + e.displayText());
      }
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - asked).count();
      if (answer.status != 200) {
        record(asked, ms, c, envelope_code(answer), false);
        failures += (failures.empty() ? "" : "; ") + c + ": " + envelope_text(answer);
        std::lock_guard lock(stats_);
        ++summary_.retries_elsewhere;
        continue;
      }
      ddc::BrokerDecision d;
      try {
        d = sdk::from_value<ddc::BrokerDecision>(sdk::Value::parse_json(answer.body), "BrokerDecision");
      } catch (const std::exception& e) {
        record(asked, ms, c, "bad_reply", false);
        return fail(u, "bad_reply", c + " answered what is no BrokerDecision: " + e.what());
      }
      record(asked, ms, c, d.outcome, true);
      return decided(u, d);
    }
    {
      std::lock_guard lock(stats_);
      if (summary_.retries_elsewhere > 0) --summary_.retries_elsewhere;  // the last failure had nowhere to go
    }
    fail(u, "no_controller", "every controller failed: " + failures);
  }

  void decided(User& u, const ddc::BrokerDecision& d) {
    if (d.outcome == "starting") {
      {
        std::lock_guard lock(stats_);
        ++summary_.starting_answers;
      }
      if (++u.starting > o_.starting_attempts)
        return fail(u, "starting", "still 'starting' after " + std::to_string(o_.starting_attempts) + " answers: " + d.why);
      return later(u, Step::broker, o_.starting_retry);
    }
    if (d.outcome == "refused") {
      if (o_.retried_refusals.contains(d.reason) && u.starting < o_.starting_attempts) {
        ++u.starting;
        {
          std::lock_guard lock(stats_);
          ++summary_.refusals_retried;
          summary_.refusal_examples.try_emplace(d.reason, u.plan.name + ": " + d.why + " (asked again)");
        }
        return later(u, Step::broker, o_.refusal_retry);
      }
      if (!u.returning && o_.expected_refusals.contains(d.reason)) {
        {
          std::lock_guard lock(stats_);
          ++summary_.refusals[d.reason];
          summary_.refusal_examples.try_emplace(d.reason, u.plan.name + ": " + d.why);
        }
        ++refused_;
        return end_user(u);
      }
      {
        std::lock_guard lock(stats_);
        ++summary_.refusals[d.reason];
        if (u.returning) ++summary_.sessions_lost;
      }
      return fail(u, "refused_" + d.reason, d.why);
    }
    if (d.outcome != "connect") return fail(u, "bad_reply", "outcome '" + d.outcome + "' is not connect, starting or refused");
    if (u.returning) {
      if (d.kind != ddc::kReconnect || d.desktop != u.desktop) {
        {
          std::lock_guard lock(stats_);
          ++summary_.sessions_lost;
        }
        return fail(u, "session_lost", "came back to " + d.desktop + " (" + d.kind + ") instead of the disconnected session on " +
                                           u.desktop + ": " + d.why);
      }
      {
        std::lock_guard lock(stats_);
        ++summary_.reconnected;
      }
      return later(u, Step::logoff, o_.session / 2);
    }
    {
      std::lock_guard lock(stats_);
      ++summary_.brokered;
    }
    u.desktop = d.desktop;
    u.controller = d.controller;
    u.in_session = true;
    ++in_session_;
    u.agent = agent_of(d.desktop, d.controller.empty() ? d.broker : d.controller, u.plan.name);
    if (u.agent.empty()) return fail(u, "agent_unknown", "no controller names the agent of " + d.desktop);
    if (u.plan.disconnects) return later(u, Step::disconnect, o_.session / 2);
    later(u, Step::logoff, o_.session);
  }

  bool learn_agents(const std::string& controller, const ddc::DesktopQuery& q) {
    try {
      const auto a = admin_.request(ddc::subject(controller, "admin.desktops"), sdk::to_value(q).to_json(), o_.request_timeout);
      if (a.status != 200) return false;
      const auto list = sdk::from_value<ddc::DesktopList>(sdk::Value::parse_json(a.body), "DesktopList");
      std::lock_guard lock(stats_);
      for (const auto& d : list.desktops)
        if (!d.agent.empty()) agents_[d.desktop] = d.agent;
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }

  std::string agent_of(const std::string& desktop, const std::string& controller, const std::string& user) {
    const auto cached = [&]() -> std::string {
      std::lock_guard lock(stats_);
      auto it = agents_.find(desktop);
      return it == agents_.end() ? std::string() : it->second;
    };
    if (auto a = cached(); !a.empty()) return a;
    ddc::DesktopQuery q;
    q.user = user;
    learn_agents(controller, q);
    return cached();
  }

  const Options& o_;
  const AdminClient& admin_;
  std::vector<std::string> controllers_;
  std::vector<User> users_;
  Clock::time_point start_{};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::priority_queue<Task, std::vector<Task>, std::greater<>> tasks_;
  bool halting_ = false;
  std::vector<std::thread> workers_;
  std::atomic<std::int64_t> arrived_{0}, in_session_{0}, done_{0}, refused_{0}, failed_{0};
  std::mutex stats_;
  Summary summary_;
  std::vector<double> latencies_;
  Clock::time_point first_decision_{}, last_decision_{};
  std::unordered_map<std::string, std::string> agents_;  ///< desktop → vda instance
};

struct Licenses {
  std::int64_t in_use = 0, total = 0;
};

std::optional<Licenses> licenses_now(const AdminClient& admin, const std::string& server) {
  try {
    const auto a = admin.request(lic::subject(server, "status"), "{}", std::chrono::seconds(5));
    if (a.status != 200) return std::nullopt;
    const auto st = sdk::from_value<lic::LicenseStatus>(sdk::Value::parse_json(a.body), "LicenseStatus");
    Licenses l;
    for (const auto& f : st.farms) {
      l.in_use += f.in_use;
      l.total += f.total;
    }
    return l;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::optional<double> pool_starts(const AdminClient& admin) {
  try {
    const auto m = admin.get("/metrics");
    if (m.status != 200) return std::nullopt;
    return metric_sum(m.body, "deskfarm_ddc_power_starts_total");
  } catch (const Poco::Exception&) {
    return std::nullopt;
  }
}

}  // namespace

Summary run(const Options& o, const AdminClient& admin, std::ostream& progress, bool tty, const std::atomic<bool>* stop) {
  std::vector<std::string> controllers = o.controllers;
  std::string license = o.license;
  {
    HttpAnswer status;
    try {
      status = admin.get("/status");
    } catch (const Poco::Exception& e) {
      throw std::runtime_error("cannot reach the admin endpoint at " + admin.address() + ": " + e.displayText());
    }
    if (status.status != 200) throw std::runtime_error("the admin endpoint at " + admin.address() + " answered /status with HTTP " + std::to_string(status.status));
    if (controllers.empty()) {
      controllers = instances_of(status.body, "ddc");
      std::sort(controllers.begin(), controllers.end());  // the rotation is the same whatever the start order
    }
    if (license.empty()) {
      const auto servers = instances_of(status.body, "license");
      if (!servers.empty()) license = servers.front();
    }
  }
  if (controllers.empty())
    throw std::runtime_error("the deployment at " + admin.address() + " runs no ddc instance; name the controllers with --controllers");
  const auto starts_before = pool_starts(admin);

  Driver driver(o, admin, controllers);
  driver.prefetch_agents();
  const Millis bound = o.deadline.count() > 0
                           ? o.deadline
                           : Millis(static_cast<std::int64_t>(static_cast<double>(o.users) * 1000.0 / o.rate_per_s)) + o.session + o.away +
                                 std::chrono::seconds(120);
  driver.start();
  std::int64_t peak = -1, total = -1;
  auto last_line = Clock::now() - std::chrono::seconds(1);
  std::size_t last_width = 0;
  const auto print = [&](bool final_line) {
    auto p = driver.progress();
    p.licenses = peak < 0 ? -1 : peak;
    std::string line = progress_line(p, o.users);
    if (tty) {
      const std::size_t width = line.size();
      if (width < last_width) line += std::string(last_width - width, ' ');
      last_width = width;
      progress << "\r" << line << (final_line ? "\n" : "") << std::flush;
    } else {
      progress << line << "\n" << std::flush;
    }
  };
  while (driver.done() < o.users && Clock::now() - driver.started() < bound && !(stop && stop->load())) {
    if (!license.empty()) {
      if (auto l = licenses_now(admin, license)) {
        peak = std::max(peak, l->in_use);
        total = l->total;
      }
    }
    if (tty || Clock::now() - last_line >= std::chrono::seconds(1)) {
      print(false);
      last_line = Clock::now();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(tty ? 200 : 250));
  }
  driver.halt();
  print(true);
  Summary s = driver.finish();
  s.seconds = std::chrono::duration<double>(Clock::now() - driver.started()).count();
  s.license = license;
  if (!license.empty()) {
    // Licences go back asynchronously after the last logoff: give them a moment (bounded) before reading the end.
    std::optional<Licenses> l;
    for (int i = 0; i < 50; ++i) {
      l = licenses_now(admin, license);
      if (l && l->in_use == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    s.licenses_peak = std::max<std::int64_t>(peak, 0);
    s.licenses_end = l ? l->in_use : -1;
    s.licenses_total = l ? l->total : total;
  }
  if (const auto after = pool_starts(admin); after && starts_before) s.pool_starts = static_cast<std::int64_t>(*after - *starts_before);
  return s;
}

}  // namespace deskfarm::cli::storm
