#pragma once
// Full-length pread/pwrite: short transfers happen (signals, sparse files on some filesystems) and must not
// surface to clients as corruption.
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace deskfarm::nbd::detail {

/// Returns 0 or errno; reading past EOF fills zeroes (a sparse file's unwritten tail reads as zeroes).
inline int pread_full(int fd, void* buf, std::size_t len, std::uint64_t off) {
  auto* p = static_cast<std::byte*>(buf);
  while (len > 0) {
    ssize_t n = ::pread(fd, p, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) {
      for (std::size_t i = 0; i < len; ++i) p[i] = std::byte{0};
      return 0;
    }
    p += n;
    len -= static_cast<std::size_t>(n);
    off += static_cast<std::uint64_t>(n);
  }
  return 0;
}

/// Returns 0 or errno (ENOSPC when the filesystem is full).
inline int pwrite_full(int fd, const void* buf, std::size_t len, std::uint64_t off) {
  const auto* p = static_cast<const std::byte*>(buf);
  while (len > 0) {
    ssize_t n = ::pwrite(fd, p, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return ENOSPC;
    p += n;
    len -= static_cast<std::size_t>(n);
    off += static_cast<std::uint64_t>(n);
  }
  return 0;
}

}  // namespace deskfarm::nbd::detail
