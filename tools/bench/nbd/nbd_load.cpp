// nbd_load: NBD load generator over the raw protocol (no libnbd needed).
//   nbd_load HOST PORT NAME [--mode seq|rand|randwrite] [--bs BYTES] [--conns N] [--qd N] [--seconds S]   (--help)
// Each connection keeps QD requests in flight. Prints one line: mode, MiB/s, IOPS.
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <boost/program_options.hpp>

#include "../bench_cli.hpp"

#include "deskfarm/nbd/client.hpp"
#include "deskfarm/nbd/protocol.hpp"

using namespace deskfarm::nbd;
using Clock = std::chrono::steady_clock;
namespace po = boost::program_options;

namespace {

const char* synopsis = "usage: nbd_load HOST PORT NAME [--mode seq|rand|randwrite] [--bs B] [--conns N] [--qd N] [--seconds S]\n";

[[noreturn]] void usage(const std::string& why, const po::options_description& options) {
  std::cerr << "nbd_load: " << why << "\n" << synopsis << options;
  std::exit(2);
}

// Integer arguments are read as long long and range-checked here: po alone would read "--bs=-1" as 4294967295.
long long checked(const po::variables_map& vm, const std::string& key, long long low, long long high,
                  const po::options_description& options) {
  return deskfarm::bench::checked_integer(vm, key, low, high, [&](const std::string& why) { usage(why, options); });
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description flags("options");
  flags.add_options()
      ("help,h", "print this help and exit")
      ("mode", po::value<std::string>()->value_name("MODE")->default_value("seq"),
       "seq: each connection streams its own slice of the disk; rand: random reads; randwrite: random writes")
      ("bs", po::value<long long>()->value_name("B")->default_value(0),
       "request size in bytes; 0 = 262144 for seq, 4096 otherwise")
      ("conns", po::value<long long>()->value_name("N")->default_value(4), "connections, at least 1")
      ("qd", po::value<long long>()->value_name("N")->default_value(8), "requests in flight per connection, at least 1")
      ("seconds", po::value<double>()->value_name("S")->default_value(5, "5"), "how long to issue requests");
  po::options_description hidden;
  hidden.add_options()
      ("host", po::value<std::string>())
      ("port", po::value<std::string>())
      ("name", po::value<std::string>());
  po::options_description all;
  all.add(flags).add(hidden);
  po::positional_options_description positional;
  positional.add("host", 1).add("port", 1).add("name", 1);
  const auto vm = deskfarm::bench::parse_command_line(argc, argv, all, positional, [&](const std::string& why) { usage(why, flags); });
  if (vm.count("help")) {
    std::cout << "nbd_load: NBD load generator; prints one line: mode, MiB/s, IOPS.\n" << synopsis << flags;
    return 0;
  }
  if (!vm.count("name")) usage("HOST, PORT and NAME are required", flags);
  const std::string host = vm["host"].as<std::string>(), name = vm["name"].as<std::string>();
  const std::string port_text = vm["port"].as<std::string>();
  std::uint16_t port = 0;
  const auto [end, error] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || error != std::errc{} || end != port_text.data() + port_text.size()) {
    usage("PORT must be a number in 0..65535, not '" + port_text + "'", flags);
  }
  const std::string mode = vm["mode"].as<std::string>();
  if (mode != "seq" && mode != "rand" && mode != "randwrite") usage("--mode must be seq, rand or randwrite", flags);
  auto bs = static_cast<std::uint32_t>(checked(vm, "bs", 0, std::numeric_limits<std::uint32_t>::max(), flags));
  const int conns = static_cast<int>(checked(vm, "conns", 1, std::numeric_limits<int>::max(), flags));
  const int qd = static_cast<int>(checked(vm, "qd", 1, std::numeric_limits<int>::max(), flags));
  const double seconds = vm["seconds"].as<double>();
  if (bs == 0) bs = mode == "seq" ? 256 * 1024 : 4096;
  const bool write = mode == "randwrite";
  std::atomic<std::uint64_t> ops{0}, errors{0};
  std::atomic<bool> failed{false};
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < conns; ++t) {
    threads.emplace_back([&, t] {
      try {
        Client c(host, port, name);
        const std::uint64_t blocks = c.size() / bs;
        // Sequential readers each stream their own slice of the disk, like parallel boot streams.
        const std::uint64_t slice = std::max<std::uint64_t>(1, blocks / static_cast<std::uint64_t>(conns));
        std::uint64_t next_seq = slice * static_cast<std::uint64_t>(t);
        std::mt19937_64 rng(static_cast<std::uint64_t>(t) * 7919 + 1);
        std::vector<std::byte> buf(bs), payload(bs, std::byte{0x5a});
        auto issue = [&](std::uint64_t cookie) {
          std::uint64_t block;
          if (mode == "seq") {
            block = next_seq++;
            if (next_seq >= std::min(blocks, slice * static_cast<std::uint64_t>(t + 1))) next_seq = slice * static_cast<std::uint64_t>(t);
          } else {
            block = rng() % blocks;
          }
          if (write) {
            c.send_request(proto::kCmdWrite, cookie, block * bs, bs, payload);
          } else {
            c.send_request(proto::kCmdRead, cookie, block * bs, bs);
          }
        };
        for (int i = 0; i < qd; ++i) issue(static_cast<std::uint64_t>(i));
        int outstanding = qd;
        std::uint64_t local = 0;
        while (outstanding > 0) {
          std::uint64_t cookie = 0;
          const auto err = c.receive_reply(cookie);
          if (err == 0 && !write) c.receive_payload(buf);
          if (err != 0) errors.fetch_add(1);
          ++local;
          --outstanding;
          if (Clock::now() < deadline) {
            issue(cookie);
            ++outstanding;
          }
        }
        ops.fetch_add(local);
        c.disconnect();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "nbd_load: connection %d: %s\n", t, e.what());
        failed = true;
      }
    });
  }
  for (auto& th : threads) th.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const double iops = static_cast<double>(ops.load()) / elapsed;
  const double mibs = iops * bs / (1024.0 * 1024.0);
  std::printf("mode=%s bs=%u conns=%d qd=%d ops=%llu errors=%llu seconds=%.2f MiB/s=%.1f IOPS=%.0f\n", mode.c_str(), bs,
              conns, qd, static_cast<unsigned long long>(ops.load()), static_cast<unsigned long long>(errors.load()),
              elapsed, mibs, iops);
  return failed || errors.load() != 0 ? 1 : 0;
}
