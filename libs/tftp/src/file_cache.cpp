#include "file_cache.hpp"

#include <algorithm>
#include <cerrno>

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

namespace deskfarm::tftp::detail {

FileData::FileData(std::string bytes) : bytes_(std::move(bytes)), size_(bytes_.size()) {}

FileData::FileData(Fd fd, std::uint64_t size) : fd_(std::move(fd)), size_(size) {}

std::optional<std::span<const std::byte>> FileData::read(std::uint64_t offset, std::size_t length,
                                                         ReadCache& cache) const {
  if (offset > size_ || length > size_ - offset) return std::nullopt;
  if (!fd_) return std::span<const std::byte>(reinterpret_cast<const std::byte*>(bytes_.data()) + offset, length);
  if (offset >= cache.offset && offset + length <= cache.offset + cache.valid) {
    return std::span<const std::byte>(cache.bytes.data() + (offset - cache.offset), length);
  }
  // Read ahead so a window-1 transfer costs one pread per ~44 blocks, not one per block.
  constexpr std::size_t read_ahead = 64 * 1024;
  const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(std::max(length, read_ahead), size_ - offset));
  if (cache.bytes.size() < want) cache.bytes.resize(want);
  cache.valid = 0;
  cache.offset = offset;
  std::size_t done = 0;
  // Bounded: every pass either makes progress or returns.
  while (done < want) {
    const ssize_t got = ::pread(fd_.get(), cache.bytes.data() + done, want - done, static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return std::nullopt;  // truncated under us: better to stop than to send a short block
    done += static_cast<std::size_t>(got);
  }
  cache.valid = want;
  return std::span<const std::byte>(cache.bytes.data(), length);
}

std::string to_netascii(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() + bytes.size() / 16);
  for (const char c : bytes) {
    if (c == '\n') {
      out += "\r\n";
    } else if (c == '\r') {
      out += '\r';
      out += '\0';
    } else {
      out += c;
    }
  }
  return out;
}

FileCache::FileCache(std::filesystem::path real_root, std::size_t file_bytes, std::size_t total_bytes)
    : real_root_(std::move(real_root)), file_bytes_(file_bytes), total_bytes_(total_bytes) {}

namespace {

bool inside(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path.size() > root.size() && path.compare(0, root.size(), root) == 0 && path[root.size()] == '/';
}

// The path the kernel actually opened, so a symlink or a rename race cannot smuggle in an outside file.
std::optional<std::string> opened_path(int fd, const std::filesystem::path& fallback) {
  char buffer[PATH_MAX + 1] = {};
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t length = ::readlink(link.c_str(), buffer, PATH_MAX);
  if (length > 0) return std::string(buffer, static_cast<std::size_t>(length));
  char* real = ::realpath(fallback.c_str(), nullptr);
  if (real == nullptr) return std::nullopt;
  std::string result(real);
  ::free(real);
  return result;
}

}  // namespace

std::variant<OpenedFile, OpenError> FileCache::open(const std::filesystem::path& relative, bool netascii) {
  const auto full = real_root_ / relative;
  // O_NONBLOCK: a FIFO planted in the root must not stall the event thread.
  Fd fd(::open(full.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd) {
    const int error = errno;
    if (error == ENOENT || error == ENOTDIR || error == ENAMETOOLONG) return OpenError{ErrorCode::file_not_found, "file not found"};
    if (error == EACCES || error == EPERM || error == ELOOP) return OpenError{ErrorCode::access_violation, "access denied"};
    return OpenError{ErrorCode::not_defined, "cannot open file: " + errno_text(error)};
  }
  struct stat info {};
  if (::fstat(fd.get(), &info) != 0) return OpenError{ErrorCode::not_defined, "cannot stat file: " + errno_text(errno)};
  if (!S_ISREG(info.st_mode)) return OpenError{ErrorCode::access_violation, "not a regular file"};
  const auto real = opened_path(fd.get(), full);
  if (!real || !inside(*real, real_root_.string())) return OpenError{ErrorCode::access_violation, "path leaves the TFTP root"};

  const auto size = static_cast<std::uint64_t>(info.st_size);
  const Key key{info.st_dev, info.st_ino, size,
                static_cast<std::int64_t>(info.st_mtim.tv_sec) * 1'000'000'000 + info.st_mtim.tv_nsec, netascii};
  ++clock_;
  if (auto found = entries_.find(key); found != entries_.end()) {
    found->second.last_used = clock_;
    return OpenedFile{found->second.data, true};
  }

  std::shared_ptr<const FileData> data;
  if (size <= file_bytes_) {
    std::string bytes(size, '\0');
    std::size_t done = 0;
    while (done < size) {
      const ssize_t got = ::pread(fd.get(), bytes.data() + done, size - done, static_cast<off_t>(done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return OpenError{ErrorCode::not_defined, "short read (file changed while loading)"};
      done += static_cast<std::size_t>(got);
    }
    data = std::make_shared<const FileData>(netascii ? to_netascii(bytes) : std::move(bytes));
  } else if (netascii) {
    return OpenError{ErrorCode::not_defined, "file too large for netascii; use octet"};
  } else {
    data = std::make_shared<const FileData>(std::move(fd), size);
  }
  entries_[key] = Entry{data, clock_};
  evict();
  return OpenedFile{std::move(data), false};
}

void FileCache::evict() {
  // Only idle entries (nobody else holds the data) are candidates; oldest first, until under the cap.
  // Idle descriptor-backed entries always go: reopening is cheap and stale inodes must not be pinned.
  std::uint64_t memory = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    const bool idle = it->second.data.use_count() == 1;
    if (idle && !it->second.data->in_memory() && it->second.last_used != clock_) {
      it = entries_.erase(it);
      continue;
    }
    if (it->second.data->in_memory()) memory += it->second.data->size();
    ++it;
  }
  // Bounded by the entry count: each pass removes one entry or stops.
  while (memory > total_bytes_) {
    auto oldest = entries_.end();
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->second.data->in_memory() && it->second.data.use_count() == 1 &&
          (oldest == entries_.end() || it->second.last_used < oldest->second.last_used)) {
        oldest = it;
      }
    }
    if (oldest == entries_.end()) break;
    memory -= oldest->second.data->size();
    entries_.erase(oldest);
  }
}

}  // namespace deskfarm::tftp::detail
