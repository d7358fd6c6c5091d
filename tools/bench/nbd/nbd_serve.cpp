// nbd_serve: serves one raw image with deskfarm::nbd (bench peer for nbdkit and qemu-nbd).
//   nbd_serve FILE [--port N] [--name NAME] [--cow [--ram-mib N] [--cache-dir DIR]]
// Prints "port N" once listening; runs until SIGINT/SIGTERM.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "deskfarm/nbd/server.hpp"
#include "deskfarm/nbd/write_cache.hpp"

using namespace deskfarm::nbd;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE [--port N] [--name NAME] [--cow [--ram-mib N] [--cache-dir DIR]]\n", argv[0]);
    return 2;
  }
  std::string file = argv[1], name;
  ServerOptions options;
  bool cow = false;
  WriteCacheOptions cache;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "nbd_serve: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--port") options.port = static_cast<std::uint16_t>(std::stoi(next()));
    else if (a == "--name") name = next();
    else if (a == "--cow") cow = true;
    else if (a == "--ram-mib") cache.ram_limit = std::stoull(next()) << 20;
    else if (a == "--cache-dir") cache.cache_dir = next();
    else {
      std::fprintf(stderr, "nbd_serve: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
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
