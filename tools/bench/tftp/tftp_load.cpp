// tftp_load: many concurrent TFTP downloads from one process, built to outrun the server it measures:
// one epoll loop, recvmmsg per ready socket, no allocation per packet (one receive arena, one verify arena
// allocated and touched before the clock starts: a page fault costs more than a packet on a paravirtualised VM),
// one clock read per loop turn. Each download is checked for size (against tsize) on completion and, with
// --expect-sha256, for content: its bytes are copied into the verify arena and hashed after the clock stops (up
// to --verify-mib; transfers past that cap are size-checked only, and the output says how many were hashed). Prints MiB/s, transfers/s, p50/p99 time per
// transfer and the load generator's own CPU time, so a reader can see whether the generator was the bound.
// usage: tftp_load --server HOST:PORT --file NAME [--clients N] [--transfers T] [--blksize B] [--windowsize W]
//                  [--expect-sha256 HEX] [--verify-mib M] [--timeout-ms MS] [--attempts A] [--deadline-s S]
//                  (--help lists them)
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <boost/program_options.hpp>

#include "../bench_cli.hpp"

#include "deskfarm/tftp/packet.hpp"
#include <Poco/DigestEngine.h>
#include <Poco/SHA2Engine.h>
#include "socket.hpp"

namespace {

namespace po = boost::program_options;
using namespace deskfarm::tftp;
using deskfarm::tftp::detail::Fd;
using Clock = std::chrono::steady_clock;

struct Config {
  std::string host = "127.0.0.1";
  std::uint16_t port = 69;
  std::string file;
  std::size_t clients = 1;
  std::size_t transfers = 0;
  std::optional<std::uint16_t> blksize;
  std::optional<std::uint16_t> windowsize;
  std::string expect_sha256;
  std::uint64_t verify_bytes = std::uint64_t{64} << 20;
  std::chrono::milliseconds timeout{1000};
  int attempts = 1;
  std::chrono::seconds deadline{300};
};

/// One download in flight; the slot (and its socket) is reused by the next download.
struct Download {
  Fd fd;
  bool active = false;
  bool connected = false;  ///< connect()ed to the server's transfer port (TID) after its first reply.
  sockaddr_storage tid{};
  std::uint64_t expected = 1;  ///< Next absolute block number.
  std::uint16_t in_window = 0;
  std::uint16_t blksize = default_blksize;
  std::uint16_t windowsize = 1;
  std::optional<std::uint64_t> tsize;
  std::uint64_t bytes = 0;
  std::byte* keep = nullptr;  ///< Where the bytes are copied (in the verify arena) for the hash after the run.
  std::array<std::byte, 4> ack{};  ///< Last ACK sent, resent on timeout (the RRQ before the first reply).
  bool rrq_pending = true;
  Clock::time_point started;
  Clock::time_point last_activity;
  int retries = 0;
  int attempt = 0;  ///< 0 for the first try; a failed download starts again (--attempts)
};

/// A finished download whose content, in the verify arena, still has to be hashed.
struct Kept {
  const std::byte* data;
  std::size_t size;
};

constexpr std::size_t batch = 64;                 // datagrams per recvmmsg
constexpr std::size_t slot_bytes = 65464 + 4 + 1;  // largest DATA (RFC 2348 cap) + 1 to see truncation

const char* synopsis = "usage: tftp_load --server HOST:PORT --file NAME [OPTIONS]\n";

po::options_description& flags() {
  static po::options_description options = [] {
    po::options_description o("options");
    o.add_options()
        ("help,h", "print this help and exit")
        ("server", po::value<std::string>()->value_name("HOST:PORT")->default_value("127.0.0.1:69"),
         "server to download from; HOST is an IP literal, IPv6 in brackets ([::1]:69)")
        ("file", po::value<std::string>()->value_name("NAME"), "file to request (required)")
        ("clients", po::value<long long>()->value_name("N")->default_value(1), "concurrent downloads, at least 1")
        ("transfers", po::value<long long>()->value_name("T")->default_value(0),
         "downloads in all; 0 = one per client")
        ("blksize", po::value<long long>()->value_name("B"), "ask for this blksize, 0..65535 (default: do not ask)")
        ("windowsize", po::value<long long>()->value_name("W"),
         "ask for this windowsize, 0..65535 (default: do not ask)")
        ("expect-sha256", po::value<std::string>()->value_name("HEX"),
         "fail a download whose SHA-256 (lower-case hex) differs; hashed after the clock stops")
        ("verify-mib", po::value<long long>()->value_name("M")->default_value(64),
         "keep at most this many MiB of downloads for the SHA-256 check; later ones are size-checked only")
        ("timeout-ms", po::value<long long>()->value_name("MS")->default_value(1000),
         "resend after this long without a reply; 5 resends fail the download")
        ("attempts", po::value<long long>()->value_name("A")->default_value(1),
         "tries per download: a failed one (an ERROR, 5 resends unanswered) starts again from a new socket, as PXE "
         "firmware does; its time counts from the first try")
        ("deadline-s", po::value<long long>()->value_name("S")->default_value(300), "stop the whole run after this long");
    return o;
  }();
  return options;
}

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "tftp_load: " << why << "\n" << synopsis << flags();
  std::exit(2);
}

// Integer flags are read as long long and range-checked here: po alone would read "--clients=-1" as SIZE_MAX.
template <class T>
T checked(const po::variables_map& vm, const char* flag, long long low, long long high) {
  return static_cast<T>(deskfarm::bench::checked_integer(vm, flag, low, high, [&](const std::string& why) { usage(why); }));
}

Config parse(int argc, char** argv) {
  constexpr auto u16 = static_cast<long long>(std::numeric_limits<std::uint16_t>::max());
  constexpr auto most = std::numeric_limits<long long>::max();
  const po::positional_options_description no_operands;  // every argument is a flag
  const auto vm = deskfarm::bench::parse_command_line(argc, argv, flags(), no_operands, [&](const std::string& why) { usage(why); });
  if (vm.count("help")) {
    std::cout << "tftp_load: many concurrent TFTP downloads, each checked against tsize and optionally SHA-256;\n"
                 "prints MiB/s, transfers/s, p50/p99 per transfer and its own CPU time; exits 1 unless every\n"
                 "download succeeded.\n"
              << synopsis << flags();
    std::exit(0);
  }
  Config config;
  const std::string server = vm["server"].as<std::string>();
  const auto endpoint = deskfarm::tftp::detail::parse_endpoint(server);
  if (!endpoint || !endpoint->port) usage("--server wants HOST:PORT or [IPv6]:PORT with an IP literal, not '" + server + "'");
  config.host = endpoint->host;
  config.port = *endpoint->port;
  if (vm.count("file")) config.file = vm["file"].as<std::string>();
  config.clients = checked<std::size_t>(vm, "clients", 1, most);
  config.transfers = checked<std::size_t>(vm, "transfers", 0, most);
  if (vm.count("blksize")) config.blksize = checked<std::uint16_t>(vm, "blksize", 0, u16);
  if (vm.count("windowsize")) config.windowsize = checked<std::uint16_t>(vm, "windowsize", 0, u16);
  if (vm.count("expect-sha256")) config.expect_sha256 = vm["expect-sha256"].as<std::string>();
  config.verify_bytes = checked<std::uint64_t>(vm, "verify-mib", 0, most >> 20) << 20;
  config.timeout = std::chrono::milliseconds(checked<std::int64_t>(vm, "timeout-ms", 0, most / 1'000'000));
  config.attempts = checked<int>(vm, "attempts", 1, 1000);
  config.deadline = std::chrono::seconds(checked<std::int64_t>(vm, "deadline-s", 0, most / 1'000'000'000));
  if (config.file.empty()) usage("--file is required");
  if (config.transfers == 0) config.transfers = config.clients;
  return config;
}

double cpu_seconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

class Load {
 public:
  explicit Load(Config config)
      : config_(std::move(config)), epoll_(::epoll_create1(EPOLL_CLOEXEC)), arena_(batch * slot_bytes) {
    auto address = deskfarm::tftp::detail::make_address(config_.host, config_.port);
    if (!address) usage("--server host must be an IP literal");
    server_ = address->first;
    Request request{Opcode::rrq, config_.file, "octet", {}};
    if (config_.blksize) request.options.push_back({"blksize", std::to_string(*config_.blksize)});
    request.options.push_back({"tsize", "0"});
    if (config_.windowsize) request.options.push_back({"windowsize", std::to_string(*config_.windowsize)});
    encode_request(rrq_, request);
    for (std::size_t i = 0; i < batch; ++i) {
      iovs_[i] = iovec{arena_.data() + i * slot_bytes, slot_bytes};
      messages_[i] = mmsghdr{};
      messages_[i].msg_hdr.msg_iov = &iovs_[i];
      messages_[i].msg_hdr.msg_iovlen = 1;
      messages_[i].msg_hdr.msg_name = &from_[i];
    }
  }

  int run() {
    if (!config_.expect_sha256.empty()) {
      verify_arena_.resize(config_.verify_bytes);  // zero-filled: every page is touched before the clock starts
    }
    started_ = Clock::now();
    now_ = started_;
    const double cpu_before = cpu_seconds();
    const auto deadline = started_ + config_.deadline;
    slots_.resize(config_.clients);
    durations_ms_.reserve(config_.transfers);
    kept_.reserve(config_.transfers);
    for (std::size_t i = 0; i < config_.clients && launched_ < config_.transfers; ++i) launch(i);
    std::vector<epoll_event> events(std::min<std::size_t>(config_.clients, 4096));
    auto next_scan = now_ + std::chrono::milliseconds(100);
    // Bounded by --deadline-s.
    while (finished_ < config_.transfers && now_ < deadline) {
      const int count = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), 50);
      now_ = Clock::now();  // one clock read per loop turn, shared by every packet of the turn
      for (int e = 0; e < count; ++e) on_readable(events[static_cast<std::size_t>(e)].data.u64);
      if (now_ >= next_scan) {
        scan_timeouts();
        next_scan = now_ + std::chrono::milliseconds(100);
      }
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - started_).count();
    const double cpu = cpu_seconds() - cpu_before;
    // Off the clock: content checks of the kept downloads.
    std::size_t verified = 0;
    if (!config_.expect_sha256.empty()) {
      for (auto& kept : kept_) {
        Poco::SHA2Engine sha(Poco::SHA2Engine::SHA_256);
        sha.update(kept.data, static_cast<unsigned>(kept.size));
        const std::string got = Poco::DigestEngine::digestToHex(sha.digest());
        if (got == config_.expect_sha256) {
          ++verified;
        } else {
          --ok_;
          ++failed_;
          if (first_error_.empty()) first_error_ = "sha256 " + got + " != expected";
        }
      }
    }
    const double mib = static_cast<double>(total_bytes_) / (1024.0 * 1024.0);
    std::sort(durations_ms_.begin(), durations_ms_.end());
    auto percentile = [&](double p) {
      if (durations_ms_.empty()) return 0.0;
      const auto index = static_cast<std::size_t>(p * static_cast<double>(durations_ms_.size() - 1) + 0.5);
      return durations_ms_[std::min(index, durations_ms_.size() - 1)];
    };
    std::printf("tftp_load: %zu/%zu transfers ok, %zu failed, %.1f MiB in %.3f s: %.1f MiB/s, %.1f transfers/s, "
                "p50 %.1f ms, p99 %.1f ms, %llu resends, %llu started again, load CPU %.2f s, sha256 checked on %zu\n",
                ok_, config_.transfers, failed_, mib, seconds, mib / seconds, static_cast<double>(ok_) / seconds,
                percentile(0.50), percentile(0.99), static_cast<unsigned long long>(resends_),
                static_cast<unsigned long long>(started_again_), cpu, verified);
    if (!first_error_.empty()) std::printf("tftp_load: first failure: %s\n", first_error_.c_str());
    return (ok_ == config_.transfers) ? 0 : 1;
  }

 private:
  /// Starts a download in `slot`; `again` = the same download's next attempt (not counted as a new one).
  void launch(std::size_t slot, bool again = false) {
    Download& download = slots_[slot];
    if (!download.fd) {
      // A fresh socket per download: servers tell transfers apart by the client's port.
      download.fd = Fd(::socket(server_.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      const int buffer = 1 << 20;
      ::setsockopt(download.fd.get(), SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
      epoll_event event{};
      event.events = EPOLLIN;
      event.data.u64 = slot;
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, download.fd.get(), &event);
    }
    download.active = true;
    download.connected = false;
    download.expected = 1;
    download.in_window = 0;
    download.blksize = default_blksize;
    download.windowsize = 1;
    download.tsize.reset();
    download.bytes = 0;
    download.keep = nullptr;
    download.rrq_pending = true;
    if (!again) {
      download.started = now_;
      download.attempt = 0;
      ++launched_;
    }
    download.last_activity = now_;
    download.retries = 0;
    send_rrq(download);
  }

  void send_rrq(Download& download) {
    ::sendto(download.fd.get(), rrq_.data(), rrq_.size(), 0, reinterpret_cast<const sockaddr*>(&server_),
             deskfarm::tftp::detail::address_length(server_));
  }

  void send_ack(Download& download, std::uint16_t block) {
    download.ack = {std::byte{0}, std::byte{4}, static_cast<std::byte>(block >> 8), static_cast<std::byte>(block & 0xff)};
    ::send(download.fd.get(), download.ack.data(), download.ack.size(), 0);
  }

  void end(std::size_t slot, bool success, const std::string& why) {
    Download& download = slots_[slot];
    if (!success && download.attempt + 1 < config_.attempts) {
      ++download.attempt;
      ++started_again_;
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, download.fd.get(), nullptr);
      download.fd.reset();  // a new port: a new transfer for the server
      return launch(slot, true);
    }
    ++finished_;
    download.active = false;
    if (success) {
      ++ok_;
      total_bytes_ += download.bytes;
      durations_ms_.push_back(std::chrono::duration<double, std::milli>(now_ - download.started).count());
      if (download.keep != nullptr) kept_.push_back(Kept{download.keep, static_cast<std::size_t>(download.bytes)});
    } else {
      ++failed_;
      if (first_error_.empty()) first_error_ = why;
    }
    // A used socket is connected to the old TID and may still get its retransmits: the next download gets a new one.
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, download.fd.get(), nullptr);
    download.fd.reset();
    if (launched_ < config_.transfers) launch(slot);
  }

  void complete(std::size_t slot) {
    Download& download = slots_[slot];
    if (download.tsize && *download.tsize != download.bytes) {
      return end(slot, false, "size " + std::to_string(download.bytes) + " != tsize " + std::to_string(*download.tsize));
    }
    end(slot, true, "");
  }

  /// First reply from the server: its address is the transfer ID; connect() so the kernel filters strangers.
  void adopt_tid(Download& download, const sockaddr_storage& from) {
    download.tid = from;
    download.connected = ::connect(download.fd.get(), reinterpret_cast<const sockaddr*>(&from),
                                   deskfarm::tftp::detail::address_length(from)) == 0;
    download.rrq_pending = false;
  }

  /// Reserves tsize bytes of the verify arena for this download; without tsize or room it is size-checked only.
  void plan_keep(Download& download) {
    if (verify_arena_.empty() || !download.tsize || kept_bytes_ + *download.tsize > verify_arena_.size()) return;
    download.keep = verify_arena_.data() + kept_bytes_;
    kept_bytes_ += *download.tsize;
  }

  void on_readable(std::size_t slot) {
    // Bounded: at most four batches per wake-up, so one fast transfer cannot starve the others.
    for (int round = 0; round < 4 && slots_[slot].active; ++round) {
      Download& download = slots_[slot];
      for (std::size_t i = 0; i < batch; ++i) messages_[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage);
      const int got = ::recvmmsg(download.fd.get(), messages_.data(), batch, MSG_DONTWAIT, nullptr);
      if (got <= 0) return;
      bool ack_due = false;
      int nak = -1;  // block to ACK again after a gap (asks the server to resend what follows)
      for (std::size_t i = 0; i < static_cast<std::size_t>(got) && download.active; ++i) {
        const std::byte* bytes = arena_.data() + i * slot_bytes;
        const std::size_t size = messages_[i].msg_len;
        if (!download.connected && !download.rrq_pending && !deskfarm::tftp::detail::same_endpoint(from_[i], download.tid)) continue;
        if (size < 4 || size >= slot_bytes) continue;
        const auto opcode = static_cast<unsigned>(bytes[1]);
        download.last_activity = now_;
        download.retries = 0;
        if (opcode == 3 && bytes[0] == std::byte{0}) {  // DATA: the hot path, parsed by hand
          if (download.rrq_pending) {
            adopt_tid(download, from_[i]);
            plan_keep(download);
          }
          const auto block = static_cast<std::uint16_t>((static_cast<unsigned>(bytes[2]) << 8) | static_cast<unsigned>(bytes[3]));
          if (block != static_cast<std::uint16_t>(download.expected & 0xffff)) {
            if (download.expected > 1) nak = static_cast<int>((download.expected - 1) & 0xffff);
            download.in_window = 0;
            continue;
          }
          const std::size_t payload = size - 4;
          if (download.keep != nullptr && download.bytes + payload <= *download.tsize) {
            std::memcpy(download.keep + download.bytes, bytes + 4, payload);
          }
          download.bytes += payload;
          ++download.expected;
          nak = -1;
          if (payload < download.blksize) {
            send_ack(download, block);
            complete(slot);
            return;
          }
          if (++download.in_window >= download.windowsize) {
            ack_due = true;
            download.in_window = 0;
          }
          continue;
        }
        const auto parsed = parse_packet(std::span<const std::byte>(bytes, size));
        const auto* packet = std::get_if<Packet>(&parsed);
        if (packet == nullptr) continue;
        if (const auto* error = std::get_if<Error>(packet)) {
          end(slot, false, "ERROR " + std::to_string(static_cast<unsigned>(error->code)) + " " + error->message);
          return;
        }
        if (const auto* oack = std::get_if<Oack>(packet)) {
          if (download.expected != 1) continue;
          if (download.rrq_pending) adopt_tid(download, from_[i]);
          for (const auto& option : oack->options) {
            const auto number = parse_option_number(option.value, 0, ~0ull);
            if (!number) continue;
            if (option.name == "blksize") download.blksize = static_cast<std::uint16_t>(*number);
            if (option.name == "windowsize") download.windowsize = static_cast<std::uint16_t>(*number);
            if (option.name == "tsize") download.tsize = *number;
          }
          plan_keep(download);
          send_ack(download, 0);
        }
      }
      if (!download.active) return;
      if (ack_due) {
        send_ack(download, static_cast<std::uint16_t>((download.expected - 1) & 0xffff));
      } else if (nak >= 0) {
        send_ack(download, static_cast<std::uint16_t>(nak));
      }
      if (static_cast<std::size_t>(got) < batch) return;  // drained: no EAGAIN round trip
    }
  }

  void scan_timeouts() {
    for (std::size_t slot = 0; slot < slots_.size(); ++slot) {
      Download& download = slots_[slot];
      if (!download.active || now_ - download.last_activity < config_.timeout) continue;
      if (++download.retries > 5) {
        end(slot, false, "no reply after 5 resends");
        continue;
      }
      ++resends_;
      download.in_window = 0;
      if (download.rrq_pending) {
        send_rrq(download);
      } else {
        ::send(download.fd.get(), download.ack.data(), download.ack.size(), 0);
      }
      download.last_activity = now_;
    }
  }

  Config config_;
  Fd epoll_;
  sockaddr_storage server_{};
  std::vector<std::byte> rrq_;
  std::vector<std::byte> arena_;
  std::array<iovec, batch> iovs_{};
  std::array<mmsghdr, batch> messages_{};
  std::array<sockaddr_storage, batch> from_{};
  std::vector<Download> slots_;
  std::vector<std::byte> verify_arena_;
  std::vector<Kept> kept_;
  std::vector<double> durations_ms_;
  std::uint64_t kept_bytes_ = 0;
  Clock::time_point started_;
  Clock::time_point now_;
  std::size_t launched_ = 0;
  std::size_t finished_ = 0;
  std::size_t ok_ = 0;
  std::size_t failed_ = 0;
  std::uint64_t total_bytes_ = 0;
  std::uint64_t resends_ = 0;
  std::uint64_t started_again_ = 0;
  std::string first_error_;
};

}  // namespace

int main(int argc, char** argv) {
  Load load(parse(argc, argv));
  return load.run();
}
