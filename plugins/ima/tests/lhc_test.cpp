// ima's data store and local host cache on the virtual clock: each server's record reaches the store and every
// server's cache; a change in the store reaches the cache after dcn_poll_s, at once on refreshlhc and on another
// server's change notification; with the store unreachable a server works from its cache until lhc_max_age_h,
// then is degraded and stands in no election until the store is back; a corrupt cache is rebuilt at start (start
// fails when the store cannot rebuild it); recreatelhc rebuilds it on demand.
#include <catch2/catch.hpp>

#include <fstream>

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>

#include <deskfarm/interfaces/ima/ima.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/net.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

namespace {

using namespace std::chrono_literals;
using namespace Poco::Data::Keywords;
namespace api = deskfarm::interfaces::ima;
using deskfarm::sdk::Empty;
using deskfarm::testing::eventually;
using deskfarm::testing::Harness;
using deskfarm::testing::TempDir;

std::string server(const std::string& name, const std::string& zone, const std::string& extra = "") {
  return "[instances." + name + "]\nplugin = \"ima\"\nfarm = \"corp\"\nzone = \"" + zone + "\"\n" + extra + "\n";
}

/// A deployment in `dir` (its store and caches outlive the Harness); `data_store` "" is the default SQLite file.
std::unique_ptr<Harness> deploy(const TempDir& dir, const std::string& instances, const std::string& data_store = "") {
  deskfarm::testing::HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR};
  o.clock = "virtual";
  o.state_dir = dir.path();
  std::string toml = "[deployment]\nname = \"harness\"\n";
  if (!data_store.empty()) toml += "data_store = \"" + data_store + "\"\n";
  return std::make_unique<Harness>(toml + instances, o);
}

/// A PostgreSQL URL where no server listens: a data store that is down.
std::string stopped_postgres() {
  return "postgresql://deskfarm@127.0.0.1:" + std::to_string(deskfarm::testing::free_port()) + "/postgres";
}

Poco::Data::Session sqlite(const std::filesystem::path& file) {
  Poco::Data::SQLite::Connector::registerConnector();
  Poco::Data::Session s("SQLite", file.string());
  s << "PRAGMA busy_timeout = 5000", now;
  return s;
}

std::filesystem::path store_file(const TempDir& dir) { return dir / "datastore.db"; }
std::filesystem::path cache_file(const Harness& h, const std::string& instance) { return h.state_dir() / instance / "lhc.db"; }

/// instance → zone, as the file (the data store or a cache) holds the farm's servers.
std::map<std::string, std::string> zones_in(const std::filesystem::path& file, const std::string& table) {
  std::vector<std::string> instances, zones;
  auto s = sqlite(file);
  s << "SELECT instance, zone FROM " + table + " ORDER BY instance", into(instances), into(zones), now;
  std::map<std::string, std::string> out;
  for (std::size_t i = 0; i < instances.size(); ++i) out[instances[i]] = zones[i];
  return out;
}

void add_to_store(const TempDir& dir, const std::string& instance, const std::string& zone) {
  auto s = sqlite(store_file(dir));
  s << "INSERT INTO ima_servers (farm, instance, zone, host_id, preference, version, updated_ms) "
       "VALUES ('corp', ?, ?, 7, 'default', '1.0.0', 0)",
      bind(instance), bind(zone), now;
}

std::string lhc_state(Harness& h, const std::string& instance) { return h.instance_status(instance)["lhc"].as_string(); }
std::int64_t lhc_servers(Harness& h, const std::string& instance) { return h.instance_status(instance)["lhc_servers"].as_integer(); }

deskfarm::sdk::Reply<api::Lhc> admin(Harness& h, const std::string& instance, const std::string& request) {
  return h.request<Empty, api::Lhc>(api::subject(instance, "admin." + request), {});
}

deskfarm::sdk::Health health(Harness& h, const std::string& instance) {
  auto out = std::make_shared<deskfarm::sdk::Health>();
  h.run_on(instance, [out](deskfarm::sdk::Plugin& p, deskfarm::sdk::Context&) { *out = p.health(); });
  return *out;
}

void write_garbage(const std::filesystem::path& file) {
  for (const char* suffix : {"-wal", "-shm", "-journal"}) std::filesystem::remove(file.string() + suffix);
  std::ofstream(file, std::ios::binary | std::ios::trunc) << std::string(4096, '\x5a') << "not a database";
}

/// Starts a deployment of one server "srv" in `dir` and stops it once its record is in the store and its cache.
void seed(const TempDir& dir) {
  auto h = deploy(dir, server("srv", "hq"));
  h->start();
  h->await_status("srv", "lhc", api::kLhcFresh);
}

}  // namespace

TEST_CASE("each server's record reaches the data store and every server's local host cache") {
  TempDir dir("deskfarm-lhc");
  auto h = deploy(dir, server("hq-1", "hq", "host_id = 11") + server("br-1", "branch", "host_id = 12"));
  h->start();
  h->advance(1s);
  // hq-1's first refresh may read before br-1 wrote its record; br-1's change notification refreshes it.
  REQUIRE(eventually([&] { return lhc_servers(*h, "hq-1") == 2 && lhc_servers(*h, "br-1") == 2; }, 20s));
  const std::map<std::string, std::string> both{{"br-1", "branch"}, {"hq-1", "hq"}};
  CHECK(zones_in(store_file(dir), "ima_servers") == both);
  CHECK(zones_in(cache_file(*h, "hq-1"), "lhc_servers") == both);
  CHECK(zones_in(cache_file(*h, "br-1"), "lhc_servers") == both);
  CHECK(lhc_state(*h, "hq-1") == api::kLhcFresh);

  // A change of static data (a zone move) is written to the store and announced: the other cache has it at once,
  // with no virtual time passing (dcn_poll_s is 30 minutes).
  REQUIRE(h->request<api::ZoneMove, Empty>(api::subject("hq-1", "admin.zone"), api::ZoneMove{"branch"}));
  CHECK(eventually([&] { return zones_in(cache_file(*h, "br-1"), "lhc_servers")["hq-1"] == "branch"; }, 20s));
  CHECK(zones_in(store_file(dir), "ima_servers")["hq-1"] == "branch");
}

TEST_CASE("a record changed in the data store reaches the cache after dcn_poll_s, and at once on refreshlhc") {
  TempDir dir("deskfarm-lhc");
  auto h = deploy(dir, server("srv", "hq", "dcn_poll_s = 60"));
  h->start();
  h->await_status("srv", "lhc", api::kLhcFresh);
  REQUIRE(lhc_servers(*h, "srv") == 1);

  add_to_store(dir, "far-1", "east");  // another process's server
  h->advance(59s);
  CHECK(lhc_servers(*h, "srv") == 1);  // not polled yet
  h->advance(2s);
  CHECK(eventually([&] { return lhc_servers(*h, "srv") == 2; }, 20s));
  CHECK(zones_in(cache_file(*h, "srv"), "lhc_servers")["far-1"] == "east");

  add_to_store(dir, "far-2", "west");
  auto r = admin(*h, "srv", "refreshlhc");
  REQUIRE(r);
  CHECK(r->state == api::kLhcFresh);
  REQUIRE(r->servers.size() == 3);
  CHECK(r->servers[1].instance == "far-2");
  CHECK(r->servers[1].zone == "west");
  CHECK(r->age_s == 0);
  CHECK(zones_in(cache_file(*h, "srv"), "lhc_servers").size() == 3);
}

TEST_CASE("the data store down: a server works from its cache for lhc_max_age_h, then is degraded and stands in no election") {
  TempDir dir("deskfarm-lhc");
  seed(dir);
  auto h = deploy(dir, server("srv", "hq"), stopped_postgres());
  h->start();
  h->await_status("srv", "lhc", api::kLhcStale);
  CHECK(h->logged("data store unreachable"));
  CHECK(lhc_servers(*h, "srv") == 1);  // from the cache
  h->advance(1s);
  REQUIRE(h->instance_status("srv")["is_zdc"].as_bool());  // it serves: its zone's collector
  auto refused = admin(*h, "srv", "refreshlhc");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == "unavailable");
  CHECK(refused.error().message.find("lhc.db was kept") != std::string::npos);

  for (int hour = 1; hour < 96; ++hour) h->advance(1h);
  auto st = h->instance_status("srv");
  CHECK(st["lhc"].as_string() == api::kLhcStale);
  CHECK(st["lhc_age_s"].as_integer() >= 95 * 3600);
  CHECK(st["is_zdc"].as_bool());
  CHECK(health(*h, "srv") == deskfarm::sdk::Health::ok);
  const auto metrics = h->metrics_text();
  const std::string age_series = "\ndeskfarm_ima_lhc_age_seconds{instance=\"srv\"} ";
  const auto at = metrics.find(age_series);
  REQUIRE(at != std::string::npos);
  CHECK(std::stod(metrics.substr(at + age_series.size())) >= 95 * 3600);

  h->advance(1h + 10s);  // 96 h since the last good refresh
  st = h->instance_status("srv");
  CHECK(st["lhc"].as_string() == api::kLhcExpired);
  CHECK_FALSE(st["is_zdc"].as_bool());
  CHECK(health(*h, "srv") == deskfarm::sdk::Health::degraded);
  CHECK(h->logged("takes no part in elections"));
  auto elect = h->request<Empty, api::Collectors>(api::subject("srv", "admin.elect"), {});
  REQUIRE_FALSE(elect);
  CHECK(elect.error().code == "unavailable");
  h->advance(10s);  // its ticks call no election
  CHECK(h->instance_status("srv")["zdc"].as_string().empty());
  CHECK(lhc_servers(*h, "srv") == 1);  // the cache itself is still there
}

TEST_CASE("a corrupt local host cache is rebuilt from the data store at start, and start fails without the store") {
  TempDir dir("deskfarm-lhc");
  seed(dir);
  write_garbage(dir / "srv" / "lhc.db");
  {
    auto h = deploy(dir, server("srv", "hq"), stopped_postgres());
    try {
      h->start();
      FAIL("start succeeded with a corrupt cache and no data store");
    } catch (const std::runtime_error& e) {
      const std::string what = e.what();
      CHECK(what.find((dir / "srv" / "lhc.db").string()) != std::string::npos);
      CHECK(what.find("is corrupt") != std::string::npos);
      CHECK(what.find("bring the data store back") != std::string::npos);
    }
  }
  auto h = deploy(dir, server("srv", "hq"));
  h->start();
  CHECK(h->logged("is corrupt"));
  CHECK(h->logged("rebuilt from the data store: 1 servers"));
  CHECK(lhc_state(*h, "srv") == api::kLhcFresh);
  CHECK(zones_in(cache_file(*h, "srv"), "lhc_servers") == std::map<std::string, std::string>{{"srv", "hq"}});
}

TEST_CASE("recreatelhc deletes the cache file and rebuilds it from the data store") {
  TempDir dir("deskfarm-lhc");
  auto h = deploy(dir, server("srv", "hq"));
  h->start();
  h->await_status("srv", "lhc", api::kLhcFresh);
  add_to_store(dir, "far-1", "east");
  write_garbage(cache_file(*h, "srv"));
  auto r = admin(*h, "srv", "recreatelhc");
  REQUIRE(r);
  CHECK(r->servers.size() == 2);
  CHECK(r->file == cache_file(*h, "srv").string());
  CHECK(zones_in(cache_file(*h, "srv"), "lhc_servers") == std::map<std::string, std::string>{{"far-1", "east"}, {"srv", "hq"}});
  CHECK(h->logged("recreated from the data store (2 servers)"));
}

TEST_CASE("the data store back after the cache expired: a refresh makes the server whole, and it stands in elections again") {
  TempDir dir("deskfarm-lhc");
  // The store's directory is a plain file: every session fails until the test puts a directory there.
  const auto blocker = dir / "store";
  std::ofstream(blocker) << "not a directory";
  auto h = deploy(dir, server("srv", "hq", "lhc_max_age_h = 1"), "sqlite:" + (blocker / "store.db").string());
  h->start();
  h->await_status("srv", "lhc", api::kLhcStale);
  h->advance(1h + 10s);
  REQUIRE(lhc_state(*h, "srv") == api::kLhcExpired);
  REQUIRE_FALSE(h->instance_status("srv")["is_zdc"].as_bool());

  std::filesystem::remove(blocker);
  std::filesystem::create_directory(blocker);
  auto back = admin(*h, "srv", "refreshlhc");
  REQUIRE(back);
  CHECK(back->state == api::kLhcFresh);
  CHECK(back->age_s == 0);
  REQUIRE(back->servers.size() == 1);  // its own record, written to the new store first
  CHECK(health(*h, "srv") == deskfarm::sdk::Health::ok);
  CHECK(h->logged("data store reachable again"));
  h->advance(1s);  // the election it called on coming back
  CHECK(h->instance_status("srv")["is_zdc"].as_bool());
}
