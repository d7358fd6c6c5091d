#include <filesystem>
#include <fstream>

#include <catch2/catch.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "manifest.hpp"

using namespace deskfarm::kernel;

namespace {
EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars](const std::string& k) -> std::optional<std::string> {
    auto it = vars.find(k);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::string error_of(std::string_view text, EnvLookup env = env_of({})) {
  try {
    load_manifest_text(text, "test.toml", env);
  } catch (const ValidationError& e) {
    return e.what();
  }
  return "";
}

// A scratch folder of manifests and fragments.
struct TempDir : deskfarm::testing::TempDir {
  void write(const std::string& name, const std::string& text) const {
    std::filesystem::create_directories((path() / name).parent_path());
    deskfarm::testing::write_text(path() / name, text);
  }
};
}  // namespace

TEST_CASE("a small manifest loads with defaults filled in") {
  auto m = load_manifest_text(R"(
[deployment]
name = "lab"
[instances.greeter]
plugin = "hello"
greeting = "hi"
)", "test.toml", env_of({}));
  CHECK(m.name == "lab");
  CHECK(m.clock == "real");
  CHECK(m.bus == "inproc");
  CHECK(m.data_store == "sqlite:var/lab/datastore.db");
  REQUIRE(m.instances.size() == 1);
  CHECK(m.instances[0].plugin == "hello");
  CHECK(m.instances[0].config.get("greeting")->value<std::string>() == "hi");
  CHECK_FALSE(m.instances[0].config.contains("plugin"));
}

TEST_CASE("a TOML syntax error names file, line and column") {
  const auto e = error_of("[deployment]\nname = \"x\"\n[instances.a]\nplugin = \n");
  CHECK(e.find("test.toml:4:") != std::string::npos);
  CHECK(e.find("TOML syntax error") != std::string::npos);
}

TEST_CASE("unknown keys are errors with a suggestion") {
  const auto e = error_of("[deployment]\nname = \"x\"\nclok = \"virtual\"\n");
  CHECK(e.find("test.toml:3:1: unknown key 'clok' in [deployment]. Did you mean 'clock'?") != std::string::npos);
  const auto top = error_of("[deployment]\nname = \"x\"\n[instance.a]\nplugin = \"p\"\n");
  CHECK(top.find("unknown top-level key 'instance'. Did you mean 'instances'?") != std::string::npos);
}

TEST_CASE("wrong deployment value types and values are reported at their position") {
  const auto e = error_of("[deployment]\nname = 5\nclock = \"sundial\"\nworkers = -1\n");
  CHECK(e.find("test.toml:2:8: deployment.name must be a string, found integer") != std::string::npos);
  CHECK(e.find("test.toml:3:9: clock = \"sundial\" is not a clock") != std::string::npos);
  CHECK(e.find("test.toml:4:11: deployment.workers = -1 is out of range 0..256") != std::string::npos);
}

TEST_CASE("a NATS bus lists its servers, and its keys are checked at their position with passwords masked") {
  auto m = load_manifest_text("[deployment]\nname = \"x\"\nbus = \"nats://127.0.0.1:4222, 127.0.0.1:4223\"\n"
                              "nats_user = \"farm\"\nnats_password = \"${NATS_PW}\"\nnats_reconnect_buffer_kb = 64\n",
                              "test.toml", env_of({{"NATS_PW", "s3cret"}}));
  CHECK(m.bus_servers == std::vector<std::string>{"nats://127.0.0.1:4222", "nats://127.0.0.1:4223"});
  CHECK(m.nats_password == "s3cret");
  CHECK(m.nats_reconnect_buffer_kb == 64);
  const auto bad = error_of("[deployment]\nname = \"x\"\nbus = \"nats://farm:s3cret@127.0.0.1\"\n");
  CHECK(bad.find("test.toml:3:7: bus: server 'nats://farm:***@127.0.0.1' is not host:port") != std::string::npos);
  CHECK(bad.find("s3cret") == std::string::npos);
  CHECK(error_of("[deployment]\nname = \"x\"\nbus = \"amqp://h:1\"\n").find("test.toml:3:7: bus = \"amqp://h:1\" is not a bus") !=
        std::string::npos);
  CHECK(error_of("[deployment]\nname = \"x\"\nnats_token = \"t\"\n").find("test.toml:3:14: nats_token applies only to a NATS bus") !=
        std::string::npos);
  const auto pair = error_of("[deployment]\nname = \"x\"\nbus = \"nats://127.0.0.1:1\"\nnats_user = \"u\"\nnats_cert = \"c.pem\"\n");
  CHECK(pair.find("test.toml:4:13: nats_user and nats_password go together") != std::string::npos);
  CHECK(pair.find("test.toml:5:13: nats_cert and nats_key go together") != std::string::npos);
}

TEST_CASE("count expands an instance into numbered copies and substitutes {n}") {
  auto m = load_manifest_text(R"(
[deployment]
name = "farm"
[instances."xenapp-{n}"]
plugin = "xenapp"
count = 3
address = "127.0.0.1:1690{n}"
[instances.zdc]
plugin = "ima"
requires = ["xenapp-2"]
)", "test.toml", env_of({}));
  REQUIRE(m.instances.size() == 4);
  CHECK(m.instances[0].name == "xenapp-1");
  CHECK(m.instances[2].name == "xenapp-3");
  CHECK(m.instances[2].config.get("address")->value<std::string>() == "127.0.0.1:16903");
  CHECK_FALSE(m.instances[0].config.contains("count"));
  CHECK(error_of("[deployment]\nname = \"x\"\n[instances.a]\nplugin = \"p\"\ncount = 0\n").find("test.toml:5:9: count must be") !=
        std::string::npos);
}

TEST_CASE("environment variables fill in secrets, with defaults, and a missing one is named") {
  auto m = load_manifest_text(R"(
[deployment]
name = "x"
data_store = "postgresql://farm:${DB_PASSWORD}@127.0.0.1/farm"
data_store_replica = "postgresql://farm:${DB_PASSWORD}@127.0.0.2/farm"
[instances.a]
plugin = "p"
zone = "${ZONE:-east}"
price = "$$5"
)", "test.toml", env_of({{"DB_PASSWORD", "s3cret"}}));
  CHECK(m.data_store == "postgresql://farm:s3cret@127.0.0.1/farm");
  CHECK(m.data_store_replica == "postgresql://farm:s3cret@127.0.0.2/farm");
  CHECK(m.instances[0].config.get("zone")->value<std::string>() == "east");
  CHECK(m.instances[0].config.get("price")->value<std::string>() == "$5");
  const auto e = error_of("[deployment]\nname = \"x\"\n[instances.a]\nplugin = \"p\"\nkey = \"${API_KEY}\"\n");
  CHECK(e.find("test.toml:5:7: environment variable API_KEY is not set") != std::string::npos);
  CHECK(e.find("${API_KEY:-value}") != std::string::npos);
}

TEST_CASE("includes compose fragments, overlays patch included instances, duplicates are named") {
  TempDir dir;
  dir.write("fragments/pvs.toml", "[instances.pvs-1]\nplugin = \"pvs\"\ntftp = \"127.0.0.1:69\"\n");
  dir.write("main.toml", "include = [\"fragments/pvs.toml\"]\n[deployment]\nname = \"x\"\n"
                         "[overlays.pvs-1]\ntftp = \"127.0.0.1:1069\"\n[instances.ddc]\nplugin = \"ddc\"\n");
  auto m = load_manifest(dir.path() / "main.toml", env_of({}));
  REQUIRE(m.instances.size() == 2);
  CHECK(m.instances[0].name == "pvs-1");
  CHECK(m.instances[0].config.get("tftp")->value<std::string>() == "127.0.0.1:1069");

  dir.write("dup.toml", "include = [\"fragments/pvs.toml\"]\n[deployment]\nname = \"x\"\n[instances.pvs-1]\nplugin = \"pvs\"\n");
  try {
    load_manifest(dir.path() / "dup.toml", env_of({}));
    FAIL("duplicate accepted");
  } catch (const ValidationError& e) {
    CHECK(std::string(e.what()).find("dup.toml:4:12: duplicate instance 'pvs-1' (first defined at ") != std::string::npos);
    CHECK(std::string(e.what()).find("pvs.toml:1:12") != std::string::npos);
  }
}

TEST_CASE("an include cycle is reported as a path") {
  TempDir dir;
  dir.write("a.toml", "include = [\"b.toml\"]\n[deployment]\nname = \"x\"\n");
  dir.write("b.toml", "include = [\"a.toml\"]\n");
  try {
    load_manifest(dir.path() / "a.toml", env_of({}));
    FAIL("cycle accepted");
  } catch (const ValidationError& e) {
    CHECK(std::string(e.what()).find("include cycle: a.toml → b.toml → a.toml") != std::string::npos);
  }
}

TEST_CASE("a fragment may not carry a deployment table, and an overlay needs a target") {
  TempDir dir;
  dir.write("frag.toml", "[deployment]\nname = \"y\"\n");
  dir.write("main.toml", "include = [\"frag.toml\"]\n[deployment]\nname = \"x\"\n[overlays.ghost]\nk = 1\n");
  try {
    load_manifest(dir.path() / "main.toml", env_of({}));
    FAIL("accepted");
  } catch (const ValidationError& e) {
    const std::string w = e.what();
    CHECK(w.find("frag.toml:1:1: [deployment] may appear only in the top manifest") != std::string::npos);
    CHECK(w.find("main.toml:4:11: overlay for unknown instance 'ghost'") != std::string::npos);
  }
}

TEST_CASE("a clock_start far in the future is refused, not overflowed") {
  const auto text = "[deployment]\nname = \"x\"\nclock = \"virtual\"\nclock_start = 9999-01-01T00:00:00Z\n";
  CHECK_THROWS_WITH(load_manifest_text(text, "far.toml", [](const std::string&) { return std::nullopt; }),
                    Catch::Contains("far.toml:4:15: clock_start year 9999 is outside 1970..2200"));
}
