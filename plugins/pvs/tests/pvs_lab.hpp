#pragma once
// A pvs deployment in this process: manifest in a temp dir, base images with known bytes, helpers to reach it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <sstream>
#include <string>

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>

#include <catch2/catch.hpp>

#include <deskfarm/nbd/client.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "deployment.hpp"

namespace pvs_test {

using namespace deskfarm;
namespace dt = deskfarm::testing;

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
  /// Starts one instance "pvs-1" with the default vDisks; `extra` adds keys (store is always this lab's).
  void start(const std::string& extra = "") {
    start_instances(pvs_instance("pvs-1", "store = \"" + store().string() + "\"\n" + extra));
  }
  void start_instances(const std::string& instances) {
    d = std::make_unique<kernel::Deployment>(manifest(instances), catalog, log);
    d->start();
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

  Poco::JSON::Object::Ptr status(const std::string& instance = "pvs-1") {
    Poco::JSON::Object::Ptr out = new Poco::JSON::Object;
    d->run_on(instance, [&](sdk::Plugin& p, sdk::Context&) { p.status(*out); });
    return out;
  }
  std::uint16_t stream_port(const std::string& instance = "pvs-1") {
    return static_cast<std::uint16_t>(status(instance)->getValue<int>("stream_port"));
  }
  std::uint16_t tftp_port(const std::string& instance = "pvs-1") {
    return static_cast<std::uint16_t>(status(instance)->getValue<int>("tftp_port"));
  }
  nbd::Client connect(const std::string& export_name, const std::string& instance = "pvs-1") {
    return nbd::Client("127.0.0.1", stream_port(instance), export_name);
  }

  /// Sends an admin request on the bus (from inside the instance) and returns the JSON reply.
  Poco::JSON::Object::Ptr request(const std::string& subject, const std::string& json,
                                  const std::string& instance = "pvs-1") {
    auto done = std::make_shared<std::promise<std::string>>();
    auto fut = done->get_future();
    d->run_on(instance, [&](sdk::Plugin&, sdk::Context& ctx) {
      ctx.bus().request(sdk::make_message(subject, sdk::Text{json}), std::chrono::seconds(30),
                        [done](const sdk::Message* reply, std::string_view error) {
                          if (!reply) done->set_value("{\"ok\":false,\"error\":\"bus: " + std::string(error) + "\"}");
                          else done->set_value(sdk::body_as<sdk::Text>(*reply)->value);
                        });
    });
    REQUIRE(fut.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    return Poco::JSON::Parser().parse(fut.get()).extract<Poco::JSON::Object::Ptr>();
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
