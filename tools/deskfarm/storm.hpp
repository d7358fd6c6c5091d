#pragma once
// The logon storm `deskfarm storm` drives against a running deployment: simulated users arrive at a rate, ask a
// controller to broker a desktop (spread over the controllers, retrying on another when one fails, as a web
// interface with several XML servers does), hold the session the controller prepared on the desktop's agent, maybe
// disconnect and come back (brokered again: their disconnected session), and log off through the agent. Everything
// goes through the deployment's admin endpoint as typed ddc messages (sdk/interfaces/ddc).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "cli_common.hpp"

namespace deskfarm::cli::storm {

using Millis = std::chrono::milliseconds;

struct Options {
  std::int64_t users = 100;
  double rate_per_s = 10;            ///< arrivals per second
  Millis session{30000};             ///< how long a user keeps the session (while connected)
  double disconnect_ratio = 0.2;     ///< of the users, who disconnect halfway through the session
  double reconnect_ratio = 0.5;      ///< of those, who come back (brokered again) after `away`; the others are logged off
  Millis away{5000};                 ///< how long a disconnected user stays away
  std::vector<std::string> controllers;  ///< ddc instances to broker through; empty = every ddc in /status
  std::string license;               ///< licence server instance; empty = the one in /status, if any
  std::string group;                 ///< desktop group asked for; "" = any
  std::string user_prefix = "storm-user-";
  std::int64_t first_user = 1;       ///< users are named PREFIX<first_user + i>
  std::int64_t concurrency = 16;     ///< requests in flight at once (each on a kept-alive connection of its own)
  Millis request_timeout{10000};     ///< one bus request's deadline
  Millis starting_retry{1000};       ///< when a controller answers "starting": ask again after this
  std::int64_t starting_attempts = 120;  ///< "starting" answers a user accepts before giving up (an error)
  Millis deadline{0};                ///< the whole storm; 0 = arrivals + session + away + 120 s
  std::uint64_t seed = 1;
  std::set<std::string> expected_refusals{"no_license", "no_desktop", "maintenance", "not_entitled"};
  /// Refusals a user answers by asking again after `refusal_retry` (at most `starting_attempts` times), as a user
  /// clicks the desktop again: two controllers handing out the same idle desktop at once refuse the loser so.
  std::set<std::string> retried_refusals{"agent_refused"};
  Millis refusal_retry{200};
};

/// "50/s", "50" (per second), "300/m", "3600/h" → arrivals per second; throws std::invalid_argument naming the text.
double parse_rate(const std::string& text);
/// "0.2" or "20%" → a ratio in [0, 1]; throws std::invalid_argument naming `option`.
double parse_ratio(const std::string& text, const std::string& option);

/// What one user will do, decided up front from the seed (the same storm twice does the same).
struct UserPlan {
  std::string name;
  std::string endpoint;   ///< the client device
  Millis arrive{0};       ///< after the storm's start
  bool disconnects = false;
  bool reconnects = false;
};
UserPlan plan_user(std::int64_t index, const Options& o);

/// The controller a user's `attempt`-th try goes to: users spread round robin, a retry moves to the next one.
const std::string& pick_controller(const std::vector<std::string>& controllers, std::int64_t user, std::int64_t attempt);

/// p50 and p99 (nearest rank) of latencies in ms; zeros when empty.
struct Latency {
  double p50 = 0, p99 = 0, max = 0;
  std::size_t count = 0;
};
Latency latency_of(std::vector<double> ms);

/// One brokering answer, for --latencies and the drill (before/after a kill).
struct Sample {
  double at_ms = 0;       ///< when it was asked, since the storm's start
  double latency_ms = 0;
  std::string controller;
  std::string outcome;    ///< connect, starting, refused, or the error code
};

/// The storm's figures. Refusals are the controllers' own answers (reason → count); errors are everything else
/// that made a user fail (kind → count) with the first message of each kind.
struct Summary {
  std::int64_t users = 0, brokered = 0, refused = 0, failed = 0, unfinished = 0;
  std::int64_t decisions = 0, starting_answers = 0, retries_elsewhere = 0, reconnected = 0, disconnected = 0;
  std::int64_t refusals_retried = 0;  ///< refusals in Options::retried_refusals answered by asking again
  std::int64_t sessions_lost = 0;  ///< a disconnected user came back to another desktop, or an agent lost the session
  double seconds = 0, broker_seconds = 0;
  std::int64_t started_unix_ms = 0;  ///< wall clock at the first arrival: Sample::at_ms counts from here
  Latency broker;
  std::int64_t pool_starts = -1;       ///< deskfarm_ddc_power_starts_total delta; -1 when /metrics did not say
  std::int64_t licenses_peak = -1;     ///< -1 without a licence server
  std::int64_t licenses_end = -1;
  std::int64_t licenses_total = -1;
  std::map<std::string, std::int64_t> refusals;
  std::map<std::string, std::string> refusal_examples;  ///< the first controller's why of each reason
  std::map<std::string, std::int64_t> errors;
  std::map<std::string, std::string> error_examples;
  std::vector<std::string> controllers;
  std::string license;
  std::vector<Sample> samples;

  double decisions_per_s() const { return broker_seconds > 0 ? static_cast<double>(decisions) / broker_seconds : 0; }
  /// True when some user failed for a reason other than an expected refusal.
  bool failed_any() const { return failed > 0 || unfinished > 0; }
};

/// The summary as text (one figure a line) and as JSON (for scripts and tests).
std::string summary_text(const Summary& s);
std::string summary_json(const Summary& s);

/// The live line: users arrived, in session, done, refused, failed, decisions/s, p99 so far, licences in use.
struct Progress {
  double seconds = 0;
  std::int64_t arrived = 0, in_session = 0, done = 0, refused = 0, failed = 0, decisions = 0;
  double p99_ms = 0;
  std::int64_t licenses = -1;
};
std::string progress_line(const Progress& p, std::int64_t users);

/// Sum of the samples of one metric family in Prometheus text (every label set); nothing when absent.
std::optional<double> metric_sum(const std::string& prometheus_text, const std::string& family);

/// Runs the storm; `progress` gets the live line (rewritten in place when `tty`, else once a second).
/// `stop` ends it early (the users not done count as unfinished). Throws std::runtime_error when the deployment
/// has no controller to broker through.
Summary run(const Options& o, const AdminClient& admin, std::ostream& progress, bool tty,
            const std::atomic<bool>* stop = nullptr);

}  // namespace deskfarm::cli::storm
