// nbd_devices: holds thousands of NBD devices connected to one server from a single epoll thread, and measures what
// they cost it. Each device connects, does the fixed-newstyle handshake (NBD_OPT_GO), reads its working set (the same
// blocks for every device, as devices booting one vDisk do; one request in flight) and then stays connected, idle.
//   nbd_devices HOST PORT NAME --devices N [--concurrency C] [--reads R] [--block B] [--span-mib S]
//               [--server-pid PID] [--verify FILE] [--settle-ms MS] [--timeout S]      (--help)
// Prints one line: devices, boots/s, p50/p99 boot ms, and with --server-pid the server's threads and resident memory
// before and with every device connected and idle, and the difference per device.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/program_options.hpp>

#include "../bench_cli.hpp"

#include "deskfarm/nbd/protocol.hpp"
#include "deskfarm/nbd/unique_fd.hpp"

using namespace deskfarm::nbd;
using Clock = std::chrono::steady_clock;
namespace po = boost::program_options;

namespace {

const char* synopsis =
    "usage: nbd_devices HOST PORT NAME --devices N [--concurrency C] [--reads R] [--block B] [--span-mib S]\n"
    "                   [--server-pid PID] [--verify FILE] [--settle-ms MS] [--timeout S]\n";

[[noreturn]] void usage(const std::string& why, const po::options_description& options) {
  std::cerr << "nbd_devices: " << why << "\n" << synopsis << options;
  std::exit(2);
}

void put_be(std::vector<std::byte>& out, std::uint64_t v, int n) {
  for (int i = n - 1; i >= 0; --i) out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
}
std::uint64_t get_be(const std::byte* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<std::uint8_t>(p[i]);
  return v;
}

/// "VmRSS" (KiB) and "Threads" of a process, from /proc/PID/status.
struct ProcessFigures {
  std::uint64_t rss_kib = 0;
  std::uint64_t threads = 0;
};
ProcessFigures figures_of(int pid) {
  ProcessFigures f;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") in >> f.rss_kib;
    if (key == "Threads:") in >> f.threads;
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return f;
}

enum class Phase { connecting, greeting, option_replies, reading, idle, failed };

struct Device {
  deskfarm::nbd::UniqueFd fd;
  Phase phase = Phase::connecting;
  std::vector<std::byte> in;   // bytes received and not yet parsed
  std::vector<std::byte> out;  // bytes to send
  std::uint32_t reads_done = 0;
  Clock::time_point started{};
  double boot_ms = 0;
  std::string error;
};

}  // namespace

int main(int argc, char** argv) {
  po::options_description flags("options");
  flags.add_options()
      ("help,h", "print this help and exit")
      ("devices", po::value<long long>()->value_name("N")->default_value(1000), "devices to connect and hold")
      ("concurrency", po::value<long long>()->value_name("C")->default_value(1000),
       "devices booting (connecting, handshaking, reading) at once; the rest wait their turn")
      ("reads", po::value<long long>()->value_name("R")->default_value(16), "READs per device (its working set)")
      ("block", po::value<long long>()->value_name("B")->default_value(4096), "bytes per READ")
      ("span-mib", po::value<long long>()->value_name("S")->default_value(64),
       "the working set's READs are spread evenly over the first S MiB of the export")
      ("server-pid", po::value<long long>()->value_name("PID")->default_value(0),
       "measure this process's threads and resident memory (/proc/PID/status)")
      ("verify", po::value<std::string>()->value_name("FILE"), "compare every READ with the same bytes of FILE")
      ("settle-ms", po::value<long long>()->value_name("MS")->default_value(1500),
       "wait this long after the last boot before measuring the idle server (its idle grace must pass)")
      ("timeout", po::value<long long>()->value_name("S")->default_value(300), "give up (exit 1) after S seconds");
  po::options_description hidden;
  hidden.add_options()("host", po::value<std::string>())("port", po::value<long long>())("name", po::value<std::string>());
  po::options_description all;
  all.add(flags).add(hidden);
  po::positional_options_description positional;
  positional.add("host", 1).add("port", 1).add("name", 1);
  auto fail = [&](const std::string& why) { usage(why, flags); };
  const auto vm = deskfarm::bench::parse_command_line(argc, argv, all, positional, fail);
  if (vm.count("help")) {
    std::cout << "nbd_devices: holds N NBD devices connected from one epoll thread; boots/s, p99 and server cost.\n"
              << synopsis << flags;
    return 0;
  }
  if (!vm.count("name")) usage("HOST, PORT and NAME are required", flags);
  const std::string host = vm["host"].as<std::string>(), name = vm["name"].as<std::string>();
  const auto port = static_cast<std::uint16_t>(deskfarm::bench::checked_integer(vm, "port", 1, 65535, fail));
  const auto devices = static_cast<std::size_t>(deskfarm::bench::checked_integer(vm, "devices", 1, 100000, fail));
  const auto concurrency = static_cast<std::size_t>(deskfarm::bench::checked_integer(vm, "concurrency", 1, 100000, fail));
  const auto reads = static_cast<std::uint32_t>(deskfarm::bench::checked_integer(vm, "reads", 0, 1 << 20, fail));
  const auto block = static_cast<std::uint32_t>(deskfarm::bench::checked_integer(vm, "block", 1, 1 << 20, fail));
  const auto span = static_cast<std::uint64_t>(deskfarm::bench::checked_integer(vm, "span-mib", 1, 1 << 20, fail)) << 20;
  const int server_pid = static_cast<int>(deskfarm::bench::checked_integer(vm, "server-pid", 0, 1 << 30, fail));
  const auto settle = std::chrono::milliseconds(deskfarm::bench::checked_integer(vm, "settle-ms", 0, 600000, fail));
  const auto timeout = std::chrono::seconds(deskfarm::bench::checked_integer(vm, "timeout", 1, 86400, fail));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  if (::inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1) usage("HOST must be an IPv4 address", flags);

  // The working set: `reads` blocks spread over the span, the same for every device.
  const std::uint64_t stride = std::max<std::uint64_t>(block, span / std::max<std::uint32_t>(reads, 1) / block * block);
  std::vector<std::byte> expected;
  if (vm.count("verify")) {
    std::ifstream image(vm["verify"].as<std::string>(), std::ios::binary);
    expected.resize(std::size_t{reads} * block);
    for (std::uint32_t i = 0; i < reads; ++i) {
      image.seekg(static_cast<std::streamoff>(i * stride));
      image.read(reinterpret_cast<char*>(expected.data()) + std::size_t{i} * block, block);
    }
    if (!image) {
      std::cerr << "nbd_devices: cannot read the working set from " << vm["verify"].as<std::string>() << "\n";
      return 1;
    }
  }

  // Every device holds a socket: raise the descriptor limit as far as this process may.
  rlimit limit{};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  limit.rlim_cur = limit.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &limit);
  if (limit.rlim_cur < devices + 64) {
    std::cerr << "nbd_devices: " << devices << " devices need " << devices + 64 << " descriptors; the limit is "
              << limit.rlim_cur << " (raise ulimit -Hn)\n";
    return 1;
  }

  const ProcessFigures before = server_pid ? figures_of(server_pid) : ProcessFigures{};
  deskfarm::nbd::UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  std::vector<Device> all_devices(devices);
  std::size_t next = 0, booting = 0, booted = 0, failed = 0;
  const auto start = Clock::now();
  const auto give_up = start + timeout;

  auto request_read = [&](Device& d) {
    d.out.clear();
    put_be(d.out, proto::kRequestMagic, 4);
    put_be(d.out, 0, 2);
    put_be(d.out, proto::kCmdRead, 2);
    put_be(d.out, d.reads_done, 8);  // cookie = the read's number
    put_be(d.out, d.reads_done * stride, 8);
    put_be(d.out, block, 4);
  };
  auto flush_out = [&](Device& d) -> bool {
    while (!d.out.empty()) {
      const ssize_t n = ::send(d.fd.get(), d.out.data(), d.out.size(), MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      if (n <= 0) return false;
      d.out.erase(d.out.begin(), d.out.begin() + n);
    }
    return true;
  };
  auto finish = [&](Device& d, std::string error) {
    --booting;
    if (error.empty()) {
      d.phase = Phase::idle;
      d.boot_ms = std::chrono::duration<double, std::milli>(Clock::now() - d.started).count();
      ++booted;
    } else {
      d.phase = Phase::failed;
      d.error = std::move(error);
      d.fd.reset();
      ++failed;
    }
  };
  // Parses what arrived; false if the device failed (finish() called).
  auto parse = [&](Device& d) -> bool {
    for (;;) {
      if (d.phase == Phase::greeting) {
        if (d.in.size() < 18) return true;
        if (get_be(d.in.data(), 8) != proto::kNbdMagic || get_be(d.in.data() + 8, 8) != proto::kOptMagic) {
          finish(d, "bad greeting");
          return false;
        }
        d.in.erase(d.in.begin(), d.in.begin() + 18);
        d.out.clear();
        put_be(d.out, proto::kClientFlagFixedNewstyle | proto::kClientFlagNoZeroes, 4);
        put_be(d.out, proto::kOptMagic, 8);
        put_be(d.out, proto::kOptGo, 4);
        put_be(d.out, 4 + name.size() + 2, 4);
        put_be(d.out, name.size(), 4);
        for (char ch : name) d.out.push_back(static_cast<std::byte>(ch));
        put_be(d.out, 0, 2);
        d.phase = Phase::option_replies;
        if (!flush_out(d)) {
          finish(d, "send failed");
          return false;
        }
      } else if (d.phase == Phase::option_replies) {
        if (d.in.size() < 20) return true;
        const auto type = static_cast<std::uint32_t>(get_be(d.in.data() + 12, 4));
        const auto length = static_cast<std::size_t>(get_be(d.in.data() + 16, 4));
        if (d.in.size() < 20 + length) return true;
        d.in.erase(d.in.begin(), d.in.begin() + static_cast<std::ptrdiff_t>(20 + length));
        if (type & 0x80000000U) {
          finish(d, "NBD_OPT_GO refused (reply type " + std::to_string(type) + ")");
          return false;
        }
        if (type == proto::kRepAck) {
          if (reads == 0) {
            finish(d, {});
            return true;
          }
          d.phase = Phase::reading;
          request_read(d);
          if (!flush_out(d)) {
            finish(d, "send failed");
            return false;
          }
        }
      } else if (d.phase == Phase::reading) {
        if (d.in.size() < 16 + block) return true;
        const auto error = get_be(d.in.data() + 4, 4);
        const auto cookie = get_be(d.in.data() + 8, 8);
        if (get_be(d.in.data(), 4) != proto::kSimpleReplyMagic || error != 0 || cookie != d.reads_done) {
          finish(d, "READ " + std::to_string(d.reads_done) + " failed (error " + std::to_string(error) + ")");
          return false;
        }
        if (!expected.empty() && std::memcmp(d.in.data() + 16, expected.data() + std::size_t{d.reads_done} * block, block)) {
          finish(d, "READ " + std::to_string(d.reads_done) + " returned bytes that differ from the image");
          return false;
        }
        d.in.erase(d.in.begin(), d.in.begin() + 16 + block);
        if (++d.reads_done == reads) {
          finish(d, {});
          return true;
        }
        request_read(d);
        if (!flush_out(d)) {
          finish(d, "send failed");
          return false;
        }
      } else {
        return true;
      }
    }
  };
  auto launch = [&](std::size_t i) {
    Device& d = all_devices[i];
    d.started = Clock::now();
    ++booting;
    d.fd.reset(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!d.fd) return finish(d, std::string("socket: ") + std::strerror(errno));
    int one = 1;
    ::setsockopt(d.fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(d.fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 && errno != EINPROGRESS)
      return finish(d, std::string("connect: ") + std::strerror(errno));
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
    ev.data.u64 = i;
    ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, d.fd.get(), &ev);
  };

  std::vector<epoll_event> events(1024);
  std::array<std::byte, 65536> chunk{};
  while (booted + failed < devices) {
    if (Clock::now() > give_up) {
      std::fprintf(stderr, "nbd_devices: gave up after %lld s with %zu of %zu devices booted\n",
                   static_cast<long long>(timeout.count()), booted, devices);
      return 1;
    }
    while (booting < concurrency && next < devices) launch(next++);
    const int n = ::epoll_wait(epoll.get(), events.data(), static_cast<int>(events.size()), 100);
    for (int k = 0; k < n; ++k) {
      Device& d = all_devices[events[static_cast<std::size_t>(k)].data.u64];
      const auto e = events[static_cast<std::size_t>(k)].events;
      if (d.phase == Phase::idle || d.phase == Phase::failed) {
        if (d.phase == Phase::idle && (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
          std::fprintf(stderr, "nbd_devices: the server closed an idle device's connection\n");
          return 1;
        }
        continue;
      }
      if (d.phase == Phase::connecting && (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(d.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          finish(d, std::string("connect: ") + std::strerror(err));
          continue;
        }
        d.phase = Phase::greeting;
        // Watch reads only from now on (requests are small, so sends complete at once).
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.u64 = events[static_cast<std::size_t>(k)].data.u64;
        ::epoll_ctl(epoll.get(), EPOLL_CTL_MOD, d.fd.get(), &ev);
      }
      if (!(e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) continue;
      bool alive = true;
      for (int rounds = 0; rounds < 64 && alive; ++rounds) {
        const ssize_t got = ::recv(d.fd.get(), chunk.data(), chunk.size(), MSG_DONTWAIT);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (got <= 0) {
          finish(d, "the server closed the connection during the boot");
          alive = false;
          break;
        }
        d.in.insert(d.in.end(), chunk.begin(), chunk.begin() + got);
        alive = parse(d);
        if (d.phase == Phase::idle) break;
      }
    }
  }
  const double boot_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (const auto& d : all_devices) {
    if (d.phase == Phase::failed) {
      std::fprintf(stderr, "nbd_devices: %zu of %zu devices failed; first: %s\n", failed, devices, d.error.c_str());
      return 1;
    }
  }
  std::vector<double> times;
  times.reserve(devices);
  for (const auto& d : all_devices) times.push_back(d.boot_ms);
  std::sort(times.begin(), times.end());
  auto at = [&](double q) { return times[std::min(times.size() - 1, static_cast<std::size_t>(q * static_cast<double>(times.size())))]; };

  // Every device connected and idle: let the server's idle grace pass, then measure it.
  std::this_thread::sleep_for(settle);
  std::ostringstream line;
  char text[256];
  std::snprintf(text, sizeof text, "devices=%zu boots/s=%.0f p50_ms=%.1f p99_ms=%.1f", devices,
                static_cast<double>(devices) / boot_seconds, at(0.50), at(0.99));
  line << text;
  if (server_pid) {
    const ProcessFigures with = figures_of(server_pid);
    const double per = (static_cast<double>(with.rss_kib) - static_cast<double>(before.rss_kib)) / static_cast<double>(devices);
    std::snprintf(text, sizeof text, " server_threads=%llu->%llu server_rss_mib=%.1f->%.1f kib_per_device=%.1f",
                  static_cast<unsigned long long>(before.threads), static_cast<unsigned long long>(with.threads),
                  static_cast<double>(before.rss_kib) / 1024, static_cast<double>(with.rss_kib) / 1024, per);
    line << text;
  }
  std::cout << line.str() << std::endl;
  // Every connection is still open: closing them all now is the devices' power-off.
  return 0;
}
