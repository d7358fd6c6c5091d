// The SDK's role-facing pieces, end to end through the kernel: values and records, config schemas, typed
// requests with the error envelope, blocking work, discovery.
#include <chrono>
#include <future>

#include <Poco/Data/DataException.h>
#include <catch2/catch.hpp>
#include <deskfarm/sdk/plugin.hpp>
#include <deskfarm/sdk/time_text.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "config_check.hpp"
#include "deployment.hpp"
#include "service_messages.hpp"

using namespace deskfarm;
using namespace deskfarm::kernel;
using namespace std::chrono_literals;


namespace {

struct Inner {
  std::string name;
  std::optional<std::int64_t> size;
  static constexpr auto fields() { return std::tuple{sdk::field("name", &Inner::name), sdk::field("size", &Inner::size)}; }
};
struct Outer {
  static constexpr std::string_view type_name = "deskfarm.test.Outer";
  static constexpr std::uint32_t type_version = 1;
  std::uint16_t port = 0;
  bool on = false;
  double ratio = 0;
  std::vector<Inner> items;
  std::map<std::string, std::string> labels;
  sdk::Secret password;
  static constexpr auto fields() {
    return std::tuple{sdk::field("port", &Outer::port),   sdk::field("on", &Outer::on),
                      sdk::field("ratio", &Outer::ratio), sdk::field("items", &Outer::items),
                      sdk::field("labels", &Outer::labels), sdk::field("password", &Outer::password)};
  }
};

struct Lab {
  deskfarm::testing::TempDir scratch{"deskfarm-sdk"};
  std::vector<std::string> lines;
  LogSink log{sdk::LogLevel::debug};
  PluginCatalog catalog{{FIXTURE_PLUGIN_DIR}};
  Lab() { log.capture([this](const std::string& l) { lines.push_back(l); }); }
  Manifest manifest(const std::string& instances) {
    const std::string text = "[deployment]\nname = \"lab\"\nstate_dir = \"" + (scratch.path() / "var").string() + "\"\n\n" + instances;
    deskfarm::testing::write_text(scratch.path() / "lab.toml", text);
    return load_manifest(scratch.path() / "lab.toml");
  }
  std::string check_error(const std::string& instances) {
    try {
      Deployment d(manifest(instances), catalog, log);  // validation only: nothing is created or started
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  }
};

/// Sends a typed request from inside instance `from` and waits for the reply.
sdk::Reply<Total> ask(Deployment& d, const std::string& from, const std::string& subject, sdk::Message m) {
  auto done = std::make_shared<std::promise<sdk::Reply<Total>>>();
  auto answer = done->get_future();
  m.subject = subject;
  d.run_on(from, [done, m](sdk::Plugin&, sdk::Context& ctx) mutable {
    ctx.bus().request(std::move(m), 5s, [done](const sdk::Message* reply, std::string_view error) {
      if (!reply) return done->set_value(sdk::Reply<Total>(sdk::Error{"bus", std::string(error)}));
      if (auto e = sdk::body_of<sdk::Error>(*reply)) return done->set_value(sdk::Reply<Total>(*e));
      done->set_value(sdk::Reply<Total>(*sdk::body_of<Total>(*reply)));
    });
  });
  REQUIRE(answer.wait_for(10s) == std::future_status::ready);
  return answer.get();
}

}  // namespace

TEST_CASE("a record converts to JSON and back, and a value of the wrong kind names its path") {
  Outer o{8080, true, 0.25, {{"a", 3}, {"b", std::nullopt}}, {{"zone", "east"}}, sdk::Secret("hunter2")};
  const auto v = sdk::to_value(o);
  CHECK(v.find("password")->as_string() == "********");  // secrets never leave in the clear
  const auto back = sdk::decode_body<Outer>(v.to_json());
  CHECK(back.port == 8080);
  CHECK(back.on);
  CHECK(back.ratio == 0.25);
  REQUIRE(back.items.size() == 2);
  CHECK(back.items[0].size == 3);
  CHECK_FALSE(back.items[1].size.has_value());
  CHECK(back.labels.at("zone") == "east");
  CHECK_THROWS_WITH(sdk::decode_body<Outer>(R"({"items":[{"name":"a"},{"name":7}]})"),
                    Catch::Contains("deskfarm.test.Outer.items[1].name: expected a string, found integer"));
  CHECK_THROWS_WITH(sdk::decode_body<Outer>(R"({"port":70000})"), Catch::Contains("port: expected an integer in 0..65535"));
  CHECK_THROWS_WITH(sdk::Value::parse_json("{\"a\": }"), Catch::Contains("invalid JSON"));
}

TEST_CASE("iso8601 writes deployment time in UTC to the second or to the millisecond") {
  const sdk::TimePoint t{std::chrono::seconds(1'796'040'000) + std::chrono::milliseconds(7) + std::chrono::microseconds(999)};
  CHECK(sdk::iso8601(t) == "2026-11-30T12:00:00Z");
  CHECK(sdk::iso8601(t, true) == "2026-11-30T12:00:00.007Z");
  CHECK(sdk::iso8601(sdk::TimePoint{}, true) == "1970-01-01T00:00:00.000Z");
  // Before the epoch the milliseconds still count forward from the second.
  CHECK(sdk::iso8601(sdk::TimePoint{} - std::chrono::milliseconds(1), true) == "1969-12-31T23:59:59.999Z");
}

TEST_CASE("error_text gives a Poco exception's message, not only its class name") {
  const Poco::Data::DataException poco("no such column: peer");
  CHECK(std::string(poco.what()) == "Database Exception");  // Poco's what(): the class name alone
  CHECK(deskfarm::sdk::error_text(poco) == "Database Exception: no such column: peer");
  CHECK(deskfarm::sdk::error_text(std::runtime_error("plain")) == "plain");
}

TEST_CASE("a message of the right type and another version is refused, not cast") {
  sdk::Message m = sdk::make_message("x.y", Sum{{1}});
  m.version = 2;
  CHECK_THROWS_WITH(sdk::body_of<Sum>(m), Catch::Contains("deskfarm.fixture.Sum version 2 on subject x.y") &&
                                              Catch::Contains("understands version 1"));
  CHECK(sdk::body_of<Total>(m) == nullptr);  // another type is simply not this one
}

TEST_CASE("schema ranges, choices and nested tables are checked before anything starts") {
  Lab lab;
  const auto e = lab.check_error(
      "[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\nratio = 1.5\nmode = \"slw\"\n");
  CHECK(e.find("lab.toml:8:9: key 'ratio' of instance a is 1.5, outside 0..1") != std::string::npos);
  CHECK(e.find("lab.toml:9:8: key 'mode' of instance a is \"slw\"; it must be one of fast, slow. Did you mean 'slow'?") !=
        std::string::npos);
  // The plugin's own validate() runs at check time too.
  const auto v = lab.check_error("[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\nlimit = -1\n");
  CHECK(v.find("refused its config: limit must not be negative") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(lab.scratch.path() / "var"));  // check touched nothing
}

namespace {
struct Part {
  std::string name;
  std::int64_t size = 0;
  std::vector<std::string> tags;
};
struct Assembly {
  std::vector<Part> parts;
};
constexpr auto part_schema = sdk::schema<Part>(sdk::option("name", &Part::name, nullptr, "its name"),
                                               sdk::option("size", &Part::size, "7", "its size"),
                                               sdk::option("tags", &Part::tags, "[\"spare\"]", "its tags"));
constexpr auto assembly_schema = sdk::schema<Assembly>(
    sdk::option("parts", &Assembly::parts, "[{ name = \"a\" }, { name = \"b\", size = 3 }]", "the parts", part_schema));
}  // namespace

TEST_CASE("a table array's default from the schema gets its tables' own defaults, as a manifest's tables do") {
  Diagnostics diags;
  const auto at = [](const std::string&) { static const Location l{"lab.toml", 1, 1}; return ValueSite{&l, &l}; };
  const auto check = [&](const std::string& text) {
    return assembly_schema.bind(check_config(toml::parse(text), assembly_schema.keys.data(),
                                             static_cast<std::uint32_t>(assembly_schema.keys.size()), at,
                                             ConfigContext{"lab", "fixture"}, diags));
  };
  const auto defaulted = check("");
  REQUIRE(diags.empty());
  REQUIRE(defaulted.parts.size() == 2);
  CHECK(defaulted.parts[0].name == "a");
  CHECK(defaulted.parts[0].size == 7);  // left out of the default: the element schema's default
  CHECK(defaulted.parts[0].tags == std::vector<std::string>{"spare"});
  CHECK(defaulted.parts[1].size == 3);  // given by the default: kept
  CHECK(defaulted.parts[1].tags == std::vector<std::string>{"spare"});
  // The same tables written in a manifest bind to the same values.
  const auto given = check("parts = [{ name = \"a\" }, { name = \"b\", size = 3 }]");
  REQUIRE(diags.empty());
  REQUIRE(given.parts.size() == 2);
  CHECK(given.parts[0].size == defaulted.parts[0].size);
  CHECK(given.parts[1].tags == defaulted.parts[1].tags);
}

TEST_CASE("a typed request is answered by serve, and a refusal travels as the error envelope") {
  Lab lab;
  Deployment d(lab.manifest("[instances.adder]\nplugin = \"fixture_service\"\n"), lab.catalog, lab.log);
  d.start();
  // A family declared at start is listed before its first sample.
  CHECK(d.metrics_text().find("# HELP deskfarm_fixture_refusals_total Sum requests refused, by reason\n"
                              "# TYPE deskfarm_fixture_refusals_total counter\n") != std::string::npos);
  const auto ok = ask(d, "adder", "adder.adder.sum", sdk::make_message("", Sum{{2, 3, 4}}));
  REQUIRE(ok.ok());
  CHECK(ok->total == 9);
  CHECK(ok->by == "adder");
  const auto refused = ask(d, "adder", "adder.adder.sum", sdk::make_message("", Sum{}));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == "empty");
  CHECK(refused.error().message == "nothing to add");
  auto wrong = sdk::make_message("", Sum{{1}});
  wrong.version = 7;
  const auto mismatch = ask(d, "adder", "adder.adder.sum", wrong);
  REQUIRE_FALSE(mismatch.ok());
  CHECK(mismatch.error().code == "version_mismatch");  // not a garbled request: another version of its type
  CHECK(mismatch.error().message.find("version 7") != std::string::npos);
  d.stop();
}

TEST_CASE("an operator's JSON request reaches a typed service and gets its JSON reply") {
  Lab lab;
  Deployment d(lab.manifest("[instances.adder]\nplugin = \"fixture_service\"\n"), lab.catalog, lab.log);
  d.start();
  auto a = d.request("adder.adder.sum", R"({"terms":[40,2]})", 5s);
  REQUIRE(a.ok);
  CHECK(a.type == "deskfarm.fixture.Total");
  CHECK(sdk::Value::parse_json(a.body).find("total")->as_integer() == 42);
  a = d.request("adder.adder.sum", R"({"terms":["x"]})", 5s);
  CHECK_FALSE(a.ok);
  CHECK(a.type == "error");
  CHECK(a.body.find("bad_request") != std::string::npos);
  CHECK(a.body.find("terms[0]: expected an integer") != std::string::npos);
  a = d.request("adder.nobody.sum", "{}", 1s);
  CHECK_FALSE(a.ok);
  CHECK(a.type == "no_responders");
  a = d.request("adder.adder.sum", "{not json", 1s);
  CHECK(a.type == "bad_request");
  d.stop();
}

TEST_CASE("blocking work runs off the executor: status answers while it runs, and the reply follows") {
  Lab lab;
  Deployment d(lab.manifest("[instances.adder]\nplugin = \"fixture_service\"\nslow_ms = 800\n"), lab.catalog, lab.log);
  d.start();
  auto reply = std::async(std::launch::async, [&] { return d.request("adder.adder.slow", R"({"terms":[1,2]})", 10s); });
  std::this_thread::sleep_for(100ms);
  const auto t0 = std::chrono::steady_clock::now();
  auto status = d.status();
  CHECK(std::chrono::steady_clock::now() - t0 < 1s);  // the 800 ms job runs on the blocking pool, not the executor
  const auto a = reply.get();
  REQUIRE(a.ok);
  CHECK(sdk::Value::parse_json(a.body).find("total")->as_integer() == 3);
  d.stop();
}

TEST_CASE("blocking work is cancelled at stop: stop does not wait for the whole job and its completion never runs") {
  Lab lab;
  Deployment d(lab.manifest("[instances.adder]\nplugin = \"fixture_service\"\nslow_ms = 60000\n"), lab.catalog, lab.log);
  d.start();
  std::thread caller([&] { (void)d.request("adder.adder.slow", R"({"terms":[1]})", 2s); });
  std::this_thread::sleep_for(200ms);
  auto before = d.status()->getArray("instances")->getObject(0)->getObject("fields");
  CHECK(before->getValue<int>("blocking_started") == 1);
  const auto t0 = std::chrono::steady_clock::now();
  d.stop();
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);  // the job saw its stop_token, not its 60 s
  caller.join();
}

TEST_CASE("discovery lists the instances of a role with their endpoints and announces each as it comes up") {
  Lab lab;
  Deployment d(lab.manifest("[instances.first]\nplugin = \"fixture_service\"\nendpoint = \"127.0.0.1:7001\"\n"
                            "[instances.second]\nplugin = \"fixture_service\"\nendpoint = \"127.0.0.1:7002\"\n"),
               lab.catalog, lab.log);
  d.start();
  REQUIRE(d.request("adder.first.sum", R"({"terms":[1]})", 5s).ok);  // flushes first's queue
  auto fields = d.status()->getArray("instances")->getObject(0)->getObject("fields");
  const auto adders = fields->getArray("adders");
  REQUIRE(adders->size() == 2);
  std::set<std::string> endpoints;
  for (std::size_t i = 0; i < adders->size(); ++i) endpoints.insert(adders->getObject(i)->getObject("endpoints")->getValue<std::string>("api"));
  CHECK(endpoints == std::set<std::string>{"127.0.0.1:7001", "127.0.0.1:7002"});
  const auto up = fields->getArray("seen_up");
  bool saw_second = false;
  for (std::size_t i = 0; i < up->size(); ++i) saw_second |= up->getElement<std::string>(i) == "second";
  CHECK(saw_second);
  d.stop();
}
