// tftp_serve: serves one directory with deskfarm::tftp until SIGINT/SIGTERM (bench driver and manual tests).
// usage: tftp_serve --root DIR [--address 127.0.0.1] [--port 0] [--max-blksize 1468] [--max-windowsize 16]
//                   [--max-transfers 1024] [--verbose]
// Prints "port N" on stdout once listening, so a driver can start it on port 0.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>

#include <unistd.h>

#include "deskfarm/tftp/server.hpp"

namespace {

volatile std::sig_atomic_t stop_requested = 0;
void on_signal(int) { stop_requested = 1; }

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "tftp_serve: " << why
            << "\nusage: tftp_serve --root DIR [--address IP] [--port N] [--max-blksize N] [--max-windowsize N]"
               " [--max-transfers N] [--verbose]\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  deskfarm::tftp::ServerOptions options;
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(std::string(arg) + " needs a value");
      return argv[++i];
    };
    try {
      if (arg == "--root") options.root = value();
      else if (arg == "--address") options.address = value();
      else if (arg == "--port") options.port = static_cast<std::uint16_t>(std::stoul(value()));
      else if (arg == "--max-blksize") options.max_blksize = static_cast<std::uint16_t>(std::stoul(value()));
      else if (arg == "--max-windowsize") options.max_windowsize = static_cast<std::uint16_t>(std::stoul(value()));
      else if (arg == "--max-transfers") options.max_transfers = std::stoul(value());
      else if (arg == "--verbose") verbose = true;
      else usage("unknown argument '" + std::string(arg) + "'");
    } catch (const std::logic_error&) {
      usage("bad number for " + std::string(arg));
    }
  }
  if (options.root.empty()) usage("--root is required");
  if (verbose) options.log = [](std::string_view line) { std::cerr << line << '\n'; };
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
