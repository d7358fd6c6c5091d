// The BDM ISO checked with real tools: xorriso reads its boot catalog and files, libisofs reads the bootstrap record
// back, two builds are byte-identical, bad input leaves nothing behind, and QEMU boots it into iPXE.
#include <deskfarm/bdm/iso.hpp>

#include <catch2/catch.hpp>

#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include <filesystem>

#include "bdm_test_util.hpp"

namespace fs = std::filesystem;
using namespace deskfarm;
using deskfarm::bdm::test::entries;
using deskfarm::bdm::test::sample;
using deskfarm::testing::TempDir;

namespace {

bool have_ipxe_iso() {
  if (fs::exists(bdm::default_ipxe_iso)) return true;
  testing::missing(std::string(bdm::default_ipxe_iso) + " is missing (Debian package ipxe; scripts/setup.sh)");
  return false;
}

}  // namespace

TEST_CASE("xorriso reports a BIOS no-emulation El Torito boot record for isolinux.bin", "[bdm]") {
  if (!have_ipxe_iso() || !testing::require_program("xorriso")) return;
  TempDir dir("bdm-test");
  const auto iso = dir / "bdm.iso";
  const auto result = bdm::build_iso(sample(), iso);
  CHECK(result.size == fs::file_size(iso));
  CHECK(result.sha256 == testing::sha256_file(iso));
  const auto r = testing::run_child({"xorriso", "-indev", iso.string(), "-report_el_torito", "plain"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  // xorriso prints the media summary on stderr and the El Torito report on stdout.
  CHECK(r.err.find("Boot record  : El Torito , MBR isohybrid") != std::string::npos);
  CHECK(r.out.find("El Torito cat path : /boot.cat") != std::string::npos);
  CHECK(r.out.find("El Torito boot img :   1  BIOS  y   none  0x0000  0x00      4") != std::string::npos);
  CHECK(r.out.find("El Torito img path :   1  /isolinux.bin") != std::string::npos);
  CHECK(r.out.find("boot-info-table isohybrid-suitable") != std::string::npos);
  CHECK(r.err.find("Volume id    : 'DESKFARM_BDM'") != std::string::npos);
}

TEST_CASE("xorriso lists the boot loader, the iPXE script and the bootstrap record", "[bdm]") {
  if (!have_ipxe_iso() || !testing::require_program("xorriso")) return;
  TempDir dir("bdm-test");
  const auto iso = dir / "bdm.iso";
  bdm::build_iso(sample(), iso);
  const auto r = testing::run_child({"xorriso", "-indev", iso.string(), "-find", "/", "-type", "f"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  for (const char* f : {"'/isolinux.bin'", "'/ldlinux.c32'", "'/ipxe.krn'", "'/isolinux.cfg'", "'/bdm.ipxe'",
                        "'/bdm.bst'"})
    CHECK(r.out.find(f) != std::string::npos);
  // The loader is Debian's, byte for byte (xorriso extracts it; compared with the package's ipxe.lkrn).
  const auto out = dir / "ipxe.krn";
  const auto x = testing::run_child({"xorriso", "-osirrox", "on", "-indev", iso.string(), "-extract", "/ipxe.krn",
                                     out.string()});
  REQUIRE(x.exit_code == 0);
  if (fs::exists("/usr/lib/ipxe/ipxe.lkrn"))
    CHECK(testing::sha256_file(out) == testing::sha256_file("/usr/lib/ipxe/ipxe.lkrn"));
}

TEST_CASE("the bootstrap record read back from the ISO parses and equals the input", "[bdm]") {
  if (!have_ipxe_iso()) return;
  TempDir dir("bdm-test");
  const auto iso = dir / "bdm.iso";
  auto o = sample();
  o.bootstrap.addressing = bootstrap::Addressing::static_ip;
  o.bootstrap.static_address = {"192.168.7.20", "255.255.255.0", "192.168.7.1", "192.168.7.2"};
  o.bootstrap.recovery = bootstrap::Recovery::reboot_to_hd;
  o.bootstrap.recovery_time_s = 30;
  o.bootstrap.interrupt_safe = true;
  o.bootstrap.advanced_memory = false;
  bdm::build_iso(o, iso);
  const auto record = bdm::read_iso_file(iso, bdm::bootstrap_path);
  CHECK(record == bootstrap::encode(o.bootstrap));
  CHECK(bootstrap::parse(record) == o.bootstrap);
  const auto script = bdm::read_iso_file(iso, bdm::script_path);
  CHECK(script == bdm::ipxe_script(o.bootstrap));
  CHECK(script.find("set net0/ip 192.168.7.20\n") != std::string::npos);
  CHECK(script.find("set net0/netmask 255.255.255.0\n") != std::string::npos);
  // Behind a CD-ROM the desktop's disk is the first hard disk: the login server's script and recovery boot it.
  CHECK(script.find("set deskfarm_drive 0x80\n") != std::string::npos);
  CHECK(script.find("sanboot --no-describe --drive 0x80") != std::string::npos);
}

TEST_CASE("the iPXE script tries the login servers in failover order", "[bdm]") {
  const auto script = bdm::ipxe_script(sample().bootstrap);
  const auto a = script.find("set login_server 10.0.2.2:6910");
  const auto b = script.find("set login_server 10.0.2.3:6911");
  const auto c = script.find("set login_server pvs.example:6910");
  REQUIRE(a != std::string::npos);
  REQUIRE(b != std::string::npos);
  REQUIRE(c != std::string::npos);
  CHECK(a < b);
  CHECK(b < c);
  CHECK(script.rfind("#!ipxe\n", 0) == 0);
  CHECK(script.find("dhcp || goto recovery") != std::string::npos);
  // 30000 ms general timeout / (3 servers x 5000 ms) = 2 rounds over the list.
  CHECK(script.find("iseq ${round} 2 || goto round") != std::string::npos);
  CHECK(script.find("sleep 50\ngoto start") != std::string::npos);
  // Each server is asked on the TFTP port for the device's boot script, named by its MAC and the record's version.
  CHECK(script.find("chain --timeout 5000 tftp://10.0.2.3:69/deskfarm/v42/${net0/mac:hexhyp}/boot.ipxe ||\n") !=
        std::string::npos);
  CHECK(bdm::ipxe_script(sample().bootstrap, 6969).find("tftp://10.0.2.3:6969/deskfarm/v42/") != std::string::npos);
}

TEST_CASE("the same inputs give the same bytes, and SOURCE_DATE_EPOCH changes them", "[bdm]") {
  if (!have_ipxe_iso()) return;
  TempDir dir("bdm-test");
  bdm::test::check_reproducible([](const bdm::IsoOptions& o, const std::filesystem::path& p) { return bdm::build_iso(o, p); },
                                 dir.path(), ".iso");
}

TEST_CASE("bad input names the field and leaves no image behind", "[bdm]") {
  if (!have_ipxe_iso()) return;
  TempDir dir("bdm-test");
  const auto iso = dir / "bdm.iso";
  auto expect_error = [&](const bdm::IsoOptions& o, const fs::path& out, const std::string& needle) {
    try {
      bdm::build_iso(o, out);
      FAIL("no error for " << needle);
    } catch (const bdm::BdmError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
    CHECK_FALSE(fs::exists(out));
    CHECK(entries(dir.path()) == 0);
  };
  SECTION("TFTP port 0") {
    auto o = sample();
    o.tftp_port = 0;
    expect_error(o, iso, "tftp_port: 0 is not a port");
  }
  SECTION("more than 4 login servers") {
    auto o = sample();
    o.bootstrap.login_servers.assign(5, {"10.0.0.1", 6910});
    expect_error(o, iso, "login_server");
  }
  SECTION("no login server") {
    auto o = sample();
    o.bootstrap.login_servers.clear();
    expect_error(o, iso, "login_server");
  }
  SECTION("a bad address") {
    auto o = sample();
    o.bootstrap.login_servers = {{"10.0.0.1;reboot", 6910}};
    expect_error(o, iso, "10.0.0.1;reboot");
  }
  SECTION("static addressing without a mask") {
    auto o = sample();
    o.bootstrap.addressing = bootstrap::Addressing::static_ip;
    o.bootstrap.static_address = {"192.168.7.20", "", "192.168.7.1", ""};
    expect_error(o, iso, "mask");
  }
  SECTION("a bad volume id") {
    auto o = sample();
    o.volume_id = "lower case";
    expect_error(o, iso, "volume_id");
  }
  SECTION("a bad SOURCE_DATE_EPOCH") {
    auto o = sample();
    o.source_date_epoch.reset();
    ::setenv("SOURCE_DATE_EPOCH", "yesterday", 1);
    try {
      bdm::build_iso(o, iso);
      FAIL("no error for SOURCE_DATE_EPOCH");
    } catch (const bdm::BdmError& e) {
      CHECK(e.field() == "SOURCE_DATE_EPOCH");
    }
    ::unsetenv("SOURCE_DATE_EPOCH");
    CHECK(entries(dir.path()) == 0);
  }
  SECTION("a missing boot loader ISO") {
    auto o = sample();
    o.ipxe_iso = dir / "no-such.iso";
    expect_error(o, iso, "ipxe_iso");
  }
  SECTION("an output directory that does not exist") {
    expect_error(sample(), dir / "missing" / "bdm.iso", "output");
  }
  SECTION("an unwritable output directory") {
    if (::geteuid() == 0) {
      // root writes anywhere by permission; a path under a regular file fails for everyone.
      testing::write_text(dir / "file", "x");
      try {
        bdm::build_iso(sample(), dir / "file" / "bdm.iso");
        FAIL("no error for a path under a file");
      } catch (const bdm::BdmError& e) {
        CHECK(e.field() == "output");
      }
      fs::remove(dir / "file");
    } else {
      fs::create_directory(dir / "ro");
      fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec);
      try {
        bdm::build_iso(sample(), dir / "ro" / "bdm.iso");
        FAIL("no error for a read-only directory");
      } catch (const bdm::BdmError& e) {
        CHECK(e.field() == "output");
      }
      CHECK(entries(dir / "ro") == 0);
      fs::permissions(dir / "ro", fs::perms::owner_all);
      fs::remove(dir / "ro");
    }
    CHECK(entries(dir.path()) == 0);
  }
}

TEST_CASE("QEMU boots the ISO into Debian's iPXE, which runs the script and tries the servers in order", "[bdm][qemu]") {
  if (!have_ipxe_iso() || !testing::require_program("qemu-system-x86_64")) return;
  TempDir dir("bdm-test");
  const auto iso = dir / "bdm.iso";
  auto o = sample();
  o.bootstrap.version = 7;
  // 10.0.2.2 is the host under QEMU user networking (no TFTP there: refused at once); 10.0.2.3 its DNS (no TFTP).
  o.bootstrap.login_servers = {{"10.0.2.2", 6910}, {"10.0.2.3", 6910}};
  o.bootstrap.login_polling_timeout_ms = 1000;
  o.bootstrap.login_general_timeout_ms = 1000;
  // With no local disk, sanboot fails and the script reboots; -no-reboot turns that into QEMU exiting.
  o.bootstrap.recovery = bootstrap::Recovery::reboot_to_hd;
  bdm::build_iso(o, iso);
  // Bounded: run_child kills QEMU by its PID at the deadline (a normal run takes ~6 s under TCG).
  const auto r = testing::run_child({"qemu-system-x86_64", "-accel", "tcg", "-nographic", "-no-reboot", "-m", "128",
                                     "-boot", "d", "-cdrom", iso.string(), "-serial", "stdio", "-monitor", "none",
                                     "-nic", "user,model=e1000"},
                                    std::chrono::seconds(90));
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);  // exited by itself (reboot with -no-reboot), not killed at the deadline
  const auto banner = r.out.find("iPXE 1.0.0");
  const auto stamp = r.out.find("deskfarm BDM bootstrap version 7");
  const auto first = r.out.find("trying login server 1 10.0.2.2:6910");
  const auto second = r.out.find("trying login server 2 10.0.2.3:6910");
  const auto recovery = r.out.find("no login server answered, booting the local disk");
  REQUIRE(banner != std::string::npos);
  REQUIRE(stamp != std::string::npos);
  REQUIRE(first != std::string::npos);
  REQUIRE(second != std::string::npos);
  REQUIRE(recovery != std::string::npos);
  CHECK(banner < stamp);
  CHECK(stamp < first);
  CHECK(first < second);
  CHECK(second < recovery);
}

TEST_CASE("deskfarm bdm build writes the same image as the library and refuses bad options by name", "[bdm][cli]") {
  if (!have_ipxe_iso()) return;
  TempDir dir("bdm-test");
  const auto iso = dir / "cli.iso";
  auto o = sample();
  const auto r = testing::run_child({DESKFARM_BIN, "bdm", "build", "--server", "10.0.2.2:6910", "--server",
                                     "10.0.2.3:6911", "--server", "pvs.example:6910", "--bootstrap-version", "42",
                                     "--verbose", "true", "--source-date-epoch", "1700000000", "-o", iso.string()});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(testing::sha256_file(iso) == bdm::build_iso(o, dir / "lib.iso").sha256);
  CHECK(r.out.find(bdm::build_iso(o, dir / "lib.iso").sha256) != std::string::npos);

  auto refuse = [&](std::vector<std::string> args, const std::string& needle, int code) {
    std::vector<std::string> argv = {DESKFARM_BIN, "bdm", "build"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"-o", (dir / "bad.iso").string()});
    const auto bad = testing::run_child(argv);
    INFO(bad.err);
    CHECK(bad.exit_code == code);
    CHECK(bad.err.find(needle) != std::string::npos);
    CHECK_FALSE(fs::exists(dir / "bad.iso"));
  };
  refuse({"--server", "a:1", "--server", "a:2", "--server", "a:3", "--server", "a:4", "--server", "a:5"},
         "at most 4", 2);
  refuse({"--server", "10.0.0.5"}, "--server '10.0.0.5' is not host:port", 2);
  refuse({"--server", "10.0.0.5:6910", "--ip", "10.0.0.9"}, "mask", 2);
  refuse({"--server", "10.0.0.5:6910", "--colour", "blue"}, "--colour", 2);
  refuse({"--server", "10.0.0.5:6910", "--recovery", "pray"}, "--recovery 'pray'", 2);
  refuse({"--server", "10.0.0.5:6910", "--mask", "255.0.0.0"}, "need --ip", 2);
  refuse({"--server", "10.0.0.5:6910", "--format", "floppy"}, "--format 'floppy' is not iso or partition", 2);
  refuse({"--server", "10.0.0.5:6910", "--format", "partition", "--syslinux-mbr", (dir / "none.bin").string()},
         "syslinux_mbr", 1);
}

TEST_CASE("deskfarm bdm build --format partition writes the library's partition image", "[bdm][cli][partition]") {
  if (!have_ipxe_iso() || !fs::exists(bdm::default_syslinux_mbr) || !testing::require_program("mformat") ||
      !testing::require_program("syslinux"))
    return;
  TempDir dir("bdm-test");
  const auto img = dir / "cli.img";
  const auto r = testing::run_child({DESKFARM_BIN, "bdm", "build", "--format", "partition", "--server", "10.0.2.2:6910",
                                     "--server", "10.0.2.3:6911", "--server", "pvs.example:6910", "--bootstrap-version",
                                     "42", "--verbose", "true", "--source-date-epoch", "1700000000", "-o", img.string()});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(testing::sha256_file(img) == bdm::build_partition_image(sample(), dir / "lib.img").sha256);
}

TEST_CASE("the isohybrid image boots from a disk too (a USB stick): the MBR starts ISOLINUX, then iPXE and the script",
          "[bdm][qemu]") {
  if (!have_ipxe_iso() || !testing::require_program("qemu-system-x86_64")) return;
  TempDir dir("bdm-test");
  const auto iso = dir / "bdm.iso";
  const auto o = bdm::test::boot_sample(8);
  bdm::build_iso(o, iso);
  const std::string out = bdm::test::boot_as_disk(iso, dir / "serial.log", "retrying in 3600 s");
  INFO(out);
  const auto isolinux = out.find("ISOLINUX 6.04 20200816 EHDD");  // EHDD: the hard-disk (isohybrid) entry
  const auto stamp = out.find("deskfarm BDM bootstrap version 8");
  const auto retry = out.find("no login server answered, retrying in 3600 s");
  REQUIRE(isolinux != std::string::npos);
  REQUIRE(stamp != std::string::npos);
  REQUIRE(retry != std::string::npos);
  CHECK(isolinux < stamp);
  CHECK(stamp < retry);
}
