// linkemu: a learning Ethernet switch with per-link one-way delay, for tools/farmnet/farmnet.sh. It runs in the hub
// network namespace, reads every frame arriving on each hub-side veth through an AF_PACKET socket and sends it to
// the port its destination MAC was learnt on (all other ports for broadcast and unknown ones) once the delay of the
// link it came from plus the delay of the link it leaves by has passed. This kernel has no netem, and tbf (which
// farmnet.sh puts on the veths) shapes bandwidth but cannot delay.
//
// Frames are read and written with PACKET_VNET_HDR: the veths keep their TSO/checksum offloads, and a large TCP
// segment or a frame whose checksum is still to be filled in crosses the switch with its offload header, exactly as
// a tap device would hand it on (no ethtool needed to switch offloads off).
//
// Control: a file of lines `PORT delay_ms=N cut=0|1` (and `generation N`), read at start and again on SIGHUP; a cut
// link drops every frame from or to it (counted). Counters per link go to the stats file every second, after each
// reload (with the generation read, so a caller can wait for a change to apply) and at exit (SIGTERM, SIGINT).
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <deskfarm/nbd/unique_fd.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

volatile std::sig_atomic_t reload_requested = 0;
volatile std::sig_atomic_t stop_requested = 0;

extern "C" void on_hup(int) { reload_requested = 1; }
extern "C" void on_stop(int) { stop_requested = 1; }

// struct virtio_net_hdr (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset): <linux/virtio_net.h> is C
// only (a member named `class`), and linkemu passes the header on untouched, so only its size matters.
constexpr std::size_t kVnetHdr = 10;
constexpr std::size_t kMaxFrame = 65536 + kVnetHdr + 64;  // a GSO frame of a veth with its header

using Fd = deskfarm::nbd::UniqueFd;

struct Port {
  std::string name;
  Fd fd;
  int delay_ms = 0;
  bool cut = false;
  std::uint64_t rx_frames = 0, rx_bytes = 0;  ///< arrived from the site on this link
  std::uint64_t tx_frames = 0, tx_bytes = 0;  ///< delivered to the site on this link
  std::uint64_t dropped_cut = 0, dropped_queue = 0, dropped_send = 0;
};

struct Pending {
  Clock::time_point release;
  std::uint64_t order;  ///< frames due at the same instant leave in arrival order
  std::size_t out;
  std::vector<unsigned char> bytes;  ///< virtio_net_hdr, then the Ethernet frame
  bool operator>(const Pending& o) const { return release != o.release ? release > o.release : order > o.order; }
};

[[noreturn]] void die(const std::string& what) {
  std::cerr << "linkemu: " << what << "\n";
  std::exit(1);
}

Fd open_port(const std::string& name) {
  const unsigned index = if_nametoindex(name.c_str());
  if (index == 0) die("interface " + name + " does not exist in this network namespace (" + std::strerror(errno) + "): run linkemu in the hub namespace");
  Fd fd(::socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL)));
  if (fd.get() < 0) die("AF_PACKET socket for " + name + ": " + std::strerror(errno) + " (needs CAP_NET_RAW: run as root)");
  int one = 1;
  if (::setsockopt(fd.get(), SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) != 0)
    die("PACKET_VNET_HDR on " + name + ": " + std::strerror(errno));
  // Our own transmissions on this port are not frames from its site.
  if (::setsockopt(fd.get(), SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) != 0)
    die("PACKET_IGNORE_OUTGOING on " + name + ": " + std::strerror(errno) + " (needs Linux 4.20 or newer)");
  sockaddr_ll addr{};
  addr.sll_family = AF_PACKET;
  addr.sll_protocol = htons(ETH_P_ALL);
  addr.sll_ifindex = static_cast<int>(index);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("bind to " + name + ": " + std::strerror(errno));
  packet_mreq mr{};
  mr.mr_ifindex = static_cast<int>(index);
  mr.mr_type = PACKET_MR_PROMISC;
  if (::setsockopt(fd.get(), SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) != 0)
    die("promiscuous mode on " + name + ": " + std::strerror(errno));
  int buf = 4 << 20;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);  // best effort: a smaller buffer only drops sooner
  return fd;
}

class Switch {
 public:
  Switch(std::vector<Port> ports, std::filesystem::path control, std::filesystem::path stats, std::size_t queue_limit)
      : ports_(std::move(ports)), control_(std::move(control)), stats_(std::move(stats)), queue_limit_(queue_limit) {}

  int run() {
    reload();
    write_stats();
    auto next_stats = Clock::now() + 1s;
    std::vector<pollfd> fds;
    for (const auto& p : ports_) fds.push_back(pollfd{p.fd.get(), POLLIN, 0});
    std::vector<unsigned char> buf(kMaxFrame);
    while (!stop_requested) {
      if (reload_requested) {
        reload_requested = 0;
        reload();
        write_stats();
      }
      auto now = Clock::now();
      auto wait = std::chrono::milliseconds(100);
      if (!queue_.empty()) wait = std::min(wait, std::chrono::ceil<std::chrono::milliseconds>(std::max(queue_.top().release - now, Clock::duration::zero())));
      const int n = ::poll(fds.data(), fds.size(), static_cast<int>(wait.count()));
      if (n < 0 && errno != EINTR) die(std::string("poll: ") + std::strerror(errno));
      for (std::size_t i = 0; n > 0 && i < fds.size(); ++i)
        if (fds[i].revents & POLLIN) receive(i, buf);
      release(Clock::now());
      if (Clock::now() >= next_stats) {
        write_stats();
        next_stats = Clock::now() + 1s;
      }
    }
    write_stats();
    return 0;
  }

 private:
  /// Reads what port `in` has queued (at most 512 frames, so one busy link cannot starve the others).
  void receive(std::size_t in, std::vector<unsigned char>& buf) {
    auto& port = ports_[in];
    for (int k = 0; k < 512; ++k) {
      sockaddr_ll from{};
      socklen_t len = sizeof from;
      const auto got = ::recvfrom(port.fd.get(), buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (got < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
          std::cerr << "linkemu: receive on " << port.name << ": " << std::strerror(errno) << "\n";
        return;
      }
      if (from.sll_pkttype == PACKET_OUTGOING) continue;
      const auto size = static_cast<std::size_t>(got);
      if (size < kVnetHdr + ETH_HLEN) continue;
      const std::size_t frame = size - kVnetHdr;
      ++port.rx_frames;
      port.rx_bytes += frame;
      if (port.cut) {
        ++port.dropped_cut;
        continue;
      }
      const unsigned char* eth = buf.data() + kVnetHdr;
      std::array<unsigned char, 6> dst{}, src{};
      std::memcpy(dst.data(), eth, 6);
      std::memcpy(src.data(), eth + 6, 6);
      if (!(src[0] & 1)) mac_port_[src] = in;
      const auto now = Clock::now();
      const auto known = mac_port_.find(dst);
      const bool flood = (dst[0] & 1) || known == mac_port_.end();
      for (std::size_t out = 0; out < ports_.size(); ++out) {
        if (out == in || (!flood && out != known->second)) continue;
        auto& to = ports_[out];
        if (to.cut) {
          ++to.dropped_cut;
          continue;
        }
        if (queue_.size() >= queue_limit_) {
          ++to.dropped_queue;
          continue;
        }
        queue_.push(Pending{now + std::chrono::milliseconds(port.delay_ms + to.delay_ms), order_++, out,
                            std::vector<unsigned char>(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(size))});
      }
    }
  }

  void release(Clock::time_point now) {
    for (int k = 0; k < 4096 && !queue_.empty() && queue_.top().release <= now; ++k) {
      const auto& p = queue_.top();
      auto& to = ports_[p.out];
      const std::size_t frame = p.bytes.size() - kVnetHdr;
      if (to.cut) ++to.dropped_cut;  // cut while the frame was on the wire
      else if (::send(to.fd.get(), p.bytes.data(), p.bytes.size(), MSG_DONTWAIT) < 0) ++to.dropped_send;
      else {
        ++to.tx_frames;
        to.tx_bytes += frame;
      }
      queue_.pop();
    }
  }

  void reload() {
    std::ifstream in(control_);
    if (!in) {
      std::cerr << "linkemu: cannot read the control file " << control_ << ": keeping the links as they are\n";
      return;
    }
    std::string line;
    int number = 0;
    while (std::getline(in, line)) {
      ++number;
      std::istringstream words(line);
      std::string name;
      if (!(words >> name) || name.front() == '#') continue;
      if (name == "generation") {
        words >> generation_;
        continue;
      }
      Port* port = nullptr;
      for (auto& p : ports_)
        if (p.name == name) port = &p;
      if (!port) {
        std::cerr << "linkemu: " << control_.string() << ":" << number << ": no port '" << name << "' (ports are given with --port)\n";
        continue;
      }
      std::string kv;
      while (words >> kv) {
        const auto eq = kv.find('=');
        const std::string key = kv.substr(0, eq), value = eq == std::string::npos ? "" : kv.substr(eq + 1);
        try {
          if (key == "delay_ms") port->delay_ms = std::stoi(value);
          else if (key == "cut") port->cut = value == "1";
          else throw std::invalid_argument(key);
        } catch (const std::exception&) {
          std::cerr << "linkemu: " << control_.string() << ":" << number << ": '" << kv << "' is not delay_ms=N or cut=0|1\n";
        }
      }
    }
  }

  /// Written to a temporary file and renamed, so a reader never sees half of it.
  void write_stats() {
    const auto tmp = stats_.string() + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << "generation " << generation_ << "\nqueued " << queue_.size() << "\n";
      for (const auto& p : ports_)
        out << "port " << p.name << " delay_ms " << p.delay_ms << " cut " << (p.cut ? 1 : 0) << " rx_frames " << p.rx_frames
            << " rx_bytes " << p.rx_bytes << " tx_frames " << p.tx_frames << " tx_bytes " << p.tx_bytes << " dropped_cut "
            << p.dropped_cut << " dropped_queue " << p.dropped_queue << " dropped_send " << p.dropped_send << "\n";
    }
    std::error_code ec;
    std::filesystem::rename(tmp, stats_, ec);
    if (ec) std::cerr << "linkemu: cannot write the stats file " << stats_ << ": " << ec.message() << "\n";
  }

  std::vector<Port> ports_;
  std::filesystem::path control_, stats_;
  std::size_t queue_limit_;
  std::priority_queue<Pending, std::vector<Pending>, std::greater<>> queue_;
  std::uint64_t order_ = 0;
  std::map<std::array<unsigned char, 6>, std::size_t> mac_port_;
  long generation_ = 0;
};

constexpr const char* kUsage =
    "usage: linkemu --port IFACE [--port IFACE …] --control FILE --stats FILE [--queue N]\n"
    "  Switches Ethernet frames between the given interfaces (AF_PACKET, run as root in the hub namespace),\n"
    "  delaying each by the delay of the link it arrives on plus that of the link it leaves by.\n"
    "  --control FILE  lines 'IFACE delay_ms=N cut=0|1' and 'generation N'; read at start and on SIGHUP\n"
    "  --stats FILE    per-link counters (rx/tx frames and bytes, drops), rewritten every second, on SIGHUP and at exit\n"
    "  --queue N       frames in flight at most (default 20000); beyond it frames are dropped and counted\n"
    "  SIGTERM or SIGINT ends it.\n";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> names;
  std::filesystem::path control, stats;
  std::size_t queue_limit = 20000;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "linkemu: " << a << " needs a value\n" << kUsage;
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--port") names.push_back(value());
    else if (a == "--control") control = value();
    else if (a == "--stats") stats = value();
    else if (a == "--queue") {
      const auto v = value();
      try {
        queue_limit = std::stoul(v);
      } catch (const std::exception&) {
        std::cerr << "linkemu: --queue " << v << ": not a number\n";
        return 2;
      }
    } else if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    } else {
      std::cerr << "linkemu: unknown argument '" << a << "'\n" << kUsage;
      return 2;
    }
  }
  if (names.size() < 2 || control.empty() || stats.empty()) {
    std::cerr << "linkemu: give at least two --port, a --control and a --stats file\n" << kUsage;
    return 2;
  }
  std::vector<Port> ports;
  for (const auto& n : names) {
    Port p;
    p.name = n;
    p.fd = open_port(n);
    ports.push_back(std::move(p));
  }
  struct sigaction sa{};
  sa.sa_handler = on_hup;
  sigaction(SIGHUP, &sa, nullptr);
  sa.sa_handler = on_stop;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::cerr << "linkemu: switching " << names.size() << " links\n";
  return Switch(std::move(ports), control, stats, queue_limit).run();
}
