// pvs: Provisioning Services — bootstrap over TFTP, vDisks streamed over NBD by device MAC, standard-image mode
// with a per-device write cache, private images, versions (maintenance -> test -> production, merge), HA pairs.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <deskfarm/bootstrap/boot_script.hpp>
#include <deskfarm/bootstrap/bootstrap.hpp>
#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/interfaces/pvs/pvs.hpp>
#include <deskfarm/nbd/server.hpp>
#include <deskfarm/sdk/plugin.hpp>
#include <deskfarm/sdk/store.hpp>
#include <deskfarm/tftp/server.hpp>

#include "ledger.hpp"
#include "model.hpp"
#include "streamer.hpp"

namespace {

using namespace deskfarm;
using namespace deskfarm::sdk;
namespace api = deskfarm::interfaces::pvs;
using pvs::DeviceSeed;
using pvs::PvsConfig;
using pvs::VdiskSeed;

constexpr const char* provides[] = {"pvs", nullptr};

// The nested schemas of the `vdisks` and `devices` tables (namespace scope: the rows above point at them).
constexpr auto vdisk_schema = schema<VdiskSeed>(
    option("name", &VdiskSeed::name, nullptr, "vDisk name: 1..64 of [A-Za-z0-9_.-], not starting with '.'"),
    option("file", &VdiskSeed::file, "\"\"", "image file inside the store; \"\" = NAME.img"),
    option("size_mb", &VdiskSeed::size_mb, "0",
           "size of the empty sparse image created when the file is missing; 0 = the file must exist")
        .range(0, 16777216),
    option("mode", &VdiskSeed::mode, "\"standard\"",
           "standard: shared read-only, a write cache per device; private: one device writes in place")
        .one_of("standard|private"));

constexpr auto device_schema = schema<DeviceSeed>(
    option("mac", &DeviceSeed::mac, nullptr, "the device's MAC, \"52:54:00:12:34:56\" (':' or '-'); its NBD export name"),
    option("vdisk", &DeviceSeed::vdisk, nullptr, "the vDisk it boots"),
    option("name", &DeviceSeed::name, "\"\"", "a name for listings"),
    option("type", &DeviceSeed::type, "\"production\"", "test devices also boot versions in test")
        .one_of("production|test"),
    option("ip", &DeviceSeed::ip, "\"\"",
           "the one IPv4/IPv6 address this device may stream from (its DHCP reservation); \"\" = any in device_subnets"));

constexpr auto pvs_schema = schema<PvsConfig>(
    option("tftp", &PvsConfig::tftp, "\"127.0.0.1:69\"", "TFTP listen address \"IPv4:port\" serving the bootstrap (port 0 = any free one, see status); \"off\" = none"),
    option("tftp_root", &PvsConfig::tftp_root, "\"\"", "directory of extra TFTP files; \"\" = tftp in the instance's state directory"),
    option("bootstrap_file", &PvsConfig::bootstrap_file, "\"ARDBP32.BIN\"", "name the bootstrap is served under (DHCP option 67)"),
    option("bootstrap_version", &PvsConfig::bootstrap_version, "1", "configuration serial written into the bootstrap")
        .range(1, 4294967295.0),
    option("login_servers", &PvsConfig::login_servers, "[]",
           "up to 4 \"host:port\" streaming servers in failover order; [] = this one (then stream must not be 0.0.0.0)"),
    option("login_polling_timeout_ms", &PvsConfig::login_polling_timeout_ms, "5000",
           "bootstrap: wait per login server before the next")
        .range(1000, 300000),
    option("login_general_timeout_ms", &PvsConfig::login_general_timeout_ms, "30000",
           "bootstrap: give up on all servers after this (at least login_polling_timeout_ms)")
        .range(1000, 3600000),
    option("recovery", &PvsConfig::recovery, "\"restore_network\"", "bootstrap: what the firmware does when no server answers")
        .one_of("restore_network|reboot_to_hd"),
    option("recovery_time_s", &PvsConfig::recovery_time_s, "50", "bootstrap: wait before retrying the network")
        .range(0, 86400),
    option("addressing", &PvsConfig::addressing, "\"dhcp\"", "bootstrap: device addressing; static needs static_ip and static_mask")
        .one_of("dhcp|static"),
    option("static_ip", &PvsConfig::static_ip, "\"\"", "bootstrap: device IPv4 with addressing = \"static\""),
    option("static_mask", &PvsConfig::static_mask, "\"\"", "bootstrap: subnet mask with addressing = \"static\""),
    option("static_gateway", &PvsConfig::static_gateway, "\"\"", "bootstrap: gateway with addressing = \"static\""),
    option("static_dns", &PvsConfig::static_dns, "\"\"", "bootstrap: DNS server with addressing = \"static\" (optional)"),
    option("verbose", &PvsConfig::verbose, "false", "bootstrap: verbose firmware output"),
    option("interrupt_safe", &PvsConfig::interrupt_safe, "false", "bootstrap: interrupt-safe mode"),
    option("advanced_memory", &PvsConfig::advanced_memory, "true", "bootstrap: advanced memory support"),
    option("stream", &PvsConfig::stream, "\"127.0.0.1:10809\"", "NBD listen address \"IPv4:port\" (port 0 = any free one, see status); export name = device MAC"),
    option("max_connections", &PvsConfig::max_connections, "0",
           "NBD connections at once; 0 = as many as the descriptor limit allows (raised to its hard limit at start)")
        .range(0, 1048576),
    option("list_exports", &PvsConfig::list_exports, "false",
           "answer NBD_OPT_LIST (nbdinfo --list) with the exports the asking address may open; false = NBD_REP_ERR_POLICY"),
    option("stream_tls", &PvsConfig::stream_tls, "\"off\"",
           "TLS on the streaming port (NBD_OPT_STARTTLS): on = offered, and VDISK@maintenance only over TLS; "
           "require = every connection")
        .one_of("off|on|require"),
    option("tls_certificate", &PvsConfig::tls_certificate, "\"\"", "PEM certificate chain for stream_tls (with tls_key)"),
    option("tls_key", &PvsConfig::tls_key, "\"\"", "PEM private key of tls_certificate"),
    option("tls_client_ca", &PvsConfig::tls_client_ca, "\"\"",
           "PEM CA: TLS clients must present a certificate it signed; \"\" = no client certificate asked"),
    option("tls_psk_file", &PvsConfig::tls_psk_file, "\"\"",
           "pre-shared keys for stream_tls, \"identity:hexkey\" per line (psktool, nbdkit, qemu format)"),
    option("device_subnets", &PvsConfig::device_subnets, "[]",
           "IPv4/IPv6 networks devices may stream from (\"10.1.0.0/16\", \"fd00::/64\"); [] = any address"),
    option("maintenance_from", &PvsConfig::maintenance_from, "[\"127.0.0.0/8\", \"::1\"]",
           "networks VDISK@maintenance (which writes the golden image) may be opened from; [] = nowhere"),
    option("store", &PvsConfig::store, "\"\"", "vDisk store directory shared by HA peers (relative: to the working directory); \"\" = vdisks in the deployment's state directory"),
    option("write_cache_dir", &PvsConfig::write_cache_dir, "\"\"", "overflow files of write caches; \"\" = write-cache in the instance's state directory"),
    option("write_cache_ram_mb", &PvsConfig::write_cache_ram_mb, "64", "per-device write cache in RAM before overflowing to disk")
        .range(0, 1048576),
    option("write_cache_disk_mb", &PvsConfig::write_cache_disk_mb, "0", "per-device overflow file limit; 0 = up to the vDisk size")
        .range(0, 1073741824.0),
    option("write_cache_block_size", &PvsConfig::write_cache_block_size, "4096", "copy-on-write block, a power of two")
        .range(4096, 1048576),
    option("session_idle_s", &PvsConfig::session_idle_s, "3600",
           "a device's session (write cache + version) ends this long after its last connection closed, if no boot "
           "was seen before (hypervisor power event, bootstrap download, device.reset)")
        .range(1, 31536000),
    option("lease_s", &PvsConfig::lease_s, "15",
           "HA: a server that has not renewed its lease in the data store for this long is dead; its devices that "
           "wrote nothing move to a peer, the others must reboot")
        .range(1, 3600),
    option("stream_idle_timeout_s", &PvsConfig::stream_idle_timeout_s, "600",
           "an NBD connection that sends nothing this long is closed (its session stays); 0 = never")
        .range(0, 86400),
    option("stream_keepalive_s", &PvsConfig::stream_keepalive_s, "30",
           "TCP keepalive on NBD connections: probe a silent peer after this long (finds half-open ones); 0 = off")
        .range(0, 7200),
    option("refresh_s", &PvsConfig::refresh_s, "10", "re-read devices and versions from the data store this often (HA peers)")
        .range(1, 86400),
    option("vdisks", &PvsConfig::vdisks, "[]", "vDisks to seed into the data store", vdisk_schema),
    option("devices", &PvsConfig::devices, "[]", "devices to seed into the data store", device_schema));

/// What an admin action did on the blocking pool: its result and the catalog as it then stood, or why it was refused.
struct Outcome {
  std::optional<std::int64_t> version;
  std::string mac;
  std::string refused;  ///< an ActionError's text: the request was understood but cannot be done
  pvs::Snapshot snapshot;
};
using Action = std::function<Outcome(pvs::Catalog&, std::stop_token)>;

/// The address of a datagram's sender, as the NBD server names a peer ("127.0.0.1", "::1").
std::string host_of(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET)
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, host, sizeof host);
  else if (ss.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&a))  // a dual-stack TFTP socket: the device is the IPv4 peer the NBD server names
      ::inet_ntop(AF_INET, &a.s6_addr[12], host, sizeof host);
    else
      ::inet_ntop(AF_INET6, &a, host, sizeof host);
  }
  return host;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string required(const std::string& value, const char* action, const char* field) {
  if (value.empty()) throw RequestError("bad_request", std::string(action) + " needs \"" + field + "\"");
  return value;
}

std::optional<int> version_number(const std::optional<std::int64_t>& v) {
  if (v && (*v < 0 || *v > 1000000)) throw RequestError("bad_request", "version " + std::to_string(*v) + " is not 0..1000000");
  return v ? std::optional<int>(static_cast<int>(*v)) : std::nullopt;
}

class Pvs final : public Plugin {
 public:
  explicit Pvs(Context& ctx) : ctx_(ctx), options_(pvs::make_options(pvs_schema.bind(ctx.config()), ctx.state_dir())) {
    pvs::require_images(options_);
    auto& m = ctx_.metrics();
    metrics_.boots = &m.counter("deskfarm_pvs_device_boots_total", "Devices that started reading their vDisk");
    metrics_.disconnects = &m.counter("deskfarm_pvs_device_disconnects_total", "Devices whose last connection closed (session kept)");
    metrics_.ended = &m.counter("deskfarm_pvs_device_sessions_ended_total", "Device sessions ended (write cache discarded)");
    metrics_.unknown = &m.counter("deskfarm_pvs_unknown_exports_total", "NBD connections naming no known device or vDisk");
    metrics_.refused = &m.counter("deskfarm_pvs_refused_total", "Connections refused (private/maintenance in use, no version)");
    metrics_.denied = &m.counter("deskfarm_pvs_denied_total",
                                 "Connections refused by address (devices[].ip, device_subnets, maintenance_from)");
    bootstraps_ = &m.counter("deskfarm_pvs_bootstrap_served_total", "Bootstrap downloads started over TFTP");
    boot_scripts_ = &m.counter("deskfarm_pvs_boot_scripts_served_total",
                               "Device boot scripts (deskfarm/vN/MAC/boot.ipxe) served over TFTP to Boot Device Manager iPXE");
    version_mismatches_ = &m.counter("deskfarm_pvs_bootstrap_version_mismatch_total",
                                     "Boot script requests whose boot record version differs from this server's bootstrap_version");
    actions_ = &m.counter("deskfarm_pvs_admin_actions_total", "Admin requests answered");
  }
  // A start() that threw part-way is not followed by stop(): the servers it started go here.
  ~Pvs() override { close_servers(); }

  /// What the schema cannot judge (`deskfarm check` runs this before anything starts).
  static void validate(const Config& config) { (void)pvs::make_options(pvs_schema.bind(config), {}); }

  void start() override {
    store_ = &ctx_.store();
    const auto line = ctx_.lifeline();
    nbd::WriteCacheOptions cache{.block_size = options_.write_cache_block_size,
                                 .ram_limit = options_.write_cache_ram,
                                 .cache_dir = options_.write_cache_dir,
                                 .disk_limit = options_.write_cache_disk,
                                 .device = "device"};
    std::filesystem::create_directories(options_.write_cache_dir);
    // Overflow files nobody holds belong to sessions of a server that died (crash, kill -9): those devices cannot
    // resume them (a restarted server has no session), so their space is given back.
    for (const auto& stale : nbd::WriteCache::remove_stale(options_.write_cache_dir))
      ctx_.log().warning("pvs: removed the write cache overflow file " + stale.string() +
                         " of a session that died with its server");
    streamer_ = std::make_shared<pvs::Streamer>(ctx_.name(), options_.store, cache, metrics_,
                                                std::chrono::duration_cast<std::chrono::milliseconds>(options_.session_idle),
                                                options_.access);
    // NBD thread: hand over to the executor; the lifeline drops it once the instance has stopped.
    streamer_->on_event([this, line](const pvs::DeviceEvent& e) { line->post([this, e] { device_event(e); }); });
    // HA: one server per device session, through the ledger in the shared data store (ledger.hpp).
    ledger_ = std::make_shared<pvs::Ledger>(*store_, pvs::make_owner_id(ctx_.name()),
                                            std::chrono::duration_cast<std::chrono::milliseconds>(options_.lease),
                                            std::chrono::duration_cast<std::chrono::milliseconds>(options_.session_idle));
    streamer_->use_ledger(ledger_, [this, line](const pvs::OwnedSession& s) {
      line->post([this, s] { ledger_job("release " + s.key, [s](pvs::Ledger& l) { l.release(s.key, s.session); }); });
    });

    std::weak_ptr<pvs::Streamer> weak = streamer_;
    nbd::ServerOptions so;
    so.address = options_.stream.host;
    so.port = options_.stream.port;
    so.max_connections = options_.max_connections;
    so.idle_timeout = options_.stream_idle_timeout;
    so.keepalive = options_.stream_keepalive;
    if (options_.stream_tls != "off") {
      so.tls = std::make_shared<nbd::TlsContext>(options_.tls);  // throws naming the file: the instance fails to start
      so.require_tls = options_.stream_tls == "require";
    }
    so.log = [this, line](std::string_view text) {
      if (line->alive()) ctx_.log().debug(text);
    };
    so.warn = [this, line](std::string_view text) {
      if (line->alive()) ctx_.log().warning(text);
    };
    nbd::Lister lister;  // none: NBD_OPT_LIST is answered with NBD_REP_ERR_POLICY
    if (options_.list_exports)
      lister = [weak](std::string_view peer) {
        if (auto s = weak.lock()) return s->list(peer);
        return std::vector<nbd::ExportEntry>{};
      };
    nbd_ = std::make_unique<nbd::Server>(
        so,
        [weak, tls = options_.stream_tls != "off"](std::string_view name, std::string_view peer) -> nbd::Resolution {
          if (auto s = weak.lock()) {
            auto r = s->resolve(name, peer);
            // The golden image's writer is served only over TLS once TLS is on.
            r.needs_tls = tls && name.ends_with("@maintenance");
            return r;
          }
          return {nullptr, "pvs: server stopping"};
        },
        std::move(lister));
    nbd_->start();
    stream_port_ = nbd_->bound_port();
    if (!net::is_loopback(options_.stream.host) && options_.access.devices_open_to_any())
      ctx_.log().warning("the streaming port " + options_.stream.host + ":" + std::to_string(stream_port_) +
                         " serves devices to any address that names their MAC; set device_subnets (and devices[].ip) "
                         "to the networks devices boot from");

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
      to.virtual_file = [this, wanted, line, weak](std::string_view path,
                                                   const sockaddr_storage& from) -> std::optional<std::string> {
        if (auto request = bootstrap::parse_boot_script_name(path)) return boot_script(*request, path, from, *line, weak);
        if (lower(std::string(path)) != wanted) return std::nullopt;
        bootstraps_->inc();
        // The firmware fetches the bootstrap only when it boots: that ends the session of the device at that address.
        if (auto s = weak.lock()) {
          std::vector<pvs::EndedSession> ended;
          const std::string host = host_of(from);
          const auto seen = s->bootstrap_from(host, ended);
          if (seen == 0)  // not one of ours: perhaps a device of a peer that died
            line->post([this, host] {
              ledger_job("bootstrap from " + host, [this, host](pvs::Ledger& l) {
                const auto mac = l.end_dead_at(host);
                if (!mac.empty())
                  ctx_.log().info("pvs: device " + mac + " fetched the bootstrap from " + host +
                                  ": its session on a server that died is over");
              });
            });
          if (seen > 1)
            line->post([this, host, seen] {
              ctx_.log().warning("pvs: bootstrap fetched from " + host + ", where " + std::to_string(seen) +
                                 " devices have sessions: cannot tell which one boots; their sessions are kept "
                                 "(use device.reset or a hypervisor power event)");
            });
          for (const auto& e : ended) line->post([this, e] { ended_log(e, "it fetched the bootstrap again"); });
        }
        std::lock_guard lock(bootstrap_mutex_);
        return bootstrap_bytes_;
      };
      tftp_ = std::make_unique<tftp::Server>(to);
      tftp_->start();
      tftp_port_ = tftp_->bound_port();
      ctx_.advertise(api::tftp_endpoint, options_.tftp->host + ":" + std::to_string(tftp_port_));
    }
    ctx_.advertise(api::stream_endpoint, options_.stream.host + ":" + std::to_string(stream_port_));

    // HA peers sharing the data store announce their changes; ours are in the view already.
    subs_.push_back(subscribe<api::VdiskChanged>(ctx_.bus(), "pvs.*.vdisk.changed",
                                                 [this](const api::VdiskChanged& c, const Message&) {
                                                   if (c.server != ctx_.name()) refresh();
                                                 }));
    serve_admin();
    // A hypervisor seeing a VM boot: that device's previous session (write cache + version) ends.
    subs_.push_back(subscribe<interfaces::hypervisor::PowerStateEvent>(
        ctx_.bus(), interfaces::hypervisor::all_power_events,
        [this](const interfaces::hypervisor::PowerStateEvent& e, const Message&) {
          if (!e.is_boot()) return;
          const auto mac = pvs::normalize_mac(e.mac);
          if (!mac) return;
          for (const auto& ended : streamer_->end_session(*mac, "power"))
            ended_log(ended, "VM " + e.vm + " of " + e.adapter + " is " + e.state);
          end_everywhere(*mac, "VM " + e.vm + " of " + e.adapter + " is " + e.state);
        }));
    // Renewing the lease tells peers this server lives; what the ledger then lists is what it still owns.
    ctx_.every(std::max<std::chrono::milliseconds>(std::chrono::milliseconds(500),
                                                   std::chrono::duration_cast<std::chrono::milliseconds>(options_.lease) / 3),
               [this] { renew(); });
    const auto sweep = std::clamp<std::chrono::milliseconds>(
        std::chrono::duration_cast<std::chrono::milliseconds>(options_.session_idle) / 4, std::chrono::milliseconds(200),
        std::chrono::milliseconds(60000));
    ctx_.every(sweep, [this] {
      for (const auto& e : streamer_->sweep_idle())
        ended_log(e, "no connection for " + std::to_string(options_.session_idle.count()) + " s (session_idle_s)");
    });
    // The first job migrates and seeds the data store; devices are told to retry until it is loaded.
    refresh();
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
    stopped_ = true;  // no more lease renewals: peers take this server for dead after lease_s
    subs_.clear();
    jobs_.clear();  // not begun: dropped; a running job sees its stop_token and the kernel waits for it
    close_servers();
  }

  void status(Value& out) const override {
    out.set("tftp_port", tftp_port_);
    out.set("stream_port", stream_port_);
    out.set("bootstrap_file", options_.bootstrap_file);
    Value servers = Value::array();
    for (const auto& s : bootstrap_.login_servers) servers.push(s.host + ":" + std::to_string(s.port));
    out.set("login_servers", std::move(servers));
    out.set("store", options_.store.string());
    // HA peers as discovery knows them (running pvs instances of this deployment and where they stream).
    Value peers = Value::array();
    for (const auto& p : ctx_.instances("pvs")) {
      if (p.name == ctx_.name()) continue;
      const auto stream = p.endpoints.find(api::stream_endpoint);
      peers.push(Value::object().set("name", p.name).set("stream", stream == p.endpoints.end() ? "" : stream->second));
    }
    out.set("peers", std::move(peers));
    if (!catalog_error_.empty()) out.set("catalog_error", catalog_error_);
    out.set("data_store_jobs", jobs_.size() + (job_running_ ? 1 : 0));
    if (streamer_) streamer_->status(out);
    if (nbd_) {
      const auto s = nbd_->stats();
      Value n = Value::object();
      n.set("accepted", s.accepted);
      n.set("active", s.active);
      n.set("max_connections", nbd_->max_connections());
      n.set("rejected", s.rejected);
      n.set("requests", s.requests);
      n.set("bytes_read", s.bytes_read);
      n.set("bytes_written", s.bytes_written);
      n.set("protocol_errors", s.protocol_errors);
      out.set("nbd", std::move(n));
    }
    if (tftp_) {
      const auto s = tftp_->stats();
      Value t = Value::object();
      t.set("rrq", s.rrq);
      t.set("transfers_done", s.transfers_done);
      t.set("requests_refused", s.requests_refused);
      out.set("tftp", std::move(t));
    }
  }

  Health health() const override {
    if (!nbd_) return Health::failed;
    return loaded_ && catalog_error_.empty() ? Health::ok : Health::degraded;
  }

 private:
  void close_servers() {
    if (tftp_) tftp_->stop();
    if (nbd_) nbd_->stop();  // closes every device connection; their write caches go with them
    tftp_.reset();
    nbd_.reset();
  }

  // ---- data-store jobs ----
  // Every data-store call runs on the blocking pool with its own Catalog (and so its own sessions), one job at a
  // time in request order: a refresh never overtakes an action, two actions never race for a version number, and
  // the executor never waits for the store or a merge. Results come back to the executor in the job's `done`.

  /// Queues `work(catalog, stop)`; `done(Reply<R>)` runs on the executor afterwards, and `begin` (if any) on the
  /// executor as the job leaves the queue.
  template <class R>
  void data_job(std::function<R(pvs::Catalog&, std::stop_token)> work, std::function<void(Reply<R>)> done,
                std::function<void()> begin = nullptr) {
    jobs_.push_back([this, work = std::move(work), done = std::move(done), begin = std::move(begin)] {
      if (begin) begin();
      ctx_.run_blocking(
          [store = store_, dir = options_.store, work](std::stop_token stop) {
            pvs::Catalog catalog(*store, dir);
            return work(catalog, stop);
          },
          [this, done](Reply<R> reply) {
            try {
              done(std::move(reply));
            } catch (const std::exception& e) {
              ctx_.log().error(std::string("handling a data-store result failed: ") + e.what());
            }
            job_running_ = false;
            next_job();
          });
    });
    next_job();
  }

  void next_job() {
    if (job_running_ || jobs_.empty()) return;
    job_running_ = true;
    auto job = std::move(jobs_.front());
    jobs_.pop_front();
    job();
  }

  /// Re-reads the catalog (until it has loaded once: migrates and seeds it first). One queued refresh is enough.
  void refresh() {
    if (refresh_queued_) return;
    refresh_queued_ = true;
    const bool first = !loaded_;
    data_job<pvs::Snapshot>(
        [first, vdisks = options_.vdisks, devices = options_.devices](pvs::Catalog& catalog, std::stop_token) {
          if (first) {
            catalog.migrate();  // idempotent: a second first-time job after a failed one finds the tables in place
            catalog.seed(vdisks, devices);
          }
          return catalog.load();
        },
        [this, first](Reply<pvs::Snapshot> r) {
          if (!r) {
            catalog_error_ = r.error().message;
            if (first)
              ctx_.log().error("cannot prepare the data store (retrying every " + std::to_string(options_.refresh_s) +
                               " s): " + catalog_error_);
            else
              ctx_.log().warning("data store refresh failed, keeping the last view: " + catalog_error_);
            return;
          }
          catalog_error_.clear();
          streamer_->update(*r);
          update_gauges();
          if (first && !loaded_)
            ctx_.log().info("catalog loaded: " + std::to_string(r->vdisks.size()) + " vDisks, " +
                            std::to_string(r->devices.size()) + " devices");
          loaded_ = true;
        },
        // From here on a change notice queues another refresh: this one may read before the change.
        [this] { refresh_queued_ = false; });
  }

  void update_gauges() {
    ctx_.metrics().gauge("deskfarm_pvs_active_devices", "Devices connected now").set(static_cast<double>(streamer_->active()));
    ctx_.metrics()
        .gauge("deskfarm_pvs_write_cache_bytes", "Bytes held by all write caches (RAM + overflow)")
        .set(static_cast<double>(streamer_->cache_bytes()));
  }

  // ---- the session ledger (HA) ----
  // Ledger calls run on the blocking pool beside the data-store jobs, never queued behind a merge: a lease renewed
  // late makes peers take this server for dead.

  void ledger_job(std::string what, std::function<void(pvs::Ledger&)> work) {
    // The ledger's tables exist once the catalog has loaded (its first job migrates the store); before that no
    // device streams here, and a bootstrap fetch (a monitor's, say) has no session to end.
    if (!loaded_) {
      ctx_.log().debug("pvs: session ledger: " + what + " skipped: the catalog has not loaded yet");
      return;
    }
    ctx_.run_blocking([ledger = ledger_, work = std::move(work)](std::stop_token) { work(*ledger); },
                      [this, what = std::move(what)](Reply<Empty> r) {
                        if (!r) ctx_.log().warning("pvs: session ledger: " + what + " failed: " + r.error().message);
                      });
  }

  /// A boot of `mac` seen here ends its session on whichever server has it (that server notices at its renewal).
  void end_everywhere(const std::string& mac, const std::string& why) {
    ledger_job("end " + mac, [this, mac, why, seen = std::chrono::system_clock::now()](pvs::Ledger& l) {
      const auto owner = l.end_everywhere(mac, seen);
      if (!owner.empty() && owner != ctx_.name())
        ctx_.log().info("pvs: device " + mac + " session on " + owner + " ended in the data store: " + why);
    });
  }

  void renew() {
    if (!loaded_ || renewing_ || stopped_) return;  // the tables exist once the catalog has loaded
    renewing_ = true;
    const auto read_at = std::chrono::system_clock::now();
    ctx_.run_blocking([ledger = ledger_](std::stop_token) { return ledger->renew(); },
                      [this, read_at](Reply<std::set<pvs::OwnedSession>> r) {
                        renewing_ = false;
                        if (!r) {
                          ctx_.log().warning("pvs: cannot renew this server's lease in the data store (peers take "
                                             "it for dead after lease_s): " + r.error().message);
                          return;
                        }
                        for (const auto& e : streamer_->reconcile(*r, read_at))
                          ended_log(e, "an HA peer saw the device boot or reset it");
                      });
  }

  /// The iPXE script a Boot Device Manager image fetches (TFTP thread): a known device boots the vDisk its hypervisor
  /// attached from this server's NBD stream as the first disk; an unknown one ends the script with a failure, so the
  /// ISO's script goes on to the next login server. The session is not ended here: QEMU opened the vDisk before
  /// the firmware ran, and the hypervisor's boot event has ended the previous session already.
  std::string boot_script(const bootstrap::BootScriptRequest& request, std::string_view path,
                          const sockaddr_storage& from, const sdk::Lifeline& line,
                          const std::weak_ptr<pvs::Streamer>& weak) {
    boot_scripts_->inc();
    const std::string me = ctx_.name();
    const std::string host = host_of(from);
    std::optional<pvs::DeviceRow> device;
    if (auto s = weak.lock()) {
      const auto snapshot = s->snapshot();
      if (auto d = snapshot.devices.find(request.mac); d != snapshot.devices.end()) device = d->second;
    }
    if (request.version != bootstrap_.version) {
      version_mismatches_->inc();
      // CTX233881: an old BDM image against a newer server (or the reverse); the device still boots.
      if (line.alive())
        ctx_.log().warning("pvs: device " + request.mac + " booted a BDM image with bootstrap version " +
                           std::to_string(request.version) + " but this server's bootstrap_version is " +
                           std::to_string(bootstrap_.version) + ": rebuild the ISO (deskfarm bdm build " +
                           "--bootstrap-version, or the bdm instance's bootstrap_version) and attach it again");
    }
    std::string script = "#!ipxe\n# deskfarm pvs " + me + ": boot script of device " + request.mac + "\n";
    if (!device) {
      if (line.alive())
        ctx_.log().warning("pvs: device " + request.mac + " at " + host + " asked for its boot script " +
                           std::string(path) + " but is not a device of this server: add it to devices or device.assign");
      return script + "echo deskfarm pvs " + me + ": device " + request.mac +
             " is not known here, trying the next login server\nexit 1\n";
    }
    if (line.alive())
      ctx_.log().info("pvs: device " + request.mac + " at " + host + " fetched its boot script " + std::string(path) +
                      " (BDM bootstrap version " + std::to_string(request.version) + "), vDisk " + device->vdisk);
    // The hypervisor attaches the device's vDisk (nbd://pvs/MAC) as a BIOS disk: the first (0x80) unless the BDM
    // script that chained here says otherwise in deskfarm_drive (a boot partition is the first disk: 0x81).
    // Short lines: iPXE's console wraps at 80 columns, which would split them on the serial log.
    return script + "isset ${deskfarm_drive} || set deskfarm_drive 0x80\n" + "echo deskfarm pvs " + me + ": device " +
           request.mac + ", vDisk " + device->vdisk + "\n" + "echo deskfarm pvs " + me +
           ": login server ${login_server}, sanboot drive ${deskfarm_drive}\n" +
           "sanboot --no-describe --drive ${deskfarm_drive} ||\n" + "echo deskfarm pvs " + me + ": vDisk of " +
           request.mac + " did not boot from drive ${deskfarm_drive}\n" + "exit 1\n";
  }

  void ended_log(const pvs::EndedSession& e, const std::string& why) {
    ctx_.log().info("pvs: device " + e.mac + " session on vDisk " + e.vdisk + " version " + std::to_string(e.version) +
                    " ended, write cache discarded: " + why +
                    (e.connections ? " (" + std::to_string(e.connections) + " stale connections now get EIO)" : ""));
    update_gauges();
  }

  void device_event(const pvs::DeviceEvent& e) {
    publish(ctx_.bus(), api::device_subject(ctx_.name(), e.kind), e);
    ctx_.log().info("device " + e.mac + " " + e.kind + (e.reason.empty() ? "" : " (" + e.reason + ")") +
                    " (vDisk " + e.vdisk + " version " + std::to_string(e.version) + ", " + e.mode + ", from " + e.peer +
                    ")");
    update_gauges();
  }

  // ---- admin requests (interfaces/pvs: typed, or JSON from `deskfarm request`) ----

  void serve_admin() {
    auto& bus = ctx_.bus();
    const auto& me = ctx_.name();
    subs_.push_back(serve_async<api::NewVersion, api::AdminReply>(
        bus, api::admin_subject(me, "version.new"), [this](const api::NewVersion& r, Responder<api::AdminReply> out) {
          const auto vdisk = required(r.vdisk, "version.new", "vdisk");
          act(std::move(out), "version.new", vdisk, [vdisk](pvs::Catalog& c, std::stop_token) {
            return Outcome{c.new_version(vdisk)};
          });
        }));
    subs_.push_back(serve_async<api::PromoteVersion, api::AdminReply>(
        bus, api::admin_subject(me, "version.promote"),
        [this](const api::PromoteVersion& r, Responder<api::AdminReply> out) {
          const auto vdisk = required(r.vdisk, "version.promote", "vdisk");
          act(std::move(out), "version.promote", vdisk,
              [vdisk, version = version_number(r.version), to = r.to, streamer = streamer_](pvs::Catalog& c,
                                                                                            std::stop_token) {
                // Devices booting the promoted version must not read it while its writer still changes it.
                const auto snap = c.load();
                const auto v = snap.vdisks.find(vdisk);
                const auto* m = v == snap.vdisks.end() ? nullptr : v->second.maintenance();
                if (!m || (version && *version != m->number)) return Outcome{c.promote(vdisk, version, to)};
                // A writer that has just sent NBD_CMD_DISC may still be leaving: give it two seconds.
                std::string why;
                bool frozen = false;
                for (int i = 0; i < 20 && !(frozen = streamer->begin_promote(vdisk, why)); ++i)
                  std::this_thread::sleep_for(std::chrono::milliseconds(100));
                if (!frozen) throw pvs::ActionError(why);
                struct Unfreeze {
                  pvs::Streamer& s;
                  const std::string& vdisk;
                  ~Unfreeze() { s.end_promote(vdisk); }
                } unfreeze{*streamer, vdisk};
                Outcome o{c.promote(vdisk, version, to)};
                streamer->update(c.load());  // new writers are refused by the catalog itself from here on
                return o;
              });
        }));
    // A merge reads the whole chain: minutes for a large vDisk, so its reply comes when the blocking work is done.
    subs_.push_back(serve_async<api::MergeVersion, api::AdminReply>(
        bus, api::admin_subject(me, "version.merge"), [this](const api::MergeVersion& r, Responder<api::AdminReply> out) {
          const auto vdisk = required(r.vdisk, "version.merge", "vdisk");
          act(std::move(out), "version.merge", vdisk,
              [vdisk, version = version_number(r.version), access = r.access](pvs::Catalog& c, std::stop_token stop) {
                return Outcome{c.merge_base(vdisk, version, access, stop)};
              });
        }));
    subs_.push_back(serve_async<api::AssignDevice, api::AdminReply>(
        bus, api::admin_subject(me, "device.assign"), [this](const api::AssignDevice& r, Responder<api::AdminReply> out) {
          DeviceSeed d;
          const auto mac = pvs::normalize_mac(required(r.mac, "device.assign", "mac"));
          if (!mac) throw RequestError("bad_request", "mac '" + r.mac + "' is not a MAC address like \"52:54:00:12:34:56\"");
          d.mac = *mac;
          d.vdisk = required(r.vdisk, "device.assign", "vdisk");
          d.name = r.name;
          d.type = r.type;
          if (d.type != pvs::kProduction && d.type != pvs::kTest)
            throw RequestError("bad_request", "type '" + d.type + "' is neither \"production\" nor \"test\"");
          act(std::move(out), "device.assign", d.vdisk, [d](pvs::Catalog& c, std::stop_token) {
            c.assign(d);
            return Outcome{std::nullopt, d.mac};
          });
        }));
    subs_.push_back(serve<api::ResetDevice, api::ResetReply>(
        bus, api::admin_subject(me, "device.reset"), [this](const api::ResetDevice& r) {
          const auto mac = pvs::normalize_mac(required(r.mac, "device.reset", "mac"));
          if (!mac) throw RequestError("bad_request", "mac '" + r.mac + "' is not a MAC address like \"52:54:00:12:34:56\"");
          actions_->inc();
          api::ResetReply reply;
          reply.mac = *mac;
          for (const auto& e : streamer_->end_session(*mac, "admin")) {
            reply.ended = true;
            reply.vdisk = e.vdisk;
            reply.version = e.version;
            reply.connections += static_cast<std::int64_t>(e.connections);
            ended_log(e, "device.reset");
          }
          if (!reply.ended) ctx_.log().info("pvs: device.reset of " + *mac + ": it had no session here");
          end_everywhere(*mac, "device.reset");
          return reply;
        }));
    subs_.push_back(serve<Empty, api::AdminReply>(bus, api::admin_subject(me, "vdisk.list"), [this](const Empty&) {
      actions_->inc();
      api::AdminReply reply;
      reply.action = "vdisk.list";
      streamer_->describe(reply);
      return reply;
    }));
  }

  /// Runs an admin action as a data-store job; on success the view is updated, peers told, and `out` answered.
  void act(Responder<api::AdminReply> out, std::string action, std::string vdisk, Action work) {
    data_job<Outcome>(
        [work](pvs::Catalog& catalog, std::stop_token stop) {
          Outcome o;
          try {
            o = work(catalog, stop);
          } catch (const pvs::ActionError& e) {
            o.refused = e.what();
            return o;
          }
          o.snapshot = catalog.load();
          return o;
        },
        [this, out, action, vdisk](Reply<Outcome> r) mutable {
          actions_->inc();
          const std::string code = !r ? "failed" : "refused";
          if (!r || !r->refused.empty()) {
            const std::string why = !r ? r.error().message : r->refused;
            ctx_.log().warning("" + action + " of vDisk '" + vdisk + "' " + code + ": " + why);
            out.fail(code, "pvs " + ctx_.name() + ": " + action + ": " + why);
            return;
          }
          streamer_->update(r->snapshot);
          update_gauges();
          publish(ctx_.bus(), api::vdisk_changed_subject(ctx_.name()), api::VdiskChanged{action, vdisk, ctx_.name()});
          api::AdminReply reply;
          reply.action = action;
          reply.version = r->version;
          reply.mac = r->mac;
          streamer_->describe(reply);
          ctx_.log().info("" + action + " of vDisk '" + vdisk + "' done" +
                          (r->version ? ": version " + std::to_string(*r->version) : std::string()) +
                          (r->mac.empty() ? std::string() : ": device " + r->mac));
          out.ok(std::move(reply));
        });
  }

  Context& ctx_;
  pvs::Options options_;
  pvs::StreamerMetrics metrics_;
  Counter* bootstraps_ = nullptr;
  Counter* boot_scripts_ = nullptr;
  Counter* version_mismatches_ = nullptr;
  Counter* actions_ = nullptr;
  Store* store_ = nullptr;
  std::deque<std::function<void()>> jobs_;  // data-store jobs not begun (see data_job)
  bool job_running_ = false;
  bool refresh_queued_ = false;
  bool loaded_ = false;
  std::string catalog_error_;
  std::shared_ptr<pvs::Streamer> streamer_;
  std::shared_ptr<pvs::Ledger> ledger_;
  bool renewing_ = false;
  bool stopped_ = false;
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

DESKFARM_PLUGIN(Pvs, "pvs", "2.0.0",
                "Provisioning Services: bootstrap over TFTP, vDisks over NBD by device MAC, write caches, versions, HA",
                provides, nullptr, pvs_schema)
