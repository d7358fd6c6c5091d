// Builds the BDM ISO in-process with libisofs (README.md). Reproducibility: every timestamp libisofs writes comes
// from one epoch (files, directories, volume descriptors, the UUID), and the system area is copied, not generated.
#define LIBISOFS_WITHOUT_LIBBURN 1
#include <deskfarm/bdm/iso.hpp>

#include <deskfarm/bootstrap/boot_script.hpp>
#include "detail.hpp"
#include <libisofs/libisofs.h>

#include <Poco/DigestEngine.h>
#include <Poco/SHA2Engine.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <unistd.h>

namespace deskfarm::bdm {
namespace {

namespace fs = std::filesystem;
using bootstrap::Bootstrap;

/// Files of Debian's ipxe.iso that the BDM image reuses unchanged (isolinux boots ipxe.krn = ipxe.lkrn).
constexpr std::array<const char*, 3> loader_files = {"/isolinux.bin", "/ldlinux.c32", "/ipxe.krn"};

/// The 2019 iPXE in Debian 12 has no per-command deadline but `chain --timeout` (milliseconds) exists. The name
/// tells the login server which device asks and which boot record it carries (iPXE expands the MAC itself).
std::string fetch_url(const bootstrap::Endpoint& e, std::uint16_t tftp_port, std::uint32_t version) {
  return "tftp://" + e.host + ":" + std::to_string(tftp_port) + "/" +
         bootstrap::boot_script_name(version, "${net0/mac:hexhyp}");
}

std::string error_text(int code) {
  const char* text = iso_error_to_msg(code);
  return std::string(text != nullptr ? text : "unknown libisofs error") + " (libisofs " + std::to_string(code) + ")";
}

void check(int code, const std::string& field, const std::string& what) {
  if (code < 0) throw BdmError(field, what + ": " + error_text(code));
}

/// libisofs keeps global state (message queue); iso_init once per process, never iso_finish (other users).
void init_libisofs() {
  static std::once_flag once;
  static int code = 0;
  std::call_once(once, [] {
    code = iso_init();
    if (code >= 0) iso_set_msgs_severities(const_cast<char*>("NEVER"), const_cast<char*>("NEVER"),
                                           const_cast<char*>("libisofs"));
  });
  check(code, "libisofs", "iso_init failed");
}

struct ImageDeleter { void operator()(IsoImage* i) const { iso_image_unref(i); } };
struct OptsDeleter { void operator()(IsoWriteOpts* o) const { iso_write_opts_free(o); } };
struct ReadOptsDeleter { void operator()(IsoReadOpts* o) const { iso_read_opts_free(o); } };
struct SourceDeleter { void operator()(IsoDataSource* s) const { iso_data_source_unref(s); } };
struct BurnDeleter {
  void operator()(burn_source* b) const {
    b->free_data(b);
    free(b);  // libisofs allocates the burn_source with malloc and leaves freeing it to the caller
  }
};
using ImagePtr = std::unique_ptr<IsoImage, ImageDeleter>;

/// An image tree imported from an existing ISO (Rock Ridge names), to copy files and the system area from.
ImagePtr import_iso(const fs::path& iso, const std::string& field) {
  init_libisofs();
  std::error_code ec;
  if (!fs::is_regular_file(iso, ec))
    throw BdmError(field, "'" + iso.string() + "' is not a readable file (install Debian's ipxe package: "
                              "scripts/setup.sh)");
  IsoDataSource* raw_src = nullptr;
  check(iso_data_source_new_from_file(iso.c_str(), &raw_src), field, "cannot open '" + iso.string() + "'");
  std::unique_ptr<IsoDataSource, SourceDeleter> src(raw_src);
  IsoImage* raw_image = nullptr;
  check(iso_image_new("import", &raw_image), field, "iso_image_new");
  ImagePtr image(raw_image);
  IsoReadOpts* raw_ropts = nullptr;
  check(iso_read_opts_new(&raw_ropts, 0), field, "iso_read_opts_new");
  std::unique_ptr<IsoReadOpts, ReadOptsDeleter> ropts(raw_ropts);
  check(iso_image_import(image.get(), src.get(), ropts.get(), nullptr), field,
        "'" + iso.string() + "' is not a readable ISO 9660 image");
  return image;
}

std::string read_node(IsoImage* image, const std::string& path, const std::string& field, const fs::path& iso) {
  IsoNode* node = nullptr;
  if (iso_tree_path_to_node(image, path.c_str(), &node) != 1 || node == nullptr ||
      iso_node_get_type(node) != LIBISO_FILE)
    throw BdmError(field, "'" + iso.string() + "' has no file " + path);
  IsoStream* stream = iso_file_get_stream(reinterpret_cast<IsoFile*>(node));
  check(iso_stream_open(stream), field, "cannot open " + path + " in '" + iso.string() + "'");
  std::string out;
  std::array<char, 65536> buf{};
  int n = 0;
  // Bounded by the file's size: iso_stream_read returns 0 at its end.
  while ((n = iso_stream_read(stream, buf.data(), buf.size())) > 0) out.append(buf.data(), static_cast<size_t>(n));
  iso_stream_close(stream);
  check(n, field, "cannot read " + path + " in '" + iso.string() + "'");
  return out;
}

/// Adds `bytes` as file `name` under the root with mode 0444 and every timestamp = epoch.
void add_file(IsoImage* image, const std::string& name, const std::string& bytes, time_t epoch) {
  // iso_memory_stream_new takes ownership of a malloc'd buffer (freed with the stream).
  auto* buf = static_cast<unsigned char*>(malloc(bytes.empty() ? 1 : bytes.size()));
  if (buf == nullptr) throw BdmError("output", "out of memory for " + name);
  std::memcpy(buf, bytes.data(), bytes.size());
  IsoStream* stream = nullptr;
  int code = iso_memory_stream_new(buf, bytes.size(), &stream);
  if (code < 0) {
    free(buf);
    check(code, "output", "cannot add " + name);
  }
  IsoFile* file = nullptr;
  // The new file takes over our reference to the stream; on failure it is still ours to drop.
  code = iso_image_add_new_file(image, iso_image_get_root(image), name.c_str(), stream, &file);
  if (code < 0) {
    iso_stream_unref(stream);
    check(code, "output", "cannot add " + name);
  }
  auto* node = reinterpret_cast<IsoNode*>(file);
  iso_node_set_permissions(node, 0444);
  iso_node_set_uid(node, 0);
  iso_node_set_gid(node, 0);
  iso_node_set_mtime(node, epoch);
  iso_node_set_atime(node, epoch);
  iso_node_set_ctime(node, epoch);
}

void validate_volume_id(const std::string& v) {
  if (v.empty() || v.size() > 32) throw BdmError("volume_id", "'" + v + "' must be 1..32 characters");
  for (char c : v)
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
      throw BdmError("volume_id", "'" + v + "' may contain only A-Z, 0-9 and _ (ISO 9660 d-characters)");
}


}  // namespace

namespace detail {

std::int64_t resolve_epoch(const IsoOptions& o) {
  if (o.source_date_epoch) {
    if (*o.source_date_epoch < 0 || *o.source_date_epoch > 253402300799)
      throw BdmError("source_date_epoch", std::to_string(*o.source_date_epoch) + " is outside 0..253402300799");
    return *o.source_date_epoch;
  }
  if (const char* env = std::getenv("SOURCE_DATE_EPOCH"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(env, &end, 10);
    if (errno != 0 || *end != '\0' || v < 0 || v > 253402300799)
      throw BdmError("SOURCE_DATE_EPOCH", std::string("'") + env + "' is not seconds since 1970 (0..253402300799)");
    return v;
  }
  return static_cast<std::int64_t>(std::time(nullptr));
}

void check_output(const fs::path& output) {
  if (output.empty()) throw BdmError("output", "no output path given");
  const fs::path dir = output.has_parent_path() ? output.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw BdmError("output", "directory '" + dir.string() + "' of '" + output.string() + "' does not exist");
  if (::access(dir.c_str(), W_OK) != 0)
    throw BdmError("output", "directory '" + dir.string() + "' is not writable (" + std::strerror(errno) +
                                 "): choose another -o path");
}

std::string read_loader_file(const fs::path& ipxe_iso, const std::string& path) {
  ImagePtr source = import_iso(ipxe_iso, "ipxe_iso");
  return read_node(source.get(), path, "ipxe_iso", ipxe_iso);
}

}  // namespace detail

std::string ipxe_script(const Bootstrap& b, std::uint16_t tftp_port, std::uint8_t desktop_drive) {
  std::ostringstream s;
  char drive[8];
  std::snprintf(drive, sizeof drive, "0x%02x", desktop_drive);
  const std::string poll = std::to_string(b.login_polling_timeout_ms);
  // Rounds over the whole list that fit in the general timeout (at least one).
  const std::uint64_t per_round = static_cast<std::uint64_t>(b.login_polling_timeout_ms) * b.login_servers.size();
  const std::uint64_t rounds = std::max<std::uint64_t>(1, b.login_general_timeout_ms / std::max<std::uint64_t>(1, per_round));
  s << "#!ipxe\n"
    << "# deskfarm Boot Device Manager: generated from bootstrap version " << b.version << " (bdm.bst)\n"
    << "echo deskfarm BDM bootstrap version " << b.version << "\n"
    // The login server's boot script sanboots this drive: the desktop's disk, wherever this image put it.
    << "set deskfarm_drive " << drive << "\n"
    << ":start\n";
  if (b.addressing == bootstrap::Addressing::dhcp) {
    s << "dhcp || goto recovery\n";
  } else {
    const auto& a = b.static_address;
    s << "ifclose net0 ||\n"
      << "set net0/ip " << a.ip << "\n"
      << "set net0/netmask " << a.mask << "\n"
      << "set net0/gateway " << a.gateway << "\n";
    if (!a.dns.empty()) s << "set dns " << a.dns << "\n";
    s << "ifopen net0 || goto recovery\n";
  }
  s << "set round:int32 0\n"
    << ":round\n";
  for (std::size_t i = 0; i < b.login_servers.size(); ++i) {
    const auto& e = b.login_servers[i];
    if (b.verbose) s << "echo trying login server " << i + 1 << " " << e.host << ":" << e.port << "\n";
    s << "set login_server " << e.host << ":" << e.port << "\n"
      << "chain --timeout " << poll << " " << fetch_url(e, tftp_port, b.version) << " ||\n";
  }
  s << "inc round\n"
    << "iseq ${round} " << rounds << " || goto round\n"
    << ":recovery\n";
  if (b.recovery == bootstrap::Recovery::reboot_to_hd) {
    s << "echo deskfarm BDM: no login server answered, booting the local disk\n"
      << "sanboot --no-describe --drive " << drive << " || reboot\n";
  } else {
    s << "echo deskfarm BDM: no login server answered, retrying in " << b.recovery_time_s << " s\n"
      << "sleep " << b.recovery_time_s << "\n"
      << "goto start\n";
  }
  return s.str();
}

IsoResult build_iso(const IsoOptions& options, const fs::path& output) {
  if (std::string problem = bootstrap::validate(options.bootstrap); !problem.empty())
    throw BdmError("bootstrap", problem);
  validate_volume_id(options.volume_id);
  if (options.tftp_port == 0) throw BdmError("tftp_port", "0 is not a port: give the login servers' TFTP port (1..65535)");
  const auto epoch = static_cast<time_t>(detail::resolve_epoch(options));
  detail::check_output(output);
  std::error_code ec;

  // Boot loader files and the isohybrid MBR code, from Debian's own iPXE ISO.
  ImagePtr source = import_iso(options.ipxe_iso, "ipxe_iso");
  std::array<std::string, loader_files.size()> loader;
  for (std::size_t i = 0; i < loader_files.size(); ++i)
    loader[i] = read_node(source.get(), loader_files[i], "ipxe_iso", options.ipxe_iso);
  source.reset();
  // The isohybrid MBR code is the first 432 bytes of ipxe.iso's system area (ISOLINUX's isohdpfx); libisofs
  // rewrites the partition table for this image. Read directly: libisofs does not load it on import.
  std::array<char, 32768> system_area{};
  if (options.hybrid) {
    std::ifstream in(options.ipxe_iso, std::ios::binary);
    in.read(system_area.data(), system_area.size());
    if (!in || static_cast<unsigned char>(system_area[510]) != 0x55 ||
        static_cast<unsigned char>(system_area[511]) != 0xaa)
      throw BdmError("ipxe_iso", "'" + options.ipxe_iso.string() + "' has no MBR to make the image isohybrid: "
                                 "build with hybrid = false");
  }

  const std::string record = bootstrap::encode(options.bootstrap);
  IsoImage* raw_image = nullptr;
  check(iso_image_new(options.volume_id.c_str(), &raw_image), "output", "iso_image_new");
  ImagePtr image(raw_image);
  iso_image_set_volume_id(image.get(), options.volume_id.c_str());
  iso_image_set_application_id(image.get(), "DESKFARM BDM");
  iso_image_set_publisher_id(image.get(), "");
  iso_image_set_data_preparer_id(image.get(), "");
  iso_image_set_system_id(image.get(), "");
  for (std::size_t i = 0; i < loader_files.size(); ++i) add_file(image.get(), loader_files[i] + 1, loader[i], epoch);
  add_file(image.get(), "isolinux.cfg", detail::loader_config, epoch);
  add_file(image.get(), script_path + 1, ipxe_script(options.bootstrap, options.tftp_port), epoch);
  add_file(image.get(), bootstrap_path + 1, record, epoch);
  IsoDir* root = iso_image_get_root(image.get());
  iso_node_set_mtime(reinterpret_cast<IsoNode*>(root), epoch);
  iso_node_set_atime(reinterpret_cast<IsoNode*>(root), epoch);
  iso_node_set_ctime(reinterpret_cast<IsoNode*>(root), epoch);
  iso_node_set_permissions(reinterpret_cast<IsoNode*>(root), 0555);

  ElToritoBootImage* boot = nullptr;
  check(iso_image_set_boot_image(image.get(), "/isolinux.bin", ELTORITO_NO_EMUL, "/boot.cat", &boot), "output",
        "El Torito boot record");
  el_torito_set_load_size(boot, 4);  // 4 x 512 bytes, as isolinux expects (and ipxe.iso records)
  // bit0: patch the boot info table isolinux reads; bit1: isohybrid-suitable (MBR points at it).
  el_torito_set_isolinux_options(boot, options.hybrid ? 3 : 1, 0);
  iso_image_set_boot_catalog_hidden(image.get(), 0);
  iso_image_set_boot_catalog_weight(image.get(), 0);

  IsoWriteOpts* raw_opts = nullptr;
  check(iso_write_opts_new(&raw_opts, 2), "output", "iso_write_opts_new");
  std::unique_ptr<IsoWriteOpts, OptsDeleter> opts(raw_opts);
  iso_write_opts_set_iso_level(opts.get(), 3);
  iso_write_opts_set_rockridge(opts.get(), 1);
  iso_write_opts_set_joliet(opts.get(), 1);
  iso_write_opts_set_always_gmt(opts.get(), 1);
  iso_write_opts_set_replace_mode(opts.get(), 1, 1, 1, 1);  // dir/file modes and uid/gid from below
  iso_write_opts_set_default_dir_mode(opts.get(), 0555);
  iso_write_opts_set_default_file_mode(opts.get(), 0444);
  iso_write_opts_set_default_uid(opts.get(), 0);
  iso_write_opts_set_default_gid(opts.get(), 0);
  iso_write_opts_set_replace_timestamps(opts.get(), 2);  // every node's times = the epoch
  iso_write_opts_set_default_timestamp(opts.get(), epoch);
  iso_write_opts_set_rrip_1_10_px_ino(opts.get(), 0);
  iso_write_opts_set_hardlinks(opts.get(), 0);  // no inode numbers derived from the build machine
  // The UUID string fixes creation and modification times in every volume descriptor (GMT, no timezone).
  std::array<char, 32> uuid{};
  std::tm tm{};
  gmtime_r(&epoch, &tm);
  std::strftime(uuid.data(), uuid.size(), "%Y%m%d%H%M%S00", &tm);
  check(iso_write_opts_set_pvd_times(opts.get(), epoch, epoch, 0, epoch, uuid.data()), "output", "volume times");
  if (options.hybrid)
    // bit1 = isohybrid MBR (ISOLINUX's, copied from ipxe.iso); its partition table is regenerated for this image.
    check(iso_write_opts_set_system_area(opts.get(), system_area.data(), 2, 0), "output", "isohybrid MBR");

  burn_source* raw_burn = nullptr;
  check(iso_image_create_burn_source(image.get(), opts.get(), &raw_burn), "output", "cannot start writing");
  std::unique_ptr<burn_source, BurnDeleter> burn(raw_burn);

  detail::TempFile temp(fs::path(output.string() + ".tmp-" + std::to_string(::getpid())));
  std::ofstream out(temp.path(), std::ios::binary | std::ios::trunc);
  if (!out) throw BdmError("output", "cannot create '" + temp.path().string() + "': " + std::strerror(errno));
  Poco::SHA2Engine sha(Poco::SHA2Engine::SHA_256);
  std::array<unsigned char, 2048> block{};
  IsoResult result;
  // libisofs delivers the image in 2048-byte blocks and returns 0 at its end; a failure is negative.
  for (;;) {
    int n = burn->read_xt(burn.get(), block.data(), static_cast<int>(block.size()));
    if (n == 0) break;
    if (n < 0) throw BdmError("output", "libisofs failed while writing the image");
    out.write(reinterpret_cast<const char*>(block.data()), n);
    sha.update(block.data(), static_cast<unsigned>(n));
    result.size += static_cast<std::uint64_t>(n);
  }
  out.flush();
  out.close();
  if (!out) throw BdmError("output", "cannot write '" + temp.path().string() + "': " + std::strerror(errno));
  fs::rename(temp.path(), output, ec);
  if (ec) throw BdmError("output", "cannot rename the image to '" + output.string() + "': " + ec.message());
  temp.release();
  result.sha256 = Poco::DigestEngine::digestToHex(sha.digest());
  return result;
}

std::string read_iso_file(const fs::path& iso, const std::string& path) {
  ImagePtr image = import_iso(iso, "iso");
  return read_node(image.get(), path, "iso", iso);
}

}  // namespace deskfarm::bdm
