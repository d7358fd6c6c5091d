#pragma once
// Per-device copy-on-write cache over a shared read-only vDisk (PVS standard mode "RAM with overflow to disk").
#include <cstdint>
#include <filesystem>
#include <memory>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "deskfarm/nbd/export.hpp"

namespace deskfarm::nbd {

/// Where one device's writes go.
struct WriteCacheOptions {
  std::uint32_t block_size = 4096;        ///< copy-on-write granularity; a power of two, 4096..1 MiB
  std::uint64_t ram_limit = 64ULL << 20;  ///< bytes of blocks kept in RAM before overflowing
  std::filesystem::path cache_dir;        ///< overflow directory; empty = RAM only
  std::uint64_t disk_limit = 0;           ///< bytes of blocks in the overflow file; 0 = up to the export size
  std::string device = "device";          ///< names the overflow file (cache_dir/DEVICE.XXXXXX.wcache)
};

/// Copy-on-write view of a read-only base: writes land in RAM, then in a sparse overflow file; the base is never
/// written. Full cache -> ENOSPC. Discarded when destroyed (the overflow file is removed), like a PVS cache at boot.
///
/// Durability: with a cache_dir, flush() (and so every FUA write) copies the blocks written to RAM since the last
/// flush into the overflow file at their own offsets and fsyncs it, so everything acknowledged by a FLUSH is on disk
/// (the overflow file mirrors the export's address space). The file is created and its directory fsync'ed before
/// that. Without a cache_dir the cache is RAM only and flush() cannot make anything durable (it returns 0).
/// A live overflow file holds an exclusive flock(2); remove_stale() deletes the ones nobody holds.
class WriteCache final : public Export {
 public:
  /// Throws ExportError if the options are invalid; the overflow file is created on first overflow.
  WriteCache(std::shared_ptr<Export> base, WriteCacheOptions options);
  ~WriteCache() override;
  WriteCache(const WriteCache&) = delete;
  WriteCache& operator=(const WriteCache&) = delete;

  std::uint64_t size() const override { return size_; }
  bool read_only() const override { return false; }
  int read(std::uint64_t off, std::span<std::byte> out) override;
  int write(std::uint64_t off, std::span<const std::byte> in) override;
  /// Writes the RAM blocks written since the last flush to the overflow file and fsyncs it (see above).
  int flush() override;

  /// Bytes of cached blocks in RAM and in the overflow file.
  struct Usage {
    std::uint64_t ram_bytes = 0;
    std::uint64_t disk_bytes = 0;
  };
  /// Current usage.
  Usage usage() const;
  /// The overflow file, empty until the first block overflows.
  std::filesystem::path overflow_path() const;

  /// Removes `dir`'s overflow files (*.wcache) that no live cache holds (their owner died: crash or kill -9); run
  /// at start. Returns the paths removed. Never throws: a file it cannot judge or remove is left alone.
  static std::vector<std::filesystem::path> remove_stale(const std::filesystem::path& dir);

 private:
  int read_block_from_base(std::uint64_t block, std::byte* out);
  std::uint32_t block_length(std::uint64_t block) const;
  bool on_disk(std::uint64_t block) const { return (disk_map_[block / 64] >> (block % 64)) & 1U; }
  int open_overflow();

  std::shared_ptr<Export> base_;
  WriteCacheOptions options_;
  std::uint64_t size_ = 0;
  std::uint64_t ram_max_blocks_ = 0;
  std::uint64_t disk_max_blocks_ = 0;

  mutable std::shared_mutex mutex_;
  std::unordered_map<std::uint64_t, std::unique_ptr<std::byte[]>> ram_;
  std::unordered_set<std::uint64_t> ram_dirty_;  // RAM blocks written since the last flush (cache_dir set only)
  std::vector<std::uint64_t> disk_map_;  // bit per block: the block lives in the overflow file
  std::uint64_t disk_blocks_ = 0;
  std::filesystem::path overflow_path_;
  UniqueFd overflow_fd_;
};

}  // namespace deskfarm::nbd
