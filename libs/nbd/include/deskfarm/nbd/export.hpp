#pragma once
// Block backends served by deskfarm::nbd::Server.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <shared_mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "deskfarm/nbd/unique_fd.hpp"

namespace deskfarm::nbd {

/// A backend could not be opened or created; the message names the file and the cause.
class ExportError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A block backend addressed by byte offset. Calls return 0 or an errno value (EINVAL, ENOSPC, EIO, EPERM)
/// and must be safe to make from several connections at once.
class Export {
 public:
  virtual ~Export() = default;
  /// Size in bytes, constant for the life of the export.
  virtual std::uint64_t size() const = 0;
  /// True if every write fails with EPERM.
  virtual bool read_only() const = 0;
  /// Fills `out` from byte offset `off`; EINVAL if the range passes the end.
  virtual int read(std::uint64_t off, std::span<std::byte> out) = 0;
  /// Stores `in` at byte offset `off`; EINVAL past the end, EPERM if read-only, ENOSPC if full.
  virtual int write(std::uint64_t off, std::span<const std::byte> in) = 0;
  /// Makes completed writes durable (as durable as this backend ever is).
  virtual int flush() = 0;
  /// Writes `length` zero bytes at `off`; the default writes a zero buffer in 1 MiB pieces.
  virtual int write_zeroes(std::uint64_t off, std::uint64_t length);
  /// True if a write on one connection is visible to all connections to this object after flush (NBD multi-conn).
  virtual bool multi_conn_safe() const { return true; }
};

/// True if [off, off+length) lies inside an export of `size` bytes (overflow-safe).
inline bool in_bounds(std::uint64_t off, std::uint64_t length, std::uint64_t size) {
  return off <= size && length <= size - off;
}

/// A raw image file, read with pread and written with pwrite through one descriptor shared by all connections.
class FileExport final : public Export {
 public:
  /// Opens `path`; throws ExportError naming the path and errno.
  FileExport(const std::filesystem::path& path, bool read_only);
  std::uint64_t size() const override { return size_; }
  bool read_only() const override { return read_only_; }
  int read(std::uint64_t off, std::span<std::byte> out) override;
  int write(std::uint64_t off, std::span<const std::byte> in) override;
  int flush() override;
  /// The file this export serves.
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  UniqueFd fd_;
  std::uint64_t size_ = 0;
  bool read_only_ = true;
};

/// A RAM disk (tests, fuzzing, small scratch devices).
class MemoryExport final : public Export {
 public:
  /// A zero-filled disk of `size` bytes.
  MemoryExport(std::uint64_t size, bool read_only);
  /// A disk holding a copy of `bytes`.
  MemoryExport(std::span<const std::byte> bytes, bool read_only);
  std::uint64_t size() const override { return data_.size(); }
  bool read_only() const override { return read_only_; }
  int read(std::uint64_t off, std::span<std::byte> out) override;
  int write(std::uint64_t off, std::span<const std::byte> in) override;
  int flush() override { return 0; }

 private:
  mutable std::shared_mutex mutex_;
  std::vector<std::byte> data_;
  bool read_only_ = false;
};

}  // namespace deskfarm::nbd
