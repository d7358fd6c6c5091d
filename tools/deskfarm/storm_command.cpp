#include "storm_command.hpp"

#include <unistd.h>

#include <csignal>
#include <fstream>
#include <iostream>
#include <sstream>

#include <boost/program_options.hpp>

#include "cli_common.hpp"
#include "storm.hpp"

namespace deskfarm::cli {

namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

storm::Millis millis(const std::string& text, const std::string& option) {
  return std::chrono::duration_cast<storm::Millis>(parse_duration(text, option));
}

std::atomic<bool> interrupted{false};
extern "C" void on_interrupt(int) { interrupted = true; }

}  // namespace

int cmd_storm(int argc, char** argv) {
  namespace po = boost::program_options;
  storm::Options o;
  std::string admin, rate = "10/s", session = "30s", away = "5s", disconnect = "0.2", reconnect = "0.5", controllers, refusals,
              timeout = "10s", starting_retry = "1s", refusal_retry = "200ms", retried = "agent_refused", deadline = "0", json, latencies;
  long long users = o.users, concurrency = o.concurrency, seed = static_cast<long long>(o.seed), first = o.first_user,
            starting_attempts = o.starting_attempts;
  std::vector<std::string> args;
  po::options_description visible(
      "usage: deskfarm storm [MANIFEST] [OPTIONS]\n\n"
      "A logon storm against a running deployment, through its admin endpoint (found as `deskfarm status` finds it):\n"
      "users arrive at --rate, each asks a controller to broker a desktop (users spread over the controllers; a\n"
      "controller that fails is retried on the next, as a web interface with several XML servers does; \"starting\"\n"
      "answers are asked again), holds the session the controller prepared on the desktop's agent, maybe disconnects\n"
      "halfway and comes back (brokered again onto the disconnected session) or is logged off, and logs off through\n"
      "the agent. A progress line goes to stderr (rewritten when it is a terminal, else once a second); the summary\n"
      "to stdout: brokering latency p50/p99 (each request's round trip through the admin endpoint), decisions/s,\n"
      "desktops the pool service started (the deployment's /metrics), licences in use at peak (sampled every\n"
      "250 ms) and at the end, refusals by reason, errors by kind.\n\n"
      "exit codes: 0 every user was brokered or got an expected refusal, 1 some user failed otherwise (or did not\n"
      "finish in time), 2 usage error, 5 deployment not reachable\n\noptions");
  visible.add_options()
      ("help,h", "print this help")
      ("admin", po::value(&admin), "admin endpoint HOST:PORT (instead of MANIFEST's state directory)")
      ("users", po::value(&users)->default_value(users), "simulated users, 1..1000000")
      ("rate", po::value(&rate)->default_value(rate), "arrivals: N/s, N/m or N/h (N alone: per second)")
      ("session", po::value(&session)->default_value(session), "how long a user keeps the session (ms, s, m, h)")
      ("disconnect-ratio", po::value(&disconnect)->default_value(disconnect), "share of users who disconnect halfway through the session (0.2 or 20%)")
      ("reconnect-ratio", po::value(&reconnect)->default_value(reconnect),
       "share of the disconnected users who come back after --away and are brokered onto their session; the others are logged off then")
      ("away", po::value(&away)->default_value(away), "how long a disconnected user stays away")
      ("controllers", po::value(&controllers), "ddc instances to broker through, a,b,c (default: every ddc instance the deployment's /status lists)")
      ("license", po::value(&o.license), "licence server instance to watch (default: the license instance in /status, if any)")
      ("group", po::value(&o.group), "desktop group to ask for (default: any the user may use)")
      ("user-prefix", po::value(&o.user_prefix)->default_value(o.user_prefix), "users are named PREFIX1, PREFIX2, …")
      ("first-user", po::value(&first)->default_value(first), "number of the first user (two storms side by side use different ranges)")
      ("concurrency", po::value(&concurrency)->default_value(concurrency), "requests in flight at once, 1..256 (each on a kept-alive connection; the admin endpoint holds up to admin_inflight bus requests)")
      ("timeout", po::value(&timeout)->default_value(timeout), "one request's deadline")
      ("starting-retry", po::value(&starting_retry)->default_value(starting_retry), "after a \"starting\" answer, ask again after this")
      ("starting-attempts", po::value(&starting_attempts)->default_value(starting_attempts), "\"starting\" answers (and retried refusals) a user accepts before it counts as failed")
      ("expect-refusals", po::value(&refusals)->default_value("no_license,no_desktop,maintenance,not_entitled"),
       "refusal reasons that end a user without failing the storm (others fail it)")
      ("retry-refusals", po::value(&retried)->default_value(retried),
       "refusal reasons a user answers by asking again after --refusal-retry (at most --starting-attempts times), as a user "
       "clicks again: two controllers handing out one idle desktop at once refuse the loser with agent_refused")
      ("refusal-retry", po::value(&refusal_retry)->default_value(refusal_retry), "how long a refused user waits before asking again")
      ("deadline", po::value(&deadline)->default_value(deadline), "end the storm after this long, users not done count as unfinished (0: arrivals + session + away + 120 s)")
      ("seed", po::value(&seed)->default_value(seed), "seed of who disconnects and who comes back")
      ("json", po::value(&json), "also write the summary as JSON to this file (- for stdout instead of the text)")
      ("latencies", po::value(&latencies), "write every brokering answer as CSV (at_ms,latency_ms,controller,outcome) to this file");
  po::options_description hidden;
  hidden.add_options()("args", po::value(&args));
  po::options_description all;
  all.add(visible).add(hidden);
  po::positional_options_description positional;
  positional.add("args", -1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc - 1, argv + 1).options(all).positional(positional).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "deskfarm storm: " << e.what() << "\n\n" << visible;
    return usage;
  }
  if (vm.count("help")) {
    std::cout << visible;
    return ok;
  }
  if (args.size() > 1) {
    std::cerr << "deskfarm storm: give at most one MANIFEST\n";
    return usage;
  }
  try {
    if (users < 1 || users > 1000000) throw std::invalid_argument("--users must be 1..1000000");
    if (concurrency < 1 || concurrency > 256) throw std::invalid_argument("--concurrency must be 1..256");
    if (starting_attempts < 0) throw std::invalid_argument("--starting-attempts must not be negative");
    if (seed < 0) throw std::invalid_argument("--seed must not be negative");
    o.users = users;
    o.concurrency = concurrency;
    o.first_user = first;
    o.starting_attempts = starting_attempts;
    o.seed = static_cast<std::uint64_t>(seed);
    o.rate_per_s = storm::parse_rate(rate);
    o.session = millis(session, "--session");
    o.away = millis(away, "--away");
    o.request_timeout = millis(timeout, "--timeout");
    o.starting_retry = millis(starting_retry, "--starting-retry");
    o.deadline = millis(deadline, "--deadline");
    o.refusal_retry = millis(refusal_retry, "--refusal-retry");
    const auto again = split_list(retried);
    o.retried_refusals = std::set<std::string>(again.begin(), again.end());
    o.disconnect_ratio = storm::parse_ratio(disconnect, "--disconnect-ratio");
    o.reconnect_ratio = storm::parse_ratio(reconnect, "--reconnect-ratio");
    o.controllers = split_list(controllers);
    const auto expected = split_list(refusals);
    o.expected_refusals = std::set<std::string>(expected.begin(), expected.end());
    if (o.request_timeout.count() < 1) throw std::invalid_argument("--timeout must be at least 1ms");
  } catch (const std::invalid_argument& e) {
    std::cerr << "deskfarm storm: " << e.what() << "\n";
    return usage;
  }
  int code = ok;
  std::optional<AdminTarget> target;
  try {
    target = admin_target(admin, "storm", args.empty() ? "" : args[0], code);
  } catch (const std::exception& e) {
    std::cerr << "deskfarm storm: " << e.what() << "\n";
    return invalid;
  }
  if (!target) return code;
  // Ctrl-C ends the storm early and still prints what it measured.
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  storm::Summary s;
  try {
    AdminClient client(*target);
    s = storm::run(o, client, std::cerr, ::isatty(STDERR_FILENO) != 0, &interrupted);
  } catch (const std::runtime_error& e) {
    std::cerr << "deskfarm storm: " << e.what() << "\n";
    return unreachable;
  }
  if (!latencies.empty()) {
    std::ofstream out(latencies);
    out << "at_ms,latency_ms,controller,outcome\n";
    for (const auto& x : s.samples) out << x.at_ms << "," << x.latency_ms << "," << x.controller << "," << x.outcome << "\n";
    if (!out) std::cerr << "deskfarm storm: cannot write --latencies " << latencies << "\n";
  }
  if (json == "-") {
    std::cout << storm::summary_json(s) << "\n";
  } else {
    std::cout << storm::summary_text(s);
    if (!json.empty()) {
      std::ofstream out(json);
      out << storm::summary_json(s) << "\n";
      if (!out) std::cerr << "deskfarm storm: cannot write --json " << json << "\n";
    }
  }
  return s.failed_any() ? runtime_failure : ok;
}

}  // namespace deskfarm::cli
