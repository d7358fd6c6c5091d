#include <cstdlib>
#include <fstream>

#include <Poco/Net/StreamSocket.h>

#include <catch2/catch.hpp>
#include <deskfarm/sdk/version.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

using namespace deskfarm::testing;
using namespace std::chrono_literals;

namespace {
const std::string bin = DESKFARM_BIN;
const std::string fixtures = FIXTURE_PLUGIN_DIR;

// The admin address a running deployment wrote, once it is there.
std::string admin_address(const TempDir& dir) {
  const auto file = dir / "var" / "admin.address";
  if (!eventually([&] { return std::filesystem::exists(file) && read_text(file).find('\n') != std::string::npos; }, 20s)) return "";
  const auto text = read_text(file);
  return text.substr(0, text.find('\n'));
}

std::filesystem::path manifest(const TempDir& dir, const std::string& instances, const std::string& extra = "") {
  const auto file = dir / "lab.toml";
  write_text(file, "[deployment]\nname = \"lab\"\nstate_dir = \"" + (dir / "var").string() + "\"\nadmin = \"127.0.0.1:0\"\n" +
                       extra + "\n" + instances);
  return file;
}
}  // namespace

TEST_CASE("deskfarm --help lists every command and the exit codes") {
  auto r = run_child({bin, "--help"}, 10s);
  CHECK(r.exit_code == 0);
  for (const char* word : {"run MANIFEST", "check MANIFEST", "status", "plugins", "describe PLUGIN", "--plugin-path",
                           "--version", "exit codes"})
    CHECK(r.out.find(word) != std::string::npos);
}

TEST_CASE("an unknown command or option is a usage error (exit 2)") {
  CHECK(run_child({bin, "frobnicate"}, 10s).exit_code == 2);
  CHECK(run_child({bin, "--bogus"}, 10s).exit_code == 2);
  CHECK(run_child({bin, "run"}, 10s).exit_code == 2);
}

TEST_CASE("deskfarm --version names the SDK and the plugin ABI") {
  auto r = run_child({bin, "--version"}, 10s);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("SDK " DESKFARM_SDK_VERSION ", plugin ABI " + std::to_string(DESKFARM_PLUGIN_ABI)) != std::string::npos);
}

TEST_CASE("deskfarm check reports every manifest error with its position and exits 3") {
  TempDir dir;
  auto file = manifest(dir, "[instances.a]\nplugin = \"hello\"\ngreting = \"hi\"\ninterval_s = \"often\"\n");
  auto r = run_child({bin, "check", file.string()}, 20s);
  CHECK(r.exit_code == 3);
  CHECK(r.err.find(file.string() + ":8:1: unknown key 'greting' for plugin hello (instance a). Did you mean 'greeting'?") !=
        std::string::npos);
  CHECK(r.err.find(file.string() + ":9:14: key 'interval_s' of instance a must be integer, found string") != std::string::npos);
  CHECK(r.err.find("2 errors") != std::string::npos);
}

TEST_CASE("deskfarm check runs the pvs plugin's own checks: a malformed device MAC is an error at its key") {
  TempDir dir;
  auto file = manifest(dir, "[instances.pvs-1]\nplugin = \"pvs\"\nstore = \"" + (dir / "vdisks").string() +
                                "\"\nvdisks = [ { name = \"gold\", size_mb = 4 } ]\n"
                                "devices = [ { mac = \"zz\", vdisk = \"gold\" } ]\n");
  auto r = run_child({bin, "check", file.string()}, 20s);
  CHECK(r.exit_code == 3);
  CHECK(r.err.find(file.string() + ":10:11: instance pvs-1 (plugin pvs) refused its config: devices[0].mac") != std::string::npos);
  CHECK(r.err.find("devices[0].mac 'zz' is not a MAC address") != std::string::npos);
  CHECK(!std::filesystem::exists(dir / "vdisks" / "gold.img"));  // checked, nothing created
}

TEST_CASE("deskfarm check accepts the shipped manifests") {
  for (const char* m : {"configs/pilot.toml", "configs/minimal.toml", "configs/tftp-lb.toml"}) {
    auto r = run_child({bin, "check", std::string(SOURCE_DIR) + "/" + m}, 30s);
    INFO(m << ": " << r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.out.find(": ok — deployment ") != std::string::npos);
  }
}

TEST_CASE("each plugin README's key table is exactly what describe --markdown prints") {
  for (auto [plugin, readme] : {std::pair{"pvs", "plugins/pvs/README.md"}, std::pair{"tftp-lb", "plugins/tftp-lb/README.md"},
                                std::pair{"bdm", "plugins/bdm/README.md"},
                                std::pair{"license", "plugins/license/README.md"},
                                std::pair{"directory", "plugins/directory/README.md"},
                                std::pair{"ddc", "plugins/ddc/README.md"}, std::pair{"vda", "plugins/vda/README.md"},
                                std::pair{"ima", "plugins/ima/README.md"},
                                std::pair{"hello", "sdk/examples/hello-plugin/README.md"},
                                std::pair{"memhv", "sdk/examples/hypervisor-plugin/README.md"},
                                std::pair{"hypervisor-xen", "plugins/hypervisor-xen/README.md"},
                                std::pair{"hypervisor-hyperv", "plugins/hypervisor-hyperv/README.md"},
                                std::pair{"hypervisor-esx", "plugins/hypervisor-esx/README.md"},
                                std::pair{"hypervisor-qemu", "plugins/hypervisor-qemu/README.md"}}) {
    const std::string text = read_text(std::filesystem::path(SOURCE_DIR) / readme);
    const std::string marker = std::string("<!-- generated: deskfarm describe ") + plugin + " --markdown -->\n";
    const auto at = text.find(marker);
    INFO(readme);
    REQUIRE(at != std::string::npos);
    auto d = run_child({bin, "describe", "--markdown", plugin}, 20s);
    REQUIRE(d.exit_code == 0);
    CHECK(text.substr(at + marker.size(), d.out.size()) == d.out);
  }
}

TEST_CASE("deskfarm plugins and describe show versions, roles and manifest keys") {
  auto r = run_child({bin, "plugins"}, 20s);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("hello 1.1.0  sdk " DESKFARM_SDK_VERSION "  provides: greeter") != std::string::npos);
  auto d = run_child({bin, "describe", "hello"}, 20s);
  CHECK(d.exit_code == 0);
  CHECK(d.out.find("interval_s (integer) = 30") != std::string::npos);
  CHECK(d.out.find("interval_s (integer) = 30  [1..86400]") != std::string::npos);
  auto md = run_child({bin, "--plugin-path", fixtures, "describe", "--markdown", "fixture_recorder"}, 20s);
  CHECK(md.exit_code == 0);
  CHECK(md.out.find("| `mode` | string | `\"fast\"` | one of fast,slow | how to run |") != std::string::npos);
  CHECK(md.out.find("| `password` | secret |") != std::string::npos);
  auto missing = run_child({bin, "describe", "helo"}, 20s);
  CHECK(missing.exit_code == 3);
  CHECK(missing.err.find("unknown plugin 'helo'. Did you mean 'hello'?") != std::string::npos);
}

TEST_CASE("a running deployment answers deskfarm status and /metrics, and stops cleanly on SIGTERM") {
  if (!require_program("curl")) return;
  TempDir dir;
  auto file = manifest(dir, "[instances.greeter]\nplugin = \"hello\"\ngreeting = \"good morning\"\ninterval_s = 1\n");
  ChildProcess run({bin, "run", file.string()}, dir / "run.log");
  const auto address_file = dir / "var" / "admin.address";
  REQUIRE(eventually([&] { return std::filesystem::exists(address_file) && !read_text(address_file).empty(); }, 20s));
  auto status = run_child({bin, "status", file.string()}, 10s);
  CHECK(status.exit_code == 0);
  CHECK(status.out.find("\"deployment\": \"lab\"") != std::string::npos);
  CHECK(status.out.find("\"state\": \"running\"") != std::string::npos);
  CHECK(status.out.find("\"greeting\": \"good morning\"") != std::string::npos);
  REQUIRE(eventually([&] {
    auto m = run_child({"curl", "-sf", "http://" + read_text(address_file).substr(0, read_text(address_file).find('\n')) + "/metrics"}, 10s);
    return m.out.find("deskfarm_hello_greetings_total{instance=\"greeter\"} ") != std::string::npos &&
           m.out.find("deskfarm_bus_published_total{subject=\"hello.greeter\"}") != std::string::npos;
  }, 10s));
  // An operator's request through the admin endpoint reaches the plugin's typed service.
  auto ping = run_child({bin, "request", "hello.ping", R"({"name":"operator"})", file.string()}, 10s);
  CHECK(ping.exit_code == 0);
  CHECK(ping.out.find("good morning, operator") != std::string::npos);
  auto nobody = run_child({bin, "request", "hello.nobody", file.string(), "--timeout", "1s"}, 10s);
  CHECK(nobody.exit_code == 1);
  CHECK(nobody.err.find("\"code\":\"no_responders\"") != std::string::npos);
  auto bad = run_child({bin, "request", "hello.ping", R"({"name":5})", file.string()}, 10s);
  CHECK(bad.exit_code == 1);
  CHECK(bad.err.find("bad_request") != std::string::npos);
  CHECK(run.terminate(15s) == 0);
  const auto log = read_text(dir / "run.log");
  CHECK(log.find("received Terminated, stopping") != std::string::npos);
  CHECK(log.find("instance greeter stopped") != std::string::npos);
  CHECK(log.find("deployment lab stopped") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(address_file));
  CHECK(run_child({bin, "status", file.string()}, 10s).exit_code == 5);
}

TEST_CASE("SIGINT stops instances in reverse start order") {
  TempDir dir;
  const auto journal = (dir / "journal").string();
  auto file = manifest(dir, "[instances.b]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\njournal = \"" + journal +
                                "\"\nrequires = [\"a\"]\n[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\njournal = \"" +
                                journal + "\"\n");
  ChildProcess run({bin, "--plugin-path", fixtures, "run", file.string()}, dir / "run.log");
  REQUIRE(eventually([&] { return read_text(journal) == "start a\nstart b\n"; }, 20s));
  run.signal(SIGINT);
  auto code = run.wait(15s);
  REQUIRE(code);
  CHECK(*code == 0);
  CHECK(read_text(journal) == "start a\nstart b\nstop b\nstop a\n");
}

TEST_CASE("a failing start exits 4 after stopping what had started") {
  TempDir dir;
  const auto journal = (dir / "journal").string();
  auto file = manifest(dir, "[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\njournal = \"" + journal +
                                "\"\n[instances.bad]\nplugin = \"fixture_throwing_start\"\nrequires = [\"a\"]\n");
  auto r = run_child({bin, "--plugin-path", fixtures, "run", file.string()}, 30s);
  CHECK(r.exit_code == 4);
  CHECK(r.err.find("error: instance bad (plugin fixture_throwing_start) failed to start: port 69 is already in use") !=
        std::string::npos);
  CHECK(read_text(journal) == "start a\nstop a\n");
}

TEST_CASE("with clock = virtual, --for runs simulated time as fast as the handlers allow") {
  TempDir dir;
  auto file = manifest(dir, "[instances.greeter]\nplugin = \"hello\"\ninterval_s = 30\n", "clock = \"virtual\"\n");
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_child({bin, "run", "--for", "1d", file.string()}, 60s);
  CHECK(r.exit_code == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < 30s);
  CHECK(r.err.find("run time reached, stopping") != std::string::npos);
}

TEST_CASE("the pilot deployment serves the bootstrap over TFTP and desktops' vDisks over NBD to real clients",
          "[pilot]") {
  // Runs configs/pilot.toml with every port picked by the servers themselves (DESKFARM_TFTP_PORT=0 and
  // DESKFARM_NBD_PORT=0, DESKFARM_XML_PORT=0 fill in its ${...:-default} ports, --admin takes port 0), so the test never competes
  // with scripts/pilot.sh or a parallel test for the pilot's fixed ports; `deskfarm status` reports the
  // ports chosen. A scratch working directory holds var/.
  if (!require_program("curl") || !require_program("nbdinfo")) return;
  TempDir dir;
  const std::string pilot = std::string(SOURCE_DIR) + "/configs/pilot.toml";
  const std::string in_dir = "cd " + dir.path().string() + " && ";
  ChildProcess run({"sh", "-c", in_dir + "DESKFARM_TFTP_PORT=0 DESKFARM_NBD_PORT=0 DESKFARM_XML_PORT=0 exec " + bin + " run --admin 127.0.0.1:0 " + pilot},
                   dir / "run.log");
  REQUIRE(eventually([&] { return read_text(dir / "run.log").find("deployment pilot running") != std::string::npos; }, 30s));
  // pvs loads its catalog from the data store after start, off its executor; devices wait for that.
  REQUIRE(eventually([&] { return read_text(dir / "run.log").find("catalog loaded") != std::string::npos; }, 30s));
  const auto status = run_child({"sh", "-c", in_dir + "exec " + bin + " status " + pilot}, 20s);
  INFO(status.out << status.err);
  REQUIRE(status.exit_code == 0);
  const auto port_of = [&](const std::string& key) {
    const auto at = status.out.find("\"" + key + "\": ");
    return at == std::string::npos ? 0 : std::stoi(status.out.substr(at + key.size() + 4));
  };
  const int tftp_port = port_of("tftp_port"), nbd_port = port_of("stream_port");
  REQUIRE(tftp_port > 0);
  REQUIRE(nbd_port > 0);
  auto boot = run_child({"curl", "-sf", "tftp://127.0.0.1:" + std::to_string(tftp_port) + "/ARDBP32.BIN"}, 20s);
  CHECK(boot.exit_code == 0);
  CHECK(boot.out.starts_with("DESKFARM-BOOTSTRAP 1\n"));
  CHECK(boot.out.find("login_server = 127.0.0.1:" + std::to_string(nbd_port) + "\n") != std::string::npos);
  auto list = run_child({"nbdinfo", "--list", "nbd://127.0.0.1:" + std::to_string(nbd_port)}, 20s);
  CHECK(list.exit_code == 0);
  CHECK(list.out.find("export=\"52:54:00:00:01:01\"") != std::string::npos);
  CHECK(list.out.find("export-size: 67108864") != std::string::npos);
  CHECK(run.terminate(15s) == 0);
  CHECK(read_text(dir / "run.log").find("instance pvs-1 stopped") != std::string::npos);
}

TEST_CASE("deskfarm check runs the plugins' validate() and constructors: what run would refuse, check refuses (exit 3)") {
  TempDir dir;
  auto file = manifest(dir, "[instances.a]\nplugin = \"fixture_recorder\"\nrequired_key = \"x\"\nlimit = -3\n");
  auto r = run_child({bin, "--plugin-path", fixtures, "check", file.string()}, 20s);
  CHECK(r.exit_code == 3);
  CHECK(r.err.find("instance a (plugin fixture_recorder) refused its config: limit must not be negative") != std::string::npos);
  auto ctor = manifest(dir, "[instances.b]\nplugin = \"fixture_throwing_ctor\"\n");
  r = run_child({bin, "--plugin-path", fixtures, "check", ctor.string()}, 20s);
  CHECK(r.exit_code == 3);
  CHECK(r.err.find("instance b (plugin fixture_throwing_ctor) could not be created: cannot reach the hypervisor") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "var"));
}

TEST_CASE("clients that send half a request head do not starve deskfarm status, and are cut at 5 s") {
  TempDir dir;
  auto file = manifest(dir, "[instances.greeter]\nplugin = \"hello\"\n");
  ChildProcess run({bin, "run", file.string()}, dir / "run.log");
  const auto address = admin_address(dir);
  REQUIRE_FALSE(address.empty());
  std::vector<Poco::Net::StreamSocket> slow;
  for (int i = 0; i < 8; ++i) {
    Poco::Net::StreamSocket s{Poco::Net::SocketAddress(address)};
    const std::string half = "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    s.sendBytes(half.data(), static_cast<int>(half.size()));
    slow.push_back(s);
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto status = run_child({bin, "status", file.string()}, 20s);
  CHECK(status.exit_code == 0);
  CHECK(status.out.find("\"deployment\": \"lab\"") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  slow[0].setReceiveTimeout(Poco::Timespan(10, 0));
  char buf[512];
  const int n = slow[0].receiveBytes(buf, sizeof buf);
  CHECK(std::string(buf, static_cast<std::size_t>(std::max(n, 0))).starts_with("HTTP/1.1 408 Request Timeout"));
  CHECK(std::chrono::steady_clock::now() - t0 < 8s);
  CHECK(run.terminate(15s) == 0);
}

TEST_CASE("a non-loopback admin address without a token is refused before anything starts (exit 3)") {
  TempDir dir;
  auto file = manifest(dir, "[instances.greeter]\nplugin = \"hello\"\n");
  for (const std::vector<std::string>& args : {std::vector<std::string>{bin, "run", "--admin", "0.0.0.0:0", file.string()},
                                               std::vector<std::string>{bin, "--admin", "0.0.0.0:0", "check", file.string()}}) {
    auto r = run_child(args, 20s);
    CHECK(r.exit_code == 3);
    CHECK(r.err.find("admin address '0.0.0.0:0' is not a loopback address") != std::string::npos);
    CHECK(r.err.find("starting") == std::string::npos);
  }
  CHECK_FALSE(std::filesystem::exists(dir / "var"));
}

TEST_CASE("with admin_token every request needs the bearer token, and deskfarm status sends DESKFARM_ADMIN_TOKEN") {
  TempDir dir;
  const std::string token = "t0ken-for-the-admin-test";
  ::setenv("DESKFARM_TEST_ADMIN_TOKEN", token.c_str(), 1);
  ::unsetenv("DESKFARM_ADMIN_TOKEN");
  auto file = manifest(dir, "[instances.greeter]\nplugin = \"hello\"\n", "admin_token = \"${DESKFARM_TEST_ADMIN_TOKEN}\"\n");
  ChildProcess run({bin, "run", file.string()}, dir / "run.log");
  const auto address = admin_address(dir);
  REQUIRE_FALSE(address.empty());
  CHECK(run_child({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://" + address + "/status"}, 10s).out == "401");
  CHECK(run_child({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer wrong", "http://" + address + "/metrics"}, 10s).out == "401");
  CHECK(run_child({bin, "status", "--admin", address}, 10s).exit_code == 1);
  ::setenv("DESKFARM_ADMIN_TOKEN", token.c_str(), 1);
  auto status = run_child({bin, "status", "--admin", address}, 10s);
  ::unsetenv("DESKFARM_ADMIN_TOKEN");
  ::unsetenv("DESKFARM_TEST_ADMIN_TOKEN");
  CHECK(status.exit_code == 0);
  CHECK(status.out.find("\"deployment\": \"lab\"") != std::string::npos);
  CHECK(run.terminate(15s) == 0);
  CHECK(read_text(dir / "run.log").find(token) == std::string::npos);
}
