// pvs: Provisioning Services — bootstrap over TFTP, vDisks streamed over NBD by device MAC, standard-image mode
// with a per-device write cache, private images, versions (maintenance -> test -> production, merge), HA pairs.
#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>

#include <deskfarm/bootstrap/bootstrap.hpp>
#include <deskfarm/nbd/server.hpp>
#include <deskfarm/sdk/plugin.hpp>
#include <deskfarm/tftp/server.hpp>

#include "model.hpp"
#include "streamer.hpp"

namespace {

using namespace deskfarm;
using namespace deskfarm::sdk;
using deskfarm::pvs::ActionError;

constexpr const char* provides[] = {"pvs", nullptr};
constexpr dk_config_key config[] = {
    {"tftp", DK_STRING, "\"127.0.0.1:69\"", "TFTP listen address \"IPv4:port\" serving the bootstrap; \"off\" = none"},
    {"tftp_root", DK_STRING, "\"\"", "directory of extra TFTP files; \"\" = <state_dir>/tftp"},
    {"bootstrap_file", DK_STRING, "\"ARDBP32.BIN\"", "name the bootstrap is served under (DHCP option 67)"},
    {"bootstrap_version", DK_INTEGER, "1", "configuration serial written into the bootstrap"},
    {"login_servers", DK_STRING_ARRAY, "[]", "up to 4 \"host:port\" streaming servers in failover order; [] = this one"},
    {"login_polling_timeout_ms", DK_INTEGER, "5000", "bootstrap: wait per login server before the next (1000..300000)"},
    {"login_general_timeout_ms", DK_INTEGER, "30000", "bootstrap: give up on all servers after (1000..3600000)"},
    {"recovery", DK_STRING, "\"restore_network\"", "bootstrap: \"restore_network\" or \"reboot_to_hd\""},
    {"recovery_time_s", DK_INTEGER, "50", "bootstrap: wait before retrying the network (0..86400)"},
    {"addressing", DK_STRING, "\"dhcp\"", "bootstrap: \"dhcp\" or \"static\" (then static_ip/mask/gateway/dns)"},
    {"static_ip", DK_STRING, "\"\"", "bootstrap: device IPv4 with addressing = \"static\""},
    {"static_mask", DK_STRING, "\"\"", "bootstrap: subnet mask with addressing = \"static\""},
    {"static_gateway", DK_STRING, "\"\"", "bootstrap: gateway with addressing = \"static\""},
    {"static_dns", DK_STRING, "\"\"", "bootstrap: DNS server with addressing = \"static\" (optional)"},
    {"verbose", DK_BOOLEAN, "false", "bootstrap: verbose firmware output"},
    {"interrupt_safe", DK_BOOLEAN, "false", "bootstrap: interrupt-safe mode"},
    {"advanced_memory", DK_BOOLEAN, "true", "bootstrap: advanced memory support"},
    {"stream", DK_STRING, "\"127.0.0.1:10809\"", "NBD listen address \"IPv4:port\"; export name = device MAC"},
    {"max_connections", DK_INTEGER, "1024", "NBD connections at once (1..65536)"},
    {"store", DK_STRING, "\"\"", "vDisk store directory shared by HA peers; \"\" = <deployment state dir>/vdisks"},
    {"write_cache_dir", DK_STRING, "\"\"", "overflow files of write caches; \"\" = <state_dir>/write-cache"},
    {"write_cache_ram_mb", DK_INTEGER, "64", "per-device write cache in RAM before overflowing to disk"},
    {"write_cache_disk_mb", DK_INTEGER, "0", "per-device overflow file limit; 0 = up to the vDisk size"},
    {"write_cache_block_size", DK_INTEGER, "4096", "copy-on-write block, power of two 4096..1048576"},
    {"refresh_s", DK_INTEGER, "10", "re-read devices and versions from the data store this often (HA peers)"},
    {"vdisks", DK_ARRAY, "[]", "vDisks to seed: {name, file = \"<name>.img\", size_mb, mode = \"standard\"|\"private\"}"},
    {"devices", DK_ARRAY, "[]", "devices to seed: {mac, vdisk, name, type = \"production\"|\"test\"}"},
};

std::string json_text(const Poco::JSON::Object& o) {
  std::ostringstream s;
  Poco::JSON::Stringifier::stringify(o, s);
  return s.str();
}

class Pvs final : public Plugin {
 public:
  explicit Pvs(Context& ctx) : ctx_(ctx), options_(pvs::parse_options(ctx.config(), ctx.state_dir())) {
    auto& m = ctx_.metrics();
    metrics_.boots = &m.counter("pvs_device_boots_total", "Devices that started reading their vDisk");
    metrics_.disconnects = &m.counter("pvs_device_disconnects_total", "Device sessions ended (write cache discarded)");
    metrics_.unknown = &m.counter("pvs_unknown_exports_total", "NBD connections naming no known device or vDisk");
    metrics_.refused = &m.counter("pvs_refused_total", "Connections refused (private/maintenance in use, no version)");
    bootstraps_ = &m.counter("pvs_bootstrap_served_total", "Bootstrap downloads started over TFTP");
    actions_ = &m.counter("pvs_admin_actions_total", "Admin requests answered");
  }

  void start() override {
    alive_ = std::make_shared<std::atomic<bool>>(true);
    catalog_ = std::make_unique<pvs::Catalog>(ctx_.store(), options_.store);
    catalog_->migrate();
    catalog_->seed(options_.vdisks, options_.devices);

    nbd::WriteCacheOptions cache{.block_size = options_.write_cache_block_size,
                                 .ram_limit = options_.write_cache_ram,
                                 .cache_dir = options_.write_cache_dir,
                                 .disk_limit = options_.write_cache_disk,
                                 .device = "device"};
    std::filesystem::create_directories(options_.write_cache_dir);
    streamer_ = std::make_shared<pvs::Streamer>(options_.store, cache, metrics_);
    streamer_->update(catalog_->load());
    streamer_->on_event([this, alive = alive_](const pvs::DeviceEvent& e) {
      // NBD thread: hand over to the executor; nothing runs once stop() has begun.
      if (!alive->load()) return;
      ctx_.executor().post([this, alive, e] {
        if (alive->load()) device_event(e);
      });
    });

    std::weak_ptr<pvs::Streamer> weak = streamer_;
    nbd::ServerOptions so;
    so.address = options_.stream.host;
    so.port = options_.stream.port;
    so.max_connections = options_.max_connections;
    so.log = [this, alive = alive_](std::string_view line) {
      if (alive->load()) ctx_.log().debug(line);
    };
    nbd_ = std::make_unique<nbd::Server>(
        so,
        [weak](std::string_view name, std::string_view peer) -> nbd::Resolution {
          if (auto s = weak.lock()) return s->resolve(name, peer);
          return {nullptr, "pvs: server stopping"};
        },
        [weak](std::string_view peer) {
          if (auto s = weak.lock()) return s->list(peer);
          return std::vector<nbd::ExportEntry>{};
        });
    nbd_->start();
    stream_port_ = nbd_->bound_port();

    bootstrap_ = options_.bootstrap;
    if (bootstrap_.login_servers.empty()) bootstrap_.login_servers = {{options_.stream.host, stream_port_}};
    {
      std::lock_guard lock(bootstrap_mutex_);
      bootstrap_bytes_ = bootstrap::encode(bootstrap_);
    }
    if (options_.tftp) {
      std::filesystem::create_directories(options_.tftp_root);
      tftp::ServerOptions to;
      to.address = options_.tftp->host;
      to.port = options_.tftp->port;
      to.root = options_.tftp_root;
      const std::string wanted = lower(options_.bootstrap_file);
      to.virtual_file = [this, wanted](std::string_view path, const sockaddr_storage&) -> std::optional<std::string> {
        if (lower(std::string(path)) != wanted) return std::nullopt;
        bootstraps_->inc();
        std::lock_guard lock(bootstrap_mutex_);
        return bootstrap_bytes_;
      };
      tftp_ = std::make_unique<tftp::Server>(to);
      tftp_->start();
      tftp_port_ = tftp_->bound_port();
    }

    subs_.push_back(ctx_.bus().subscribe("pvs.*.vdisk.changed", [this](const Message& m) {
      if (m.subject != subject("vdisk.changed")) refresh();
    }));
    for (const char* action : {"version.new", "version.promote", "version.merge", "device.assign", "vdisk.list"}) {
      subs_.push_back(ctx_.bus().subscribe(subject(std::string("admin.") + action), [this, a = std::string(action)](const Message& m) {
        answer(a, m);
      }));
    }
    ctx_.every(std::chrono::seconds(options_.refresh_s), [this] { refresh(); });

    std::string servers;
    for (const auto& s : bootstrap_.login_servers) servers += (servers.empty() ? "" : ",") + s.host + ":" + std::to_string(s.port);
    ctx_.log().info("streaming on " + options_.stream.host + ":" + std::to_string(stream_port_) +
                    (tftp_ ? ", bootstrap " + options_.bootstrap_file + " on tftp " + options_.tftp->host + ":" +
                                 std::to_string(tftp_port_)
                           : std::string(", tftp off")) +
                    ", login servers " + servers + ", store " + options_.store.string());
  }

  void stop() override {
    if (alive_) alive_->store(false);
    subs_.clear();
    if (tftp_) tftp_->stop();
    if (nbd_) nbd_->stop();  // closes every device connection; their write caches go with them
    tftp_.reset();
    nbd_.reset();
  }

  void status(Poco::JSON::Object& out) const override {
    out.set("tftp_port", tftp_port_);
    out.set("stream_port", stream_port_);
    out.set("bootstrap_file", options_.bootstrap_file);
    Poco::JSON::Array::Ptr servers = new Poco::JSON::Array;
    for (const auto& s : bootstrap_.login_servers) servers->add(s.host + ":" + std::to_string(s.port));
    out.set("login_servers", servers);
    out.set("store", options_.store.string());
    if (streamer_) streamer_->status(out);
    if (nbd_) {
      const auto s = nbd_->stats();
      Poco::JSON::Object::Ptr n = new Poco::JSON::Object;
      n->set("accepted", s.accepted);
      n->set("active", s.active);
      n->set("requests", s.requests);
      n->set("bytes_read", s.bytes_read);
      n->set("bytes_written", s.bytes_written);
      n->set("protocol_errors", s.protocol_errors);
      out.set("nbd", n);
    }
    if (tftp_) {
      const auto s = tftp_->stats();
      Poco::JSON::Object::Ptr t = new Poco::JSON::Object;
      t->set("rrq", s.rrq);
      t->set("transfers_done", s.transfers_done);
      t->set("requests_refused", s.requests_refused);
      out.set("tftp", t);
    }
  }

  Health health() const override { return nbd_ ? Health::ok : Health::failed; }

 private:
  static std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
  }
  std::string subject(const std::string& tail) const { return "pvs." + ctx_.name() + "." + tail; }

  void refresh() {
    try {
      streamer_->update(catalog_->load());
      update_gauges();
    } catch (const std::exception& e) {
      ctx_.log().warning(std::string("data store refresh failed, keeping the last view: ") + e.what());
    }
  }

  void update_gauges() {
    ctx_.metrics().gauge("pvs_active_devices", "Devices connected now").set(static_cast<double>(streamer_->active()));
    ctx_.metrics()
        .gauge("pvs_write_cache_bytes", "Bytes held by all write caches (RAM + overflow)")
        .set(static_cast<double>(streamer_->cache_bytes()));
  }

  void device_event(const pvs::DeviceEvent& e) {
    Poco::JSON::Object o;
    o.set("export", e.export_name);
    o.set("vdisk", e.vdisk);
    o.set("version", e.version);
    o.set("mode", e.mode);
    o.set("peer", e.peer);
    o.set("server", ctx_.name());
    publish(ctx_.bus(), subject("device." + e.kind), Text{json_text(o)});
    ctx_.log().info("device " + e.export_name + " " + e.kind + " (vDisk " + e.vdisk + " version " +
                    std::to_string(e.version) + ", " + e.mode + ", from " + e.peer + ")");
    update_gauges();
  }

  // Admin requests: a deskfarm.text body holding a JSON object; the reply is {"ok":true,...} or {"ok":false,"error"}.
  void answer(const std::string& action, const Message& m) {
    Poco::JSON::Object reply;
    try {
      Poco::JSON::Object::Ptr req = new Poco::JSON::Object;
      if (const auto* t = body_as<Text>(m); t && !t->value.empty()) {
        req = Poco::JSON::Parser().parse(t->value).extract<Poco::JSON::Object::Ptr>();
        if (!req) throw ActionError("request body is not a JSON object");
      }
      auto str = [&](const char* k, const std::string& def = {}) {
        if (!req->has(k)) {
          if (def.empty()) throw ActionError(std::string("request needs \"") + k + "\"");
          return def;
        }
        return req->getValue<std::string>(k);
      };
      auto num = [&](const char* k) -> std::optional<int> {
        if (!req->has(k)) return std::nullopt;
        return req->getValue<int>(k);
      };
      bool changed = true;
      if (action == "version.new") {
        reply.set("version", catalog_->new_version(str("vdisk")));
      } else if (action == "version.promote") {
        reply.set("version", catalog_->promote(str("vdisk"), num("version"), str("to", pvs::kProduction)));
      } else if (action == "version.merge") {
        reply.set("version", catalog_->merge_base(str("vdisk"), num("version"), str("access", pvs::kProduction)));
      } else if (action == "device.assign") {
        pvs::DeviceSeed d;
        const auto mac = pvs::normalize_mac(str("mac"));
        if (!mac) throw ActionError("mac '" + str("mac") + "' is not a MAC address");
        d.mac = *mac;
        d.vdisk = str("vdisk");
        d.name = req->has("name") ? req->getValue<std::string>("name") : "";
        d.type = str("type", pvs::kProduction);
        if (d.type != pvs::kProduction && d.type != pvs::kTest) throw ActionError("type must be production or test");
        catalog_->assign(d);
        reply.set("mac", d.mac);
      } else {
        changed = false;
      }
      if (changed) {
        refresh();
        publish(ctx_.bus(), subject("vdisk.changed"), Text{action});
        ctx_.log().info(action + " " + (body_as<Text>(m) ? body_as<Text>(m)->value : "") + " done");
      }
      streamer_->status(reply);
      reply.set("ok", true);
    } catch (const std::exception& e) {
      reply.set("ok", false);
      reply.set("error", "pvs " + ctx_.name() + ": " + action + ": " + e.what());
      ctx_.log().warning(action + " refused: " + e.what());
    }
    actions_->inc();
    if (!m.reply_to.empty()) ctx_.bus().reply(m, make_message("", Text{json_text(reply)}));
  }

  Context& ctx_;
  pvs::Options options_;
  pvs::StreamerMetrics metrics_;
  Counter* bootstraps_ = nullptr;
  Counter* actions_ = nullptr;
  std::shared_ptr<std::atomic<bool>> alive_;
  std::unique_ptr<pvs::Catalog> catalog_;
  std::shared_ptr<pvs::Streamer> streamer_;
  std::unique_ptr<nbd::Server> nbd_;
  std::unique_ptr<tftp::Server> tftp_;
  std::uint16_t stream_port_ = 0;
  std::uint16_t tftp_port_ = 0;
  bootstrap::Bootstrap bootstrap_;
  mutable std::mutex bootstrap_mutex_;
  std::string bootstrap_bytes_;
  std::vector<Subscription> subs_;
};

}  // namespace

DESKFARM_PLUGIN(Pvs, "pvs", "1.0.0",
                "Provisioning Services: bootstrap over TFTP, vDisks over NBD by device MAC, write caches, versions, HA",
                provides, nullptr, config)
