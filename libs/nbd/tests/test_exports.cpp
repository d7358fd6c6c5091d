#include <catch2/catch.hpp>

#include <cerrno>

#include "deskfarm/nbd/export.hpp"
#include "deskfarm/nbd/version_chain.hpp"
#include "deskfarm/nbd/write_cache.hpp"
#include "support.hpp"

using namespace deskfarm::nbd;
using namespace deskfarm::nbd::test;

namespace {

std::vector<std::byte> read_all(Export& e, std::uint64_t off, std::size_t len) {
  std::vector<std::byte> out(len);
  REQUIRE(e.read(off, out) == 0);
  return out;
}

std::vector<std::byte> filled(std::size_t n, std::uint8_t v) { return std::vector<std::byte>(n, std::byte{v}); }

}  // namespace

TEST_CASE("a file export reads what the file holds and refuses ranges past its end with EINVAL") {
  TempDir dir;
  const auto data = pattern(100000, 1);
  write_file(dir / "base.img", data);
  FileExport e(dir / "base.img", true);
  CHECK(e.size() == data.size());
  CHECK(e.read_only());
  CHECK(read_all(e, 12345, 5000) == std::vector<std::byte>(data.begin() + 12345, data.begin() + 17345));
  std::vector<std::byte> buf(10);
  CHECK(e.read(data.size() - 5, buf) == EINVAL);
  CHECK(e.read(~0ULL - 3, buf) == EINVAL);  // offset + length wraps around
  CHECK(e.write(0, buf) == EPERM);
}

TEST_CASE("a missing export file is reported with its path") {
  TempDir dir;
  CHECK_THROWS_WITH(FileExport(dir / "nope.img", true), Catch::Contains("nope.img"));
}

TEST_CASE("a writable file export writes through and zeroes ranges") {
  TempDir dir;
  write_file(dir / "disk.img", pattern(65536, 2));
  FileExport e(dir / "disk.img", false);
  REQUIRE(e.write(100, filled(50, 0x11)) == 0);
  REQUIRE(e.write_zeroes(1000, 3000) == 0);
  REQUIRE(e.flush() == 0);
  const auto now = read_file(dir / "disk.img");
  CHECK(now[100] == std::byte{0x11});
  CHECK(now[149] == std::byte{0x11});
  CHECK(std::vector<std::byte>(now.begin() + 1000, now.begin() + 4000) == filled(3000, 0));
}

TEST_CASE("a write cache returns written bytes and leaves the base image byte-for-byte unchanged") {
  TempDir dir;
  write_file(dir / "base.img", pattern(1 << 20, 3));
  const auto before = sha256_file(dir / "base.img");
  auto base = std::make_shared<FileExport>(dir / "base.img", true);
  WriteCache cache(base, {});
  const auto data = filled(10000, 0xab);
  REQUIRE(cache.write(5000, data) == 0);  // unaligned at both ends
  CHECK(read_all(cache, 5000, 10000) == data);
  const auto orig = pattern(1 << 20, 3);
  // Bytes around the write inside the same blocks still come from the base.
  CHECK(read_all(cache, 4096, 904) == std::vector<std::byte>(orig.begin() + 4096, orig.begin() + 5000));
  CHECK(read_all(cache, 15000, 1384) == std::vector<std::byte>(orig.begin() + 15000, orig.begin() + 16384));
  // A read spanning cached and uncached blocks stitches both together.
  auto whole = read_all(cache, 0, 1 << 20);
  std::vector<std::byte> expect = orig;
  std::copy(data.begin(), data.end(), expect.begin() + 5000);
  CHECK(whole == expect);
  CHECK(sha256_file(dir / "base.img") == before);
}

TEST_CASE("a write cache overflows from RAM to a sparse file in the cache dir and removes it when destroyed") {
  TempDir dir;
  write_file(dir / "base.img", pattern(1 << 20, 4));
  auto base = std::make_shared<FileExport>(dir / "base.img", true);
  std::filesystem::path overflow;
  {
    WriteCacheOptions o;
    o.block_size = 4096;
    o.ram_limit = 8 * 4096;
    o.cache_dir = dir / "cache";
    o.device = "pc/01";  // a slash must not escape the cache dir
    WriteCache cache(base, o);
    const auto data = pattern(20 * 4096, 5);
    REQUIRE(cache.write(100, data) == 0);
    CHECK(cache.usage().ram_bytes == 8 * 4096);
    CHECK(cache.usage().disk_bytes == 13 * 4096);  // 21 blocks touched by an unaligned 20-block write
    overflow = cache.overflow_path();
    CHECK(overflow.parent_path() == dir / "cache");
    REQUIRE(std::filesystem::exists(overflow));
    // Sparse: only the 13 overflowed blocks take room, not the 1 MiB address space the file mirrors.
    CHECK(allocated_bytes(overflow) < std::filesystem::file_size(overflow));
    CHECK(allocated_bytes(overflow) <= 64 * 4096);
    CHECK(read_all(cache, 100, data.size()) == data);
    const auto orig = pattern(1 << 20, 4);
    CHECK(read_all(cache, 0, 100) == std::vector<std::byte>(orig.begin(), orig.begin() + 100));
    const std::size_t tail = 100 + data.size();
    CHECK(read_all(cache, tail, 21 * 4096 - tail) ==
          std::vector<std::byte>(orig.begin() + static_cast<long>(tail), orig.begin() + 21 * 4096));
    // Rewriting overflowed and RAM blocks in place takes no new room.
    REQUIRE(cache.write(19 * 4096 + 7, filled(5000, 0x5a)) == 0);
    CHECK(cache.usage().disk_bytes == 13 * 4096);
    CHECK(read_all(cache, 19 * 4096 + 7, 5000) == filled(5000, 0x5a));
  }
  CHECK_FALSE(std::filesystem::exists(overflow));
}

TEST_CASE("a full write cache answers ENOSPC, applies nothing of the refused write and never touches the base") {
  TempDir dir;
  write_file(dir / "base.img", pattern(1 << 20, 6));
  const auto before = sha256_file(dir / "base.img");
  auto base = std::make_shared<FileExport>(dir / "base.img", true);
  WriteCacheOptions o;
  o.block_size = 65536;
  o.ram_limit = 2 * 65536;
  o.cache_dir = dir / "cache";
  o.disk_limit = 65536;
  WriteCache cache(base, o);
  REQUIRE(cache.write(0, filled(3 * 65536, 1)) == 0);
  const auto snapshot = read_all(cache, 0, 1 << 20);
  CHECK(cache.write(3 * 65536 - 10, filled(20, 2)) == ENOSPC);  // one cached block + one new one
  CHECK(read_all(cache, 0, 1 << 20) == snapshot);
  CHECK(cache.write(65536, filled(10, 3)) == 0);  // rewriting cached blocks still works
  CHECK(sha256_file(dir / "base.img") == before);
}

TEST_CASE("two devices' write caches over one base do not see each other's writes") {
  auto base = std::make_shared<MemoryExport>(pattern(256 * 1024, 7), true);
  WriteCache a(base, {}), b(base, {});
  REQUIRE(a.write(4096, filled(4096, 0xaa)) == 0);
  REQUIRE(b.write(4096, filled(4096, 0xbb)) == 0);
  CHECK(read_all(a, 4096, 4096) == filled(4096, 0xaa));
  CHECK(read_all(b, 4096, 4096) == filled(4096, 0xbb));
  const auto orig = pattern(256 * 1024, 7);
  CHECK(read_all(*base, 4096, 4096) == std::vector<std::byte>(orig.begin() + 4096, orig.begin() + 8192));
}

TEST_CASE("a write cache over an export whose size is not a block multiple handles the short last block") {
  auto base = std::make_shared<MemoryExport>(pattern(10000, 8), true);
  WriteCacheOptions o;
  o.ram_limit = 0;
  TempDir dir;
  o.cache_dir = dir.path();
  WriteCache cache(base, o);
  REQUIRE(cache.write(9000, filled(1000, 0x77)) == 0);
  CHECK(read_all(cache, 9000, 1000) == filled(1000, 0x77));
  const auto orig = pattern(10000, 8);
  CHECK(read_all(cache, 8192, 808) == std::vector<std::byte>(orig.begin() + 8192, orig.begin() + 9000));
  std::vector<std::byte> one(1);
  CHECK(cache.write(10000, one) == EINVAL);
}

TEST_CASE("write cache options that cannot work are refused by name") {
  auto base = std::make_shared<MemoryExport>(4096, true);
  WriteCacheOptions o;
  o.block_size = 3000;
  o.device = "lab-7";
  CHECK_THROWS_WITH(WriteCache(base, o), Catch::Contains("lab-7") && Catch::Contains("block_size 3000"));
}

TEST_CASE("a version chain reads base, then v1, then v2 overrides in that order") {
  TempDir dir;
  const std::size_t size = 1 << 20;
  write_file(dir / "disk.img", pattern(size, 9));
  create_version(dir / "disk.1.dfv", dir / "disk.img", 65536);
  {
    VersionWriter w(dir / "disk.1.dfv");
    REQUIRE(w.write(0, filled(65536, 0x11)) == 0);           // block 0
    REQUIRE(w.write(65536 * 2 + 100, filled(200, 0x12)) == 0);  // partial block 2
    REQUIRE(w.flush() == 0);
  }
  create_version(dir / "disk.2.dfv", dir / "disk.1.dfv", 4096);  // versions may use another block size
  {
    VersionWriter w(dir / "disk.2.dfv");
    REQUIRE(w.write(65536 * 2 + 150, filled(10, 0x22)) == 0);
    REQUIRE(w.write(65536 * 5, filled(4096, 0x25)) == 0);
  }
  const auto orig = pattern(size, 9);
  ChainExport chain(dir / "disk.2.dfv");
  CHECK(chain.read_only());
  CHECK(chain.size() == size);
  CHECK(chain.layers() == std::vector<std::filesystem::path>{dir / "disk.img", dir / "disk.1.dfv", dir / "disk.2.dfv"});
  auto all = read_all(chain, 0, size);
  std::vector<std::byte> expect = orig;
  std::fill(expect.begin(), expect.begin() + 65536, std::byte{0x11});
  std::fill(expect.begin() + 65536 * 2 + 100, expect.begin() + 65536 * 2 + 300, std::byte{0x12});
  std::fill(expect.begin() + 65536 * 2 + 150, expect.begin() + 65536 * 2 + 160, std::byte{0x22});
  std::fill(expect.begin() + 65536 * 5, expect.begin() + 65536 * 5 + 4096, std::byte{0x25});
  CHECK(all == expect);
  ChainExport v1(dir / "disk.1.dfv");  // an older version still reads as it was
  CHECK(read_all(v1, 65536 * 2 + 150, 10) == filled(10, 0x12));
  std::vector<std::byte> one(1);
  CHECK(chain.write(0, one) == EPERM);
  // The version file is sparse: it spans the whole address space but only the header, the bitmap and the
  // two written 64 KiB blocks take room on disk.
  CHECK(std::filesystem::file_size(dir / "disk.1.dfv") >= size);
  CHECK(allocated_bytes(dir / "disk.1.dfv") < size / 2);
}

TEST_CASE("a version made on a different base is refused, naming the file and both digests") {
  TempDir dir;
  write_file(dir / "disk.img", pattern(1 << 20, 10));
  create_version(dir / "disk.1.dfv", dir / "disk.img");
  const auto recorded = layer_digest(dir / "disk.img");
  write_file(dir / "disk.img", pattern(1 << 20, 11));  // someone replaced the base
  CHECK_THROWS_WITH(ChainExport(dir / "disk.1.dfv"),
                    Catch::Contains("disk.1.dfv") && Catch::Contains(recorded) && Catch::Contains("wrong chain"));
}

TEST_CASE("a version whose parent is missing is refused, naming the parent") {
  TempDir dir;
  write_file(dir / "disk.img", pattern(65536, 12));
  create_version(dir / "disk.1.dfv", dir / "disk.img");
  create_version(dir / "disk.2.dfv", dir / "disk.1.dfv");
  std::filesystem::remove(dir / "disk.1.dfv");
  CHECK_THROWS_WITH(ChainExport(dir / "disk.2.dfv"), Catch::Contains("disk.1.dfv") && Catch::Contains("does not exist"));
}

TEST_CASE("a damaged version header is refused with the field's offset") {
  TempDir dir;
  write_file(dir / "disk.img", pattern(65536, 13));
  create_version(dir / "disk.1.dfv", dir / "disk.img");
  auto bytes = read_file(dir / "disk.1.dfv");
  bytes[12] = std::byte{0x33};  // block size 0x...33: not a power of two
  write_file(dir / "disk.1.dfv", bytes);
  CHECK_THROWS_WITH(ChainExport(dir / "disk.1.dfv"), Catch::Contains("offset 12"));
}

TEST_CASE("a write cache over a version chain serves the newest version and keeps every layer intact") {
  TempDir dir;
  write_file(dir / "disk.img", pattern(1 << 20, 14));
  create_version(dir / "disk.1.dfv", dir / "disk.img");
  {
    VersionWriter w(dir / "disk.1.dfv");
    REQUIRE(w.write(0, filled(4096, 0x31)) == 0);
  }
  const auto base_sum = sha256_file(dir / "disk.img");
  const auto v1_sum = sha256_file(dir / "disk.1.dfv");
  auto chain = std::make_shared<ChainExport>(dir / "disk.1.dfv");
  WriteCache cache(chain, {});
  REQUIRE(cache.write(2048, filled(4096, 0x41)) == 0);
  CHECK(read_all(cache, 0, 2048) == filled(2048, 0x31));
  CHECK(read_all(cache, 2048, 4096) == filled(4096, 0x41));
  CHECK(sha256_file(dir / "disk.img") == base_sum);
  CHECK(sha256_file(dir / "disk.1.dfv") == v1_sum);
}
