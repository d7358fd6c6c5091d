#include "deskfarm/nbd/write_cache.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "io_util.hpp"

namespace deskfarm::nbd {

WriteCache::WriteCache(std::shared_ptr<Export> base, WriteCacheOptions options)
    : base_(std::move(base)), options_(std::move(options)) {
  if (!base_) throw ExportError("nbd: write cache for device " + options_.device + " has no base export");
  const auto bs = options_.block_size;
  if (bs < 4096 || bs > (1U << 20) || (bs & (bs - 1)) != 0) {
    throw ExportError("nbd: write cache for device " + options_.device + ": block_size " + std::to_string(bs) +
                      " must be a power of two between 4096 and 1048576");
  }
  size_ = base_->size();
  const std::uint64_t blocks = (size_ + bs - 1) / bs;
  ram_max_blocks_ = options_.ram_limit / bs;
  if (!options_.cache_dir.empty()) {
    disk_max_blocks_ = options_.disk_limit == 0 ? blocks : std::min(blocks, options_.disk_limit / bs);
  }
  disk_map_.assign((blocks + 63) / 64, 0);
}

WriteCache::~WriteCache() {
  overflow_fd_.reset();
  if (!overflow_path_.empty()) {
    std::error_code ec;  // a destructor must not throw; a leftover file is reported by nobody, so be thorough
    std::filesystem::remove(overflow_path_, ec);
  }
}

std::uint32_t WriteCache::block_length(std::uint64_t block) const {
  const std::uint64_t start = block * options_.block_size;
  return static_cast<std::uint32_t>(std::min<std::uint64_t>(options_.block_size, size_ - start));
}

int WriteCache::read_block_from_base(std::uint64_t block, std::byte* out) {
  const auto len = block_length(block);
  if (len < options_.block_size) std::memset(out + len, 0, options_.block_size - len);
  return base_->read(block * options_.block_size, std::span(out, len));
}

int WriteCache::open_overflow() {
  std::error_code ec;
  std::filesystem::create_directories(options_.cache_dir, ec);
  // Device names come from the network side (MAC, host name): keep them from escaping cache_dir.
  std::string device = options_.device;
  for (char& c : device) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
  }
  std::string templ = (options_.cache_dir / (device + ".XXXXXX.wcache")).string();
  std::vector<char> name(templ.begin(), templ.end());
  name.push_back('\0');
  int fd = ::mkostemps(name.data(), 7, O_CLOEXEC);
  if (fd < 0) return errno == ENOSPC ? ENOSPC : EIO;
  overflow_fd_.reset(fd);
  overflow_path_ = name.data();
  // Held for the cache's life: remove_stale() at a restart tells a dead session's file from a live one by it.
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) return EIO;
  // The file mirrors the export's address space; only written blocks take room (sparse).
  if (::ftruncate(fd, static_cast<off_t>(size_)) != 0) return errno;
  // The new name must survive a crash as well as the data written under it.
  UniqueFd dir(::open(options_.cache_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir || ::fsync(dir.get()) != 0) return EIO;
  return 0;
}

int WriteCache::flush() {
  if (options_.cache_dir.empty()) return 0;  // RAM only by configuration: nothing can be made durable
  std::unique_lock lock(mutex_);
  if (ram_dirty_.empty() && !overflow_fd_) return 0;
  if (!overflow_fd_) {
    if (int err = open_overflow()) return err;
  }
  for (const auto block : ram_dirty_) {
    const auto& data = ram_.at(block);
    if (int err = detail::pwrite_full(overflow_fd_.get(), data.get(), block_length(block), block * options_.block_size))
      return err;
  }
  if (::fdatasync(overflow_fd_.get()) != 0) return EIO;
  ram_dirty_.clear();
  return 0;
}

std::vector<std::filesystem::path> WriteCache::remove_stale(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> removed;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto& path = it->path();
    if (path.extension() != ".wcache" || !it->is_regular_file(ec)) continue;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    // A live cache (in this process or another) holds the lock: leave its file alone.
    if (!fd || ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) continue;
    std::error_code rm;
    if (std::filesystem::remove(path, rm)) removed.push_back(path);
  }
  return removed;
}

int WriteCache::read(std::uint64_t off, std::span<std::byte> out) {
  if (!in_bounds(off, out.size(), size_)) return EINVAL;
  std::shared_lock lock(mutex_);
  if (ram_.empty() && disk_blocks_ == 0) return base_->read(off, out);
  const std::uint64_t bs = options_.block_size;
  std::size_t done = 0;
  // Runs of uncached blocks are read from the base in one call (boot reads are mostly untouched blocks), and runs of
  // overflowed blocks from the overflow file in one pread.
  std::size_t base_run_start = 0, base_run_len = 0, disk_run_start = 0, disk_run_len = 0;
  auto flush_base_run = [&]() -> int {
    if (base_run_len == 0) return 0;
    int err = base_->read(off + base_run_start, out.subspan(base_run_start, base_run_len));
    base_run_len = 0;
    return err;
  };
  auto flush_disk_run = [&]() -> int {
    if (disk_run_len == 0) return 0;
    int err = detail::pread_full(overflow_fd_.get(), out.data() + disk_run_start, disk_run_len, off + disk_run_start);
    disk_run_len = 0;
    return err;
  };
  while (done < out.size()) {
    const std::uint64_t pos = off + done;
    const std::uint64_t block = pos / bs;
    const std::uint64_t in_block = pos % bs;
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(bs - in_block, out.size() - done));
    if (auto it = ram_.find(block); it != ram_.end()) {
      if (int err = flush_base_run()) return err;
      if (int err = flush_disk_run()) return err;
      std::memcpy(out.data() + done, it->second.get() + in_block, n);
    } else if (on_disk(block)) {
      if (int err = flush_base_run()) return err;
      if (disk_run_len == 0) disk_run_start = done;
      disk_run_len += n;
    } else {
      if (int err = flush_disk_run()) return err;
      if (base_run_len == 0) base_run_start = done;
      base_run_len += n;
    }
    done += n;
  }
  if (int err = flush_disk_run()) return err;
  return flush_base_run();
}

int WriteCache::write(std::uint64_t off, std::span<const std::byte> in) {
  if (!in_bounds(off, in.size(), size_)) return EINVAL;
  if (in.empty()) return 0;
  std::unique_lock lock(mutex_);
  const std::uint64_t bs = options_.block_size;
  const std::uint64_t first = off / bs, last = (off + in.size() - 1) / bs;
  // Refuse the whole write up front so a full cache never leaves a half-applied request behind.
  std::uint64_t fresh = 0;
  for (std::uint64_t b = first; b <= last; ++b) {
    if (!ram_.contains(b) && !on_disk(b)) ++fresh;
  }
  const std::uint64_t ram_free = ram_max_blocks_ - std::min<std::uint64_t>(ram_max_blocks_, ram_.size());
  const std::uint64_t disk_free = disk_max_blocks_ - disk_blocks_;
  if (fresh > ram_free + disk_free) return ENOSPC;

  std::vector<std::byte> scratch;
  std::size_t done = 0;
  while (done < in.size()) {
    const std::uint64_t pos = off + done;
    const std::uint64_t block = pos / bs;
    const std::uint64_t in_block = pos % bs;
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(bs - in_block, in.size() - done));
    const std::byte* src = in.data() + done;
    if (auto it = ram_.find(block); it != ram_.end()) {
      std::memcpy(it->second.get() + in_block, src, n);
      if (!options_.cache_dir.empty()) ram_dirty_.insert(block);
    } else if (on_disk(block)) {
      if (int err = detail::pwrite_full(overflow_fd_.get(), src, n, pos)) return err;
    } else {
      const bool whole = in_block == 0 && n == block_length(block);
      if (ram_.size() < ram_max_blocks_) {
        auto data = std::make_unique<std::byte[]>(bs);
        if (!whole) {
          if (int err = read_block_from_base(block, data.get())) return err;
        }
        std::memcpy(data.get() + in_block, src, n);
        ram_.emplace(block, std::move(data));
        if (!options_.cache_dir.empty()) ram_dirty_.insert(block);
      } else {
        if (!overflow_fd_) {
          if (int err = open_overflow()) return err;
        }
        const std::uint64_t block_off = block * bs;
        if (whole) {
          if (int err = detail::pwrite_full(overflow_fd_.get(), src, n, block_off)) return err;
        } else {
          scratch.resize(bs);
          if (int err = read_block_from_base(block, scratch.data())) return err;
          std::memcpy(scratch.data() + in_block, src, n);
          if (int err = detail::pwrite_full(overflow_fd_.get(), scratch.data(), block_length(block), block_off)) {
            return err;
          }
        }
        disk_map_[block / 64] |= std::uint64_t{1} << (block % 64);
        ++disk_blocks_;
      }
    }
    done += n;
  }
  return 0;
}

WriteCache::Usage WriteCache::usage() const {
  std::shared_lock lock(mutex_);
  return {ram_.size() * options_.block_size, disk_blocks_ * options_.block_size};
}

std::filesystem::path WriteCache::overflow_path() const {
  std::shared_lock lock(mutex_);
  return overflow_path_;
}

}  // namespace deskfarm::nbd
