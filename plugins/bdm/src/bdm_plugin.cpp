// bdm: the Boot Device Manager role. Builds the BDM ISO (libs/bdm) from its manifest keys into its state directory
// at start, shows where it is in its status, and builds it again on request.
#include <cstdlib>
#include <ctime>

#include <deskfarm/bdm/iso.hpp>
#include <deskfarm/bootstrap/keys.hpp>
#include <deskfarm/interfaces/bdm/bdm.hpp>
#include <deskfarm/sdk/plugin.hpp>

namespace {

using namespace deskfarm;
using namespace deskfarm::sdk;
namespace api = deskfarm::interfaces::bdm;

constexpr const char* provides[] = {"bdm", nullptr};

/// The bootstrap keys (shared with pvs, same names) and the image's own.
struct BdmConfig : bootstrap::Keys {
  std::string image;
  std::string format;
  std::string ipxe_iso;
  std::string volume_id;
  bool hybrid = true;
  std::int64_t source_date_epoch = -1;
  std::int64_t tftp_port = 69;
};

// The bootstrap keys have the names (and ranges) pvs uses for the same record.
constexpr auto bdm_schema = schema<BdmConfig>(
    option("login_servers", &BdmConfig::login_servers, nullptr,
           "1..4 \"host:port\" login servers the ISO's iPXE script tries in this (failover) order"),
    option("bootstrap_version", &BdmConfig::bootstrap_version, "1", "configuration serial the ISO carries and prints at boot")
        .range(1, 4294967295.0),
    option("addressing", &BdmConfig::addressing, "\"dhcp\"", "device addressing; static needs static_ip, static_mask, static_gateway")
        .one_of("dhcp|static"),
    option("static_ip", &BdmConfig::static_ip, "\"\"", "device IPv4 with addressing = \"static\""),
    option("static_mask", &BdmConfig::static_mask, "\"\"", "subnet mask with addressing = \"static\""),
    option("static_gateway", &BdmConfig::static_gateway, "\"\"", "default gateway with addressing = \"static\""),
    option("static_dns", &BdmConfig::static_dns, "\"\"", "DNS server with addressing = \"static\" (optional)"),
    option("login_polling_timeout_ms", &BdmConfig::login_polling_timeout_ms, "5000", "per login server (iPXE chain --timeout)")
        .range(1000, 300000),
    option("login_general_timeout_ms", &BdmConfig::login_general_timeout_ms, "30000",
           "rounds over the list fit in this (at least login_polling_timeout_ms)")
        .range(1000, 3600000),
    option("recovery", &BdmConfig::recovery, "\"restore_network\"",
           "no server answered: restore_network waits recovery_time_s and starts over; reboot_to_hd boots the local disk")
        .one_of("restore_network|reboot_to_hd"),
    option("recovery_time_s", &BdmConfig::recovery_time_s, "50", "restore_network: wait before starting over").range(0, 86400),
    option("verbose", &BdmConfig::verbose, "false", "the script prints each login server it tries"),
    option("interrupt_safe", &BdmConfig::interrupt_safe, "false", "firmware switch carried in the boot record"),
    option("advanced_memory", &BdmConfig::advanced_memory, "true", "firmware switch carried in the boot record"),
    option("tftp_port", &BdmConfig::tftp_port, "69",
           "UDP port of the login servers' TFTP service (pvs tftp), where iPXE fetches the device's boot script")
        .range(1, 65535),
    option("format", &BdmConfig::format, "\"iso\"",
           "iso (El Torito, isohybrid) or partition: a raw disk image, syslinux's MBR + one bootable FAT partition")
        .one_of("iso|partition"),
    option("image", &BdmConfig::image, "\"bdm.iso\"", "file name of the image in the instance's state directory"),
    option("ipxe_iso", &BdmConfig::ipxe_iso, "\"/usr/lib/ipxe/ipxe.iso\"", "Debian's iPXE ISO, source of the boot loader files"),
    option("volume_id", &BdmConfig::volume_id, "\"DESKFARM_BDM\"", "ISO volume id: 1..32 of A-Z 0-9 _"),
    option("hybrid", &BdmConfig::hybrid, "true", "isohybrid MBR: the same image boots from a USB stick"),
    option("source_date_epoch", &BdmConfig::source_date_epoch, "-1",
           "every timestamp in the image (reproducible builds); -1 = SOURCE_DATE_EPOCH, else the start time")
        .range(-1, 253402300799.0));

/// The library's options from the manifest; every error names the manifest key.
bdm::IsoOptions make_options(const BdmConfig& c) {
  bdm::IsoOptions o;
  if (c.login_servers.empty())
    throw ConfigError("login_servers", "login_servers is empty; the ISO carries 1..4 login servers (failover order)");
  try {
    o.bootstrap = bootstrap::from_keys(c);
  } catch (const bootstrap::KeyError& e) {
    throw ConfigError(e.key(), e.what());
  }
  if (c.image.empty() || c.image.find('/') != std::string::npos)
    throw ConfigError("image", "image '" + c.image + "' must be a plain file name (it goes in the state directory)");
  o.ipxe_iso = c.ipxe_iso;
  o.volume_id = c.volume_id;
  o.hybrid = c.hybrid;
  o.tftp_port = static_cast<std::uint16_t>(c.tftp_port);
  if (c.source_date_epoch >= 0) o.source_date_epoch = c.source_date_epoch;
  return o;
}

class Bdm final : public Plugin {
 public:
  explicit Bdm(Context& ctx) : ctx_(ctx), config_(bdm_schema.bind(ctx.config())), options_(make_options(config_)) {
    // One epoch per instance: a rebuild on request gives the bytes the start gave.
    if (!options_.source_date_epoch) {
      const char* env = std::getenv("SOURCE_DATE_EPOCH");
      if (env == nullptr || *env == '\0') options_.source_date_epoch = static_cast<std::int64_t>(std::time(nullptr));
    }
  }

  static void validate(const Config& config) { (void)make_options(bdm_schema.bind(config)); }

  void start() override {
    build();
    subs_.push_back(serve<Empty, api::IsoImage>(ctx_.bus(), api::admin_subject(ctx_.name(), "iso.build"),
                                                [this](const Empty&) { return build(); }));
  }

  void stop() override { subs_.clear(); }

  void status(Value& out) const override {
    out.set("path", image_.path);
    out.set("size", image_.size);
    out.set("sha256", image_.sha256);
    out.set("bootstrap_version", image_.bootstrap_version);
    Value servers = Value::array();
    for (const auto& s : image_.login_servers) servers.push(Value(s));
    out.set("login_servers", std::move(servers));
  }

 private:
  api::IsoImage build() {
    const auto path = ctx_.state_dir() / config_.image;
    const auto r = bdm::build_image(*bdm::parse_format(config_.format), options_, path);
    api::IsoImage image;
    image.path = path.string();
    image.size = static_cast<std::int64_t>(r.size);
    image.sha256 = r.sha256;
    image.bootstrap_version = options_.bootstrap.version;
    for (const auto& e : options_.bootstrap.login_servers) image.login_servers.push_back(e.host + ":" + std::to_string(e.port));
    image_ = image;
    ctx_.log().info("wrote BDM " + config_.format + " image " + image.path + " (" + std::to_string(r.size) + " bytes, sha256 " + r.sha256 +
                    ", bootstrap version " + std::to_string(image.bootstrap_version) + ")");
    return image;
  }

  Context& ctx_;
  BdmConfig config_;
  bdm::IsoOptions options_;
  api::IsoImage image_;
  std::vector<Subscription> subs_;
};

}  // namespace

DESKFARM_PLUGIN(Bdm, "bdm", "1.0.0",
                "Boot Device Manager: a bootable ISO (El Torito, isohybrid, iPXE) that sends desktops to their login servers",
                provides, nullptr, bdm_schema)
