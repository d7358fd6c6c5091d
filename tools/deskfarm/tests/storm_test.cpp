// The storm's pieces that need no deployment: rates and ratios, each user's plan, the controller rotation,
// percentiles, the /metrics and /status readers and the summary's text and JSON. tests/e2e/storm_test.cpp runs
// the whole command against a running deployment.
#include <catch2/catch.hpp>

#include <deskfarm/sdk/value.hpp>

#include "cli_common.hpp"
#include "storm.hpp"

using namespace deskfarm::cli::storm;
using deskfarm::cli::instances_of;

TEST_CASE("a rate is read per second, per minute or per hour and must be positive") {
  CHECK(parse_rate("50/s") == Approx(50));
  CHECK(parse_rate("50") == Approx(50));
  CHECK(parse_rate("300/m") == Approx(5));
  CHECK(parse_rate("3600/h") == Approx(1));
  CHECK_THROWS_WITH(parse_rate("fast"), Catch::Contains("--rate 'fast'"));
  CHECK_THROWS_WITH(parse_rate("5/d"), Catch::Contains("unknown unit '/d'"));
  CHECK_THROWS_WITH(parse_rate("0/s"), Catch::Contains("more than 0"));
}

TEST_CASE("a ratio is a fraction or a percentage between 0 and 1") {
  CHECK(parse_ratio("0.2", "--disconnect-ratio") == Approx(0.2));
  CHECK(parse_ratio("20%", "--disconnect-ratio") == Approx(0.2));
  CHECK_THROWS_WITH(parse_ratio("1.5", "--reconnect-ratio"), Catch::Contains("--reconnect-ratio '1.5' must be between 0 and 1"));
  CHECK_THROWS_WITH(parse_ratio("half", "--reconnect-ratio"), Catch::Contains("is not a ratio"));
}

TEST_CASE("users arrive at the rate and disconnect and come back in the proportions asked for") {
  Options o;
  o.rate_per_s = 20;
  o.disconnect_ratio = 0.2;
  o.reconnect_ratio = 0.5;
  const auto first = plan_user(0, o), tenth = plan_user(10, o);
  CHECK(first.name == "storm-user-1");
  CHECK(first.arrive == Millis(0));
  CHECK(tenth.arrive == Millis(500));
  int disconnects = 0, reconnects = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const auto p = plan_user(i, o);
    disconnects += p.disconnects;
    reconnects += p.reconnects;
    if (p.reconnects) REQUIRE(p.disconnects);  // only a disconnected user comes back
  }
  CHECK(disconnects == Approx(0.2 * n).epsilon(0.05));
  CHECK(reconnects == Approx(0.1 * n).epsilon(0.08));
  // The same seed plans the same storm; another seed another one.
  CHECK(plan_user(7, o).disconnects == plan_user(7, o).disconnects);
  o.disconnect_ratio = 0;
  for (int i = 0; i < 100; ++i) CHECK_FALSE(plan_user(i, o).disconnects);
}

TEST_CASE("users spread over the controllers and a retry moves to the next one") {
  const std::vector<std::string> cs{"ddc-1", "ddc-2", "ddc-3"};
  CHECK(pick_controller(cs, 0, 0) == "ddc-1");
  CHECK(pick_controller(cs, 1, 0) == "ddc-2");
  CHECK(pick_controller(cs, 2, 0) == "ddc-3");
  CHECK(pick_controller(cs, 2, 1) == "ddc-1");  // ddc-3 failed: the next one
  CHECK(pick_controller(cs, 2, 2) == "ddc-2");
  CHECK_THROWS(pick_controller({}, 0, 0));
}

TEST_CASE("p50 and p99 are nearest-rank percentiles") {
  std::vector<double> ms;
  for (int i = 1; i <= 100; ++i) ms.push_back(i);
  const auto l = latency_of(ms);
  CHECK(l.p50 == 50);
  CHECK(l.p99 == 99);
  CHECK(l.max == 100);
  CHECK(l.count == 100);
  CHECK(latency_of({7}).p99 == 7);
  CHECK(latency_of({}).p50 == 0);
}

TEST_CASE("a metric family is summed over its label sets and not confused with a longer name") {
  const std::string text =
      "# TYPE deskfarm_ddc_power_starts_total counter\n"
      "deskfarm_ddc_power_starts_total{instance=\"ddc-1\"} 3\n"
      "deskfarm_ddc_power_starts_total{instance=\"ddc-2\"} 4\n"
      "deskfarm_ddc_power_starts_total_extra{instance=\"ddc-2\"} 100\n";
  REQUIRE(metric_sum(text, "deskfarm_ddc_power_starts_total"));
  CHECK(*metric_sum(text, "deskfarm_ddc_power_starts_total") == 7);
  CHECK_FALSE(metric_sum(text, "deskfarm_ddc_registered"));
}

TEST_CASE("controllers and the licence server are found among the running instances of /status, in start order") {
  const std::string status = R"({"instances": [
      {"name": "ddc-2", "plugin": "ddc", "state": "running"},
      {"name": "lic", "plugin": "license", "state": "running"},
      {"name": "ddc-1", "plugin": "ddc", "state": "running"},
      {"name": "ddc-3", "plugin": "ddc", "state": "failed"}]})";
  CHECK(instances_of(status, "ddc") == std::vector<std::string>{"ddc-2", "ddc-1"});
  CHECK(instances_of(status, "license") == std::vector<std::string>{"lic"});
  CHECK(instances_of(status, "vda").empty());
}

TEST_CASE("the summary says every figure, and fails only for users that failed or did not finish") {
  Summary s;
  s.users = 10;
  s.brokered = 8;
  s.refused = 2;
  s.decisions = 12;
  s.broker_seconds = 2;
  s.broker = latency_of({1, 2, 3});
  s.refusals["no_license"] = 2;
  s.licenses_peak = 8;
  s.licenses_end = 0;
  s.licenses_total = 8;
  s.pool_starts = 4;
  s.controllers = {"ddc-1", "ddc-2"};
  s.license = "lic";
  CHECK_FALSE(s.failed_any());
  CHECK(s.decisions_per_s() == Approx(6));
  const auto text = summary_text(s);
  CHECK_THAT(text, Catch::Contains("10 users through 2 controllers"));
  CHECK_THAT(text, Catch::Contains("refusals:        no_license=2"));
  CHECK_THAT(text, Catch::Contains("peak 8 in use of 8, 0 at the end"));
  CHECK_THAT(text, Catch::Contains("pool starts:     4"));
  const auto json = deskfarm::sdk::Value::parse_json(summary_json(s));
  CHECK(json.find("brokered")->as_integer() == 8);
  CHECK(json.find("refusals")->find("no_license")->as_integer() == 2);
  CHECK(json.find("licenses_end")->as_integer() == 0);
  s.unfinished = 1;
  CHECK(s.failed_any());
  s.unfinished = 0;
  s.failed = 1;
  s.errors["no_controller"] = 1;
  CHECK(s.failed_any());
  CHECK_THAT(summary_text(s), Catch::Contains("no_controller=1"));
}

TEST_CASE("the progress line names what the storm has done so far") {
  Progress p;
  p.seconds = 2;
  p.arrived = 40;
  p.in_session = 30;
  p.done = 5;
  p.decisions = 50;
  p.p99_ms = 3.25;
  p.licenses = 30;
  const auto line = progress_line(p, 200);
  CHECK_THAT(line, Catch::Contains("40/200 arrived"));
  CHECK_THAT(line, Catch::Contains("25/s"));
  CHECK_THAT(line, Catch::Contains("30 licences in use"));
  CHECK(line.find('\n') == std::string::npos);
}
