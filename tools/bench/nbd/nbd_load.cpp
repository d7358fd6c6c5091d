// nbd_load: NBD load generator over the raw protocol (no libnbd needed).
//   nbd_load HOST PORT NAME --mode seq|rand|randwrite [--bs BYTES] [--conns N] [--qd N] [--seconds S]
// Each connection keeps QD requests in flight. Prints one line: mode, MiB/s, IOPS.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "deskfarm/nbd/client.hpp"
#include "deskfarm/nbd/protocol.hpp"

using namespace deskfarm::nbd;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s HOST PORT NAME --mode seq|rand|randwrite [--bs B] [--conns N] [--qd N] [--seconds S]\n",
                 argv[0]);
    return 2;
  }
  const std::string host = argv[1], name = argv[3];
  const auto port = static_cast<std::uint16_t>(std::stoi(argv[2]));
  std::string mode = "seq";
  std::uint32_t bs = 0;
  int conns = 4, qd = 8;
  double seconds = 5;
  for (int i = 4; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--mode") mode = v;
    else if (a == "--bs") bs = static_cast<std::uint32_t>(std::stoul(v));
    else if (a == "--conns") conns = std::stoi(v);
    else if (a == "--qd") qd = std::stoi(v);
    else if (a == "--seconds") seconds = std::stod(v);
    else {
      std::fprintf(stderr, "nbd_load: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
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
