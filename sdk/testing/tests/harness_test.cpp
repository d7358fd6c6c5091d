// The test kit itself, against the hello example and the kernel's fixture plugins.
#include <thread>

#include <catch2/catch.hpp>

#include <deskfarm/testing/harness.hpp>

#include "service_messages.hpp"

namespace {

using namespace std::chrono_literals;
namespace sdk = deskfarm::sdk;
using deskfarm::testing::Harness;
using deskfarm::testing::HarnessOptions;


HarnessOptions options(std::string clock = "") {
  HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR, FIXTURE_PLUGIN_DIR};
  o.clock = std::move(clock);
  return o;
}

const std::string greeter = "[instances.greeter]\nplugin = \"hello\"\ninterval_s = 30\n";
const std::string adder = "[instances.adder]\nplugin = \"fixture_service\"\n";

}  // namespace

TEST_CASE("a probe on the virtual clock sees no greeting within 29 s and the first one at exactly 30 s") {
  Harness h(greeter, options("virtual"));
  REQUIRE(h.is_virtual());
  h.start();
  const auto t0 = h.now();
  auto greetings = h.probe("hello.greeter");
  CHECK(!greetings.expect(29s));
  CHECK(h.now() - t0 == 29s);  // the whole span passed
  const auto first = greetings.expect_as<sdk::Text>(2s);
  REQUIRE(first);
  CHECK(first->value == "hello");
  CHECK(h.now() - t0 == 30s);  // time stopped at the greeting, not at the end of the span
  CHECK(greetings.count() == 1);
  CHECK(h.instance_status("greeter").find("greetings")->as_integer() == 1);
  h.advance(90s);  // three more ticks, captured but not taken
  CHECK(greetings.count() == 4);
  CHECK(greetings.received().at(3).subject == "hello.greeter");
}

TEST_CASE("typed requests reach a plugin's service and bring back its reply or the standard error") {
  Harness h(adder, options());
  h.start();
  const auto sum = h.request<Sum, Total>("adder.adder.sum", Sum{{1, 2, 39}});
  REQUIRE(sum.ok());
  CHECK(sum->total == 42);
  CHECK(sum->by == "adder");
  const auto empty = h.request<Sum, Total>("adder.adder.sum", Sum{});
  REQUIRE(!empty.ok());
  CHECK(empty.error().code == "empty");
  CHECK(h.request<Sum, Total>("adder.nobody.sum", Sum{{1}}).error().code == "no_responders");
}

TEST_CASE("the JSON view answers like deskfarm request") {
  Harness h(adder, options());
  h.start();
  const auto a = h.json_request("adder.adder.sum", R"({"terms":[20,22]})");
  INFO(a.body);
  REQUIRE(a.ok);
  CHECK(a.type == "deskfarm.fixture.Total");
  CHECK(sdk::Value::parse_json(a.body).find("total")->as_integer() == 42);
  const auto bad = h.json_request("adder.adder.sum", R"({"terms":[]})");
  CHECK(!bad.ok);
  CHECK(bad.type == "error");
  CHECK(sdk::from_value<sdk::Error>(sdk::Value::parse_json(bad.body)).code == "empty");
  CHECK(h.json_request("adder.adder.sum", "{not json").type == "bad_request");
}

TEST_CASE("status, metrics and captured logs describe the running deployment") {
  Harness h(adder, options());
  h.start();
  REQUIRE(h.instances() == std::vector<std::string>{"adder"});
  const auto status = h.status();
  CHECK(status.find("deployment")->as_string() == "harness");
  const auto& instances = status.find("instances")->as_array();
  REQUIRE(instances.size() == 1);
  CHECK(instances[0].find("state")->as_string() == "running");
  CHECK(h.metrics_text().find("deskfarm_instances{state=\"running\"} 1") != std::string::npos);
  CHECK(h.logged("instance adder (fixture_service"));
  CHECK(!h.logged("instance adder stopped"));
  h.stop();
  CHECK(!h.running());
  CHECK(h.logged("instance adder stopped"));
  CHECK(h.logs().size() >= 3);
}

TEST_CASE("messages published from the harness reach a probe, and run_on runs on the instance") {
  Harness h(adder, options());
  h.start();
  auto probe = h.probe("kit.>");
  h.publish("kit.test.one", sdk::Text{"hi"});
  const auto m = probe.await(5s);
  REQUIRE(m);
  CHECK(m->subject == "kit.test.one");
  CHECK(sdk::body_of<sdk::Text>(*m)->value == "hi");
  std::string name;
  h.run_on("adder", [&](sdk::Plugin&, sdk::Context& ctx) { name = ctx.name(); });
  CHECK(name == "adder");
  CHECK_THROWS_WITH(h.run_on("adder", [](sdk::Plugin&, sdk::Context&) { std::this_thread::sleep_for(1s); }, 50ms),
                    Catch::Contains("task on adder"));
  CHECK_THROWS_AS(h.run_on("nobody", [](sdk::Plugin&, sdk::Context&) {}), std::invalid_argument);
  CHECK_THROWS_AS(h.probe("bad..pattern"), std::invalid_argument);
}

TEST_CASE("a probe outlives its harness and keeps what it received") {
  std::optional<deskfarm::testing::Probe> kept;
  {
    Harness h(greeter, options("virtual"));
    h.start();
    kept = h.probe("hello.*");
    h.advance(61s);
  }
  CHECK(kept->count() == 2);
  const auto first = kept->expect(1ms);  // taken from what it had
  REQUIRE(first);
  CHECK(!first->body);  // the plugin that made the body is unloaded; its bytes remain
  CHECK(sdk::body_of<sdk::Text>(*first)->value == "hello");
  CHECK(kept->expect(1ms));
  CHECK(!kept->expect(10ms));
}

TEST_CASE("manifest and start errors come back with the kernel's positions, and misuse is refused") {
  HarnessOptions o = options();
  o.source_name = "kit.toml";
  CHECK_THROWS_WITH(Harness("[instances.x]\nplugin = \"fixture_service\"\nslow_ms = \"soon\"\n", o),
                    Catch::Contains("kit.toml:3:") && Catch::Contains("slow_ms"));
  CHECK_THROWS_WITH(Harness("[instances.x]\nplugin = \"no_such_plugin\"\n", o), Catch::Contains("no_such_plugin"));
  Harness failing("[instances.boom]\nplugin = \"fixture_throwing_start\"\n", o);
  CHECK_THROWS_WITH(failing.start(), Catch::Contains("boom"));
  CHECK(!failing.running());

  Harness real(adder, o);
  CHECK_THROWS_AS(real.probe("adder.>"), std::logic_error);  // not started
  real.start();
  CHECK(!real.is_virtual());
  CHECK_THROWS_WITH(real.advance(1s), Catch::Contains("real clock"));
}

TEST_CASE("the default state_dir is a fresh directory removed with the harness, and a given one is kept") {
  std::filesystem::path dir;
  {
    Harness h(adder, options());
    dir = h.state_dir();
    h.start();
    CHECK(std::filesystem::is_directory(dir));
  }
  CHECK(!std::filesystem::exists(dir));

  HarnessOptions o = options();
  o.state_dir = dir.parent_path().parent_path() / ("deskfarm-kit-kept-" + std::to_string(::getpid()));
  {
    Harness h(adder, o);
    CHECK(h.state_dir() == o.state_dir);
  }
  CHECK(std::filesystem::is_directory(o.state_dir));
  std::filesystem::remove_all(o.state_dir);
}

TEST_CASE("describe reads a plugin's descriptor and config schema") {
  const auto info = Harness::describe("hello", {PLUGIN_DIR});
  CHECK(info.name == "hello");
  CHECK(info.provides == std::vector<std::string>{"greeter"});
  REQUIRE(info.config.size() == 2);
  CHECK(info.config[1].name == "interval_s");
  CHECK(info.config[1].default_toml == "30");
  CHECK_THROWS_WITH(Harness::describe("no_such_plugin", {PLUGIN_DIR}), Catch::Contains("no_such_plugin"));
}
