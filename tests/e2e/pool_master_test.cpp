// The pool master across processes: two `deskfarm run` children on one real nats-server (started on a loopback
// port, stopped by its PID), each an ima server of zone hq with a controller beside it (`ima` key). The controller
// beside the zone data collector is the pool master: starts asked of the other are counted on it only; a logon
// through a controller reaches the ZDC of the other process as dynamic data (`deskfarm queryds`), its logoff
// removes it; kill -9 the ZDC's process and the survivor is ZDC and master, and starts go there.
#include <csignal>

#include <catch2/catch.hpp>

#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/metrics_text.hpp>
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

/// A site: an ima server and a controller beside it; `extra` adds instances (the hypervisor and the agents).
std::filesystem::path site(const TempDir& dir, const std::string& name, const std::string& url, int host_id, const std::string& extra = "") {
  const auto file = dir / (name + ".toml");
  write_text(file, "[deployment]\nname = \"" + name + "\"\nstate_dir = \"" + (dir / name).string() +
                       "\"\nadmin = \"127.0.0.1:0\"\nbus = \"" + url + "\"\n\n[instances.ima-" + name +
                       "]\nplugin = \"ima\"\nfarm = \"corp\"\nzone = \"hq\"\nhost_id = " + std::to_string(host_id) +
                       "\nkeepalive_s = " + std::to_string(keepalive_s) + "\nelection_window_ms = 200\n\n" + extra +
                       "[instances.ddc-" + name + "]\nplugin = \"ddc\"\nima = \"ima-" + name +
                       "\"\nfarm_key = \"e2e-key\"\npool_interval_s = 1\nrequest_timeout_ms = 2000\n"
                       "groups = [{ name = \"pool\", kind = \"pooled-random\", desktops = [\"desktop-*\"], hypervisor = \"hv\" }]\n");
  return file;
}

/// `deskfarm querydc` on `manifest`: the collector of zone hq, "" when none answers.
std::string collector(const std::filesystem::path& manifest) { return zone_collector(bin, manifest, "hq"); }

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

/// A sample of the deployment's /metrics (its state directory holds the admin address); -1 when absent.
double sample(const std::filesystem::path& state_dir, const std::string& series) {
  auto address = read_text(state_dir / "admin.address");
  address = address.substr(0, address.find('\n'));
  return metric_sample(run_child({"curl", "-sf", "http://" + address + "/metrics"}, 10s).out, series);
}

std::string starts(const std::string& controller) { return "deskfarm_ddc_power_starts_total{instance=\"" + controller + "\"}"; }

/// A JSON string field of a reply ("" when absent).
std::string field(const std::string& json, const std::string& name) {
  const auto at = json.find("\"" + name + "\":\"");
  if (at == std::string::npos) return "";
  const auto from = at + name.size() + 4;
  return json.substr(from, json.find('"', from) - from);
}
}  // namespace

TEST_CASE("two processes on nats-server: the controller beside the ZDC is the pool master, sessions reach the ZDC, "
          "kill -9 the ZDC's process and starts go to the new master") {
  const auto program = nats_server_program();
  if (program.empty()) return missing("nats-server is not installed (scripts/setup.sh installs it; or set DESKFARM_NATS_SERVER)");
  if (!require_program("curl")) return;
  TempDir dir;
  NatsServer nats(program, dir / "nats-server.log");
  // Site one runs the hypervisor and the agents (they register with ddc-one only); site two's ima server has the
  // higher host ID: it is the ZDC, and ddc-two the pool master.
  const auto one = site(dir, "one", nats.url(), 10,
                        "[instances.hv]\nplugin = \"hypervisor-xen\"\nvms = [{ template = \"desktop\", count = 4, prefix = \"desktop-\" }]\n"
                        "latencies = [{ action = \"start\", distribution = \"constant\", ms = 100 }]\n\n"
                        "[instances.agents]\nplugin = \"vda\"\ncontrollers = [\"ddc-one\"]\nfarm_key = \"e2e-key\"\n\n");
  const auto two = site(dir, "two", nats.url(), 20);
  ChildProcess p1({bin, "run", one.string()}, dir / "one.log");
  REQUIRE(eventually([&] { return collector(one) == "ima-one"; }, 20s));
  ChildProcess p2({bin, "run", two.string()}, dir / "two.log");
  REQUIRE(eventually([&] { return collector(one) == "ima-two" && collector(two) == "ima-two"; }, 20s));
  // ima-one and ddc-one both name ima-two as their zone's collector; ddc-two is the master, ddc-one is not.
  REQUIRE(eventually([&] {
    const auto s1 = run_child({bin, "status", one.string()}, 10s).out, s2 = run_child({bin, "status", two.string()}, 10s).out;
    return occurrences(s1, "\"zdc\": \"ima-two\"") == 2 && s1.find("\"master\": true") == std::string::npos &&
           s2.find("\"master\": true") != std::string::npos;
  }, 20s));

  // Nothing is idle (no idle targets): ddc-one asks the master to start a desktop for alice.
  std::string reply;
  REQUIRE(eventually([&] {  // the master learns the hypervisor's inventory on its first pool pass
    reply = run_child({bin, "request", "ddc.ddc-one.admin.broker", R"({"user":"alice","endpoint":"laptop"})", one.string()}, 10s).out;
    return reply.find("\"outcome\":\"starting\"") != std::string::npos;
  }, 20s));
  INFO(reply);
  CHECK(sample(dir / "two", starts("ddc-two")) == 1);
  CHECK(sample(dir / "one", starts("ddc-one")) == 0);
  CHECK(sample(dir / "one", "deskfarm_ddc_master_fallbacks_total{instance=\"ddc-one\"}") == 0);

  // The desktop registers with ddc-one; alice logs on through it. The logon goes to ima-one and on to the ZDC
  // ima-two in the other process.
  REQUIRE(eventually([&] {
    reply = run_child({bin, "request", "ddc.ddc-one.admin.broker", R"({"user":"alice","endpoint":"laptop"})", one.string()}, 10s).out;
    return reply.find("\"outcome\":\"connect\"") != std::string::npos;
  }, 30s));
  const auto desktop = field(reply, "desktop");
  REQUIRE(!desktop.empty());
  std::string ds;
  CHECK(eventually([&] {
    ds = run_child({bin, "queryds", two.string()}, 10s).out;
    const auto at = ds.find(desktop + " ");
    return at != std::string::npos && ds.find("alice", at) != std::string::npos && ds.find("active", at) != std::string::npos &&
           ds.find("ddc-one", at) != std::string::npos;
  }, 10s));
  INFO(ds);
  CHECK(ds.find("ima-one") != std::string::npos);
  // Logoff on the desktop: the session leaves the ZDC's data.
  auto off = run_child({bin, "request", "vda.agents.admin.session", R"({"desktop":")" + desktop + R"(","action":"logoff"})", one.string()}, 10s);
  INFO(off.out << off.err);
  CHECK(off.exit_code == 0);
  CHECK(eventually([&] {
    ds = run_child({bin, "queryds", two.string()}, 10s).out;
    return ds.find("ima-one") != std::string::npos && ds.find("alice") == std::string::npos;
  }, 10s));
  // alice takes the now idle desktop again, so the next user needs a start.
  CHECK(eventually([&] {
    return run_child({bin, "request", "ddc.ddc-one.admin.broker", R"({"user":"alice","endpoint":"laptop"})", one.string()}, 10s)
               .out.find("\"outcome\":\"connect\"") != std::string::npos;
  }, 10s));

  // kill -9 the ZDC's process: ima-one is elected within a keep-alive and ddc-one becomes the master.
  p2.signal(SIGKILL);
  REQUIRE(p2.wait(5s));
  REQUIRE(eventually([&] { return collector(one) == "ima-one"; }, std::chrono::seconds(3 * keepalive_s)));
  REQUIRE(eventually([&] { return run_child({bin, "status", one.string()}, 10s).out.find("\"master\": true") != std::string::npos; }, 10s));
  auto bob = run_child({bin, "request", "ddc.ddc-one.admin.broker", R"({"user":"bob","endpoint":"desk"})", one.string()}, 10s);
  INFO(bob.out << bob.err);
  CHECK(bob.out.find("\"outcome\":\"starting\"") != std::string::npos);
  CHECK(sample(dir / "one", starts("ddc-one")) == 1);
  CHECK(sample(dir / "one", "deskfarm_ddc_master_fallbacks_total{instance=\"ddc-one\"}") == 0);

  CHECK(p1.terminate(15s) == 0);
  const auto log = read_text(dir / "one.log");
  CHECK(log.find("zone data collector ima-two: the pool master is the controller beside it") != std::string::npos);
  CHECK(occurrences(log, "zone data collector ima-one: this controller is the pool master") >= 2);  // at start, and after the kill
  nats.stop();
}
