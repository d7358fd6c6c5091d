#include "deskfarm/nbd/export.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "io_util.hpp"

namespace deskfarm::nbd {

int Export::write_zeroes(std::uint64_t off, std::uint64_t length) {
  if (!in_bounds(off, length, size())) return EINVAL;
  if (read_only()) return EPERM;
  static const std::vector<std::byte> zeroes(1 << 20);
  while (length > 0) {
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(length, zeroes.size()));
    if (int err = write(off, std::span(zeroes.data(), n))) return err;
    off += n;
    length -= n;
  }
  return 0;
}

FileExport::FileExport(const std::filesystem::path& path, bool read_only) : path_(path), read_only_(read_only) {
  fd_.reset(::open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
  if (!fd_) {
    throw ExportError("nbd: cannot open export file " + path.string() + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) {
    throw ExportError("nbd: cannot stat export file " + path.string() + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    throw ExportError("nbd: export file " + path.string() + " is not a regular file");
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
}

int FileExport::read(std::uint64_t off, std::span<std::byte> out) {
  if (!in_bounds(off, out.size(), size_)) return EINVAL;
  return detail::pread_full(fd_.get(), out.data(), out.size(), off);
}

int FileExport::write(std::uint64_t off, std::span<const std::byte> in) {
  if (read_only_) return EPERM;
  if (!in_bounds(off, in.size(), size_)) return EINVAL;
  return detail::pwrite_full(fd_.get(), in.data(), in.size(), off);
}

int FileExport::flush() {
  if (read_only_) return 0;
  return ::fdatasync(fd_.get()) == 0 ? 0 : errno;
}

MemoryExport::MemoryExport(std::uint64_t size, bool read_only)
    : data_(static_cast<std::size_t>(size)), read_only_(read_only) {}

MemoryExport::MemoryExport(std::span<const std::byte> bytes, bool read_only)
    : data_(bytes.begin(), bytes.end()), read_only_(read_only) {}

int MemoryExport::read(std::uint64_t off, std::span<std::byte> out) {
  if (!in_bounds(off, out.size(), data_.size())) return EINVAL;
  std::shared_lock lock(mutex_);
  if (!out.empty()) std::memcpy(out.data(), data_.data() + off, out.size());
  return 0;
}

int MemoryExport::write(std::uint64_t off, std::span<const std::byte> in) {
  if (read_only_) return EPERM;
  if (!in_bounds(off, in.size(), data_.size())) return EINVAL;
  std::unique_lock lock(mutex_);
  if (!in.empty()) std::memcpy(data_.data() + off, in.data(), in.size());
  return 0;
}

}  // namespace deskfarm::nbd
