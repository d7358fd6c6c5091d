#pragma once
// Internal: files shared among concurrent transfers. Small files are read from disk once into memory;
// large files share one open descriptor and are read a window at a time with pread (page cache does the rest).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "deskfarm/tftp/packet.hpp"
#include "socket.hpp"

namespace deskfarm::tftp::detail {

/// Per-transfer read-ahead for descriptor-backed files: one pread serves many blocks.
struct ReadCache {
  std::vector<std::byte> bytes;
  std::uint64_t offset = 0;
  std::size_t valid = 0;
};

/// Immutable content of one served file.
class FileData {
 public:
  /// Content held in memory (small files, netascii, virtual files).
  explicit FileData(std::string bytes);
  /// Content read on demand from a shared descriptor.
  FileData(Fd fd, std::uint64_t size);
  std::uint64_t size() const { return size_; }
  bool in_memory() const { return !fd_; }
  /// View of [offset, offset + length): straight from memory or via `cache` (read ahead); nullopt on a short read.
  std::optional<std::span<const std::byte>> read(std::uint64_t offset, std::size_t length, ReadCache& cache) const;

 private:
  std::string bytes_;
  Fd fd_;
  std::uint64_t size_ = 0;
};

/// Why a file could not be served; `code` goes on the wire.
struct OpenError {
  ErrorCode code = ErrorCode::not_defined;
  std::string message;
};

/// A file opened for a transfer and whether it came from the cache.
struct OpenedFile {
  std::shared_ptr<const FileData> data;
  bool cache_hit = false;
};

/// LF→CRLF and CR→CR NUL [RFC 1350 netascii, RFC 764].
std::string to_netascii(std::string_view bytes);

/// Cache keyed by (device, inode, size, mtime, netascii): a changed file is reloaded, an unchanged one shared.
class FileCache {
 public:
  FileCache(std::filesystem::path real_root, std::size_t file_bytes, std::size_t total_bytes);
  /// Opens `relative` under the root; refuses non-regular files and anything resolving outside the root.
  std::variant<OpenedFile, OpenError> open(const std::filesystem::path& relative, bool netascii);

 private:
  using Key = std::tuple<std::uint64_t, std::uint64_t, std::uint64_t, std::int64_t, bool>;
  struct Entry {
    std::shared_ptr<const FileData> data;
    std::uint64_t last_used = 0;
  };
  void evict();

  std::filesystem::path real_root_;
  std::size_t file_bytes_;
  std::size_t total_bytes_;
  std::map<Key, Entry> entries_;
  std::uint64_t clock_ = 0;
};

}  // namespace deskfarm::tftp::detail
