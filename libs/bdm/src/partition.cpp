// The BDM partition image: a raw disk with syslinux's MBR and one bootable FAT partition. Nothing here writes a
// file system: mtools makes and fills it (as grub-mkrescue does), `syslinux --install` makes it bootable; this file
// writes only the MBR's boot code and its one partition entry, and runs the tools with bounded time.
#include <deskfarm/bdm/iso.hpp>

#include "detail.hpp"

#include <Poco/DigestEngine.h>
#include <Poco/SHA2Engine.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace deskfarm::bdm {
namespace {

namespace fs = std::filesystem;

constexpr std::uint64_t sector = 512;
/// The geometry mformat is told and the partition entry's CHS fields use (QEMU guesses the same from the entry).
constexpr std::uint32_t heads = 64;
constexpr std::uint32_t sectors_per_track = 32;
/// 7 MiB of 512-byte sectors gives mformat's FAT12 (4-sector clusters): MBR partition type 0x01.
constexpr std::uint8_t fat12_type = 0x01;
constexpr const char* fat_label = "DESKFARMBDM";

void put_le32(std::string& s, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) s[at + static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
}

/// Cylinder/head/sector of an LBA in the field's packed MBR form (cylinder bits 8-9 in the sector byte).
void put_chs(std::string& s, std::size_t at, std::uint32_t lba) {
  const std::uint32_t cyl = lba / (heads * sectors_per_track);
  const std::uint32_t head = (lba / sectors_per_track) % heads;
  const std::uint32_t sec = lba % sectors_per_track + 1;
  s[at] = static_cast<char>(head);
  s[at + 1] = static_cast<char>(sec | ((cyl >> 2) & 0xc0));
  s[at + 2] = static_cast<char>(cyl & 0xff);
}

/// Sector 0: syslinux's 440-byte boot code, the disk signature, one active FAT12 partition, the 0x55AA mark.
std::string master_boot_record(const std::string& code, std::uint32_t signature) {
  std::string mbr(sector, '\0');
  std::memcpy(mbr.data(), code.data(), code.size());
  put_le32(mbr, 440, signature);
  const auto first = static_cast<std::uint32_t>(partition_offset / sector);
  const auto count = static_cast<std::uint32_t>((partition_image_size - partition_offset) / sector);
  mbr[446] = static_cast<char>(0x80);  // active: mbr.bin boots the active partition
  put_chs(mbr, 447, first);
  mbr[450] = static_cast<char>(fat12_type);
  put_chs(mbr, 451, first + count - 1);
  put_le32(mbr, 454, first);
  put_le32(mbr, 458, count);
  mbr[510] = static_cast<char>(0x55);
  mbr[511] = static_cast<char>(0xaa);
  return mbr;
}

std::string read_file(const fs::path& p, const std::string& field, const std::string& hint) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw BdmError(field, "cannot read '" + p.string() + "': " + std::strerror(errno) + " (" + hint + ")");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Writes a staged file with its time set to the epoch (mcopy -m keeps it).
void stage(const fs::path& p, const std::string& bytes, time_t epoch) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw BdmError("output", "cannot write '" + p.string() + "': " + std::strerror(errno));
  const timespec times[2] = {{epoch, 0}, {epoch, 0}};
  if (::utimensat(AT_FDCWD, p.c_str(), times, 0) != 0)
    throw BdmError("output", "cannot set the time of '" + p.string() + "': " + std::strerror(errno));
}

std::string sha256_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  Poco::SHA2Engine sha(Poco::SHA2Engine::SHA_256);
  std::array<char, 65536> buf{};
  // Bounded by the file's size.
  while (in.read(buf.data(), buf.size()) || in.gcount() > 0) sha.update(buf.data(), static_cast<unsigned>(in.gcount()));
  return Poco::DigestEngine::digestToHex(sha.digest());
}

}  // namespace

namespace detail {

void run_tool(const std::vector<std::string>& argv, std::int64_t epoch, const std::string& package,
              std::chrono::seconds timeout) {
  const std::string& tool = argv.front();
  // The tool's stdout and stderr go to an anonymous in-memory file, read after it exits.
  const int out = ::memfd_create("bdm-tool", MFD_CLOEXEC);
  if (out < 0) throw BdmError(tool, std::string("memfd_create failed: ") + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{out};
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e)
    if (std::strncmp(*e, "SOURCE_DATE_EPOCH=", 18) != 0 && std::strncmp(*e, "MTOOLS_SKIP_CHECK=", 18) != 0)
      env_strings.emplace_back(*e);
  // mtools and syslinux date their files by SOURCE_DATE_EPOCH; MTOOLS_SKIP_CHECK: an image file has no real geometry.
  env_strings.push_back("SOURCE_DATE_EPOCH=" + std::to_string(epoch));
  env_strings.push_back("MTOOLS_SKIP_CHECK=1");
  std::vector<char*> envp, args;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (auto& a : argv_copy) args.push_back(a.data());
  args.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out, 1);
  posix_spawn_file_actions_adddup2(&fa, out, 2);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc == ENOENT)
    throw BdmError(tool, tool + " is not installed (Debian package " + package + ": scripts/setup.sh)");
  if (rc != 0) throw BdmError(tool, "cannot start " + tool + ": " + std::strerror(rc));

  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  bool exited = false;
  // Bounded by the deadline; the tools finish in milliseconds.
  while (std::chrono::steady_clock::now() < deadline) {
    const pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid || (w < 0 && errno != EINTR)) {
      exited = w == pid;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    throw BdmError(tool, tool + " did not finish within " + std::to_string(timeout.count()) + " s: killed");
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  std::string text(4096, '\0');
  const ssize_t n = ::pread(out, text.data(), text.size(), 0);
  text.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  std::string command;
  for (const auto& a : argv) command += (command.empty() ? "" : " ") + a;
  throw BdmError(tool, "'" + command + "' failed (" +
                           (WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                              : "signal " + std::to_string(WTERMSIG(status))) +
                           "): " + (text.empty() ? "no output" : text));
}

}  // namespace detail

IsoResult build_partition_image(const IsoOptions& options, const fs::path& output) {
  if (std::string problem = bootstrap::validate(options.bootstrap); !problem.empty())
    throw BdmError("bootstrap", problem);
  if (options.tftp_port == 0) throw BdmError("tftp_port", "0 is not a port: give the login servers' TFTP port (1..65535)");
  const auto epoch = static_cast<time_t>(detail::resolve_epoch(options));
  detail::check_output(output);

  const std::string mbr_code =
      read_file(options.syslinux_mbr, "syslinux_mbr", "install Debian's syslinux-common: scripts/setup.sh");
  if (mbr_code.size() != 440)
    throw BdmError("syslinux_mbr", "'" + options.syslinux_mbr.string() + "' is " + std::to_string(mbr_code.size()) +
                                       " bytes, not syslinux's 440-byte mbr.bin");
  const std::string kernel = detail::read_loader_file(options.ipxe_iso, "/ipxe.krn");

  const std::string suffix = ".tmp-" + std::to_string(::getpid());
  detail::TempFile files(fs::path(output.string() + suffix + ".d"));
  std::error_code ec;
  fs::create_directory(files.path(), ec);
  if (ec) throw BdmError("output", "cannot create '" + files.path().string() + "': " + ec.message());
  const std::vector<std::pair<std::string, std::string>> contents = {
      {"syslinux.cfg", detail::loader_config},
      {"ipxe.krn", kernel},
      {script_path + 1, ipxe_script(options.bootstrap, options.tftp_port, partition_desktop_drive)},
      {bootstrap_path + 1, bootstrap::encode(options.bootstrap)}};
  for (const auto& [name, bytes] : contents) stage(files.path() / name, bytes, epoch);

  detail::TempFile temp(fs::path(output.string() + suffix));
  // The volume serial and the disk signature come from the epoch: the same inputs give the same bytes.
  const auto serial = static_cast<std::uint32_t>(epoch);
  {
    std::ofstream out(temp.path(), std::ios::binary | std::ios::trunc);
    const std::string mbr = master_boot_record(mbr_code, serial);
    out.write(mbr.data(), static_cast<std::streamsize>(mbr.size()));
    out.close();
    if (!out) throw BdmError("output", "cannot write '" + temp.path().string() + "': " + std::strerror(errno));
  }
  fs::resize_file(temp.path(), partition_image_size, ec);
  if (ec) throw BdmError("output", "cannot size '" + temp.path().string() + "': " + ec.message());

  // mtools addresses the partition as IMAGE@@OFFSET; -H: the sectors before it (the FAT's hidden sectors).
  const std::string part = temp.path().string() + "@@" + std::to_string(partition_offset);
  std::array<char, 9> serial_hex{};
  std::snprintf(serial_hex.data(), serial_hex.size(), "%08X", serial);
  detail::run_tool({"mformat", "-i", part, "-T", std::to_string((partition_image_size - partition_offset) / sector),
                    "-h", std::to_string(heads), "-s", std::to_string(sectors_per_track), "-H",
                    std::to_string(partition_offset / sector), "-N", serial_hex.data(), "-v", fat_label, "::"},
                   epoch, "mtools", options.tool_timeout);
  detail::run_tool({"syslinux", "--install", "--offset", std::to_string(partition_offset), temp.path().string()},
                   epoch, "syslinux", options.tool_timeout);
  std::vector<std::string> mcopy = {"mcopy", "-m", "-i", part};
  for (const auto& entry : contents) mcopy.push_back((files.path() / entry.first).string());
  mcopy.push_back("::/");
  detail::run_tool(mcopy, epoch, "mtools", options.tool_timeout);

  IsoResult result;
  result.size = fs::file_size(temp.path(), ec);
  result.sha256 = sha256_of(temp.path());
  fs::rename(temp.path(), output, ec);
  if (ec) throw BdmError("output", "cannot rename the image to '" + output.string() + "': " + ec.message());
  temp.release();
  return result;
}

std::optional<Format> parse_format(const std::string& name) {
  if (name == "iso") return Format::iso;
  if (name == "partition") return Format::partition;
  return std::nullopt;
}

IsoResult build_image(Format format, const IsoOptions& options, const fs::path& output) {
  return format == Format::partition ? build_partition_image(options, output) : build_iso(options, output);
}

}  // namespace deskfarm::bdm
