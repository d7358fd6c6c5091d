#pragma once
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <toml++/toml.h>

#include "deskfarm/sdk/clock.hpp"
#include "diagnostics.hpp"

namespace deskfarm::kernel {

/// One plugin instance after includes, overlays, `count` expansion and ${ENV} substitution.
struct InstanceSpec {
  std::string name;
  Location where;
  std::string plugin;
  Location plugin_where;
  std::vector<std::pair<std::string, Location>> requires_instances;
  toml::table config;  ///< every key except plugin/requires/count
  /// Where each top-level config key and its value were written (copies of toml nodes lose their positions).
  std::map<std::string, Location> key_where;
  std::map<std::string, Location> value_where;
};

/// A deployment as written in TOML. See configs/README.md for the format.
struct Manifest {
  std::filesystem::path file;
  std::string name;
  std::string data_store;
  /// A PostgreSQL streaming replica of data_store, the nearest to this deployment: read sessions go there.
  std::string data_store_replica;
  std::string bus = "inproc";  ///< or "nats://host:port[,host:port…]": the bus across processes
  std::vector<std::string> bus_servers;  ///< the NATS servers of `bus`, each "nats://host:port" or "tls://…"
  std::string nats_user;
  std::string nats_password;  ///< a secret: write it as "${ENV}"
  std::string nats_token;     ///< a secret: write it as "${ENV}"
  std::string nats_ca;        ///< PEM file of the CA of the servers' certificates (turns TLS on)
  std::string nats_cert;      ///< PEM client certificate, with nats_key, for servers that verify clients
  std::string nats_key;
  std::size_t nats_reconnect_buffer_kb = 8192;
  std::chrono::milliseconds nats_reconnect_wait{250};
  std::string clock = "real";
  std::optional<sdk::TimePoint> clock_start;
  std::string admin = "127.0.0.1:0";
  std::string admin_token;  ///< required for a non-loopback admin address; write it as "${ENV}"
  unsigned admin_workers = 2;        ///< admin endpoint threads answering GET and starting bus requests
  std::size_t admin_inflight = 256;  ///< bus requests through the admin endpoint waiting for a reply; 503 beyond
  std::filesystem::path state_dir;
  unsigned workers = 0;
  unsigned blocking_workers = 4;      ///< threads for plugins' blocking work (run_blocking)
  std::size_t blocking_queue = 1024;  ///< blocking jobs that may wait before more are refused
  std::chrono::milliseconds bus_block_timeout{1000};
  std::chrono::seconds start_timeout{30};
  std::chrono::seconds stop_timeout{30};
  std::vector<std::string> plugin_path;
  std::vector<InstanceSpec> instances;
};

/// Looks up an environment variable; replaceable in tests.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup process_environment();

/// Reads a manifest file (and its includes). Throws ValidationError listing every problem with file:line:column.
Manifest load_manifest(const std::filesystem::path& file, const EnvLookup& env = process_environment());
/// Same, from text (for tests and the fuzzer); includes resolve relative to `base_dir`.
Manifest load_manifest_text(std::string_view text, const std::string& source_name, const EnvLookup& env,
                            const std::filesystem::path& base_dir = ".");

/// Splits and checks a `bus = "nats://host:port[,host:port…]"` value into `servers` (a later server may leave
/// out its scheme); empty when it is well formed, else what is wrong (passwords masked).
std::string parse_nats_servers(const std::string& bus, std::vector<std::string>& servers);

/// True when a manifest value has a config schema type (a dk_value_type).
bool type_fits(const toml::node& node, std::uint32_t type);
/// "string", "integer", "float", "boolean", "array", "table" or "date/time".
std::string type_of(const toml::node& node);

/// file:line:column of a toml node.
Location location_of(const toml::node& node);
Location location_of(const toml::source_region& region);

}  // namespace deskfarm::kernel
