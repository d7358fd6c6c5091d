// The bdm plugin in a real deployment (the SDK's test kit): it writes the ISO into its state directory at start,
// shows it in its status, rebuilds it byte for byte on request, and refuses bad manifests naming the key.
#include <catch2/catch.hpp>

#include <deskfarm/bdm/iso.hpp>
#include <deskfarm/interfaces/bdm/bdm.hpp>
#include <deskfarm/testing/conformance_catch.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include <filesystem>

namespace dt = deskfarm::testing;
namespace api = deskfarm::interfaces::bdm;
using namespace deskfarm;

namespace {

constexpr const char* base = "[instances.boot]\nplugin = \"bdm\"\nsource_date_epoch = 1700000000\n";

std::unique_ptr<dt::Harness> deployment(const dt::TempDir& dir, const std::string& keys) {
  dt::HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR};
  o.state_dir = dir.path();
  return std::make_unique<dt::Harness>(std::string(base) + keys, o);
}

std::string manifest_error(const std::string& keys) {
  dt::TempDir dir("bdm-plugin");
  try {
    auto h = deployment(dir, keys);
    h->start();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

bool have_ipxe_iso() {
  if (std::filesystem::exists(bdm::default_ipxe_iso)) return true;
  dt::missing(std::string(bdm::default_ipxe_iso) + " is missing (Debian package ipxe; scripts/setup.sh)");
  return false;
}

}  // namespace

TEST_CASE("bdm writes the ISO at start, shows it in its status and rebuilds the same bytes on iso.build", "[bdm]") {
  if (!have_ipxe_iso()) return;
  dt::TempDir dir("bdm-plugin");
  auto h = deployment(dir, "login_servers = [\"10.0.0.5:6910\", \"10.0.0.6:6911\"]\nbootstrap_version = 9\n"
                           "addressing = \"static\"\nstatic_ip = \"10.1.0.20\"\nstatic_mask = \"255.255.255.0\"\n"
                           "static_gateway = \"10.1.0.1\"\n");
  h->start();
  const auto status = h->instance_status("boot");
  const std::string path = status.find("path")->as_string();
  INFO(path);
  REQUIRE(std::filesystem::exists(path));
  CHECK(std::filesystem::path(path).filename() == "bdm.iso");
  CHECK(status.find("sha256")->as_string() == dt::sha256_file(path));
  CHECK(status.find("size")->as_integer() == static_cast<std::int64_t>(std::filesystem::file_size(path)));
  CHECK(status.find("bootstrap_version")->as_integer() == 9);

  const auto record = bootstrap::parse(bdm::read_iso_file(path, bdm::bootstrap_path));
  CHECK(record.version == 9);
  REQUIRE(record.login_servers.size() == 2);
  CHECK(record.login_servers[1] == bootstrap::Endpoint{"10.0.0.6", 6911});
  CHECK(record.addressing == bootstrap::Addressing::static_ip);
  CHECK(record.static_address.mask == "255.255.255.0");

  const auto reply = h->request<sdk::Empty, api::IsoImage>(api::admin_subject("boot", "iso.build"), {});
  REQUIRE(reply.ok());
  CHECK(reply.value().path == path);
  CHECK(reply.value().sha256 == status.find("sha256")->as_string());
  CHECK(reply.value().login_servers == std::vector<std::string>{"10.0.0.5:6910", "10.0.0.6:6911"});
  CHECK(dt::sha256_file(path) == reply.value().sha256);
  h->stop();
}

TEST_CASE("bdm with format = \"partition\" writes the raw disk image the library writes", "[bdm]") {
  if (!have_ipxe_iso() || !std::filesystem::exists(bdm::default_syslinux_mbr)) {
    dt::missing("ipxe or syslinux-common is missing (scripts/setup.sh)");
    return;
  }
  if (!dt::require_program("mformat") || !dt::require_program("syslinux")) return;
  dt::TempDir dir("bdm-plugin");
  auto h = deployment(dir, "login_servers = [\"10.0.0.5:6910\"]\nformat = \"partition\"\nimage = \"bdm.img\"\n");
  h->start();
  const auto status = h->instance_status("boot");
  const std::string path = status.find("path")->as_string();
  INFO(path);
  REQUIRE(std::filesystem::exists(path));
  CHECK(std::filesystem::path(path).filename() == "bdm.img");
  CHECK(status.find("size")->as_integer() == static_cast<std::int64_t>(bdm::partition_image_size));
  bdm::IsoOptions o;
  o.bootstrap.login_servers = {{"10.0.0.5", 6910}};
  o.source_date_epoch = 1700000000;
  const dt::TempDir lib("bdm-plugin-lib");
  CHECK(status.find("sha256")->as_string() == bdm::build_partition_image(o, lib / "lib.img").sha256);
  // An ISO reader finds no ISO here: it is a disk image (MBR + FAT), not an ISO 9660 one.
  CHECK_THROWS_AS(bdm::read_iso_file(path, bdm::bootstrap_path), bdm::BdmError);
  h->stop();
}

TEST_CASE("bdm refuses bad manifests, naming the key", "[bdm]") {
  CHECK(manifest_error("login_servers = [\"10.0.0.5:6910\"]\nformat = \"floppy\"\n").find("format") != std::string::npos);
  CHECK(manifest_error("login_servers = []\n").find("login_servers") != std::string::npos);
  CHECK(manifest_error("login_servers = [\"a:1\", \"a:2\", \"a:3\", \"a:4\", \"a:5\"]\n").find("1..4") !=
        std::string::npos);
  CHECK(manifest_error("login_servers = [\"10.0.0.5\"]\n").find("login_servers") != std::string::npos);
  CHECK(manifest_error("login_servers = [\"10.0.0.5:6910\"]\naddressing = \"static\"\nstatic_ip = \"10.1.0.2\"\n")
            .find("static_mask") != std::string::npos);
  CHECK(manifest_error("login_servers = [\"10.0.0.5:6910\"]\ncolour = \"blue\"\n").find("colour") != std::string::npos);
  CHECK(manifest_error("login_servers = [\"10.0.0.5:6910\"]\nimage = \"../x.iso\"\n").find("image") != std::string::npos);
  CHECK(manifest_error("login_servers = [\"10.0.0.5:6910\"]\nrecovery = \"pray\"\n").find("recovery") != std::string::npos);
}

namespace {
dt::conformance::Subject conformance_subject() {
  dt::conformance::Subject s;
  s.plugin = "bdm";
  s.instance = "boot";
  s.manifest_toml = "[instances.boot]\nplugin = \"bdm\"\nlogin_servers = [\"127.0.0.1:6910\"]\n";
  s.options.plugin_path = {PLUGIN_DIR};
  return s;
}
}  // namespace

DESKFARM_CONFORMANCE_SUITE("bdm", conformance_subject)
