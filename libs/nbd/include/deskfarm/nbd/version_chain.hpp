#pragma once
// vDisk version chains: a raw base image plus differencing version files (format: libs/nbd/README.md).
#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "deskfarm/nbd/export.hpp"

namespace deskfarm::nbd {

/// A version file or chain is unusable; the message names the file and what is wrong with it.
class VersionChainError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Creates an empty version file `path` on top of `parent` (raw base or version file in the same directory).
void create_version(const std::filesystem::path& path, const std::filesystem::path& parent,
                    std::uint32_t block_size = 65536);

/// Hex SHA-256 identity a child records for `layer` (version file: its header; raw base: size + first MiB).
std::string layer_digest(const std::filesystem::path& layer);

/// Read-only view through a version chain: the newest version holding a block wins, else the base.
class ChainExport final : public Export {
 public:
  /// Opens `top` and its ancestors by recorded name; throws VersionChainError on a missing or wrong parent.
  explicit ChainExport(const std::filesystem::path& top);
  ~ChainExport() override;
  std::uint64_t size() const override;
  bool read_only() const override { return true; }
  int read(std::uint64_t off, std::span<std::byte> out) override;
  int write(std::uint64_t, std::span<const std::byte>) override { return EPERM; }
  int flush() override { return 0; }
  /// Layer files, base first.
  std::vector<std::filesystem::path> layers() const;

 private:
  struct Layer;
  int read_from(std::size_t layer, std::uint64_t off, std::span<std::byte> out);
  std::vector<std::unique_ptr<Layer>> versions_;  // newest first
  std::unique_ptr<FileExport> base_;
};

/// Writes into one version file (maintenance mode); unaligned writes copy the rest of the block from the parents.
class VersionWriter {
 public:
  /// Opens `version` read-write and its parents read-only; throws VersionChainError.
  explicit VersionWriter(const std::filesystem::path& version);
  /// Persists the block bitmap (errors are lost here: call flush() to see them).
  ~VersionWriter();
  VersionWriter(const VersionWriter&) = delete;
  VersionWriter& operator=(const VersionWriter&) = delete;
  /// Stores `in` at `off`; 0 or errno.
  int write(std::uint64_t off, std::span<const std::byte> in);
  /// Reads the version as written so far (its blocks, else its parents'), flushed or not; 0 or errno.
  int read(std::uint64_t off, std::span<std::byte> out);
  std::uint64_t size() const;
  /// Writes the bitmap and fdatasyncs; 0 or errno.
  int flush();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace deskfarm::nbd
