#pragma once
// The Boot Device Manager ISO: a bootable ISO 9660 image (El Torito, BIOS, isohybrid) that carries Debian's iPXE,
// an iPXE script that tries the login servers in failover order, and the libs/bootstrap record. README.md.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include <deskfarm/bootstrap/bootstrap.hpp>

namespace deskfarm::bdm {

/// Where Debian's `ipxe` package puts its BIOS ISO; its isolinux, ldlinux.c32 and ipxe.krn are reused.
inline constexpr const char* default_ipxe_iso = "/usr/lib/ipxe/ipxe.iso";
/// Paths inside the image (ISO 9660 names are matched case-insensitively by isolinux).
inline constexpr const char* bootstrap_path = "/bdm.bst";
inline constexpr const char* script_path = "/bdm.ipxe";
/// Debian's `syslinux-common`: the MBR boot code written to a partition image's first 440 bytes.
inline constexpr const char* default_syslinux_mbr = "/usr/lib/syslinux/mbr/mbr.bin";
/// The partition image: one FAT partition from 1 MiB (2048 sectors, the usual alignment) to the end of 8 MiB.
inline constexpr std::uint64_t partition_offset = 1024 * 1024;
inline constexpr std::uint64_t partition_image_size = 8 * 1024 * 1024;

struct IsoOptions {
  bootstrap::Bootstrap bootstrap;                     ///< validated with bootstrap::validate()
  std::filesystem::path ipxe_iso = default_ipxe_iso;  ///< source of the boot loader files
  std::string volume_id = "DESKFARM_BDM";             ///< 1..32 of A-Z 0-9 _
  /// Every timestamp in the image; unset: SOURCE_DATE_EPOCH from the environment, else the current time.
  std::optional<std::int64_t> source_date_epoch;
  bool hybrid = true;  ///< isohybrid MBR so the same file boots from a USB stick
  /// UDP port of the login servers' TFTP service, where iPXE asks for the device's boot script (1..65535).
  std::uint16_t tftp_port = 69;
  /// Partition image only: MBR boot code (syslinux's mbr.bin), and the deadline of each tool it runs.
  std::filesystem::path syslinux_mbr = default_syslinux_mbr;
  std::chrono::seconds tool_timeout{60};
};

/// Bad options, a missing boot loader, or an image that cannot be written; `field()` names the option at fault.
class BdmError : public std::runtime_error {
 public:
  BdmError(std::string field, const std::string& message)
      : std::runtime_error(field + ": " + message), field_(std::move(field)) {}
  const std::string& field() const { return field_; }

 private:
  std::string field_;
};

struct IsoResult {
  std::uint64_t size = 0;
  std::string sha256;  ///< lower-case hex of the whole image
};

/// BIOS drive of the desktop's own disk (its vDisk, streamed by pvs) as the machine booted from each image sees it:
/// behind a CD-ROM it is the first hard disk; behind a boot partition on the first hard disk, the second.
inline constexpr std::uint8_t iso_desktop_drive = 0x80;
inline constexpr std::uint8_t partition_desktop_drive = 0x81;

/// The iPXE script written to script_path: address setup, then each login server in order (README.md). It sets
/// `deskfarm_drive` to `desktop_drive` (as "0x80"), which the login server's boot script sanboots, and its
/// reboot_to_hd recovery boots that drive.
std::string ipxe_script(const bootstrap::Bootstrap& b, std::uint16_t tftp_port = 69,
                        std::uint8_t desktop_drive = iso_desktop_drive);

/// Writes the image to `output` (a temporary sibling renamed on success: no partial image is ever left).
/// Throws BdmError naming the field (a bootstrap key, "volume_id", "ipxe_iso", "source_date_epoch", "output").
IsoResult build_iso(const IsoOptions& options, const std::filesystem::path& output);

/// Writes a raw disk image instead (README.md): syslinux's MBR, one bootable FAT partition made by mtools with
/// SYSLINUX installed by `syslinux --install`, ipxe.krn, the same script and record; reproducible as the ISO. Atomic
/// like build_iso. Throws BdmError naming the field, or the tool (mformat, mcopy, syslinux) with its stderr.
IsoResult build_partition_image(const IsoOptions& options, const std::filesystem::path& output);

/// What `deskfarm bdm build --format` and the plugin's `format` key choose between.
enum class Format { iso, partition };
/// "iso" or "partition"; nullopt for anything else.
std::optional<Format> parse_format(const std::string& name);
/// build_iso or build_partition_image.
IsoResult build_image(Format format, const IsoOptions& options, const std::filesystem::path& output);

/// Reads one file of an ISO image (e.g. bootstrap_path) in-process with libisofs; throws BdmError("iso", …).
std::string read_iso_file(const std::filesystem::path& iso, const std::string& path);

}  // namespace deskfarm::bdm
