#pragma once
// A pvs deployment in this process: manifest in a temp dir, base images with known bytes, helpers to reach it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <optional>
#include <string>

#include <catch2/catch.hpp>

#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/interfaces/pvs/pvs.hpp>
#include <deskfarm/nbd/client.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/net.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

namespace pvs_test {

using namespace deskfarm;
namespace dt = deskfarm::testing;
namespace api = deskfarm::interfaces::pvs;

inline constexpr const char* mac_a = "52:54:00:00:00:0a";
inline constexpr const char* mac_b = "52:54:00:00:00:0b";
inline constexpr const char* mac_p = "52:54:00:00:00:0c";  // private-mode device
inline constexpr std::size_t base_size = 8 << 20;

/// A free TCP port on 127.0.0.1 (for HA, where each bootstrap must name its peer before it starts).
inline std::uint16_t free_port() { return dt::free_port(SOCK_STREAM); }

struct Lab {
  dt::TempDir dir{"pvs-test"};
  std::unique_ptr<dt::Harness> h;  // the deployment, through the SDK's test kit

  Lab() {
    std::filesystem::create_directories(store());
    dt::write_file(store() / "gold.img", dt::pattern(base_size, 7));
  }
  std::filesystem::path store() const { return dir.path() / "vdisks"; }
  std::filesystem::path base() const { return store() / "gold.img"; }

  /// Default instance body: both devices on "gold" (standard), one private device on "solo".
  static std::string pvs_instance(const std::string& name, const std::string& extra = "") {
    return "[instances." + name + "]\nplugin = \"pvs\"\ntftp = \"127.0.0.1:0\"\nstream = \"127.0.0.1:0\"\n" + extra +
           "\nvdisks = [ { name = \"gold\", file = \"gold.img\" }, { name = \"solo\", size_mb = 4, mode = \"private\" } ]\n"
           "devices = [ { mac = \"" + mac_a + "\", vdisk = \"gold\", name = \"desk-a\" },\n"
           "            { mac = \"" + mac_b + "\", vdisk = \"gold\", name = \"desk-b\", type = \"test\" },\n"
           "            { mac = \"" + mac_p + "\", vdisk = \"solo\", name = \"desk-p\" } ]\n";
  }
  /// The manifest text; error messages name it lab.toml.
  /// `state`: the deployment's state directory under the lab (a second deployment on the same data store — an HA
  /// peer in another process — needs its own).
  std::string manifest(const std::string& instances, const std::string& state = "var") const {
    return "[deployment]\nname = \"lab\"\nstate_dir = \"" + (dir.path() / state).string() +
           "\"\ndata_store = \"sqlite:" + (dir.path() / "ds.db").string() + "\"\n\n" + instances;
  }
  /// Validates the manifest and loads the plugin (what `deskfarm check` runs); starts nothing.
  std::unique_ptr<dt::Harness> harness(const std::string& instances, const std::string& state = "var") const {
    dt::HarnessOptions o;
    o.plugin_path = {PLUGIN_DIR};
    o.source_name = "lab.toml";
    return std::make_unique<dt::Harness>(manifest(instances, state), o);
  }
  /// Instance "pvs-1" with the default vDisks; `extra` adds keys (store is always this lab's).
  std::string one(const std::string& extra = "") const {
    return pvs_instance("pvs-1", "store = \"" + store().string() + "\"\n" + extra);
  }
  void start(const std::string& extra = "") { start_instances(one(extra)); }
  /// Starts the deployment and waits until every instance has loaded its catalog from the data store (that
  /// happens on the blocking pool after start(); devices are refused as "still loading" until then).
  void start_instances(const std::string& instances) {
    h = harness(instances);
    h->start();
    for (const auto& name : h->instances()) h->await_status(name, "catalog", "loaded");
  }
  /// Stops the deployment and forgets it (a restart is another start()).
  void stop() { h.reset(); }
  /// The error text of a deployment that fails to start.
  std::string start_error(const std::string& extra) {
    try {
      start(extra);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  }
  /// The error text of a manifest refused while the deployment is only constructed: what `deskfarm check` runs.
  std::string check_error(const std::string& instances) {
    try {
      (void)harness(instances);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  }

  sdk::Value status(const std::string& instance = "pvs-1") { return h->instance_status(instance); }
  static std::int64_t integer(const sdk::Value& v, std::string_view key) {
    const auto* f = v.find(key);
    INFO("status field " << key << " in " << v.to_json());
    REQUIRE(f);
    return f->as_integer();
  }
  static std::string text(const sdk::Value& v, std::string_view key) {
    const auto* f = v.find(key);
    return f && f->is_string() ? f->as_string() : std::string();
  }
  std::int64_t status_int(const std::string& key, const std::string& instance = "pvs-1") {
    return integer(status(instance), key);
  }
  /// The version devices boot of the first vDisk (by name) in the status.
  std::int64_t production(const std::string& instance = "pvs-1") {
    return integer(status(instance).find("vdisks")->as_array().at(0), "production");
  }
  std::uint16_t stream_port(const std::string& instance = "pvs-1") {
    return static_cast<std::uint16_t>(status_int("stream_port", instance));
  }
  std::uint16_t tftp_port(const std::string& instance = "pvs-1") {
    return static_cast<std::uint16_t>(status_int("tftp_port", instance));
  }
  nbd::Client connect(const std::string& export_name, const std::string& instance = "pvs-1") {
    return nbd::Client("127.0.0.1", stream_port(instance), export_name);
  }

  /// A typed admin request to pvs.<instance>.admin.<action> from the harness's bus client; waits for the
  /// reply or the error.
  template <class Req>
  sdk::Reply<api::AdminReply> admin(const std::string& action, Req req, const std::string& instance = "pvs-1") {
    return h->request<Req, api::AdminReply>(api::admin_subject(instance, action), std::move(req), std::chrono::seconds(60));
  }
  /// device.reset of `mac` on `instance` (what a reboot does to the device's session); waits for the reply.
  sdk::Reply<api::ResetReply> reset(const std::string& mac, const std::string& instance = "pvs-1") {
    return h->request<api::ResetDevice, api::ResetReply>(api::admin_subject(instance, "device.reset"), api::ResetDevice{mac},
                                                         std::chrono::seconds(30));
  }
};

/// What a hypervisor adapter publishes on `h`'s bus when VM "vm-a" (NIC `mac`) changes power state.
inline void power_event(dt::Harness& h, const std::string& mac, const std::string& previous, const std::string& state) {
  namespace hv = deskfarm::interfaces::hypervisor;
  hv::PowerStateEvent e;
  e.vm = "vm-a";
  e.mac = mac;
  e.previous = previous;
  e.state = state;
  e.adapter = "hv-test";
  h.publish(hv::power_subject("hv-test", "vm-a"), e);
}

inline std::vector<std::byte> fill(std::size_t n, unsigned char v) { return std::vector<std::byte>(n, std::byte{v}); }

/// Reads [off, off+len) through a client; REQUIREs success.
inline std::vector<std::byte> read_all(nbd::Client& c, std::uint64_t off, std::size_t len) {
  std::vector<std::byte> out(len);
  for (std::size_t done = 0; done < len;) {
    const std::size_t n = std::min<std::size_t>(len - done, 4 << 20);
    REQUIRE(c.read(off + done, std::span(out.data() + done, n)) == 0);
    done += n;
  }
  return out;
}

inline std::vector<std::byte> slice(const std::vector<std::byte>& v, std::size_t off, std::size_t len) {
  return {v.begin() + static_cast<std::ptrdiff_t>(off), v.begin() + static_cast<std::ptrdiff_t>(off + len)};
}

}  // namespace pvs_test
