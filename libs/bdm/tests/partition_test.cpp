// The BDM partition image checked with the field's tools: mtools lists and reads its FAT partition, its MBR is
// syslinux's with one active partition, two builds are byte-identical, a missing tool is named, and QEMU boots it as
// a hard disk through SYSLINUX into iPXE and the script.
#include <deskfarm/bdm/iso.hpp>

#include <catch2/catch.hpp>

#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "bdm_test_util.hpp"

namespace fs = std::filesystem;
using namespace deskfarm;
using deskfarm::bdm::test::entries;
using deskfarm::bdm::test::sample;
using deskfarm::testing::TempDir;

namespace {

/// Debian's ipxe, syslinux, syslinux-common and mtools (scripts/setup.sh installs them).
bool have_tools() {
  for (const char* f : {bdm::default_ipxe_iso, bdm::default_syslinux_mbr})
    if (!fs::exists(f)) {
      testing::missing(std::string(f) + " is missing (Debian packages ipxe, syslinux-common; scripts/setup.sh)");
      return false;
    }
  return testing::require_program("mformat") && testing::require_program("mcopy") &&
         testing::require_program("syslinux");
}

/// The FAT partition as mtools addresses it inside the disk image.
std::string partition(const fs::path& image) { return image.string() + "@@" + std::to_string(bdm::partition_offset); }

unsigned byte(const std::string& s, std::size_t at) { return static_cast<unsigned char>(s.at(at)); }

}  // namespace

TEST_CASE("the partition image has syslinux's MBR and one active FAT12 partition from sector 2048", "[bdm][partition]") {
  if (!have_tools()) return;
  TempDir dir("bdm-part");
  const auto img = dir / "bdm.img";
  const auto r = bdm::build_partition_image(sample(), img);
  CHECK(r.size == bdm::partition_image_size);
  CHECK(fs::file_size(img) == bdm::partition_image_size);
  CHECK(r.sha256 == testing::sha256_file(img));
  const std::string disk = testing::read_text(img);
  const std::string code = testing::read_text(bdm::default_syslinux_mbr);
  REQUIRE(code.size() == 440);
  CHECK(disk.compare(0, 440, code) == 0);
  CHECK(byte(disk, 446) == 0x80);  // active
  CHECK(byte(disk, 450) == 0x01);  // FAT12
  CHECK((byte(disk, 454) | byte(disk, 455) << 8 | byte(disk, 456) << 16 | byte(disk, 457) << 24) == 2048);
  CHECK((byte(disk, 458) | byte(disk, 459) << 8 | byte(disk, 460) << 16) == 14336);
  CHECK(byte(disk, 510) == 0x55);
  CHECK(byte(disk, 511) == 0xaa);
  // The partition's own boot sector is SYSLINUX's (syslinux --install), with the same FAT the MBR entry names.
  CHECK(disk.compare(bdm::partition_offset + 3, 8, "SYSLINUX") == 0);
  const auto info = testing::run_child({"minfo", "-i", partition(img), "::"});
  INFO(info.out << info.err);
  REQUIRE(info.exit_code == 0);
  CHECK(info.out.find("hidden sectors: 2048") != std::string::npos);
  CHECK(info.out.find("serial number: 6553F100") != std::string::npos);  // 1700000000 in hex
  // The whole disk is what fdisk-like tools see; sfdisk may be absent, so the entry is checked byte by byte above.
}

TEST_CASE("mdir lists SYSLINUX, iPXE, the script and the record, and mcopy reads them back", "[bdm][partition]") {
  if (!have_tools()) return;
  TempDir dir("bdm-part");
  const auto img = dir / "bdm.img";
  auto o = sample();
  o.bootstrap.recovery = bootstrap::Recovery::reboot_to_hd;
  bdm::build_partition_image(o, img);
  const auto list = testing::run_child({"mdir", "-a", "-i", partition(img), "::"});
  INFO(list.out << list.err);
  REQUIRE(list.exit_code == 0);
  for (const char* f : {"ldlinux  sys", "ldlinux  c32", "syslinux cfg", "ipxe     krn", "bdm.ipxe", "bdm      bst"})
    CHECK(list.out.find(f) != std::string::npos);
  // File times are the epoch (2023-11-14 22:13 UTC), not the build's.
  CHECK(list.out.find("2023-11-14  22:13") != std::string::npos);
  auto read = [&](const std::string& name) {
    const auto x = testing::run_child({"mcopy", "-n", "-i", partition(img), "::" + name, (dir / name).string()});
    INFO(x.err);
    REQUIRE(x.exit_code == 0);
    return testing::read_text(dir / name);
  };
  CHECK(read("bdm.bst") == bootstrap::encode(o.bootstrap));
  const auto script = read("bdm.ipxe");
  CHECK(script == bdm::ipxe_script(o.bootstrap, 69, bdm::partition_desktop_drive));
  // The image itself is the first hard disk, so the desktop's disk is the second.
  CHECK(script.find("set deskfarm_drive 0x81\n") != std::string::npos);
  CHECK(script.find("sanboot --no-describe --drive 0x81 || reboot\n") != std::string::npos);
  CHECK(read("syslinux.cfg").find("INITRD bdm.ipxe") != std::string::npos);
  if (fs::exists("/usr/lib/ipxe/ipxe.lkrn")) {
    read("ipxe.krn");
    CHECK(testing::sha256_file(dir / "ipxe.krn") == testing::sha256_file("/usr/lib/ipxe/ipxe.lkrn"));
  }
}

TEST_CASE("the partition image: the same inputs give the same bytes, and SOURCE_DATE_EPOCH changes them",
          "[bdm][partition]") {
  if (!have_tools()) return;
  TempDir dir("bdm-part");
  bdm::test::check_reproducible([](const bdm::IsoOptions& o, const std::filesystem::path& p) { return bdm::build_partition_image(o, p); },
                                 dir.path(), ".img");
}

TEST_CASE("the partition image: a missing tool or MBR is named, with its package, and no image is left",
          "[bdm][partition]") {
  if (!have_tools()) return;
  TempDir dir("bdm-part");
  const auto img = dir / "bdm.img";
  auto expect_error = [&](const bdm::IsoOptions& o, const std::string& field, const std::string& needle) {
    try {
      bdm::build_partition_image(o, img);
      FAIL("no error for " << needle);
    } catch (const bdm::BdmError& e) {
      INFO(e.what());
      CHECK(e.field() == field);
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
    CHECK(entries(dir.path()) == 0);
  };
  SECTION("no mtools on PATH") {
    const std::string path = std::getenv("PATH");
    ::setenv("PATH", dir.path().c_str(), 1);  // an empty directory: no tool at all
    expect_error(sample(), "mformat", "mformat is not installed (Debian package mtools");
    ::setenv("PATH", path.c_str(), 1);
  }
  SECTION("a missing mbr.bin") {
    auto o = sample();
    o.syslinux_mbr = dir / "no-mbr.bin";
    expect_error(o, "syslinux_mbr", "syslinux-common");
  }
  SECTION("a file that is not a 440-byte MBR") {
    auto o = sample();
    o.syslinux_mbr = bdm::default_ipxe_iso;
    expect_error(o, "syslinux_mbr", "not syslinux's 440-byte mbr.bin");
  }
  SECTION("a bad login server") {
    auto o = sample();
    o.bootstrap.login_servers.assign(5, {"10.0.0.1", 6910});
    expect_error(o, "bootstrap", "login_server");
  }
  SECTION("a tool that fails: its stderr is in the message") {
    // A fake mformat (first on PATH) that fails the way a real tool does.
    testing::write_text(dir / "mformat", "#!/bin/sh\necho 'init: bad geometry' >&2\nexit 1\n");
    fs::permissions(dir / "mformat", fs::perms::owner_all);
    const std::string path = std::getenv("PATH");
    ::setenv("PATH", (dir.path().string() + ":" + path).c_str(), 1);
    try {
      bdm::build_partition_image(sample(), img);
      FAIL("no error from the failing mformat");
    } catch (const bdm::BdmError& e) {
      INFO(e.what());
      CHECK(e.field() == "mformat");
      CHECK(std::string(e.what()).find("failed (exit 1): init: bad geometry") != std::string::npos);
    }
    ::setenv("PATH", path.c_str(), 1);
    fs::remove(dir / "mformat");
    CHECK(entries(dir.path()) == 0);
  }
}

TEST_CASE("QEMU boots the partition image as a hard disk: syslinux's MBR, SYSLINUX, iPXE, the script", "[bdm][qemu]") {
  if (!have_tools() || !testing::require_program("qemu-system-x86_64")) return;
  TempDir dir("bdm-part");
  const auto img = dir / "bdm.img";
  const auto o = bdm::test::boot_sample(9);
  bdm::build_partition_image(o, img);
  const std::string out = bdm::test::boot_as_disk(img, dir / "serial.log", "retrying in 3600 s");
  INFO(out);
  const auto syslinux = out.find("SYSLINUX 6.04");
  const auto stamp = out.find("deskfarm BDM bootstrap version 9");
  const auto tried = out.find("trying login server 1 10.0.2.2:6910");
  const auto retry = out.find("no login server answered, retrying in 3600 s");
  REQUIRE(syslinux != std::string::npos);
  REQUIRE(stamp != std::string::npos);
  REQUIRE(tried != std::string::npos);
  REQUIRE(retry != std::string::npos);
  CHECK(syslinux < stamp);
  CHECK(stamp < tried);
  CHECK(tried < retry);
}
