// pvs in-process behaviour: bootstrap, device exports, write caches, versions, private mode, HA, config errors.
#include <deskfarm/bootstrap/bootstrap.hpp>
#include <deskfarm/tftp/client.hpp>
#include <deskfarm/testing/process.hpp>

#include "pvs_lab.hpp"

using namespace pvs_test;
using deskfarm::nbd::ClientError;

namespace {
std::vector<std::byte> fill(std::size_t n, unsigned char v) { return std::vector<std::byte>(n, std::byte{v}); }

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

TEST_CASE("writes land in the device's own write cache, never in the base, and vanish at reboot") {
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
    CHECK(lab.status()->getValue<int>("write_cache_ram_bytes") >= (1 << 20));
    a.disconnect();
    a2.disconnect();
  }
  CHECK(dt::sha256_file(lab.base()) == sha);
  // Reconnecting is a reboot: the cache is gone.
  REQUIRE(dt::eventually([&] { return lab.status()->getValue<int>("active_devices") == 0; }));
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
  auto r = lab.request("pvs.pvs-1.admin.version.new", R"({"vdisk":"gold"})");
  REQUIRE(r->getValue<bool>("ok"));
  CHECK(r->getValue<int>("version") == 1);
  CHECK(!lab.request("pvs.pvs-1.admin.version.new", R"({"vdisk":"gold"})")->getValue<bool>("ok"));  // one at a time

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
  REQUIRE(lab.request("pvs.pvs-1.admin.version.promote", R"({"vdisk":"gold","to":"test"})")->getValue<bool>("ok"));
  {
    auto tester = lab.connect(mac_b);
    CHECK(read_all(tester, 1 << 20, 16) == fill(16, 0x5a));
    tester.disconnect();
  }
  auto r2 = lab.request("pvs.pvs-1.admin.version.promote", R"({"vdisk":"gold"})");
  REQUIRE(r2->getValue<bool>("ok"));
  CHECK(r2->getValue<int>("version") == 1);

  // The running session keeps the bytes it booted with; a reboot picks up production version 1.
  CHECK(read_all(before, 1 << 20, 16) == slice(original, 1 << 20, 16));
  before.disconnect();
  REQUIRE(dt::eventually([&] { return lab.status()->getValue<int>("active_devices") == 0; }));
  auto after = lab.connect(mac_a);
  CHECK(read_all(after, 1 << 20, 16) == fill(16, 0x5a));
  CHECK(read_all(after, 0, 1 << 20) == slice(original, 0, 1 << 20));
  CHECK(dt::read_file(lab.base()) == original);
}

TEST_CASE("merging collapses the chain into a new base that devices boot next") {
  Lab lab;
  lab.start();
  REQUIRE(lab.request("pvs.pvs-1.admin.version.new", R"({"vdisk":"gold"})")->getValue<bool>("ok"));
  {
    auto m = lab.connect("gold@maintenance");
    REQUIRE(m.write(0, fill(4096, 0x77)) == 0);
    REQUIRE(m.flush() == 0);  // the version file is complete before the writer leaves
    m.disconnect();
  }
  REQUIRE(lab.request("pvs.pvs-1.admin.version.promote", R"({"vdisk":"gold"})")->getValue<bool>("ok"));
  auto r = lab.request("pvs.pvs-1.admin.version.merge", R"({"vdisk":"gold"})");
  REQUIRE(r->getValue<bool>("ok"));
  CHECK(r->getValue<int>("version") == 2);
  auto merged = dt::read_file(lab.store() / "gold.2.img");
  auto expected = dt::read_file(lab.base());
  std::fill(expected.begin(), expected.begin() + 4096, std::byte{0x77});
  // Compared by digest: a failing comparison of two whole images would print megabytes.
  CHECK(dt::sha256_bytes(merged) == dt::sha256_bytes(expected));
  auto a = lab.connect(mac_a);
  CHECK(dt::sha256_bytes(read_all(a, 0, base_size)) == dt::sha256_bytes(expected));
  CHECK(lab.status()->getArray("vdisks")->getObject(0)->getValue<int>("production") == 2);
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
  REQUIRE(dt::eventually([&] { return lab.status()->getValue<int>("active_devices") == 0; }));
  auto again = lab.connect(mac_p);
  CHECK(read_all(again, 0, 4096) == fill(4096, 0x3c));
  CHECK(!lab.request("pvs.pvs-1.admin.version.new", R"({"vdisk":"solo"})")->getValue<bool>("ok"));
}

TEST_CASE("devices are assigned over the bus and boot and disconnect events are published") {
  Lab lab;
  lab.start();
  auto events = std::make_shared<std::vector<std::string>>();
  auto mutex = std::make_shared<std::mutex>();
  deskfarm::sdk::Subscription sub;
  lab.d->run_on("pvs-1", [&](sdk::Plugin&, sdk::Context& ctx) {
    sub = ctx.bus().subscribe("pvs.pvs-1.device.>", [events, mutex](const sdk::Message& m) {
      std::lock_guard lock(*mutex);
      events->push_back(m.subject + " " + sdk::body_as<sdk::Text>(m)->value);
    });
  });
  CHECK_THROWS(lab.connect("52:54:00:00:00:99"));
  auto r = lab.request("pvs.pvs-1.admin.device.assign", R"({"mac":"52:54:00:00:00:99","vdisk":"gold","name":"late"})");
  REQUIRE(r->getValue<bool>("ok"));
  {
    auto c = lab.connect("52:54:00:00:00:99");
    CHECK(read_all(c, 0, 512) == slice(dt::read_file(lab.base()), 0, 512));
    c.disconnect();
  }
  REQUIRE(dt::eventually([&] {
    std::lock_guard lock(*mutex);
    return events->size() >= 2;
  }));
  std::lock_guard lock(*mutex);
  CHECK((*events)[0].find("pvs.pvs-1.device.boot {") == 0);
  CHECK((*events)[0].find("\"export\":\"52:54:00:00:00:99\"") != std::string::npos);
  CHECK((*events)[1].find("pvs.pvs-1.device.disconnect") == 0);
  CHECK(!lab.request("pvs.pvs-1.admin.device.assign", R"({"mac":"52:54:00:00:00:98","vdisk":"nope"})")->getValue<bool>("ok"));
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
    const std::string servers = "login_servers = [\"127.0.0.1:" + std::to_string(p1) + "\", \"127.0.0.1:" +
                                std::to_string(p2) + "\"]\nstore = \"" + lab.store().string() + "\"\n";
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
      lab.d.reset();
      if (attempt == 5 || std::string_view(e.what()).find("Address already in use") == std::string_view::npos) throw;
    }
  }
  const auto b = fetch_bootstrap(lab.tftp_port("pvs-2"));
  REQUIRE(b.login_servers.size() == 2);
  CHECK(b.login_servers[0].port == p1);

  // A version made through pvs-1 is seen by pvs-2 (shared data store, change notice on the bus).
  REQUIRE(lab.request("pvs.pvs-1.admin.version.new", R"({"vdisk":"gold"})")->getValue<bool>("ok"));
  REQUIRE(lab.request("pvs.pvs-1.admin.version.promote", R"({"vdisk":"gold"})")->getValue<bool>("ok"));
  REQUIRE(dt::eventually([&] {
    return lab.status("pvs-2")->getArray("vdisks")->getObject(0)->getValue<int>("production") == 1;
  }));

  nbd::Client first("127.0.0.1", b.login_servers[0].port, mac_a);
  const auto bytes = read_all(first, 0, base_size);
  CHECK(bytes == dt::read_file(lab.base()));
  lab.d->run_on("pvs-1", [](sdk::Plugin& p, sdk::Context&) { p.stop(); });  // pvs-1 dies
  std::vector<std::byte> probe(512);
  CHECK_THROWS(first.read(0, probe));  // the connection is gone
  // The firmware walks its login server list: pvs-1 refuses, pvs-2 answers.
  std::unique_ptr<nbd::Client> next;
  for (const auto& s : b.login_servers) {
    try {
      next = std::make_unique<nbd::Client>(s.host, s.port, mac_a);
      break;
    } catch (const ClientError&) {
    }
  }
  REQUIRE(next);
  CHECK(read_all(*next, 0, base_size) == bytes);
}

TEST_CASE("malformed config values are refused at their key") {
  Lab lab;
  CHECK_THAT(lab.start_error("login_servers = [\"a:1\", \"b:2\", \"c:3\", \"d:4\", \"e:5\"]\n"),
             Catch::Contains("lab.toml:") && Catch::Contains("at most 4"));
  CHECK_THAT(lab.start_error("recovery = \"pray\"\n"), Catch::Contains("recovery 'pray' is neither"));
  CHECK_THAT(lab.start_error("write_cache_block_size = 5000\n"),
             Catch::Contains("lab.toml:11:") && Catch::Contains("not a power of two"));
  CHECK_THAT(lab.start_error("login_servers = [\"10.0.0.1\"]\n"), Catch::Contains("not host:port"));
}

TEST_CASE("seeding is idempotent: a restart keeps versions made at run time") {
  Lab lab;
  lab.start();
  REQUIRE(lab.request("pvs.pvs-1.admin.version.new", R"({"vdisk":"gold"})")->getValue<bool>("ok"));
  lab.d->stop();
  lab.d.reset();
  lab.start();
  auto versions = lab.status()->getArray("vdisks")->getObject(0)->getArray("versions");
  CHECK(versions->size() == 2);
  CHECK(versions->getObject(1)->getValue<std::string>("access") == "maintenance");
}
