// A device's session outlives its connections: it ends at the device's next boot (hypervisor power event, bootstrap
// download, admin reset) or after session_idle_s; flushed writes are on disk; dead sessions' files go at start.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <optional>
#include <thread>

#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/nbd/protocol.hpp>
#include <deskfarm/nbd/write_cache.hpp>
#include <deskfarm/nbd/unique_fd.hpp>
#include <deskfarm/tftp/client.hpp>

#include "pvs_lab.hpp"

using namespace pvs_test;
namespace hv = deskfarm::interfaces::hypervisor;

namespace {

constexpr std::uint64_t at_written = 1 << 20;         // where the device writes 64 KiB
constexpr std::uint64_t at_new_version = 3 << 20;     // where maintenance writes the next version
constexpr std::size_t written = 64 << 10;

/// True when a log line captured so far satisfies `match`.
template <class Match>
bool any_line(Lab& lab, Match match) {
  const auto lines = lab.h->logs();
  return std::any_of(lines.begin(), lines.end(), match);
}

/// What a hypervisor adapter publishes when VM `vm` (NIC `mac`) changes power state.
void power(Lab& lab, const std::string& mac, const std::string& previous, const std::string& state) {
  power_event(*lab.h, mac, previous, state);
}

/// The sessions pvs-1 holds (connected or between two connections).
std::size_t sessions(Lab& lab) { return lab.status().find("sessions")->as_array().size(); }

/// The version the session of `mac` booted, or -1 without one.
std::int64_t session_version(Lab& lab, const std::string& mac) {
  const auto status = lab.status();
  for (const auto& s : status.find("sessions")->as_array())
    if (Lab::text(s, "export") == mac) return Lab::integer(s, "version");
  return -1;
}

/// Makes version 1 of "gold" with 0x5a at at_new_version and promotes it to production.
void new_production_version(Lab& lab) {
  REQUIRE(lab.admin("version.new", api::NewVersion{"gold"}).ok());
  auto m = lab.connect("gold@maintenance");
  REQUIRE(m.write(at_new_version, fill(4096, 0x5a)) == 0);
  REQUIRE(m.flush() == 0);
  // Promoting while the writer is connected would hand devices a version still changing under them.
  const auto early = lab.admin("version.promote", api::PromoteVersion{"gold"});
  REQUIRE(!early.ok());
  CHECK(early.error().code == "refused");
  CHECK_THAT(early.error().message, Catch::Contains("still open for maintenance"));
  m.disconnect();
  REQUIRE(dt::eventually([&] { return lab.admin("version.promote", api::PromoteVersion{"gold"}).ok(); }));
  REQUIRE(lab.production() == 1);
}

/// Device A writes 64 KiB of 0xab and flushes, then its TCP connection drops (no NBD_CMD_DISC).
void write_and_drop(Lab& lab) {
  std::optional<nbd::Client> a(lab.connect(mac_a));
  REQUIRE(a->write(at_written, fill(written, 0xab)) == 0);
  REQUIRE(a->flush() == 0);
  a.reset();  // closes the socket: what a TCP reset or a switch flap leaves the server with
}

}  // namespace

TEST_CASE("a dropped connection keeps the device's session: the reconnect reads its writes and the version it booted") {
  Lab lab;
  lab.start();
  const auto original = dt::read_file(lab.base());
  write_and_drop(lab);
  REQUIRE(dt::eventually([&] { return lab.status_int("active_devices") == 0; }));
  CHECK(sessions(lab) == 1);
  new_production_version(lab);  // between the drop and the reconnect

  auto again = lab.connect(mac_a);
  CHECK(read_all(again, at_written, written) == fill(written, 0xab));
  // Still the version it booted: the running OS must not find version 1's blocks under it.
  CHECK(read_all(again, at_new_version, 4096) == slice(original, at_new_version, 4096));
  CHECK(session_version(lab, mac_a) == 0);
  // A device booting now gets version 1.
  auto fresh = lab.connect(mac_b);
  CHECK(read_all(fresh, at_new_version, 4096) == fill(4096, 0x5a));
}

TEST_CASE("a hypervisor boot event for the device's MAC ends its session: fresh cache, newest version, stale "
          "connections fail") {
  Lab lab;
  lab.start();
  const auto original = dt::read_file(lab.base());
  write_and_drop(lab);
  auto stale = lab.connect(mac_a);  // a connection the hard-reset device left behind
  CHECK(read_all(stale, at_written, 16) == fill(16, 0xab));
  new_production_version(lab);

  // Not a boot (running -> running): the session stays.
  power(lab, "52-54-00-00-00-0A", hv::kRunning, hv::kRunning);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  REQUIRE(sessions(lab) == 1);
  power(lab, "52-54-00-00-00-0A", hv::kOff, hv::kStarting);
  REQUIRE(dt::eventually([&] { return sessions(lab) == 0; }));
  std::vector<std::byte> probe(4096);
  CHECK(stale.read(at_written, probe) == EIO);  // never the old cache to the new boot

  auto booted = lab.connect(mac_a);
  CHECK(read_all(booted, at_written, written) == slice(original, at_written, written));
  CHECK(read_all(booted, at_new_version, 4096) == fill(4096, 0x5a));
  CHECK(session_version(lab, mac_a) == 1);
  CHECK(any_line(lab, [](const std::string& l) {
    return l.find("device 52:54:00:00:00:0a session on vDisk gold version 0 ended") != std::string::npos &&
           l.find("VM vm-a of hv-test") != std::string::npos;
  }));
}

TEST_CASE("device.reset ends the device's session like a boot, and a device without one is reported as such") {
  Lab lab;
  lab.start();
  const auto original = dt::read_file(lab.base());
  write_and_drop(lab);
  new_production_version(lab);
  const auto r = lab.reset("52:54:00:00:00:0A");
  REQUIRE(r.ok());
  CHECK(r->mac == mac_a);
  CHECK(r->ended);
  CHECK(r->vdisk == "gold");
  CHECK(r->version == 0);
  CHECK(r->connections == 0);
  auto booted = lab.connect(mac_a);
  CHECK(read_all(booted, at_written, written) == slice(original, at_written, written));
  CHECK(read_all(booted, at_new_version, 4096) == fill(4096, 0x5a));

  const auto none = lab.reset(mac_b);
  REQUIRE(none.ok());
  CHECK_FALSE(none->ended);
  CHECK(lab.reset("nonsense").error().code == "bad_request");
}

TEST_CASE("with no boot seen, a session ends session_idle_s after its last connection closed") {
  Lab lab;
  lab.start("session_idle_s = 1\n");
  const auto original = dt::read_file(lab.base());
  write_and_drop(lab);
  {
    auto quick = lab.connect(mac_a);  // within the idle time: the same session
    CHECK(read_all(quick, at_written, written) == fill(written, 0xab));
  }
  REQUIRE(dt::eventually([&] { return sessions(lab) == 0; }, std::chrono::seconds(10)));
  auto later = lab.connect(mac_a);
  CHECK(read_all(later, at_written, written) == slice(original, at_written, written));
}

TEST_CASE("the bootstrap fetched from a device's address ends its session, unless several devices share it") {
  Lab lab;
  lab.start();
  const auto original = dt::read_file(lab.base());
  write_and_drop(lab);
  {
    auto b = lab.connect(mac_b);  // a second device at 127.0.0.1: the address no longer names one device
    CHECK(read_all(b, 0, 16) == slice(original, 0, 16));
  }
  REQUIRE(tftp::Client().get("127.0.0.1", lab.tftp_port(), "ARDBP32.BIN").data.size() > 0);
  REQUIRE(dt::eventually([&] {
    return any_line(lab, [](const std::string& l) {
      return l.find("bootstrap fetched from 127.0.0.1, where 2 devices have sessions") != std::string::npos;
    });
  }));
  CHECK(sessions(lab) == 2);

  REQUIRE(lab.reset(mac_b).ok());
  REQUIRE(tftp::Client().get("127.0.0.1", lab.tftp_port(), "ARDBP32.BIN").data.size() > 0);
  REQUIRE(dt::eventually([&] { return sessions(lab) == 0; }));
  auto booted = lab.connect(mac_a);
  CHECK(read_all(booted, at_written, written) == slice(original, at_written, written));
}

TEST_CASE("an NBD connection silent for stream_idle_timeout_s is closed, and the reconnect finds the session") {
  Lab lab;
  lab.start("stream_idle_timeout_s = 1\n");
  auto a = lab.connect(mac_a);
  REQUIRE(a.write(at_written, fill(written, 0xab)) == 0);
  REQUIRE(dt::eventually([&] { return lab.status_int("active_devices") == 0; }, std::chrono::seconds(10)));
  std::vector<std::byte> probe(16);
  CHECK_THROWS(a.read(at_written, probe));
  auto again = lab.connect(mac_a);
  CHECK(read_all(again, at_written, written) == fill(written, 0xab));
}

TEST_CASE("overflow files no live cache holds are removed at start, a held one is kept") {
  Lab lab;
  const auto dir = lab.dir.path() / "wc";
  std::filesystem::create_directories(dir);
  dt::write_file(dir / "52_54_00_00_00_0a.AbC123.wcache", fill(4096, 1));
  dt::write_file(dir / "52_54_00_00_00_0b.XyZ789.wcache", fill(4096, 2));
  dt::write_file(dir / "notes.txt", fill(16, 3));
  nbd::UniqueFd held(::open((dir / "52_54_00_00_00_0b.XyZ789.wcache").c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(::flock(held.get(), LOCK_EX | LOCK_NB) == 0);  // as a live cache (another server on this dir) holds it
  lab.start("write_cache_dir = \"" + dir.string() + "\"\n");
  CHECK_FALSE(std::filesystem::exists(dir / "52_54_00_00_00_0a.AbC123.wcache"));
  CHECK(std::filesystem::exists(dir / "52_54_00_00_00_0b.XyZ789.wcache"));
  CHECK(std::filesystem::exists(dir / "notes.txt"));
  CHECK(any_line(lab, [](const std::string& l) {
    return l.find("removed the write cache overflow file") != std::string::npos &&
           l.find("AbC123.wcache") != std::string::npos;
  }));
}

TEST_CASE("version.new after a leftover version file (a crash before its INSERT) takes a fresh name and works") {
  Lab lab;
  lab.start();
  dt::write_file(lab.store() / "gold.1.dfv", fill(100, 9));  // no row names it
  const auto r = lab.admin("version.new", api::NewVersion{"gold"});
  REQUIRE(r.ok());
  CHECK(r->version == 1);
  const auto& versions = r->vdisks.at(0).versions;
  REQUIRE(versions.size() == 2);
  CHECK(versions[1].file == "gold.1~2.dfv");
  auto m = lab.connect("gold@maintenance");
  REQUIRE(m.write(0, fill(4096, 0x77)) == 0);
  CHECK(read_all(m, 0, 4096) == fill(4096, 0x77));
}

namespace {
/// A base that counts its reads.
class CountingExport final : public nbd::Export {
 public:
  explicit CountingExport(std::uint64_t size) : data_(size) {
    for (std::size_t i = 0; i < size; ++i) data_[i] = std::byte(static_cast<unsigned char>(i / 4096));
  }
  std::uint64_t size() const override { return data_.size(); }
  bool read_only() const override { return true; }
  int read(std::uint64_t off, std::span<std::byte> out) override {
    ++reads;
    std::memcpy(out.data(), data_.data() + off, out.size());
    return 0;
  }
  int write(std::uint64_t, std::span<const std::byte>) override { return EROFS; }
  int flush() override { return 0; }
  std::vector<std::byte> data_;
  int reads = 0;
};
}  // namespace

TEST_CASE("the write cache reads each uncached run from its base in one call, and a flush puts RAM blocks on disk") {
  dt::TempDir dir("wcache");
  auto base = std::make_shared<CountingExport>(1 << 20);
  nbd::WriteCache cache(base, {.block_size = 4096, .ram_limit = 1 << 20, .cache_dir = dir.path(), .device = "d"});
  REQUIRE(cache.write(8 * 4096, fill(4096, 0xaa)) == 0);
  REQUIRE(cache.write(40 * 4096, fill(4096, 0xbb)) == 0);
  CHECK(cache.overflow_path().empty());  // RAM only until a flush
  base->reads = 0;
  std::vector<std::byte> out(64 * 4096);
  REQUIRE(cache.read(0, out) == 0);
  CHECK(base->reads == 3);  // [0,8) (9,40) (41,64): three runs, not 62 blocks
  CHECK(slice(out, 8 * 4096, 4096) == fill(4096, 0xaa));
  CHECK(slice(out, 63 * 4096, 4096) == slice(base->data_, 63 * 4096, 4096));

  REQUIRE(cache.flush() == 0);
  const auto file = cache.overflow_path();
  REQUIRE(!file.empty());
  const auto on_disk = dt::read_file(file);
  CHECK(slice(on_disk, 8 * 4096, 4096) == fill(4096, 0xaa));
  CHECK(slice(on_disk, 40 * 4096, 4096) == fill(4096, 0xbb));
  // The live cache holds its file: a restart's cleanup on the same directory leaves it alone.
  CHECK(nbd::WriteCache::remove_stale(dir.path()).empty());
  CHECK(std::filesystem::exists(file));
}

TEST_CASE("kill -9 after a FLUSH and a FUA write: the data is in the overflow file and a restart removes it") {
  Lab lab;  // only for its directory, base image and manifest text
  const auto port = free_port();
  const auto wc = lab.dir.path() / "wc";
  auto instance = Lab::pvs_instance("pvs-1", "store = \"" + lab.store().string() + "\"\nwrite_cache_dir = \"" +
                                                 wc.string() + "\"\n");
  const std::string any_port = "stream = \"127.0.0.1:0\"";
  instance.replace(instance.find(any_port), any_port.size(), "stream = \"127.0.0.1:" + std::to_string(port) + "\"");
  dt::write_text(lab.dir / "lab.toml", lab.manifest(instance));
  const std::string manifest = (lab.dir / "lab.toml").string();
  auto started = [&](const std::filesystem::path& log) {
    return dt::eventually([&] { return dt::read_text(log).find("catalog loaded") != std::string::npos; },
                          std::chrono::seconds(30));
  };
  {
    dt::ChildProcess run({DESKFARM_BIN, "--plugin-path", PLUGIN_DIR, "run", manifest}, lab.dir / "run1.log");
    REQUIRE(started(lab.dir / "run1.log"));
    nbd::Client a("127.0.0.1", port, mac_a);
    REQUIRE(a.write(at_written, fill(written, 0xab)) == 0);
    REQUIRE(a.flush() == 0);
    REQUIRE(a.write(at_new_version, fill(8192, 0xcd), nbd::proto::kCmdFlagFua) == 0);
    run.signal(SIGKILL);
    REQUIRE(run.wait(std::chrono::seconds(10)) == 128 + SIGKILL);
  }
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(wc))
    if (e.path().extension() == ".wcache") files.push_back(e.path());
  REQUIRE(files.size() == 1);
  const auto bytes = dt::read_file(files[0]);
  REQUIRE(bytes.size() == base_size);
  CHECK(slice(bytes, at_written, written) == fill(written, 0xab));
  CHECK(slice(bytes, at_new_version, 8192) == fill(8192, 0xcd));

  // The session died with its server; the restarted one gives the file's space back.
  dt::ChildProcess again({DESKFARM_BIN, "--plugin-path", PLUGIN_DIR, "run", manifest}, lab.dir / "run2.log");
  REQUIRE(started(lab.dir / "run2.log"));
  CHECK_FALSE(std::filesystem::exists(files[0]));
  CHECK(dt::read_text(lab.dir / "run2.log").find("removed the write cache overflow file") != std::string::npos);
  again.signal(SIGTERM);
  CHECK(again.wait(std::chrono::seconds(15)) == 0);
}
