#pragma once
// A pvs deployment in this process: manifest in a temp dir, base images with known bytes, helpers to reach it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>

#include <deskfarm/interfaces/pvs/pvs.hpp>
#include <deskfarm/nbd/client.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "deployment.hpp"

namespace pvs_test {

using namespace deskfarm;
namespace dt = deskfarm::testing;
namespace api = deskfarm::interfaces::pvs;

inline constexpr const char* mac_a = "52:54:00:00:00:0a";
inline constexpr const char* mac_b = "52:54:00:00:00:0b";
inline constexpr const char* mac_p = "52:54:00:00:00:0c";  // private-mode device
inline constexpr std::size_t base_size = 8 << 20;

/// A free TCP port on 127.0.0.1 (for HA, where each bootstrap must name its peer before it starts).
inline std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

struct Lab {
  dt::TempDir dir{"pvs-test"};
  std::vector<std::string> lines;
  kernel::LogSink log{sdk::LogLevel::info};
  kernel::PluginCatalog catalog{{PLUGIN_DIR}};
  std::unique_ptr<kernel::Deployment> d;

  Lab() {
    log.capture([this](const std::string& l) { lines.push_back(l); });
    std::filesystem::create_directories(store());
    dt::write_file(store() / "gold.img", dt::pattern(base_size, 7));
  }
  ~Lab() {
    if (d) d->stop();
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
  kernel::Manifest manifest(const std::string& instances) {
    const std::string text = "[deployment]\nname = \"lab\"\nstate_dir = \"" + (dir.path() / "var").string() +
                             "\"\ndata_store = \"sqlite:" + (dir.path() / "ds.db").string() + "\"\n\n" + instances;
    dt::write_text(dir / "lab.toml", text);
    return kernel::load_manifest(dir / "lab.toml");
  }
  /// Instance "pvs-1" with the default vDisks; `extra` adds keys (store is always this lab's).
  std::string one(const std::string& extra = "") const {
    return pvs_instance("pvs-1", "store = \"" + store().string() + "\"\n" + extra);
  }
  void start(const std::string& extra = "") { start_instances(one(extra)); }
  /// Starts the deployment and waits until every instance has loaded its catalog from the data store (that
  /// happens on the blocking pool after start(); devices are refused as "still loading" until then).
  void start_instances(const std::string& instances) {
    d = std::make_unique<kernel::Deployment>(manifest(instances), catalog, log);
    d->start();
    for (const auto& name : d->start_order()) {
      INFO("instance " << name);
      REQUIRE(dt::eventually([&] { return text(status(name), "catalog") == "loaded"; }, std::chrono::seconds(30)));
    }
  }
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
      kernel::Deployment checked(manifest(instances), catalog, log);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  }

  sdk::Value status(const std::string& instance = "pvs-1") {
    sdk::Value out = sdk::Value::object();
    d->run_on(instance, [&](sdk::Plugin& p, sdk::Context&) { p.status(out); });
    return out;
  }
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

  /// Sends a typed request on the bus from inside `from` and hands the reply to `on_reply` there (no wait).
  template <class Req>
  void send(const std::string& subject, Req req, std::function<void(sdk::Reply<api::AdminReply>)> on_reply,
            const std::string& from = "pvs-1") {
    d->run_on(from, [&](sdk::Plugin&, sdk::Context& ctx) {
      sdk::request<Req, api::AdminReply>(ctx.bus(), subject, std::move(req), std::chrono::seconds(60), std::move(on_reply));
    });
  }
  /// A typed admin request to pvs.<instance>.admin.<action>; waits for the reply or the error.
  template <class Req>
  sdk::Reply<api::AdminReply> admin(const std::string& action, Req req, const std::string& instance = "pvs-1") {
    auto done = std::make_shared<std::promise<sdk::Reply<api::AdminReply>>>();
    auto fut = done->get_future();
    send(api::admin_subject(instance, action), std::move(req), [done](sdk::Reply<api::AdminReply> r) { done->set_value(std::move(r)); },
         instance);
    REQUIRE(fut.wait_for(std::chrono::seconds(90)) == std::future_status::ready);
    return fut.get();
  }
  /// device.reset of `mac` on `instance` (what a reboot does to the device's session); waits for the reply.
  sdk::Reply<api::ResetReply> reset(const std::string& mac, const std::string& instance = "pvs-1") {
    auto done = std::make_shared<std::promise<sdk::Reply<api::ResetReply>>>();
    auto fut = done->get_future();
    d->run_on(instance, [&](sdk::Plugin&, sdk::Context& ctx) {
      sdk::request<api::ResetDevice, api::ResetReply>(
          ctx.bus(), api::admin_subject(instance, "device.reset"), api::ResetDevice{mac}, std::chrono::seconds(30),
          [done](sdk::Reply<api::ResetReply> r) { done->set_value(std::move(r)); });
    });
    REQUIRE(fut.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
    return fut.get();
  }
};

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
