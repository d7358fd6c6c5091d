// One zone across two `deskfarm run` processes on a real nats-server (started on a loopback port, stopped by its
// PID): the server with the higher host ID is the ZDC; kill -9 its process and the other elects itself within one
// keep-alive; `deskfarm querydc` and `queryds` show the collectors and their data. `deskfarm dsmaint refreshlhc`
// and `recreatelhc` against two `deskfarm run` children that share one SQLite data store.
#include <csignal>

#include <catch2/catch.hpp>

#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/nats.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/querydc.hpp>
#include <deskfarm/testing/temp_dir.hpp>

namespace {
using namespace std::chrono_literals;
using namespace deskfarm::testing;
const std::string bin = DESKFARM_BIN;
constexpr int keepalive_s = 6;

std::filesystem::path site(const TempDir& dir, const std::string& name, const std::string& url, int host_id) {
  const auto file = dir / (name + ".toml");
  write_text(file, "[deployment]\nname = \"" + name + "\"\nstate_dir = \"" + (dir / name).string() +
                       "\"\nadmin = \"127.0.0.1:0\"\nbus = \"" + url + "\"\n\n[instances.ima-" + name +
                       "]\nplugin = \"ima\"\nfarm = \"corp\"\nzone = \"hq\"\nhost_id = " + std::to_string(host_id) +
                       "\nkeepalive_s = " + std::to_string(keepalive_s) + "\nelection_window_ms = 200\n");
  return file;
}

/// `deskfarm querydc` on `manifest`: the collector of zone hq, "" when none answers.
std::string collector(const std::filesystem::path& manifest) { return zone_collector(bin, manifest, "hq"); }
}  // namespace

TEST_CASE("one zone in two processes over nats-server: kill -9 the ZDC's process, the other elects itself within a keep-alive") {
  const auto program = nats_server_program();
  if (program.empty()) return missing("nats-server is not installed (scripts/setup.sh installs it; or set DESKFARM_NATS_SERVER)");
  TempDir dir;
  NatsServer nats(program, dir / "nats-server.log");
  const auto one = site(dir, "one", nats.url(), 10);
  const auto two = site(dir, "two", nats.url(), 20);
  ChildProcess p1({bin, "run", one.string()}, dir / "one.log");
  REQUIRE(eventually([&] { return collector(one) == "ima-one"; }, 20s));
  ChildProcess p2({bin, "run", two.string()}, dir / "two.log");
  // ima-two starts, calls an election and wins it on its host ID
  REQUIRE(eventually([&] { return collector(one) == "ima-two" && collector(two) == "ima-two"; }, 20s));
  REQUIRE(run_child({bin, "request", "ima.ima-one.admin.report", R"({"sessions": 5, "load": 250})", one.string()}, 10s).exit_code == 0);
  REQUIRE(eventually([&] {
    auto ds = run_child({bin, "queryds", two.string()}, 10s);
    return ds.exit_code == 0 && ds.out.find("ima-one") != std::string::npos && ds.out.find(" 5 ") != std::string::npos;
  }, 10s));
  auto elect = run_child({bin, "querydc", "-e", one.string()}, 10s);
  INFO(elect.out << elect.err);
  CHECK(elect.exit_code == 0);
  CHECK(elect.out.find("ima-two") != std::string::npos);

  const auto t0 = std::chrono::steady_clock::now();
  p2.signal(SIGKILL);
  REQUIRE(p2.wait(5s));
  REQUIRE(eventually([&] { return collector(one) == "ima-one"; }, std::chrono::seconds(3 * keepalive_s)));
  const auto took = std::chrono::steady_clock::now() - t0;
  INFO("new ZDC after " << std::chrono::duration<double>(took).count() << " s");
  CHECK(took <= std::chrono::seconds(keepalive_s));
  auto ds = run_child({bin, "queryds", one.string()}, 10s);
  CHECK(ds.out.find("ima-one") != std::string::npos);
  CHECK(p1.terminate(15s) == 0);
  const auto log = read_text(dir / "one.log");
  CHECK(log.find("ZDC ima-two of zone hq lost") != std::string::npos);
  nats.stop();
}

TEST_CASE("querydc and queryds: a usage error for two manifests, unreachable for a deployment that is not running") {
  TempDir dir;
  const auto file = site(dir, "idle", "nats://127.0.0.1:1", 1);
  CHECK(run_child({bin, "querydc", file.string(), file.string()}, 10s).exit_code == 2);
  auto r = run_child({bin, "queryds", file.string()}, 10s);
  CHECK(r.exit_code == 5);
  CHECK(r.err.find("is not running") != std::string::npos);
}

TEST_CASE("deskfarm dsmaint refreshlhc: a server's local host cache learns at once what another process wrote to the data store") {
  TempDir dir;
  // Two deployments (each its own in-process bus: no change notification passes between them) share one data store.
  const auto manifest = [&](const std::string& name) {
    const auto file = dir / (name + ".toml");
    write_text(file, "[deployment]\nname = \"" + name + "\"\nstate_dir = \"" + (dir / name).string() +
                         "\"\nadmin = \"127.0.0.1:0\"\ndata_store = \"sqlite:" + (dir / "store.db").string() +
                         "\"\n\n[instances.ima-" + name + "]\nplugin = \"ima\"\nfarm = \"corp\"\nzone = \"" + name + "\"\n");
    return file;
  };
  const auto a = manifest("a"), b = manifest("b");
  const auto refresh = [&](const std::filesystem::path& m, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{bin, "dsmaint", "refreshlhc", m.string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return run_child(argv, 20s);
  };
  ChildProcess pa({bin, "run", a.string()}, dir / "a.log");
  REQUIRE(eventually([&] { return refresh(a).exit_code == 0; }, 20s));
  ChildProcess pb({bin, "run", b.string()}, dir / "b.log");
  REQUIRE(eventually([&] { return refresh(b).out.find("ima-b ") != std::string::npos; }, 20s));

  // ima-a would poll the store only after dcn_poll_s (30 minutes); dsmaint refreshes it now.
  auto r = refresh(a, {"--instance", "ima-a"});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("ima-a: local host cache " + (dir / "a" / "ima-a" / "lhc.db").string() + " refreshed: fresh, 2 servers") !=
        std::string::npos);
  CHECK(r.out.find("ima-b ") != std::string::npos);

  auto re = run_child({bin, "dsmaint", "recreatelhc", a.string()}, 20s);
  CHECK(re.exit_code == 0);
  CHECK(re.out.find("recreated: fresh, 2 servers") != std::string::npos);
  CHECK(run_child({bin, "dsmaint", "rebuild", a.string()}, 10s).exit_code == 2);
  auto none = refresh(a, {"--instance", "ima-z"});
  CHECK(none.exit_code == 1);
  CHECK(none.err.find("no ima instance 'ima-z'") != std::string::npos);

  for (auto* p : {&pa, &pb}) CHECK(p->terminate(15s) == 0);
}
