// lhc_bench: how long a local host cache refresh of N server records takes, from an SQLite data store and from a
// PostgreSQL one, through the plugin's own code (plugins/ima/src/lhc.cpp: read the farm's records, replace the
// cache file's rows in one transaction), beside the same rows copied by the database's own command-line clients in
// the same run (`sqlite3` attaching the store; `psql \copy` piped into `sqlite3 .import`).
//   lhc_bench --work DIR [--rows N] [--repeat R] [--postgres 'host=… port=… user=… dbname=…']
// Our figure has no process start in it and the peer's has (one or two processes per copy): the peer's time for
// an empty copy is measured too and printed, so that the ratio can be read both ways.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <Poco/Data/PostgreSQL/Connector.h>
#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <Poco/Data/Transaction.h>
#include <Poco/Exception.h>

#include <deskfarm/sdk/store.hpp>

#include "../../../plugins/ima/src/lhc.hpp"
#include "../bench_cli.hpp"
#include "../nats/nats_bench_util.hpp"

namespace {

using Steady = std::chrono::steady_clock;
using namespace Poco::Data::Keywords;
namespace api = deskfarm::interfaces::ima;

double ms_since(Steady::time_point t0) { return std::chrono::duration<double, std::milli>(Steady::now() - t0).count(); }

using deskfarm::bench::fail;
using deskfarm::bench::median;

/// N records of farm "bench" in the store (replacing what it held).
void fill(Poco::Data::Session& s, long long rows) {
  deskfarm::ima::migrate_store(s);
  Poco::Data::Transaction tx(s);
  s << "DELETE FROM ima_servers", now;
  std::vector<std::string> farm, instance, zone, preference, version;
  std::vector<Poco::Int64> host_id, updated;
  for (long long i = 0; i < rows; ++i) {
    farm.push_back("bench");
    instance.push_back("server-" + std::to_string(100000 + i));
    zone.push_back("zone-" + std::to_string(i % 10));
    host_id.push_back(i + 1);
    preference.push_back("default");
    version.push_back("1.0.0");
    updated.push_back(1764000000000 + i);
  }
  s << deskfarm::sdk::sql(s, "INSERT INTO ima_servers (farm, instance, zone, host_id, preference, version, updated_ms) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)"),
      use(farm), use(instance), use(zone), use(host_id), use(preference), use(version), use(updated), now;
  tx.commit();
}

/// Median ms of a refresh (read the farm, replace the cache) on one open session, as a pooled one is.
double ours(Poco::Data::Session& store, const deskfarm::ima::LocalHostCache& cache, long long rows, long long repeat) {
  std::vector<double> t;
  for (long long i = 0; i < repeat; ++i) {
    const auto t0 = Steady::now();
    auto servers = deskfarm::ima::read_farm(store, "bench");
    cache.replace(servers, 1764000000000 + i);
    t.push_back(ms_since(t0));
    if (static_cast<long long>(servers.size()) != rows) fail("read " + std::to_string(servers.size()) + " records, not " + std::to_string(rows));
  }
  return median(t);
}

/// Median ms of `command` through /bin/sh; it must exit 0.
double peer(const std::string& command, long long repeat) {
  std::vector<double> t;
  for (long long i = 0; i < repeat; ++i) {
    const auto t0 = Steady::now();
    if (std::system(command.c_str()) != 0) fail("peer command failed: " + command);
    t.push_back(ms_since(t0));
  }
  return median(t);
}

long long cache_rows(const std::filesystem::path& file) {
  Poco::Data::Session s("SQLite", file.string());
  Poco::Int64 n = 0;
  s << "SELECT COUNT(*) FROM lhc_servers", into(n), now;
  return n;
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

}  // namespace

int run(int argc, char** argv) {
  namespace po = boost::program_options;
  po::options_description desc("lhc_bench options");
  desc.add_options()("work", po::value<std::string>()->required(), "a scratch directory")(
      "rows", po::value<long long>()->default_value(1000), "server records in the farm")(
      "repeat", po::value<long long>()->default_value(20), "refreshes per case (the median is printed)")(
      "postgres", po::value<std::string>()->default_value(""), "a PostgreSQL connection string (libpq keywords) to measure too (lhc.sh starts a server)");
  const auto usage = [&](const std::string& error) {
    std::fprintf(stderr, "lhc_bench: %s\n", error.c_str());
    std::exit(2);
  };
  const auto vm = deskfarm::bench::parse_command_line(argc, argv, desc, {}, usage);
  const auto rows = deskfarm::bench::checked_integer(vm, "rows", 1, 1'000'000, usage);
  const auto repeat = deskfarm::bench::checked_integer(vm, "repeat", 1, 10'000, usage);
  const std::filesystem::path work = vm["work"].as<std::string>();
  const auto postgres = vm["postgres"].as<std::string>();
  Poco::Data::SQLite::Connector::registerConnector();
  Poco::Data::PostgreSQL::Connector::registerConnector();
  std::filesystem::create_directories(work);

  const auto store_file = work / "store.db", ours_file = work / "lhc.db", peer_file = work / "peer.db";
  deskfarm::ima::LocalHostCache cache(ours_file), peer_cache(peer_file);
  cache.recreate({}, 0);
  peer_cache.recreate({}, 0);  // the same schema for the peer to fill
  const std::string sqlite_copy =
      "sqlite3 " + quoted(peer_file.string()) + " \"ATTACH " + quoted(store_file.string()) +
      " AS s; BEGIN; DELETE FROM lhc_servers; INSERT INTO lhc_servers SELECT farm, instance, zone, host_id, preference, "
      "version FROM s.ima_servers WHERE farm = 'bench' ORDER BY instance; COMMIT;\"";
  const std::string sqlite_empty = "sqlite3 " + quoted(peer_file.string()) + " 'SELECT 1;' >/dev/null";

  std::printf("local host cache refresh, %lld records, median of %lld\n", rows, repeat);
  std::printf("%-12s %12s %18s %20s %10s\n", "store", "ours ms", "CLI copy ms", "CLI start only ms", "ratio");
  {
    Poco::Data::Session s("SQLite", store_file.string());
    fill(s, rows);
    const double a = ours(s, cache, rows, repeat);
    if (cache_rows(ours_file) != rows) fail("our cache does not hold every record");
    const double b = peer(sqlite_copy, repeat);
    if (cache_rows(peer_file) != rows) fail("the sqlite3 copy does not hold every record");
    const double c = peer(sqlite_empty, repeat);
    std::printf("%-12s %12.2f %18.2f %20.2f %9.2fx\n", "SQLite", a, b, c, b / a);
  }
  if (!postgres.empty()) {
    Poco::Data::Session s("PostgreSQL", postgres);
    fill(s, rows);
    const double a = ours(s, cache, rows, repeat);
    if (cache_rows(ours_file) != rows) fail("our cache does not hold every record");
    const std::string copy = "psql -qAt " + quoted(postgres) +
                             " -c \"\\copy (SELECT farm, instance, zone, host_id, preference, version FROM ima_servers "
                             "WHERE farm = 'bench' ORDER BY instance) TO STDOUT WITH CSV\" | sqlite3 " +
                             quoted(peer_file.string()) + " 'DELETE FROM lhc_servers;' '.import --csv /dev/stdin lhc_servers'";
    const double b = peer(copy, repeat);
    if (cache_rows(peer_file) != rows) fail("the psql | sqlite3 copy does not hold every record");
    const double c = peer("psql -qAt " + quoted(postgres) + " -c 'SELECT 1' >/dev/null && " + sqlite_empty, repeat);
    std::printf("%-12s %12.2f %18.2f %20.2f %9.2fx\n", "PostgreSQL", a, b, c, b / a);
  } else {
    std::printf("PostgreSQL: not measured (no --postgres; lhc.sh starts a private server when it is installed)\n");
  }
  std::printf("ratio: the CLI copy's time over ours (above 1: ours is faster; the CLI's includes its process start)\n");
  return 0;
}

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  try {
    return run(argc, argv);
  } catch (const Poco::Exception& e) {
    fail(e.displayText());
  } catch (const std::exception& e) {
    fail(e.what());
  }
}
