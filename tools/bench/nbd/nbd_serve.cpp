// nbd_serve: serves one raw image with deskfarm::nbd (bench peer for nbdkit and qemu-nbd).
//   nbd_serve FILE [--port N] [--name NAME] [--max-connections N] [--cow [--ram-mib N] [--cache-dir DIR]]
// Prints "port N" once listening; runs until SIGINT/SIGTERM. --help lists the options.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <string>

#include <boost/program_options.hpp>

#include "../bench_cli.hpp"

#include "deskfarm/nbd/server.hpp"
#include "deskfarm/nbd/write_cache.hpp"

using namespace deskfarm::nbd;
namespace po = boost::program_options;

namespace {

const char* synopsis =
    "usage: nbd_serve FILE [--port N] [--name NAME] [--max-connections N] [--cow [--ram-mib N] [--cache-dir DIR]]\n";

[[noreturn]] void usage(const std::string& why, const po::options_description& options) {
  std::cerr << "nbd_serve: " << why << "\n" << synopsis << options;
  std::exit(2);
}

// Integer flags are read as long long and range-checked here: po alone would read "--port=-1" as 65535.
long long checked(const po::variables_map& vm, const char* flag, long long low, long long high,
                  const po::options_description& options) {
  return deskfarm::bench::checked_integer(vm, flag, low, high, [&](const std::string& why) { usage(why, options); });
}

}  // namespace

int main(int argc, char** argv) {
  ServerOptions options;
  WriteCacheOptions cache;
  po::options_description flags("options");
  flags.add_options()
      ("help,h", "print this help and exit")
      ("port", po::value<long long>()->value_name("N")->default_value(options.port),
       "TCP port on 127.0.0.1; 0 = ephemeral (the bound port is printed as \"port N\" on stdout)")
      ("name", po::value<std::string>()->value_name("NAME"), "serve only this export name (default: any name)")
      ("max-connections", po::value<long long>()->value_name("N")->default_value(0),
       "connections held at once; 0 = as many as the descriptor limit fits at two each (this tool needs one each)")
      ("cow", "copy-on-write: one RAM write cache over the read-only image, shared by all connections")
      ("ram-mib", po::value<long long>()->value_name("N")->default_value(static_cast<long long>(cache.ram_limit >> 20)),
       "with --cow: MiB of written blocks kept in RAM before overflowing to --cache-dir")
      ("cache-dir", po::value<std::string>()->value_name("DIR"), "with --cow: overflow directory (default: RAM only)");
  po::options_description hidden;
  hidden.add_options()("file", po::value<std::string>());
  po::options_description all;
  all.add(flags).add(hidden);
  po::positional_options_description positional;
  positional.add("file", 1);
  const auto vm = deskfarm::bench::parse_command_line(argc, argv, all, positional, [&](const std::string& why) { usage(why, flags); });
  if (vm.count("help")) {
    std::cout << "nbd_serve: serves one raw image over NBD until SIGINT/SIGTERM.\n" << synopsis << flags;
    return 0;
  }
  if (!vm.count("file")) usage("FILE is required", flags);
  const std::string file = vm["file"].as<std::string>();
  const std::string name = vm.count("name") ? vm["name"].as<std::string>() : std::string();
  const bool cow = vm.count("cow") != 0;
  options.port = static_cast<std::uint16_t>(checked(vm, "port", 0, 65535, flags));
  cache.ram_limit = static_cast<std::uint64_t>(checked(vm, "ram-mib", 0, std::numeric_limits<long long>::max() >> 20, flags))
                    << 20;
  options.max_connections = static_cast<std::size_t>(checked(vm, "max-connections", 0, 1 << 20, flags));
  if (vm.count("cache-dir")) cache.cache_dir = vm["cache-dir"].as<std::string>();
  // Block the stop signals before any thread exists so that only sigwait below sees them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  try {
    std::shared_ptr<Export> exp = std::make_shared<FileExport>(file, true);
    if (cow) exp = std::make_shared<WriteCache>(exp, cache);  // one overlay for all connections, like nbdkit's cow
    options.log = [](std::string_view line) { std::cerr << line << '\n'; };
    Server server(options, [exp, name](std::string_view n, std::string_view) -> Resolution {
      if (!name.empty() && n != name) return {nullptr, "unknown export"};
      return {exp, {}};
    });
    server.start();
    std::printf("port %u\n", server.bound_port());
    std::fflush(stdout);
    int sig = 0;
    sigwait(&stop, &sig);
    server.stop();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
