// pvs in-process behaviour: bootstrap, device exports, write caches, versions, private mode, HA, config errors.
#include <algorithm>
#include <future>
#include <thread>

#include <deskfarm/bootstrap/boot_script.hpp>
#include <deskfarm/bootstrap/bootstrap.hpp>
#include <deskfarm/tftp/client.hpp>
#include <deskfarm/testing/process.hpp>

#include "pvs_lab.hpp"

#include <deskfarm/testing/conformance_catch.hpp>

using namespace pvs_test;
using deskfarm::nbd::ClientError;

namespace {
bootstrap::Bootstrap fetch_bootstrap(std::uint16_t port, const std::string& file = "ARDBP32.BIN") {
  const auto r = tftp::Client().get("127.0.0.1", port, file);
  return bootstrap::parse(std::string_view(reinterpret_cast<const char*>(r.data.data()), r.data.size()));
}
}  // namespace

TEST_CASE("the bootstrap is served over TFTP and names this server's stream address") {
  Lab lab;
  lab.start("login_polling_timeout_ms = 2000\nrecovery = \"reboot_to_hd\"\nbootstrap_version = 3\n");
  const auto b = fetch_bootstrap(lab.tftp_port());
  REQUIRE(b.login_servers.size() == 1);
  CHECK(b.login_servers[0] == bootstrap::Endpoint{"127.0.0.1", lab.stream_port()});
  CHECK(b.login_polling_timeout_ms == 2000);
  CHECK(b.recovery == bootstrap::Recovery::reboot_to_hd);
  CHECK(b.version == 3);
  // Case-insensitive, as Windows-born PXE names are.
  CHECK(fetch_bootstrap(lab.tftp_port(), "ardbp32.bin") == b);
}

TEST_CASE("a Boot Device Manager's iPXE gets its device's boot script by MAC, and an old image's version is logged and counted") {
  Lab lab;
  lab.start("bootstrap_version = 5\n");
  auto script = [&](std::uint32_t version, const std::string& mac) {
    const auto r = tftp::Client().get("127.0.0.1", lab.tftp_port(), bootstrap::boot_script_name(version, mac));
    return dt::to_string(r.data);
  };
  // A known device, as iPXE writes its MAC (hyphens): it boots the disk its hypervisor attached from this server.
  std::string mac_hyphens = mac_a;
  std::replace(mac_hyphens.begin(), mac_hyphens.end(), ':', '-');
  const auto known = script(5, mac_hyphens);
  CHECK(known.rfind("#!ipxe\n", 0) == 0);
  // The first hard disk, unless the BDM script that chained here named another drive.
  CHECK_THAT(known, Catch::Contains("isset ${deskfarm_drive} || set deskfarm_drive 0x80\n"));
  CHECK_THAT(known, Catch::Contains("sanboot --no-describe --drive ${deskfarm_drive} ||"));
  CHECK_THAT(known, Catch::Contains("device " + std::string(mac_a) + ", vDisk gold\n"));
  CHECK(lab.h->logged("pvs: device " + std::string(mac_a) + " at 127.0.0.1 fetched its boot script"));
  CHECK_FALSE(lab.h->logged("booted a BDM image with bootstrap version"));
  // An unknown device: the script fails, so the ISO's script goes on to its next login server.
  const auto unknown = script(5, "52-54-00-ff-ff-ff");
  CHECK_THAT(unknown, Catch::Contains("is not known here"));
  CHECK_THAT(unknown, Catch::Contains("exit 1"));
  CHECK(unknown.find("sanboot") == std::string::npos);
  CHECK(lab.h->logged("52:54:00:ff:ff:ff at 127.0.0.1 asked for its boot script"));
  // CTX233881: an image built with an older bootstrap version still boots, and says so in one line.
  CHECK_THAT(script(4, mac_hyphens), Catch::Contains("sanboot"));
  CHECK(lab.h->logged("pvs: device " + std::string(mac_a) +
                      " booted a BDM image with bootstrap version 4 but this server's bootstrap_version is 5"));
  const auto metrics = lab.h->metrics_text();
  CHECK_THAT(metrics, Catch::Contains("deskfarm_pvs_boot_scripts_served_total{instance=\"pvs-1\"} 3"));
  CHECK_THAT(metrics, Catch::Contains("deskfarm_pvs_bootstrap_version_mismatch_total{instance=\"pvs-1\"} 1"));
}

TEST_CASE("a configured server list of up to four goes into the bootstrap in failover order") {
  Lab lab;
  lab.start("login_servers = [\"10.0.0.5:6910\", \"10.0.0.6:6910\", \"pvs-3.farm:6911\"]\n"
            "addressing = \"static\"\nstatic_ip = \"10.0.1.20\"\nstatic_mask = \"255.255.255.0\"\n"
            "static_gateway = \"10.0.1.1\"\n");
  const auto b = fetch_bootstrap(lab.tftp_port());
  CHECK(b.login_servers == std::vector<bootstrap::Endpoint>{{"10.0.0.5", 6910}, {"10.0.0.6", 6910}, {"pvs-3.farm", 6911}});
  CHECK(b.addressing == bootstrap::Addressing::static_ip);
  CHECK(b.static_address.gateway == "10.0.1.1");
}

TEST_CASE("a device reads its vDisk by MAC, and an unknown MAC is refused by name") {
  Lab lab;
  lab.start();
  auto c = lab.connect(mac_a);
  CHECK(c.size() == base_size);
  CHECK(read_all(c, 0, base_size) == dt::read_file(lab.base()));
  // MACs are matched however they are written.
  auto upper = lab.connect("52-54-00-00-00-0A");
  CHECK(upper.size() == base_size);
  try {
    lab.connect("52:54:00:ff:ff:ff");
    FAIL("connected");
  } catch (const ClientError& e) {
    CHECK(std::string(e.what()).find("unknown device 52:54:00:ff:ff:ff") != std::string::npos);
  }
  CHECK_THROWS_WITH(lab.connect("gold"), Catch::Contains("not a device MAC"));
}

TEST_CASE("writes land in the device's own write cache, never in the base, survive a reconnect and vanish at reboot") {
  Lab lab;
  lab.start();
  const auto original = dt::read_file(lab.base());
  const auto sha = dt::sha256_file(lab.base());
  {
    auto a = lab.connect(mac_a);
    REQUIRE(a.write(4096, fill(1 << 20, 0xab)) == 0);
    REQUIRE(a.flush() == 0);
    CHECK(read_all(a, 4096, 1 << 20) == fill(1 << 20, 0xab));
    // Another connection of the same device shares its cache (multi-conn); another device does not.
    auto a2 = lab.connect(mac_a);
    CHECK(read_all(a2, 4096, 16) == fill(16, 0xab));
    auto b = lab.connect(mac_b);
    CHECK(read_all(b, 4096, 1 << 20) == slice(original, 4096, 1 << 20));
    CHECK(lab.status_int("write_cache_ram_bytes") >= (1 << 20));
    a.disconnect();
    a2.disconnect();
  }
  CHECK(dt::sha256_file(lab.base()) == sha);
  // Reconnecting is not a reboot: the session keeps its cache. A reboot (here device.reset) discards it.
  REQUIRE(dt::eventually([&] { return lab.status_int("active_devices") == 0; }));
  {
    auto reconnected = lab.connect(mac_a);
    CHECK(read_all(reconnected, 4096, 1 << 20) == fill(1 << 20, 0xab));
  }
  REQUIRE(lab.reset(mac_a)->ended);
  auto again = lab.connect(mac_a);
  CHECK(read_all(again, 4096, 1 << 20) == slice(original, 4096, 1 << 20));
}

TEST_CASE("a read past the end is EINVAL and a full write cache is ENOSPC with the base untouched") {
  Lab lab;
  lab.start("write_cache_ram_mb = 1\nwrite_cache_disk_mb = 1\n");
  const auto sha = dt::sha256_file(lab.base());
  auto a = lab.connect(mac_a);
  std::vector<std::byte> buf(4096);
  CHECK(a.read(base_size - 1024, buf) == EINVAL);
  CHECK(a.read(base_size, std::span(buf.data(), 1)) == EINVAL);
  CHECK(a.write(0, fill(2 << 20, 0x11)) == 0);  // 1 MiB RAM + 1 MiB overflow file
  CHECK(a.write(4 << 20, fill(64 << 10, 0x22)) == ENOSPC);
  CHECK(read_all(a, 4 << 20, 64 << 10) == slice(dt::read_file(lab.base()), 4 << 20, 64 << 10));
  CHECK(dt::sha256_file(lab.base()) == sha);
}

TEST_CASE("a new version is written in maintenance by one writer, then reaches devices at their next boot") {
  Lab lab;
  lab.start();
  const auto original = dt::read_file(lab.base());
  auto r = lab.admin("version.new", api::NewVersion{"gold"});
  REQUIRE(r.ok());
  CHECK(r->version == 1);
  CHECK(r->action == "version.new");
  const auto again = lab.admin("version.new", api::NewVersion{"gold"});  // one at a time
  REQUIRE(!again.ok());
  CHECK(again.error().code == "refused");
  CHECK_THAT(again.error().message, Catch::Contains("already has version 1 in maintenance"));

  {
    auto m = lab.connect("gold@maintenance");
    CHECK_THROWS_WITH(lab.connect("gold@maintenance"), Catch::Contains("one writer at a time"));
    REQUIRE(m.write(1 << 20, fill(8192, 0x5a)) == 0);
    CHECK(read_all(m, (1 << 20) - 16, 32) == [&] {
      auto v = slice(original, (1 << 20) - 16, 16);
      auto t = fill(16, 0x5a);
      v.insert(v.end(), t.begin(), t.end());
      return v;
    }());
    REQUIRE(m.flush() == 0);
    m.disconnect();
  }
  auto before = lab.connect(mac_a);  // booted while version 1 is still in maintenance
  CHECK(read_all(before, 1 << 20, 16) == slice(original, 1 << 20, 16));

  // Test: only test devices see it.
  REQUIRE(lab.admin("version.promote", api::PromoteVersion{"gold", std::nullopt, "test"}).ok());
  {
    auto tester = lab.connect(mac_b);
    CHECK(read_all(tester, 1 << 20, 16) == fill(16, 0x5a));
    tester.disconnect();
  }
  auto r2 = lab.admin("version.promote", api::PromoteVersion{"gold"});
  REQUIRE(r2.ok());
  CHECK(r2->version == 1);

  // The running session keeps the bytes it booted with, across a reconnect too; a reboot picks up version 1.
  CHECK(read_all(before, 1 << 20, 16) == slice(original, 1 << 20, 16));
  before.disconnect();
  REQUIRE(dt::eventually([&] { return lab.status_int("active_devices") == 0; }));
  {
    auto reconnected = lab.connect(mac_a);
    CHECK(read_all(reconnected, 1 << 20, 16) == slice(original, 1 << 20, 16));
  }
  REQUIRE(lab.reset(mac_a)->ended);
  auto after = lab.connect(mac_a);
  CHECK(read_all(after, 1 << 20, 16) == fill(16, 0x5a));
  CHECK(read_all(after, 0, 1 << 20) == slice(original, 0, 1 << 20));
  CHECK(dt::read_file(lab.base()) == original);
}

TEST_CASE("merging collapses the chain into a new base that devices boot next") {
  Lab lab;
  lab.start();
  REQUIRE(lab.admin("version.new", api::NewVersion{"gold"}).ok());
  {
    auto m = lab.connect("gold@maintenance");
    REQUIRE(m.write(0, fill(4096, 0x77)) == 0);
    REQUIRE(m.flush() == 0);  // the version file is complete before the writer leaves
    m.disconnect();
  }
  REQUIRE(lab.admin("version.promote", api::PromoteVersion{"gold"}).ok());
  auto r = lab.admin("version.merge", api::MergeVersion{"gold"});
  REQUIRE(r.ok());
  CHECK(r->version == 2);
  auto merged = dt::read_file(lab.store() / "gold.2.img");
  auto expected = dt::read_file(lab.base());
  std::fill(expected.begin(), expected.begin() + 4096, std::byte{0x77});
  // Compared by digest: a failing comparison of two whole images would print megabytes.
  CHECK(dt::sha256_bytes(merged) == dt::sha256_bytes(expected));
  auto a = lab.connect(mac_a);
  CHECK(dt::sha256_bytes(read_all(a, 0, base_size)) == dt::sha256_bytes(expected));
  CHECK(lab.production() == 2);
}

TEST_CASE("a merge into maintenance gives a base its writer can change, read back unflushed, and promote") {
  Lab lab;
  lab.start();
  auto r = lab.admin("version.merge", api::MergeVersion{"gold", std::nullopt, "maintenance"});
  REQUIRE(r.ok());
  CHECK(r->version == 1);
  auto m = lab.connect("gold@maintenance");
  REQUIRE(m.write(8192, fill(4096, 0x42)) == 0);
  CHECK(read_all(m, 8192, 4096) == fill(4096, 0x42));  // before any flush: the writer's own view
  REQUIRE(m.flush() == 0);
  m.disconnect();
  REQUIRE(dt::eventually([&] { return lab.admin("version.promote", api::PromoteVersion{"gold", std::nullopt, "production"}).ok(); }));
  CHECK(lab.production() == 1);
  auto a = lab.connect(mac_a);
  CHECK(read_all(a, 8192, 4096) == fill(4096, 0x42));
  CHECK(read_all(a, 0, 4096) == slice(dt::read_file(lab.base()), 0, 4096));
}

TEST_CASE("a private image has one writer and keeps its writes") {
  Lab lab;
  lab.start();
  {
    auto p = lab.connect(mac_p);
    CHECK(p.size() == (4u << 20));
    try {
      lab.connect(mac_p);
      FAIL("second connection accepted");
    } catch (const ClientError& e) {
      CHECK(std::string(e.what()).find("private mode and already open by device 52:54:00:00:00:0c") !=
            std::string::npos);
    }
    REQUIRE(p.write(0, fill(4096, 0x3c)) == 0);
    REQUIRE(p.flush() == 0);
    p.disconnect();
  }
  CHECK(slice(dt::read_file(lab.store() / "solo.img"), 0, 4096) == fill(4096, 0x3c));
  REQUIRE(dt::eventually([&] { return lab.status_int("active_devices") == 0; }));
  auto again = lab.connect(mac_p);
  CHECK(read_all(again, 0, 4096) == fill(4096, 0x3c));
  CHECK_THAT(lab.admin("version.new", api::NewVersion{"solo"}).error().message, Catch::Contains("private mode"));
}

TEST_CASE("devices are assigned over the bus and boot and disconnect events are published") {
  using namespace std::chrono_literals;
  Lab lab;
  lab.start();
  auto events = lab.h->probe("pvs.pvs-1.device.>");
  CHECK_THROWS(lab.connect("52:54:00:00:00:99"));
  auto r = lab.admin("device.assign", api::AssignDevice{"52-54-00-00-00-99", "gold", "late"});
  REQUIRE(r.ok());
  CHECK(r->mac == "52:54:00:00:00:99");
  {
    auto c = lab.connect("52:54:00:00:00:99");
    CHECK(read_all(c, 0, 512) == slice(dt::read_file(lab.base()), 0, 512));
    c.disconnect();
  }
  // Published from the streamer's threads: waited for in real time.
  const auto boot_message = events.await(30s);
  const auto disconnect_message = events.await(30s);
  REQUIRE(boot_message);
  REQUIRE(disconnect_message);
  const auto boot = *sdk::body_of<api::DeviceEvent>(*boot_message);
  CHECK(boot_message->subject == api::device_subject("pvs-1", "boot"));
  CHECK(boot.kind == "boot");
  CHECK(boot.mac == "52:54:00:00:00:99");
  CHECK(boot.vdisk == "gold");
  CHECK(boot.mode == "standard");
  CHECK(boot.server == "pvs-1");
  CHECK(disconnect_message->subject == api::device_subject("pvs-1", "disconnect"));
  CHECK(sdk::body_of<api::DeviceEvent>(*disconnect_message)->kind == "disconnect");
  CHECK(lab.admin("device.assign", api::AssignDevice{"52:54:00:00:00:98", "nope"}).error().code == "refused");
  CHECK(lab.admin("device.assign", api::AssignDevice{"zz", "gold"}).error().code == "bad_request");
}

TEST_CASE("two pvs servers share one store, and a device whose server dies reads the same bytes from the other") {
  Lab lab;
  // Each bootstrap names both stream ports before either server starts, so the ports are picked here (bound
  // to 0 and released). Another test may take one in between (ctest -j): a bind failure picks new ones.
  std::uint16_t p1 = 0, p2 = 0;
  for (int attempt = 1;; ++attempt) {
    p1 = free_port();
    p2 = free_port();
    if (p1 == p2) {
      if (attempt == 5) FAIL("five tries gave the same free port twice");
      continue;
    }
    // lease_s = 1: pvs-1 is taken for dead a second after it stops renewing (see the session ledger).
    const std::string servers = "login_servers = [\"127.0.0.1:" + std::to_string(p1) + "\", \"127.0.0.1:" +
                                std::to_string(p2) + "\"]\nstore = \"" + lab.store().string() + "\"\nlease_s = 1\n";
    std::string two = Lab::pvs_instance("pvs-1", servers);
    two += Lab::pvs_instance("pvs-2", servers);
    auto put_port = [&](std::uint16_t port, std::size_t nth) {
      std::size_t at = 0;
      for (std::size_t i = 0; i <= nth; ++i) at = two.find("stream = \"127.0.0.1:0\"", at + 1);
      two.replace(at, 22, "stream = \"127.0.0.1:" + std::to_string(port) + "\"");
    };
    put_port(p1, 0);
    put_port(p2, 0);
    try {
      lab.start_instances(two);
      break;
    } catch (const std::exception& e) {
      lab.h.reset();
      if (attempt == 5 || std::string_view(e.what()).find("Address already in use") == std::string_view::npos) throw;
    }
  }
  const auto b = fetch_bootstrap(lab.tftp_port("pvs-2"));
  REQUIRE(b.login_servers.size() == 2);
  CHECK(b.login_servers[0].port == p1);
  // Each sees the other through discovery, with the stream endpoint it advertised.
  const auto peers = lab.status("pvs-2").find("peers")->as_array();
  REQUIRE(peers.size() == 1);
  CHECK(Lab::text(peers[0], "name") == "pvs-1");
  CHECK(Lab::text(peers[0], "stream") == "127.0.0.1:" + std::to_string(p1));

  // A version made and written through pvs-1 is seen by pvs-2 (shared data store, change notice on the bus).
  REQUIRE(lab.admin("version.new", api::NewVersion{"gold"}).ok());
  constexpr std::uint64_t at = 3 << 20;
  const auto patch = dt::pattern(96 << 10, 41);
  {
    nbd::Client m("127.0.0.1", p1, "gold@maintenance");
    REQUIRE(m.write(at, patch) == 0);
    REQUIRE(m.flush() == 0);
    m.disconnect();
  }
  REQUIRE(dt::eventually([&] { return lab.admin("version.promote", api::PromoteVersion{"gold"}).ok(); }, std::chrono::seconds(10)));
  REQUIRE(dt::eventually([&] {
    return lab.production("pvs-2") == 1;
  }));
  auto expected = dt::read_file(lab.base());
  std::copy(patch.begin(), patch.end(), expected.begin() + at);

  nbd::Client first("127.0.0.1", b.login_servers[0].port, mac_a);
  const auto bytes = read_all(first, 0, base_size);
  CHECK(bytes == expected);  // version 1's written blocks over the base
  lab.h->run_on("pvs-1", [](sdk::Plugin& p, sdk::Context&) { p.stop(); });  // pvs-1 dies
  std::vector<std::byte> probe(512);
  CHECK_THROWS(first.read(0, probe));  // the connection is gone
  // The firmware walks its login server list: pvs-1 is gone, pvs-2 refuses until pvs-1's lease has run out, then
  // continues the device's session (it had written nothing) with the version it booted.
  std::unique_ptr<nbd::Client> next;
  REQUIRE(dt::eventually([&] {
    for (const auto& s : b.login_servers) {
      try {
        next = std::make_unique<nbd::Client>(s.host, s.port, mac_a);
        return true;
      } catch (const ClientError&) {
      }
    }
    return false;
  }));
  // pvs-2 serves the same version, the bytes pvs-1's maintenance writer wrote included.
  CHECK(read_all(*next, 0, base_size) == expected);
  CHECK(slice(read_all(*next, at, patch.size()), 0, patch.size()) == patch);
}

TEST_CASE("malformed config values are refused at their key") {
  Lab lab;
  CHECK_THAT(lab.start_error("login_servers = [\"a:1\", \"b:2\", \"c:3\", \"d:4\", \"e:5\"]\n"),
             Catch::Contains("lab.toml:") && Catch::Contains("at most 4"));
  CHECK_THAT(lab.start_error("recovery = \"pray\"\n"),
             Catch::Contains("'recovery'") && Catch::Contains("restore_network, reboot_to_hd"));
  CHECK_THAT(lab.start_error("write_cache_block_size = 5000\n"),
             Catch::Contains("lab.toml:11:") && Catch::Contains("not a power of two"));
  CHECK_THAT(lab.start_error("login_servers = [\"10.0.0.1\"]\n"), Catch::Contains("not host:port"));
}

TEST_CASE("seeding is idempotent: a restart keeps versions made at run time") {
  Lab lab;
  lab.start();
  REQUIRE(lab.admin("version.new", api::NewVersion{"gold"}).ok());
  lab.stop();
  lab.start();
  const auto status = lab.status();
  const auto& versions = status.find("vdisks")->as_array().at(0).find("versions")->as_array();
  REQUIRE(versions.size() == 2);
  CHECK(Lab::text(versions[1], "access") == "maintenance");
}

namespace {
/// `text` with its first `what` replaced by `with` (REQUIREs that it is there).
std::string replaced(std::string text, const std::string& what, const std::string& with) {
  const auto at = text.find(what);
  REQUIRE(at != std::string::npos);
  return text.replace(at, what.size(), with);
}
const std::string solo = "{ name = \"solo\", size_mb = 4, mode = \"private\" }";
}  // namespace

TEST_CASE("deskfarm check refuses a malformed device MAC before anything starts") {
  Lab lab;
  // Deployment construction is what `deskfarm check` runs: schema, then the plugin's validate().
  const auto error = lab.check_error(replaced(lab.one(), mac_a, "zz"));
  CHECK_THAT(error, Catch::Contains("lab.toml:") && Catch::Contains("devices[0].mac 'zz' is not a MAC address"));
  CHECK(!std::filesystem::exists(lab.dir / "ds.db"));  // no data store was opened, no image created
  CHECK(!std::filesystem::exists(lab.store() / "solo.img"));
  // The other checks the schema cannot express run there too.
  CHECK_THAT(lab.check_error(lab.one("write_cache_block_size = 5000\n")), Catch::Contains("not a power of two"));
  CHECK_THAT(lab.check_error(lab.one("addressing = \"static\"\nstatic_ip = \"10.0.0.9\"\n")), Catch::Contains("static"));
  CHECK_THAT(lab.check_error(replaced(lab.one(), "name = \"solo\"", "name = \".hidden\"")),
             Catch::Contains("vdisks[1].name '.hidden' must be"));
  CHECK(lab.check_error(lab.one()).empty());
}

TEST_CASE("the vdisks and devices table schemas refuse unknown keys, values out of range and unknown choices") {
  Lab lab;
  CHECK_THAT(lab.check_error(replaced(lab.one(), solo, "{ name = \"solo\", size_mb = 4, colour = \"red\" }")),
             Catch::Contains("unknown key 'vdisks[1].colour'") && Catch::Contains("lab.toml:"));
  CHECK_THAT(lab.check_error(replaced(lab.one(), solo, "{ name = \"solo\", size_mb = -1 }")),
             Catch::Contains("'vdisks[1].size_mb'") && Catch::Contains("outside 0..16777216"));
  CHECK_THAT(lab.check_error(replaced(lab.one(), solo, "{ name = \"solo\", size_mb = 4, mode = \"shared\" }")),
             Catch::Contains("standard, private"));
  CHECK_THAT(lab.check_error(replaced(lab.one(), "type = \"test\"", "type = \"qa\"")),
             Catch::Contains("'devices[1].type'") && Catch::Contains("production, test"));
  CHECK_THAT(lab.check_error(replaced(lab.one(), "vdisk = \"solo\", ", "")), Catch::Contains("devices[2].vdisk"));
}

TEST_CASE("the operator's JSON view of the admin requests (deskfarm request) answers like the typed one") {
  using namespace std::chrono_literals;
  Lab lab;
  lab.start();
  // What `deskfarm request pvs.pvs-1.admin.version.new '{"vdisk":"gold"}'` sends: type deskfarm.json.
  const auto made = lab.h->json_request(api::admin_subject("pvs-1", "version.new"), R"({"vdisk":"gold"})", 30s);
  INFO(made.body);
  REQUIRE(made.ok);
  CHECK(made.type == api::AdminReply::type_name);
  const auto reply = sdk::from_value<api::AdminReply>(sdk::Value::parse_json(made.body));
  CHECK(reply.version == 1);
  REQUIRE(reply.vdisks.size() == 2);
  CHECK(reply.vdisks[0].versions.size() == 2);
  CHECK(reply.devices.size() == 3);

  const auto twice = lab.h->json_request(api::admin_subject("pvs-1", "version.new"), R"({"vdisk":"gold"})", 30s);
  CHECK(!twice.ok);
  const auto error = sdk::from_value<sdk::Error>(sdk::Value::parse_json(twice.body));
  CHECK(error.code == "refused");
  CHECK_THAT(error.message, Catch::Contains("pvs pvs-1: version.new: vDisk 'gold' already has version 1"));

  const auto wrong = lab.h->json_request(api::admin_subject("pvs-1", "version.new"), R"({"vdisk":7})", 30s);
  CHECK(!wrong.ok);
  CHECK(sdk::from_value<sdk::Error>(sdk::Value::parse_json(wrong.body)).code == "bad_request");

  const auto list = lab.h->json_request(api::admin_subject("pvs-1", "vdisk.list"), "{}", 30s);
  REQUIRE(list.ok);
  CHECK(sdk::from_value<api::AdminReply>(sdk::Value::parse_json(list.body)).vdisks.at(0).versions.at(1).access ==
        "maintenance");
}

TEST_CASE("deskfarm status answers within a second while a large merge runs on the blocking pool") {
  using namespace std::chrono_literals;
  // A 384 MiB sparse vDisk (a few hundred MiB, not GiB, to keep the suite fast): its merge reads the whole chain.
  Lab lab;
  lab.start_instances(replaced(lab.one(), solo, solo + ", { name = \"big\", size_mb = 384 }"));
  REQUIRE(lab.admin("version.new", api::NewVersion{"big"}).ok());
  {
    auto m = lab.connect("big@maintenance");
    REQUIRE(m.write((384u << 20) - 8192, fill(8192, 0x42)) == 0);
    REQUIRE(m.flush() == 0);
    m.disconnect();
  }
  REQUIRE(lab.admin("version.promote", api::PromoteVersion{"big"}).ok());

  // The merge is asked for from another thread, as an operator's `deskfarm request` would be.
  auto merge = std::async(std::launch::async, [&] {
    return lab.h->json_request(api::admin_subject("pvs-1", "version.merge"), R"({"vdisk":"big"})", 120s);
  });
  int during = 0;  // status answers computed while the merge job was running
  auto slowest = 0ms;
  const auto end = std::chrono::steady_clock::now() + 150s;
  while (merge.wait_for(0ms) != std::future_status::ready && std::chrono::steady_clock::now() < end) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto status = lab.h->status();
    slowest = std::max(slowest, std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0));
    const auto& pvs = status.find("instances")->as_array().at(0);
    REQUIRE(Lab::text(pvs, "name") == "pvs-1");
    REQUIRE(!pvs.find("status_error"));
    if (Lab::integer(*pvs.find("fields"), "data_store_jobs") >= 1) ++during;
    std::this_thread::sleep_for(20ms);
  }
  const auto answer = merge.get();
  INFO(answer.body);
  REQUIRE(answer.ok);
  CHECK(sdk::from_value<api::AdminReply>(sdk::Value::parse_json(answer.body)).version == 2);
  CHECK(during >= 1);
  CHECK(slowest < 1000ms);
  CHECK(std::filesystem::file_size(lab.store() / "big.2.img") == (384u << 20));
}

namespace {
/// pvs-1 with the default vDisks; the deployment (state_dir, data store) is the harness's own.
deskfarm::testing::conformance::Subject pvs_subject() {
  static const Lab lab;  // the vDisk store, shared by the suite's deployments
  deskfarm::testing::conformance::Subject s;
  s.plugin = "pvs";
  s.instance = "pvs-1";
  s.manifest_toml = lab.one();
  s.options.plugin_path = {PLUGIN_DIR};
  return s;
}
}  // namespace

DESKFARM_CONFORMANCE_SUITE("pvs", pvs_subject)
