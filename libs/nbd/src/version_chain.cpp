#include "deskfarm/nbd/version_chain.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <Poco/SHA2Engine.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <set>

#include "io_util.hpp"

namespace deskfarm::nbd {
namespace {

constexpr char kMagic[8] = {'D', 'F', 'V', 'D', 'I', 'S', 'K', '1'};
constexpr std::uint32_t kFormatVersion = 1;
constexpr std::size_t kHeaderSize = 4096;
constexpr std::size_t kMaxParentName = 1024;
constexpr std::size_t kMaxChainDepth = 64;
constexpr std::uint64_t kBaseDigestBytes = 1 << 20;

void put_le(std::byte* p, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}
std::uint64_t get_le(const std::byte* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<std::uint8_t>(p[i]);
  return v;
}

struct Header {
  std::uint32_t block_size = 0;
  std::uint64_t size = 0;
  std::uint64_t bitmap_offset = kHeaderSize;
  std::uint64_t bitmap_bytes = 0;
  std::uint64_t data_offset = 0;
  std::array<std::byte, 32> parent_digest{};
  std::string parent_name;
};

std::uint64_t bitmap_bytes_for(std::uint64_t size, std::uint32_t block_size) {
  return ((size + block_size - 1) / block_size + 7) / 8;
}

std::string errno_text(int err) { return std::strerror(err); }

UniqueFd open_or_throw(const std::filesystem::path& path, int flags, const char* what) {
  UniqueFd fd(::open(path.c_str(), flags | O_CLOEXEC, 0644));
  if (!fd) throw VersionChainError(std::string("nbd: cannot open ") + what + " " + path.string() + ": " + errno_text(errno));
  return fd;
}

std::uint64_t file_size(int fd, const std::filesystem::path& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw VersionChainError("nbd: cannot stat " + path.string() + ": " + errno_text(errno));
  return static_cast<std::uint64_t>(st.st_size);
}

bool has_magic(int fd) {
  std::array<std::byte, 8> m{};
  if (detail::pread_full(fd, m.data(), m.size(), 0) != 0) return false;
  return std::memcmp(m.data(), kMagic, 8) == 0;
}

std::array<std::byte, kHeaderSize> encode(const Header& h) {
  std::array<std::byte, kHeaderSize> b{};
  std::memcpy(b.data(), kMagic, 8);
  put_le(b.data() + 8, kFormatVersion, 4);
  put_le(b.data() + 12, h.block_size, 4);
  put_le(b.data() + 16, h.size, 8);
  put_le(b.data() + 24, h.bitmap_offset, 8);
  put_le(b.data() + 32, h.bitmap_bytes, 8);
  put_le(b.data() + 40, h.data_offset, 8);
  std::memcpy(b.data() + 48, h.parent_digest.data(), 32);
  put_le(b.data() + 80, h.parent_name.size(), 2);
  std::memcpy(b.data() + 82, h.parent_name.data(), h.parent_name.size());
  return b;
}

Header decode(const std::array<std::byte, kHeaderSize>& b, const std::filesystem::path& path) {
  auto bad = [&](const std::string& why) {
    return VersionChainError("nbd: version file " + path.string() + ": " + why);
  };
  if (std::memcmp(b.data(), kMagic, 8) != 0) throw bad("bad magic at offset 0 (not a version file)");
  if (auto v = get_le(b.data() + 8, 4); v != kFormatVersion) {
    throw bad("format version " + std::to_string(v) + " at offset 8, this build reads version 1");
  }
  Header h;
  h.block_size = static_cast<std::uint32_t>(get_le(b.data() + 12, 4));
  h.size = get_le(b.data() + 16, 8);
  h.bitmap_offset = get_le(b.data() + 24, 8);
  h.bitmap_bytes = get_le(b.data() + 32, 8);
  h.data_offset = get_le(b.data() + 40, 8);
  std::memcpy(h.parent_digest.data(), b.data() + 48, 32);
  const auto name_len = get_le(b.data() + 80, 2);
  if (h.block_size < 512 || h.block_size > (1U << 24) || (h.block_size & (h.block_size - 1)) != 0) {
    throw bad("block size " + std::to_string(h.block_size) + " at offset 12 is not a power of two in 512..16 MiB");
  }
  if (h.bitmap_offset != kHeaderSize) throw bad("bitmap offset at offset 24 must be 4096");
  if (h.bitmap_bytes != bitmap_bytes_for(h.size, h.block_size)) throw bad("bitmap length at offset 32 does not match the size");
  if (h.data_offset < h.bitmap_offset + h.bitmap_bytes || h.data_offset % h.block_size != 0) {
    throw bad("data offset at offset 40 overlaps the bitmap or is not block-aligned");
  }
  if (name_len == 0 || name_len > kMaxParentName) throw bad("parent name length at offset 80 is 0 or over 1024");
  h.parent_name.assign(reinterpret_cast<const char*>(b.data() + 82), name_len);
  if (h.parent_name.find('/') != std::string::npos || h.parent_name == "." || h.parent_name == ".." ||
      h.parent_name.find('\0') != std::string::npos) {
    throw bad("parent name '" + h.parent_name + "' must be a plain file name in the same directory");
  }
  return h;
}

Header read_header(int fd, const std::filesystem::path& path) {
  std::array<std::byte, kHeaderSize> b{};
  if (file_size(fd, path) < kHeaderSize) throw VersionChainError("nbd: version file " + path.string() + " is shorter than its 4096-byte header");
  if (int err = detail::pread_full(fd, b.data(), b.size(), 0)) {
    throw VersionChainError("nbd: cannot read header of " + path.string() + ": " + errno_text(err));
  }
  return decode(b, path);
}

std::array<std::byte, 32> digest_of(const std::filesystem::path& path) {
  UniqueFd fd = open_or_throw(path, O_RDONLY, "layer");
  Poco::SHA2Engine sha(Poco::SHA2Engine::SHA_256);
  const std::uint64_t size = file_size(fd.get(), path);
  std::vector<std::byte> buf;
  if (size >= kHeaderSize && has_magic(fd.get())) {
    buf.resize(kHeaderSize);
  } else {
    // A raw base has no header: its identity is its size plus its first MiB (boot sector, partition table).
    static constexpr char kTag[] = "deskfarm-raw-base";
    sha.update(kTag, sizeof kTag);
    std::array<std::byte, 8> sz{};
    put_le(sz.data(), size, 8);
    sha.update(sz.data(), sz.size());
    buf.resize(static_cast<std::size_t>(std::min(size, kBaseDigestBytes)));
  }
  if (int err = detail::pread_full(fd.get(), buf.data(), buf.size(), 0)) {
    throw VersionChainError("nbd: cannot read " + path.string() + ": " + errno_text(err));
  }
  sha.update(buf.data(), buf.size());
  std::array<std::byte, 32> out{};
  const auto& d = sha.digest();
  std::memcpy(out.data(), d.data(), 32);
  return out;
}

std::string hex(const std::array<std::byte, 32>& d) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  for (auto b : d) {
    s += kHex[static_cast<std::uint8_t>(b) >> 4];
    s += kHex[static_cast<std::uint8_t>(b) & 15];
  }
  return s;
}

std::uint64_t layer_size(const std::filesystem::path& path) {
  UniqueFd fd = open_or_throw(path, O_RDONLY, "layer");
  const std::uint64_t size = file_size(fd.get(), path);
  if (size >= kHeaderSize && has_magic(fd.get())) return read_header(fd.get(), path).size;
  return size;
}

/// Reads [off, off+out.size()) of a layer with block size `bs`: runs of blocks the layer holds (`present`) come
/// from `here`, the others from `below`, each contiguous run in one call (versions touch few, clustered blocks).
template <class Present, class Here, class Below>
int read_runs(std::uint64_t bs, std::uint64_t off, std::span<std::byte> out, Present present, Here here, Below below) {
  std::size_t done = 0;
  while (done < out.size()) {
    const bool held = present((off + done) / bs);
    std::size_t run = 0;
    while (done + run < out.size()) {
      const std::uint64_t pos = off + done + run;
      if (present(pos / bs) != held) break;
      run += static_cast<std::size_t>(std::min<std::uint64_t>(bs - pos % bs, out.size() - done - run));
    }
    auto part = out.subspan(done, run);
    if (int err = held ? here(off + done, part) : below(off + done, part)) return err;
    done += run;
  }
  return 0;
}

bool bit(const std::vector<std::uint8_t>& bitmap, std::uint64_t block) { return (bitmap[block / 8] >> (block % 8)) & 1U; }

}  // namespace

struct ChainExport::Layer {
  std::filesystem::path path;
  UniqueFd fd;
  Header header;
  std::vector<std::uint8_t> bitmap;
  bool present(std::uint64_t block) const { return bit(bitmap, block); }
};

void create_version(const std::filesystem::path& path, const std::filesystem::path& parent, std::uint32_t block_size) {
  if (block_size < 512 || block_size > (1U << 24) || (block_size & (block_size - 1)) != 0) {
    throw VersionChainError("nbd: cannot create version " + path.string() + ": block size " + std::to_string(block_size) +
                            " is not a power of two in 512..16 MiB");
  }
  if (std::filesystem::absolute(path).parent_path() != std::filesystem::absolute(parent).parent_path()) {
    throw VersionChainError("nbd: cannot create version " + path.string() + ": parent " + parent.string() +
                            " must be in the same directory (the chain records it by file name)");
  }
  const std::string parent_name = parent.filename().string();
  if (parent_name.size() > kMaxParentName) {
    throw VersionChainError("nbd: cannot create version " + path.string() + ": parent name longer than 1024 bytes");
  }
  Header h;
  h.block_size = block_size;
  h.size = layer_size(parent);
  h.bitmap_bytes = bitmap_bytes_for(h.size, block_size);
  h.data_offset = (h.bitmap_offset + h.bitmap_bytes + block_size - 1) / block_size * block_size;
  h.parent_digest = digest_of(parent);
  h.parent_name = parent_name;
  UniqueFd fd = open_or_throw(path, O_RDWR | O_CREAT | O_EXCL, "new version file");
  const auto bytes = encode(h);
  int err = detail::pwrite_full(fd.get(), bytes.data(), bytes.size(), 0);
  // Sparse: the bitmap reads as zeroes (no block present) and data blocks take room only once written.
  if (err == 0 && ::ftruncate(fd.get(), static_cast<off_t>(h.data_offset + h.size)) != 0) err = errno;
  if (err == 0 && ::fdatasync(fd.get()) != 0) err = errno;
  if (err != 0) {
    std::error_code ec;
    std::filesystem::remove(path, ec);
    throw VersionChainError("nbd: cannot write version file " + path.string() + ": " + errno_text(err));
  }
}

std::string layer_digest(const std::filesystem::path& layer) { return hex(digest_of(layer)); }

ChainExport::ChainExport(const std::filesystem::path& top) {
  std::filesystem::path current = top;
  std::set<std::filesystem::path> seen;
  for (std::size_t depth = 0;; ++depth) {
    if (depth > kMaxChainDepth) {
      throw VersionChainError("nbd: version chain from " + top.string() + " is deeper than 64 layers");
    }
    auto canon = std::filesystem::weakly_canonical(current);
    if (!seen.insert(canon).second) {
      throw VersionChainError("nbd: version chain from " + top.string() + " loops back to " + current.string());
    }
    UniqueFd fd = open_or_throw(current, O_RDONLY, "layer");
    if (!(file_size(fd.get(), current) >= kHeaderSize && has_magic(fd.get()))) {
      base_ = std::make_unique<FileExport>(current, true);
      break;
    }
    auto layer = std::make_unique<Layer>();
    layer->path = current;
    layer->header = read_header(fd.get(), current);
    layer->bitmap.resize(static_cast<std::size_t>(layer->header.bitmap_bytes));
    if (int err = detail::pread_full(fd.get(), layer->bitmap.data(), layer->bitmap.size(), layer->header.bitmap_offset)) {
      throw VersionChainError("nbd: cannot read bitmap of " + current.string() + ": " + errno_text(err));
    }
    layer->fd = std::move(fd);
    const auto parent = current.parent_path() / layer->header.parent_name;
    if (!std::filesystem::exists(parent)) {
      throw VersionChainError("nbd: version file " + current.string() + " names parent " + layer->header.parent_name +
                              ", which does not exist in " + current.parent_path().string());
    }
    if (auto actual = digest_of(parent); actual != layer->header.parent_digest) {
      throw VersionChainError("nbd: version file " + current.string() + " was made on a different " + parent.string() +
                              " (recorded SHA-256 " + hex(layer->header.parent_digest) + ", found " + hex(actual) +
                              "); refusing a wrong chain");
    }
    if (auto psize = layer_size(parent); psize != layer->header.size) {
      throw VersionChainError("nbd: version file " + current.string() + " has size " + std::to_string(layer->header.size) +
                              " but its parent " + parent.string() + " has " + std::to_string(psize));
    }
    versions_.push_back(std::move(layer));
    current = parent;
  }
}

ChainExport::~ChainExport() = default;

std::uint64_t ChainExport::size() const { return base_->size(); }

std::vector<std::filesystem::path> ChainExport::layers() const {
  std::vector<std::filesystem::path> out{base_->path()};
  for (auto it = versions_.rbegin(); it != versions_.rend(); ++it) out.push_back((*it)->path);
  return out;
}

int ChainExport::read(std::uint64_t off, std::span<std::byte> out) {
  if (!in_bounds(off, out.size(), size())) return EINVAL;
  return read_from(0, off, out);
}

int ChainExport::read_from(std::size_t index, std::uint64_t off, std::span<std::byte> out) {
  if (index == versions_.size()) return base_->read(off, out);
  const Layer& layer = *versions_[index];
  return read_runs(
      layer.header.block_size, off, out, [&](std::uint64_t block) { return layer.present(block); },
      [&](std::uint64_t at, std::span<std::byte> part) {
        return detail::pread_full(layer.fd.get(), part.data(), part.size(), layer.header.data_offset + at);
      },
      [&](std::uint64_t at, std::span<std::byte> part) { return read_from(index + 1, at, part); });
}

struct VersionWriter::State {
  std::filesystem::path path;
  UniqueFd fd;
  Header header;
  std::vector<std::uint8_t> bitmap;
  bool dirty = false;
  std::unique_ptr<ChainExport> parent;
};

VersionWriter::VersionWriter(const std::filesystem::path& version) : state_(std::make_unique<State>()) {
  auto& s = *state_;
  s.path = version;
  s.fd = open_or_throw(version, O_RDWR, "version file");
  s.header = read_header(s.fd.get(), version);
  s.bitmap.resize(static_cast<std::size_t>(s.header.bitmap_bytes));
  if (int err = detail::pread_full(s.fd.get(), s.bitmap.data(), s.bitmap.size(), s.header.bitmap_offset)) {
    throw VersionChainError("nbd: cannot read bitmap of " + version.string() + ": " + errno_text(err));
  }
  // Opening the parent chain checks the recorded digest, so a writer never extends a wrong chain either.
  ChainExport self(version);
  s.parent = std::make_unique<ChainExport>(version.parent_path() / s.header.parent_name);
}

VersionWriter::~VersionWriter() {
  if (state_) flush();
}

int VersionWriter::write(std::uint64_t off, std::span<const std::byte> in) {
  auto& s = *state_;
  if (!in_bounds(off, in.size(), s.header.size)) return EINVAL;
  const std::uint64_t bs = s.header.block_size;
  std::vector<std::byte> scratch;
  std::size_t done = 0;
  while (done < in.size()) {
    const std::uint64_t pos = off + done;
    const std::uint64_t block = pos / bs;
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(bs - pos % bs, in.size() - done));
    const bool present = bit(s.bitmap, block);
    if (present) {
      if (int err = detail::pwrite_full(s.fd.get(), in.data() + done, n, s.header.data_offset + pos)) return err;
    } else {
      const std::uint64_t start = block * bs;
      const auto len = static_cast<std::size_t>(std::min<std::uint64_t>(bs, s.header.size - start));
      scratch.resize(len);
      if (n != len) {
        if (int err = s.parent->read(start, scratch)) return err;
      }
      std::memcpy(scratch.data() + (pos - start), in.data() + done, n);
      if (int err = detail::pwrite_full(s.fd.get(), scratch.data(), len, s.header.data_offset + start)) return err;
      s.bitmap[block / 8] = static_cast<std::uint8_t>(s.bitmap[block / 8] | (1U << (block % 8)));
      s.dirty = true;
    }
    done += n;
  }
  return 0;
}

std::uint64_t VersionWriter::size() const { return state_->header.size; }

int VersionWriter::read(std::uint64_t off, std::span<std::byte> out) {
  auto& s = *state_;
  if (!in_bounds(off, out.size(), s.header.size)) return EINVAL;
  return read_runs(
      s.header.block_size, off, out, [&](std::uint64_t block) { return bit(s.bitmap, block); },
      [&](std::uint64_t at, std::span<std::byte> part) {
        return detail::pread_full(s.fd.get(), part.data(), part.size(), s.header.data_offset + at);
      },
      [&](std::uint64_t at, std::span<std::byte> part) { return s.parent->read(at, part); });
}

int VersionWriter::flush() {
  auto& s = *state_;
  if (s.dirty) {
    // Data before bitmap: a crash in between leaves blocks unreferenced, never references unwritten blocks.
    if (::fdatasync(s.fd.get()) != 0) return errno;
    if (int err = detail::pwrite_full(s.fd.get(), s.bitmap.data(), s.bitmap.size(), s.header.bitmap_offset)) return err;
    s.dirty = false;
  }
  return ::fdatasync(s.fd.get()) == 0 ? 0 : errno;
}

}  // namespace deskfarm::nbd
