#pragma once
// What the ISO and the partition image share inside libs/bdm: the epoch, output checks, the atomic temporary file,
// the loader configuration, and the field's tools run as bounded child processes.
#include <deskfarm/bdm/iso.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace deskfarm::bdm::detail {

/// ISOLINUX and SYSLINUX read the same configuration: start iPXE with the BDM script as its initrd (iPXE runs it).
inline constexpr const char* loader_config =
    "# deskfarm BDM: the loader starts iPXE with the BDM script as its initrd (iPXE runs it)\n"
    "TIMEOUT 0\nDEFAULT bdm\nLABEL bdm\n KERNEL ipxe.krn\n INITRD bdm.ipxe\n";

/// IsoOptions::source_date_epoch, else SOURCE_DATE_EPOCH, else now; throws BdmError naming the one at fault.
std::int64_t resolve_epoch(const IsoOptions& o);

/// The output's directory exists and is writable; throws BdmError("output", …).
void check_output(const std::filesystem::path& output);

/// One file of Debian's iPXE ISO (e.g. "/ipxe.krn"); throws BdmError("ipxe_iso", …).
std::string read_loader_file(const std::filesystem::path& ipxe_iso, const std::string& path);

/// Runs a tool (PATH lookup) to completion within `timeout` with SOURCE_DATE_EPOCH = epoch in its environment; a
/// missing tool, a non-zero exit or the deadline throws BdmError(argv[0], …) with the tool's stderr and `package`.
void run_tool(const std::vector<std::string>& argv, std::int64_t epoch, const std::string& package,
              std::chrono::seconds timeout);

/// Removes a temporary file or directory tree unless release() was called (errors leave nothing behind).
class TempFile {
 public:
  explicit TempFile(std::filesystem::path p) : path_(std::move(p)) {}
  ~TempFile() {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::filesystem::path& path() const { return path_; }
  void release() { path_.clear(); }

 private:
  std::filesystem::path path_;
};

}  // namespace deskfarm::bdm::detail
