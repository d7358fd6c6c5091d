// tftp_serve: serves one directory with deskfarm::tftp until SIGINT/SIGTERM (bench driver and manual tests).
// usage: tftp_serve --root DIR [--address 127.0.0.1] [--port 0] [--max-blksize 1468] [--max-windowsize 16]
//                   [--max-transfers 1024] [--verbose]      (--help lists them)
// Prints "port N" on stdout once listening, so a driver can start it on port 0.
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <string>
#include <string_view>

#include <unistd.h>

#include <boost/program_options.hpp>

#include "../bench_cli.hpp"

#include "deskfarm/tftp/server.hpp"

namespace po = boost::program_options;

namespace {

volatile std::sig_atomic_t stop_requested = 0;
void on_signal(int) { stop_requested = 1; }

const char* synopsis = "usage: tftp_serve --root DIR [OPTIONS]\n";

[[noreturn]] void usage(const std::string& why, const po::options_description& options) {
  std::cerr << "tftp_serve: " << why << "\n" << synopsis << options;
  std::exit(2);
}

// Integer flags are read as long long and range-checked here: po alone would read "--port=-1" as 65535.
template <class T>
T checked(const po::variables_map& vm, const char* flag, long long low, long long high,
          const po::options_description& options) {
  return static_cast<T>(deskfarm::bench::checked_integer(vm, flag, low, high, [&](const std::string& why) { usage(why, options); }));
}

}  // namespace

int main(int argc, char** argv) {
  deskfarm::tftp::ServerOptions options;
  const auto u16 = static_cast<long long>(std::numeric_limits<std::uint16_t>::max());
  po::options_description flags("options");
  flags.add_options()
      ("help,h", "print this help and exit")
      ("root", po::value<std::string>()->value_name("DIR"), "directory to serve (required)")
      ("address", po::value<std::string>()->value_name("IP")->default_value(options.address),
       "IP literal to listen on, optionally with a port: 127.0.0.1, [::1], [::]:6969")
      ("port", po::value<long long>()->value_name("N")->default_value(options.port),
       "UDP port; 0 = ephemeral (the bound port is printed as \"port N\" on stdout)")
      ("max-blksize", po::value<long long>()->value_name("N")->default_value(options.max_blksize),
       "cap for the blksize option, 0..65535")
      ("max-windowsize", po::value<long long>()->value_name("N")->default_value(options.max_windowsize),
       "cap for the windowsize option, 0..65535")
      ("max-transfers", po::value<long long>()->value_name("N")->default_value(
                            static_cast<long long>(options.max_transfers)),
       "concurrent transfers; more RRQs get \"server busy\"")
      ("verbose", "print the server's log lines on stderr");
  const po::positional_options_description no_operands;  // every argument is a flag
  const auto vm = deskfarm::bench::parse_command_line(argc, argv, flags, no_operands, [&](const std::string& why) { usage(why, flags); });
  if (vm.count("help")) {
    std::cout << "tftp_serve: serves one directory over TFTP until SIGINT/SIGTERM.\n" << synopsis << flags;
    return 0;
  }
  if (!vm.count("root") || vm["root"].as<std::string>().empty()) usage("--root is required", flags);
  options.root = vm["root"].as<std::string>();
  options.address = vm["address"].as<std::string>();
  options.port = checked<std::uint16_t>(vm, "port", 0, u16, flags);
  options.max_blksize = checked<std::uint16_t>(vm, "max-blksize", 0, u16, flags);
  options.max_windowsize = checked<std::uint16_t>(vm, "max-windowsize", 0, u16, flags);
  options.max_transfers = checked<std::size_t>(vm, "max-transfers", 0, std::numeric_limits<long long>::max(), flags);
  if (vm.count("verbose")) options.log = [](std::string_view line) { std::cerr << line << '\n'; };
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  try {
    deskfarm::tftp::Server server(options);
    server.start();
    std::cout << "port " << server.bound_port() << std::endl;
    while (stop_requested == 0) ::usleep(100'000);
    server.stop();
    const auto stats = server.stats();
    std::cerr << "tftp_serve: rrq=" << stats.rrq << " done=" << stats.transfers_done << " bytes_sent=" << stats.bytes_sent
              << " retransmits=" << stats.retransmits << " malformed=" << stats.malformed_dropped << '\n';
  } catch (const std::exception& error) {
    std::cerr << error.what() << '\n';
    return 1;
  }
  return 0;
}
