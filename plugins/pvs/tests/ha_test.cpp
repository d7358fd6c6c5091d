// HA: servers sharing one data store and vDisk store serve each device from exactly one of them. A peer is another
// deployment on the same data store (another process, another host); "a server dies" is its deployment stopping,
// its RAM write caches gone with it, its lease left to run out.
#include <thread>

#include "pvs_lab.hpp"

using namespace pvs_test;

namespace {

constexpr std::uint64_t at_written = 1 << 20;
constexpr std::size_t written = 64 << 10;

/// pvs-1 in the lab's own deployment and pvs-2 in a second one (its own state directory), both on the lab's data
/// store and vDisk store, with a one-second lease so that a dead server is dead quickly.
struct Pair {
  Lab lab;
  std::unique_ptr<dt::Harness> peer;

  explicit Pair(const std::string& extra = "") {
    const std::string keys = "lease_s = 1\nrefresh_s = 1\n" + extra;
    lab.start(keys);
    peer = lab.harness(Lab::pvs_instance("pvs-2", "store = \"" + lab.store().string() + "\"\n" + keys), "var-2");
    peer->start();
    REQUIRE(dt::eventually([&] { return Lab::text(status2(), "catalog") == "loaded"; }, std::chrono::seconds(30)));
  }
  sdk::Value status2() { return peer->instance_status("pvs-2"); }
  std::uint16_t port2() { return static_cast<std::uint16_t>(Lab::integer(status2(), "stream_port")); }
  nbd::Client connect2(const std::string& name) { return nbd::Client("127.0.0.1", port2(), name); }
  /// The refusal pvs-2 gives `name` now ("" = it would serve it).
  std::string refusal2(const std::string& name) {
    try {
      connect2(name);
      return "";
    } catch (const nbd::ClientError& e) {
      return e.what();
    }
  }
  /// pvs-1's deployment stops; its lease runs out a second later.
  void kill_first() { lab.stop(); }
};

/// A client of `name` on `port` once the server serves it (a refusal is retried for up to ten seconds).
std::unique_ptr<nbd::Client> connect_when_served(std::uint16_t port, const std::string& name) {
  std::unique_ptr<nbd::Client> c;
  const bool served = dt::eventually([&] {
    try {
      c = std::make_unique<nbd::Client>("127.0.0.1", port, name);
      return true;
    } catch (const nbd::ClientError&) {
      return false;
    }
  });
  INFO("export " << name << " on port " << port);
  REQUIRE(served);
  return c;
}

std::int64_t session_version(const sdk::Value& status, const std::string& mac) {
  for (const auto& s : status.find("sessions")->as_array())
    if (Lab::text(s, "export") == mac) return Lab::integer(s, "version");
  return -1;
}

}  // namespace

TEST_CASE("HA: while its server lives, a device is refused by the peer, which names that server") {
  Pair p;
  auto a = p.lab.connect(mac_a);
  CHECK(read_all(a, 0, 4096).size() == 4096);
  const auto why = p.refusal2(mac_a);
  CHECK_THAT(why, Catch::Contains("served by pvs-1") && Catch::Contains("one server at a time"));
  // Another device is the peer's to serve.
  auto b = p.connect2(mac_b);
  CHECK(read_all(b, 0, 4096).size() == 4096);
  CHECK_THAT(p.lab.status().to_json(), !Catch::Contains(mac_b));
}

TEST_CASE("HA: when its server dies, a device that wrote nothing continues on the peer with the version it booted") {
  Pair p;
  const auto original = dt::read_file(p.lab.base());
  std::vector<std::byte> before;
  {
    auto a = p.lab.connect(mac_a);
    before = read_all(a, 0, 1 << 20);
    // A new production version arrives while the device runs: it must keep the one it booted.
    REQUIRE(p.lab.admin("version.new", api::NewVersion{"gold"}).ok());
    {
      auto m = p.lab.connect("gold@maintenance");
      REQUIRE(m.write(0, fill(4096, 0x5a)) == 0);
      REQUIRE(m.flush() == 0);
    }
    REQUIRE(dt::eventually([&] { return p.lab.admin("version.promote", api::PromoteVersion{"gold"}).ok(); }));
    p.kill_first();
  }
  auto a = connect_when_served(p.port2(), mac_a);
  CHECK(read_all(*a, 0, 1 << 20) == before);
  CHECK(before == slice(original, 0, 1 << 20));
  CHECK(session_version(p.status2(), mac_a) == 0);
  CHECK(p.peer->logged("device 52:54:00:00:00:0a takeover (from pvs-1)"));
  // Its writes now land in its cache on pvs-2 and survive a reconnect there.
  REQUIRE(a->write(at_written, fill(written, 0xcd)) == 0);
  REQUIRE(a->flush() == 0);
  a.reset();
  auto again = p.connect2(mac_a);
  CHECK(read_all(again, at_written, written) == fill(written, 0xcd));
}

TEST_CASE("HA: when its server dies, a device that wrote is refused by the peer until it boots, then boots clean") {
  Pair p;
  const auto original = dt::read_file(p.lab.base());
  {
    auto a = p.lab.connect(mac_a);
    REQUIRE(a.write(at_written, fill(written, 0xab)) == 0);
    REQUIRE(a.flush() == 0);  // acknowledged: durable on pvs-1, whose RAM dies with it
    p.kill_first();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // past pvs-1's lease
  // Serving the base now would hand the running OS blocks older than what it wrote: never stale data.
  CHECK_THAT(p.refusal2(mac_a), Catch::Contains("wrote to its write cache on pvs-1") && Catch::Contains("reboot"));
  // The device reboots (the hypervisor says so on pvs-2's bus): a fresh session from the base.
  power_event(*p.peer, mac_a, "off", "starting");
  auto a = connect_when_served(p.port2(), mac_a);
  CHECK(read_all(*a, at_written, written) == slice(original, at_written, written));
}

TEST_CASE("a restarted server refuses a device whose writes died with its previous run, until device.reset") {
  Lab lab;
  lab.start("lease_s = 1\n");
  {
    auto a = lab.connect(mac_a);
    REQUIRE(a.write(at_written, fill(written, 0xab)) == 0);
    REQUIRE(a.flush() == 0);
  }
  lab.stop();
  lab.start("lease_s = 1\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // the previous run's lease has run out
  try {
    lab.connect(mac_a);
    FAIL("the device got a disk without the writes it made");
  } catch (const nbd::ClientError& e) {
    CHECK_THAT(e.what(), Catch::Contains("wrote to its write cache on pvs-1"));
  }
  REQUIRE(lab.reset(mac_a).ok());
  connect_when_served(lab.stream_port(), mac_a);
}

TEST_CASE("HA: one maintenance writer across servers, and the peer takes it over once its server is gone") {
  Pair p;
  REQUIRE(p.lab.admin("version.new", api::NewVersion{"gold"}).ok());
  REQUIRE(dt::eventually([&] { return p.refusal2("gold@maintenance").find("no version in maintenance") == std::string::npos; }));
  // The probe above that pvs-2 opened holds the writer's row there until pvs-2 has seen it close (later under load).
  auto m = connect_when_served(p.lab.stream_port(), "gold@maintenance");
  REQUIRE(m->write(0, fill(4096, 0x11)) == 0);
  REQUIRE(m->flush() == 0);
  CHECK_THAT(p.refusal2("gold@maintenance"), Catch::Contains("served by pvs-1"));
  m->disconnect();
  // The writer left: the row goes, and pvs-2 may open it (in-place writes are on the shared store).
  auto m2 = connect_when_served(p.port2(), "gold@maintenance");
  CHECK(read_all(*m2, 0, 4096) == fill(4096, 0x11));
}

TEST_CASE("HA: device.reset on the peer ends the session on the server that holds it") {
  Pair p;
  auto a = p.lab.connect(mac_a);
  REQUIRE(a.write(at_written, fill(4096, 0xab)) == 0);
  REQUIRE(p.lab.h->request<api::ResetDevice, api::ResetReply>(api::admin_subject("pvs-1", "device.reset"),
                                                               api::ResetDevice{mac_b}).ok());
  auto reply = p.peer->request<api::ResetDevice, api::ResetReply>(api::admin_subject("pvs-2", "device.reset"),
                                                                  api::ResetDevice{mac_a}, std::chrono::seconds(10));
  REQUIRE(reply.ok());
  CHECK_FALSE(reply->ended);  // not a session of pvs-2's
  // pvs-1 sees its row gone at its next renewal and ends the session: the old cache never reaches the new boot.
  REQUIRE(dt::eventually([&] { return p.lab.status().find("sessions")->as_array().empty(); }));
  std::vector<std::byte> probe(4096);
  CHECK(a.read(at_written, probe) == EIO);
  CHECK(p.lab.h->logged("an HA peer saw the device boot or reset it"));
}
