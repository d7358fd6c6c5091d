// pvs against real peers: curl and tftp-hpa fetch the bootstrap; nbdinfo, nbdcopy, qemu-img and qemu-io use exports.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>

#include <deskfarm/bootstrap/bootstrap.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>

#include "pvs_lab.hpp"

using namespace pvs_test;
using namespace std::chrono_literals;

namespace {
using dt::require_program;
std::string all(const dt::ChildResult& r) { return r.out + r.err; }
std::string nbd_url(Lab& lab, const std::string& mac) {
  return "nbd://127.0.0.1:" + std::to_string(lab.stream_port()) + "/" + mac;
}
}  // namespace

TEST_CASE("curl fetches the bootstrap over TFTP and it parses with this server's address") {
  if (!require_program("curl")) return;
  Lab lab;
  lab.start();
  const auto out = lab.dir / "boot.bin";
  const auto r = dt::run_child({"curl", "-sS", "-o", out.string(),
                                "tftp://127.0.0.1:" + std::to_string(lab.tftp_port()) + "/ARDBP32.BIN"}, 30s);
  REQUIRE(r.exit_code == 0);
  const auto b = bootstrap::parse(dt::read_text(out));
  REQUIRE(b.login_servers.size() == 1);
  CHECK(b.login_servers[0].port == lab.stream_port());
}

TEST_CASE("tftp-hpa fetches the bootstrap, and a missing file is a TFTP error") {
  if (!require_program("tftp")) return;
  Lab lab;
  lab.start();
  const auto out = lab.dir / "boot.bin";
  const auto r = dt::run_child({"tftp", "-m", "binary", "127.0.0.1", std::to_string(lab.tftp_port()), "-c", "get",
                                "ARDBP32.BIN", out.string()}, 30s);
  REQUIRE(r.exit_code == 0);
  CHECK(bootstrap::parse(dt::read_text(out)).login_servers.at(0).port == lab.stream_port());
  const auto missing = dt::run_child({"tftp", "127.0.0.1", std::to_string(lab.tftp_port()), "-c", "get", "nope.bin",
                                      (lab.dir / "nope").string()}, 30s);
  CHECK(all(missing).find("Error code 1") != std::string::npos);
}

TEST_CASE("nbdinfo lists device exports (list_exports = true) and shows a device's size") {
  if (!require_program("nbdinfo")) return;
  Lab lab;
  lab.start("list_exports = true\n");
  const auto list = dt::run_child({"nbdinfo", "--list", "nbd://127.0.0.1:" + std::to_string(lab.stream_port())}, 30s);
  REQUIRE(list.exit_code == 0);
  CHECK(all(list).find(mac_a) != std::string::npos);
  CHECK(all(list).find("desk-a -> vDisk gold (standard) version 0") != std::string::npos);
  const auto info = dt::run_child({"nbdinfo", "--json", nbd_url(lab, mac_a)}, 30s);
  REQUIRE(info.exit_code == 0);
  const auto json = Poco::JSON::Parser().parse(all(info)).extract<Poco::JSON::Object::Ptr>();
  CHECK(json->getArray("exports")->getObject(0)->getValue<std::uint64_t>("export-size") == base_size);
  const auto unknown = dt::run_child({"nbdinfo", nbd_url(lab, "52:54:00:ff:ff:ff")}, 30s);
  CHECK(unknown.exit_code != 0);
  INFO(all(unknown));
  // libnbd shows the NBD error, not the server's text (that is checked in-process).
  CHECK(all(unknown).find("for export: 52:54:00:ff:ff:ff") != std::string::npos);
}

TEST_CASE("nbdcopy and qemu-img convert of a device export equal the base") {
  Lab lab;
  lab.start();
  const auto sha = dt::sha256_file(lab.base());
  if (require_program("nbdcopy")) {
    const auto out = lab.dir / "copy.img";
    REQUIRE(dt::run_child({"nbdcopy", nbd_url(lab, mac_a), out.string()}, 60s).exit_code == 0);
    CHECK(dt::sha256_file(out) == sha);
  }
  if (require_program("qemu-img")) {
    const auto info = dt::run_child({"qemu-img", "info", "--output=json", nbd_url(lab, mac_b)}, 60s);
    REQUIRE(info.exit_code == 0);
    CHECK(all(info).find("\"virtual-size\": " + std::to_string(base_size)) != std::string::npos);
    const auto out = lab.dir / "convert.img";
    REQUIRE(dt::run_child({"qemu-img", "convert", "-f", "raw", "-O", "raw", nbd_url(lab, mac_b), out.string()}, 60s)
                .exit_code == 0);
    CHECK(dt::sha256_file(out) == sha);
  }
}

TEST_CASE("qemu-io writes land only in that device's write cache, survive a reconnect and go at reboot") {
  if (!require_program("qemu-io")) return;
  Lab lab;
  lab.start();
  const auto sha = dt::sha256_file(lab.base());
  // One boot of device A: write, then read back our own write.
  const auto w = dt::run_child({"qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M",
                                nbd_url(lab, mac_a)}, 60s);
  REQUIRE(w.exit_code == 0);
  CHECK(all(w).find("Pattern verification failed") == std::string::npos);
  CHECK(dt::sha256_file(lab.base()) == sha);
  REQUIRE(dt::eventually([&] { return lab.status_int("active_devices") == 0; }));
  // A reconnect is not a reboot: the device's session still has its writes; the other device never saw them.
  const auto again = dt::run_child({"qemu-io", "-f", "raw", "-c", "read -P 0xab 0 1M", nbd_url(lab, mac_a)}, 60s);
  CHECK(again.exit_code == 0);
  CHECK(all(again).find("Pattern verification failed") == std::string::npos);
  const auto other = dt::run_child({"qemu-io", "-f", "raw", "-c", "read -P 0xab 0 4k", nbd_url(lab, mac_b)}, 60s);
  CHECK(all(other).find("Pattern verification failed") != std::string::npos);
  // After a reboot (device.reset) the original bytes are back.
  REQUIRE(lab.reset(mac_a)->ended);
  const auto r = dt::run_child({"qemu-io", "-f", "raw", "-c", "read -P 0xab 0 4k", nbd_url(lab, mac_a)}, 60s);
  CHECK(all(r).find("Pattern verification failed") != std::string::npos);
  // A read past the end is refused (qemu checks the bounds itself; the server's EINVAL is tested in-process).
  const auto past = dt::run_child({"qemu-io", "-f", "raw", "-c", "read 8M 4k", nbd_url(lab, mac_a)}, 60s);
  INFO(all(past));
  CHECK((all(past).find("failed") != std::string::npos || all(past).find("Invalid") != std::string::npos));
}

TEST_CASE("qemu-io hits ENOSPC when the write cache is full and the base stays as it was") {
  if (!require_program("qemu-io")) return;
  Lab lab;
  lab.start("write_cache_ram_mb = 1\nwrite_cache_disk_mb = 1\n");
  const auto sha = dt::sha256_file(lab.base());
  const auto w = dt::run_child({"qemu-io", "-f", "raw", "-c", "write -P 0xcd 0 4M", nbd_url(lab, mac_a)}, 60s);
  CHECK(all(w).find("No space left on device") != std::string::npos);
  CHECK(dt::sha256_file(lab.base()) == sha);
}
