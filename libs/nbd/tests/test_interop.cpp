// Interop with the real Debian clients: nbdinfo, nbdcopy (libnbd), qemu-img and qemu-io (qemu's NBD client).
#include <catch2/catch.hpp>

#include "deskfarm/nbd/server.hpp"
#include "deskfarm/nbd/version_chain.hpp"
#include "deskfarm/nbd/write_cache.hpp"
#include "support.hpp"
#include <deskfarm/testing/peers.hpp>

using namespace deskfarm::nbd;
using namespace deskfarm::nbd::test;

namespace {

constexpr std::size_t kBaseSize = 4 << 20;

/// A farm in miniature: one read-only vDisk file, a version chain, and two devices with their own write caches.
struct Farm {
  TempDir dir;
  std::shared_ptr<FileExport> base;
  std::shared_ptr<ChainExport> chain;
  std::shared_ptr<WriteCache> pc_a, pc_b;
  std::unique_ptr<Server> server;

  Farm() {
    write_file(dir / "win10.img", pattern(kBaseSize, 21));
    create_version(dir / "win10.1.dfv", dir / "win10.img");
    {
      VersionWriter w(dir / "win10.1.dfv");
      REQUIRE(w.write(1 << 20, std::vector<std::byte>(65536, std::byte{0x42})) == 0);
    }
    base = std::make_shared<FileExport>(dir / "win10.img", true);
    chain = std::make_shared<ChainExport>(dir / "win10.1.dfv");
    WriteCacheOptions o;
    o.ram_limit = 256 * 1024;  // small, so the 1 MiB qemu-io write overflows to disk too
    o.cache_dir = dir / "cache";
    o.device = "pc-a";
    pc_a = std::make_shared<WriteCache>(base, o);
    o.device = "pc-b";
    pc_b = std::make_shared<WriteCache>(base, o);
    server = std::make_unique<Server>(
        ServerOptions{},
        [this](std::string_view name, std::string_view) -> Resolution {
          if (name == "win10") return {base, {}};
          if (name == "win10.1") return {chain, {}};
          if (name == "pc-a") return {pc_a, {}};
          if (name == "pc-b") return {pc_b, {}};
          return {nullptr, "unknown device"};
        },
        [](std::string_view) {
          return std::vector<ExportEntry>{{"win10", "base vDisk"}, {"win10.1", "version 1"}, {"pc-a", "device A"}};
        });
    server->start();
  }
  std::string url(const std::string& name) const {
    return "nbd://127.0.0.1:" + std::to_string(server->bound_port()) + "/" + name;
  }
};

}  // namespace

TEST_CASE("nbdinfo --list shows every export with its description") {
  if (!require_program("nbdinfo")) return;
  Farm farm;
  auto r = run_child({"nbdinfo", "--list", "nbd://127.0.0.1:" + std::to_string(farm.server->bound_port())});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("win10") && Catch::Contains("version 1") && Catch::Contains("device A"));
}

TEST_CASE("nbdinfo --json reports the export's size and read-only flag") {
  if (!require_program("nbdinfo")) return;
  Farm farm;
  auto ro = run_child({"nbdinfo", "--json", farm.url("win10")});
  INFO(ro.out << ro.err);
  REQUIRE(ro.exit_code == 0);
  CHECK_THAT(ro.out, Catch::Contains("\"export-size\": " + std::to_string(kBaseSize)));
  CHECK_THAT(ro.out, Catch::Contains("\"is_read_only\": true"));
  CHECK_THAT(ro.out, Catch::Contains("\"block_size_maximum\": 33554432"));
  auto rw = run_child({"nbdinfo", "--json", farm.url("pc-a")});
  INFO(rw.out << rw.err);
  REQUIRE(rw.exit_code == 0);
  CHECK_THAT(rw.out, Catch::Contains("\"is_read_only\": false"));
  auto bad = run_child({"nbdinfo", "--json", farm.url("pc-zz")});
  CHECK(bad.exit_code != 0);
  CHECK_THAT(bad.err, Catch::Contains("pc-zz"));  // nbdinfo prints ERR_UNKNOWN as ENOENT, not our message
}

TEST_CASE("nbdcopy copies the vDisk byte-for-byte (SHA-256 equal to the source file)") {
  if (!require_program("nbdcopy")) return;
  Farm farm;
  auto r = run_child({"nbdcopy", farm.url("win10"), (farm.dir / "out.img").string()});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(sha256_file(farm.dir / "out.img") == sha256_file(farm.dir / "win10.img"));
  CHECK(farm.server->stats().bytes_read >= kBaseSize);
}

TEST_CASE("nbdcopy of a version chain export sees version 1's blocks over the base") {
  if (!require_program("nbdcopy")) return;
  Farm farm;
  auto r = run_child({"nbdcopy", farm.url("win10.1"), (farm.dir / "v1.img").string()});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  auto expect = pattern(kBaseSize, 21);
  std::fill(expect.begin() + (1 << 20), expect.begin() + (1 << 20) + 65536, std::byte{0x42});
  CHECK(sha256_file(farm.dir / "v1.img") == sha256_bytes(expect));
}

TEST_CASE("qemu-img info reports the virtual size and qemu-img convert copies the vDisk exactly") {
  if (!require_program("qemu-img")) return;
  Farm farm;
  auto info = run_child({"qemu-img", "info", farm.url("win10")});
  INFO(info.out << info.err);
  REQUIRE(info.exit_code == 0);
  CHECK_THAT(info.out, Catch::Contains("virtual size: 4 MiB (" + std::to_string(kBaseSize) + " bytes)"));
  auto conv = run_child({"qemu-img", "convert", "-f", "raw", "-O", "raw", farm.url("win10"), (farm.dir / "q.img").string()});
  INFO(conv.out << conv.err);
  REQUIRE(conv.exit_code == 0);
  CHECK(sha256_file(farm.dir / "q.img") == sha256_file(farm.dir / "win10.img"));
}

TEST_CASE("a qemu-io write lands in that device's write cache and leaves the base image unchanged") {
  if (!require_program("qemu-io")) return;
  Farm farm;
  const auto base_sum = sha256_file(farm.dir / "win10.img");
  auto w = run_child({"qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", farm.url("pc-a")});
  INFO(w.out << w.err);
  REQUIRE(w.exit_code == 0);
  CHECK_THAT(w.out, Catch::Contains("wrote 1048576/1048576 bytes"));
  // Read back through the same device's cache: the written bytes...
  std::vector<std::byte> back(1 << 20);
  REQUIRE(farm.pc_a->read(0, back) == 0);
  CHECK(back == std::vector<std::byte>(1 << 20, std::byte{0xab}));
  CHECK(farm.pc_a->usage().disk_bytes > 0);  // RAM filled, the rest overflowed
  // ...and through qemu-io again, over NBD.
  auto v = run_child({"qemu-io", "-f", "raw", "-c", "read -P 0xab 0 1M", farm.url("pc-a")});
  INFO(v.out << v.err);
  CHECK(v.exit_code == 0);
  CHECK_THAT(v.out, !Catch::Contains("Pattern verification failed"));
  // The base never changed, and the other device still sees the original bytes.
  CHECK(sha256_file(farm.dir / "win10.img") == base_sum);
  std::vector<std::byte> other(1 << 20);
  REQUIRE(farm.pc_b->read(0, other) == 0);
  const auto orig = pattern(kBaseSize, 21);
  CHECK(std::equal(other.begin(), other.end(), orig.begin()));
  // Dropping the device drops its cache file.
  const auto overflow = farm.pc_a->overflow_path();
  REQUIRE(std::filesystem::exists(overflow));
  farm.server->stop();
  farm.pc_a.reset();
  CHECK_FALSE(std::filesystem::exists(overflow));
}

TEST_CASE("qemu-io cannot write to the read-only base vDisk") {
  if (!require_program("qemu-io")) return;
  Farm farm;
  const auto base_sum = sha256_file(farm.dir / "win10.img");
  auto w = run_child({"qemu-io", "-f", "raw", "-c", "write -P 0xcd 0 4k", farm.url("win10")});
  INFO(w.out << w.err);
  CHECK(w.exit_code != 0);
  // The server was reached and said read-only: qemu opens read-write by default and the export's
  // NBD_FLAG_READ_ONLY makes it refuse with EACCES - not a connection error.
  CHECK(farm.server->stats().accepted >= 1);
  CHECK_THAT(w.out + w.err, Catch::Contains("Could not open image: Permission denied"));
  CHECK_THAT(w.out + w.err, !Catch::Contains("Connection refused") && !Catch::Contains("wrote 4096/4096"));
  // Opened read-only, the same export reads, and its write is refused by the block layer.
  auto r = run_child({"qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", "-c", "write -P 0xcd 0 4k", farm.url("win10")});
  INFO(r.out << r.err);
  CHECK_THAT(r.out, Catch::Contains("read 4096/4096 bytes"));
  CHECK_THAT(r.out + r.err, Catch::Contains("Block node is read-only") && !Catch::Contains("wrote 4096/4096"));
  CHECK(sha256_file(farm.dir / "win10.img") == base_sum);
}

TEST_CASE("a qemu-io write with FUA (-f) is flushed before its reply, a plain one only at the next flush") {
  if (!require_program("qemu-io")) return;
  auto disk = std::make_shared<FlushRecorder>(kBaseSize);
  SingleExportServer server(disk);
  const std::string url = "nbd://127.0.0.1:" + std::to_string(server.port()) + "/disk";
  // -t writeback: qemu-io's default (writethrough) flushes after every write, which would hide a missing FUA.
  auto w = run_child({"qemu-io", "-t", "writeback", "-f", "raw", "-c", "write -f -P 0x5f 0 64k", "-c", "write -P 0x60 65536 64k", url});
  INFO(w.out << w.err);
  REQUIRE(w.exit_code == 0);
  // The FUA write is followed by its flush before the next write; the plain one waits for the flush at close.
  CHECK(disk->events().starts_with("wfw"));
  std::vector<std::byte> back(65536);
  REQUIRE(disk->read(0, back) == 0);
  CHECK(back == std::vector<std::byte>(65536, std::byte{0x5f}));
}
