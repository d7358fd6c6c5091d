#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <sstream>
#include <thread>

#include <catch2/catch.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "deployment.hpp"

using namespace deskfarm;
using namespace deskfarm::kernel;
using namespace std::chrono_literals;

namespace {
struct Lab {
  deskfarm::testing::TempDir scratch{"deskfarm-deploy"};
  std::filesystem::path dir = scratch.path();
  std::vector<std::string> lines;
  LogSink log{sdk::LogLevel::debug};
  PluginCatalog catalog{{FIXTURE_PLUGIN_DIR}};
  Lab() { log.capture([this](const std::string& l) { lines.push_back(l); }); }
  std::filesystem::path journal() const { return dir / "journal.txt"; }
  // The file whose creation ends a fixture_blocking wait.
  std::filesystem::path release_file() const { return dir / "release"; }
  void release() const { deskfarm::testing::write_text(release_file(), "go"); }
  // A manifest with the given instance tables; JOURNAL and RELEASE are replaced by those paths.
  Manifest manifest(std::string instances, std::string extra_deployment = "") {
    for (std::size_t p; (p = instances.find("JOURNAL")) != std::string::npos;) instances.replace(p, 7, journal().string());
    for (std::size_t p; (p = instances.find("RELEASE")) != std::string::npos;) instances.replace(p, 7, release_file().string());
    const std::string text = "[deployment]\nname = \"lab\"\nstate_dir = \"" + (dir / "var").string() + "\"\n" +
                             extra_deployment + "\n" + instances;
    deskfarm::testing::write_text(dir / "lab.toml", text);
    return load_manifest(dir / "lab.toml");
  }
  std::string journal_text() const { return deskfarm::testing::read_text(journal()); }
  std::string error_of(const std::string& instances) {
    try {
      Deployment d(manifest(instances), catalog, log);
      d.start();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  }
};
}  // namespace

TEST_CASE("a plugin built for another ABI is refused with the versions and the fix") {
  Lab lab;
  const auto e = lab.error_of("[instances.a]\nplugin = \"fixture_wrong_abi\"\n");
  CHECK(e.find("fixture_wrong_abi.so: plugin ABI mismatch: the library was built for plugin ABI 999 (SDK 9.0.0), "
               "this kernel requires ABI " + std::to_string(DESKFARM_PLUGIN_ABI)) != std::string::npos);
  CHECK(e.find("rebuild the plugin against SDK " DESKFARM_SDK_VERSION) != std::string::npos);
}

TEST_CASE("a plugin built against another Poco is refused, since the data store hands it Poco objects") {
  Lab lab;
  const auto e = lab.error_of("[instances.a]\nplugin = \"fixture_wrong_poco\"\n");
  CHECK(e.find("fixture_wrong_poco.so: the plugin was built against Poco 1.9.4, this kernel uses Poco ") != std::string::npos);
  CHECK(e.find("rebuild the plugin against the SDK installed with this kernel") != std::string::npos);
}

TEST_CASE("a library without the entry point is refused as not a plugin") {
  Lab lab;
  const auto e = lab.error_of("[instances.a]\nplugin = \"fixture_no_entry\"\n");
  CHECK(e.find("fixture_no_entry.so: not a deskfarm plugin: the library exports no 'deskfarm_plugin' entry point") !=
        std::string::npos);
  CHECK(e.find("DESKFARM_PLUGIN(") != std::string::npos);
}

TEST_CASE("an unknown plugin is named with what exists and a suggestion") {
  Lab lab;
  const auto e = lab.error_of("[instances.a]\nplugin = \"fixture_recordr\"\n");
  CHECK(e.find("lab.toml:6:10: unknown plugin 'fixture_recordr'. Did you mean 'fixture_recorder'?") != std::string::npos);
  CHECK(e.find("plugins found: ") != std::string::npos);
}

TEST_CASE("unknown config keys, wrong types and missing required keys are errors at their position") {
  Lab lab;
  const auto e = lab.error_of(
      "[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\njournl = \"j\"\nlimit = \"ten\"\n"
      "[instances.b]\nplugin = \"fixture_recorder\"\n");
  CHECK(e.find("lab.toml:8:1: unknown key 'journl' for plugin fixture_recorder (instance a). Did you mean 'journal'?") !=
        std::string::npos);
  CHECK(e.find("lab.toml:9:9: key 'limit' of instance a must be integer, found string") != std::string::npos);
  CHECK(e.find("lab.toml:10:12: instance b lacks required key 'required_key' (string)") != std::string::npos);
}

TEST_CASE("a value the plugin refuses is reported at the key") {
  Lab lab;
  const auto e = lab.error_of("[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\nlimit = -3\n");
  CHECK(e.find("lab.toml:8:9: instance a (plugin fixture_recorder) refused its config: limit must not be negative") !=
        std::string::npos);
}

TEST_CASE("a throwing constructor is reported and nothing starts") {
  Lab lab;
  const auto e = lab.error_of(
      "[instances.first]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\njournal = \"JOURNAL\"\n"
      "[instances.boom]\nplugin = \"fixture_throwing_ctor\"\n");
  CHECK(e.find("instance boom (plugin fixture_throwing_ctor) could not be created: cannot reach the hypervisor at 127.0.0.1:1") !=
        std::string::npos);
  CHECK(lab.journal_text().empty());
}

TEST_CASE("a throwing start stops what already started, in reverse order") {
  Lab lab;
  const auto e = lab.error_of(
      "[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\njournal = \"JOURNAL\"\n"
      "[instances.b]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\njournal = \"JOURNAL\"\nrequires = [\"a\"]\n"
      "[instances.boom]\nplugin = \"fixture_throwing_start\"\nrequires = [\"b\"]\n");
  CHECK(e == "instance boom (plugin fixture_throwing_start) failed to start: port 69 is already in use");
  CHECK(lab.journal_text() == "start a\nstart b\nstop b\nstop a\n");
}

TEST_CASE("instances start in requires order and stop in reverse") {
  Lab lab;
  auto m = lab.manifest(
      "[instances.c]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\njournal = \"JOURNAL\"\nrequires = [\"b\"]\n"
      "[instances.b]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\njournal = \"JOURNAL\"\nrequires = [\"a\"]\n"
      "[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\njournal = \"JOURNAL\"\n");
  Deployment d(m, lab.catalog, lab.log);
  CHECK(d.start_order() == std::vector<std::string>{"a", "b", "c"});
  d.start();
  auto status = d.status();
  CHECK(status->getArray("instances")->getObject(0)->getValue<std::string>("state") == "running");
  CHECK(status->getArray("instances")->getObject(0)->getValue<std::string>("health") == "ok");
  d.stop();
  CHECK(lab.journal_text() == "start a\nstart b\nstart c\nstop c\nstop b\nstop a\n");
}

TEST_CASE("a required role orders its provider first, and a missing role is an error") {
  Lab lab;
  auto m = lab.manifest(
      "[instances.user]\nplugin = \"fixture_consumer\"\nrequired_key = \"x\"\njournal = \"JOURNAL\"\n"
      "[instances.maker]\nplugin = \"fixture_provider\"\nrequired_key = \"x\"\njournal = \"JOURNAL\"\n");
  Deployment d(m, lab.catalog, lab.log);
  CHECK(d.start_order() == std::vector<std::string>{"maker", "user"});
  const auto e = lab.error_of("[instances.user]\nplugin = \"fixture_consumer\"\nrequired_key = \"x\"\n");
  CHECK(e.find("instance user (plugin fixture_consumer) requires role 'widget', which no instance in this deployment provides") !=
        std::string::npos);
}

TEST_CASE("a requires cycle is named as a path") {
  Lab lab;
  const auto e = lab.error_of(
      "[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\nrequires = [\"c\"]\n"
      "[instances.b]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\nrequires = [\"a\"]\n"
      "[instances.c]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\nrequires = [\"b\"]\n");
  CHECK(e.find("dependency cycle: a → c → b → a") != std::string::npos);
  const auto unknown = lab.error_of("[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\nrequires = [\"ghost\"]\n");
  CHECK(unknown.find("lab.toml:8:13: instance a requires 'ghost', which is not an instance of this deployment") != std::string::npos);
}

TEST_CASE("instances talk over the bus and report metrics") {
  Lab lab;
  auto m = lab.manifest(
      "[instances.echo]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\necho_subject = \"echo.ping\"\n"
      "[instances.client]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\n");
  Deployment d(m, lab.catalog, lab.log);
  d.start();
  std::promise<std::string> answer;
  d.run_on("client", [&](sdk::Plugin&, sdk::Context& ctx) {
    ctx.bus().request(sdk::make_message("echo.ping", sdk::Text{"marco"}), 2s, [&](const sdk::Message* r, std::string_view err) {
      answer.set_value(r ? sdk::body_as<sdk::Text>(*r)->value : std::string(err));
    });
  });
  auto f = answer.get_future();
  REQUIRE(f.wait_for(5s) == std::future_status::ready);
  CHECK(f.get() == "marco");
  const auto metrics = d.metrics_text();
  CHECK(metrics.find("deskfarm_bus_published_total{subject=\"echo.ping\"} 1") != std::string::npos);
  CHECK(metrics.find("deskfarm_instances{state=\"running\"} 2") != std::string::npos);
}

TEST_CASE("with the virtual clock, an instance's timers are simulated and cancelled at stop") {
  Lab lab;
  auto m = lab.manifest("[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\n", "clock = \"virtual\"\nclock_start = 2026-01-05T08:00:00Z\n");
  Deployment d(m, lab.catalog, lab.log);
  d.start();
  std::atomic<int> ticks{0};
  d.run_on("a", [&](sdk::Plugin&, sdk::Context& ctx) { ctx.every(30s, [&] { ++ticks; }); });
  REQUIRE(d.virtual_clock());
  const auto t0 = d.virtual_clock()->now();
  d.virtual_clock()->advance(1h);
  CHECK(ticks == 120);
  CHECK(d.virtual_clock()->now() - t0 == 1h);
  CHECK(std::chrono::duration_cast<std::chrono::seconds>(t0.time_since_epoch()).count() == 1767600000);
  // The clock dies with the deployment, so look right after the instance stopped, while it still runs:
  // stop() logs "instance a stopped" on this thread before tearing the clock down. Another simulated hour
  // then must fire nothing.
  std::optional<std::size_t> fired_after_stop;
  int ticks_after_stop = -1;
  lab.log.capture([&](const std::string& line) {
    lab.lines.push_back(line);
    if (line.find("instance a stopped") == std::string::npos || !d.virtual_clock()) return;
    fired_after_stop = d.virtual_clock()->advance(1h);
    ticks_after_stop = ticks;
  });
  d.stop();
  REQUIRE(fired_after_stop.has_value());
  CHECK(*fired_after_stop == 0);
  CHECK(ticks_after_stop == 120);
  CHECK(ticks == 120);
}

// Lifetime: a plugin call that outlives the kernel's wait must find everything it touches still alive.
// These tests prove it under AddressSanitizer (build-asan); without it a late write may go unnoticed.
namespace {
std::string blocking(const std::string& name, const std::string& block_in, const std::string& extra = "") {
  return "[instances." + name + "]\nplugin = \"fixture_blocking\"\njournal = \"JOURNAL\"\nrelease_file = \"RELEASE\"\nblock_in = \"" +
         block_in + "\"\n" + extra;
}
}  // namespace

TEST_CASE("a status() that outlives its 2 s wait reports unknown health, and its late answer harms nothing") {
  Lab lab;
  Deployment d(lab.manifest(blocking("slow", "status")), lab.catalog, lab.log);
  d.start();
  const auto first = d.status()->getArray("instances")->getObject(0);
  CHECK(first->getValue<std::string>("health") == "unknown");
  CHECK(first->getValue<std::string>("status_error") == "status() did not return within 2000 ms");
  lab.release();  // the first status() now finishes, long after the call that asked for it returned
  const auto second = d.status()->getArray("instances")->getObject(0);
  CHECK(second->getValue<std::string>("health") == "ok");
  CHECK(second->getObject("fields")->getValue<bool>("answered"));
  d.stop();
  CHECK(lab.journal_text() == "start slow\nstarted slow\nstop slow\nstopped slow\ndestroy slow\n");
}

TEST_CASE("run_on gives up after its timeout, and the task still runs later with everything it captured") {
  Lab lab;
  Deployment d(lab.manifest(blocking("a", "")), lab.catalog, lab.log);
  d.start();
  auto go = std::make_shared<std::atomic<bool>>(false);
  auto finished = std::make_shared<std::atomic<bool>>(false);
  CHECK_THROWS_WITH(d.run_on("a", [go, finished](sdk::Plugin&, sdk::Context&) {
    for (int i = 0; i < 2000 && !go->load(); ++i) std::this_thread::sleep_for(5ms);
    finished->store(go->load());  // reads its own captures after run_on has returned
  }, 100ms), "task on a did not return within 100 ms");
  go->store(true);
  CHECK(deskfarm::testing::eventually([&] { return finished->load(); }, 10s));
  d.stop();
}

TEST_CASE("a stop() that never returns is logged and leaked, not destroyed under its running code") {
  Lab lab;
  const auto t0 = std::chrono::steady_clock::now();
  {
    Deployment d(lab.manifest(blocking("stuck", "stop"), "stop_timeout_s = 1\n"), lab.catalog, lab.log);
    d.start();
    d.stop();
    CHECK(std::chrono::steady_clock::now() - t0 < 10s);  // 1 s for stop(), 1 s more to drain
  }
  bool logged = false;
  for (const auto& l : lab.lines) {
    if (l.find("instance stuck did not return from a plugin call within 1 s (stop_timeout_s); it is left running") !=
        std::string::npos)
      logged = true;
  }
  CHECK(logged);
  lab.release();  // the leaked plugin's stop() now returns and writes with its own (still live) members
  CHECK(deskfarm::testing::eventually([&] { return lab.journal_text().find("stopped stuck") != std::string::npos; }, 10s));
  CHECK(lab.journal_text().find("destroy stuck") == std::string::npos);
}

TEST_CASE("a start() that outlives start_timeout is waited for before its plugin is destroyed") {
  Lab lab;
  Deployment d(lab.manifest(blocking("late", "start"), "start_timeout_s = 1\nstop_timeout_s = 20\n"), lab.catalog, lab.log);
  // Released while the kernel drains the instance's strand, after start() has given up on it.
  std::thread releaser([&lab] {
    std::this_thread::sleep_for(1500ms);
    lab.release();
  });
  CHECK_THROWS_WITH(d.start(), "instance late (plugin fixture_blocking) failed to start: start() did not return within 1000 ms");
  releaser.join();
  // Timed out, then finished: treated as a failed start, so destroyed without stop().
  CHECK(lab.journal_text() == "start late\nstarted late\ndestroy late\n");
}

TEST_CASE("a start() that throws gets no stop() but is destroyed, and the instances started before it are stopped") {
  Lab lab;
  const auto e = lab.error_of(blocking("first", "") + blocking("boom", "", "fail_start = true\nrequires = [\"first\"]\n") +
                              blocking("never", "", "requires = [\"boom\"]\n"));
  CHECK(e == "instance boom (plugin fixture_blocking) failed to start: refused to start (fail_start)");
  CHECK(lab.journal_text() ==
        "start first\nstarted first\nstart boom\nstop first\nstopped first\ndestroy never\ndestroy boom\ndestroy first\n");
}

TEST_CASE("a failing create logs no start and leaves no state directory behind for the other instances") {
  Lab lab;
  const auto text = blocking("first", "", "use_state_dir = true\n") +
                    "[instances.refuses]\nplugin = \"fixture_throwing_ctor\"\nrequires = [\"first\"]\n";
  {
    Deployment d(lab.manifest(text), lab.catalog, lab.log);
    CHECK_THROWS_WITH(d.check(), Catch::Contains("instance refuses (plugin fixture_throwing_ctor) could not be created: cannot reach the hypervisor at 127.0.0.1:1"));
    CHECK_FALSE(std::filesystem::exists(lab.dir / "var"));
    CHECK_THROWS_WITH(d.start(), Catch::Contains("could not be created: cannot reach the hypervisor"));
    CHECK_FALSE(std::filesystem::exists(lab.dir / "var"));
  }
  for (const auto& l : lab.lines) CHECK(l.find("starting") == std::string::npos);
  CHECK(lab.journal_text() == "destroy first\ndestroy first\n");  // created and destroyed, never started
  // A manifest that passes check() leaves nothing behind either, and then starts.
  Deployment ok(lab.manifest(blocking("first", "", "use_state_dir = true\n")), lab.catalog, lab.log);
  ok.check();
  CHECK_FALSE(std::filesystem::exists(lab.dir / "var"));
  ok.start();
  CHECK(std::filesystem::is_directory(lab.dir / "var" / "first"));
  ok.stop();
}

TEST_CASE("a data-store password never appears in a start failure or a log line") {
  Lab lab;
  const std::string password = "s3cr3t-pw";
  auto m = lab.manifest(blocking("db", "", "use_store = true\n"),
                        "data_store = \"postgresql://127.0.0.1:1/db?user=u&password=" + password + "\"\n");
  Deployment d(m, lab.catalog, lab.log);
  std::string error;
  try {
    d.start();
  } catch (const StartError& e) {
    error = e.what();
  }
  CHECK(error.find("instance db (plugin fixture_blocking) failed to start: data store postgresql://127.0.0.1:1/db?user=u&password=***") !=
        std::string::npos);
  CHECK(error.find(password) == std::string::npos);
  for (const auto& l : lab.lines) CHECK(l.find(password) == std::string::npos);
}
