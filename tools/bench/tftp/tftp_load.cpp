// tftp_load: many concurrent TFTP downloads from one process (one epoll thread), each checked for size
// (against tsize) and optionally SHA-256. Prints MiB/s and transfers/s.
// usage: tftp_load --server HOST:PORT --file NAME [--clients N] [--transfers T] [--blksize B] [--windowsize W]
//                  [--expect-sha256 HEX] [--timeout-ms MS] [--deadline-s S]      (--help lists them)
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <sys/epoll.h>
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
  std::chrono::milliseconds timeout{1000};
  std::chrono::seconds deadline{300};
};

struct Download {
  Fd fd;
  std::optional<sockaddr_storage> tid;
  std::uint64_t expected = 1;
  std::uint16_t in_window = 0;
  std::uint16_t blksize = default_blksize;
  std::uint16_t windowsize = 1;
  std::optional<std::uint64_t> tsize;
  std::uint64_t bytes = 0;
  Poco::SHA2Engine sha{Poco::SHA2Engine::SHA_256};
  std::vector<std::byte> last_sent;
  Clock::time_point last_activity;
  int retries = 0;
};

const char* synopsis = "usage: tftp_load --server HOST:PORT --file NAME [OPTIONS]\n";

po::options_description& flags() {
  static po::options_description options = [] {
    po::options_description o("options");
    o.add_options()
        ("help,h", "print this help and exit")
        ("server", po::value<std::string>()->value_name("HOST:PORT")->default_value("127.0.0.1:69"),
         "server to download from; HOST is an IP literal")
        ("file", po::value<std::string>()->value_name("NAME"), "file to request (required)")
        ("clients", po::value<long long>()->value_name("N")->default_value(1), "concurrent downloads, at least 1")
        ("transfers", po::value<long long>()->value_name("T")->default_value(0),
         "downloads in all; 0 = one per client")
        ("blksize", po::value<long long>()->value_name("B"), "ask for this blksize, 0..65535 (default: do not ask)")
        ("windowsize", po::value<long long>()->value_name("W"),
         "ask for this windowsize, 0..65535 (default: do not ask)")
        ("expect-sha256", po::value<std::string>()->value_name("HEX"),
         "fail a download whose SHA-256 (lower-case hex) differs")
        ("timeout-ms", po::value<long long>()->value_name("MS")->default_value(1000),
         "resend after this long without a reply; 5 resends fail the download")
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
                 "prints MiB/s and transfers/s, exits 1 unless every download succeeded.\n"
              << synopsis << flags();
    std::exit(0);
  }
  Config config;
  const std::string server = vm["server"].as<std::string>();
  const auto colon = server.rfind(':');
  if (colon == std::string::npos) usage("--server wants HOST:PORT");
  config.host = server.substr(0, colon);
  const std::string port = server.substr(colon + 1);
  unsigned port_number = 0;
  const auto [end, error] = std::from_chars(port.data(), port.data() + port.size(), port_number);
  if (port.empty() || error != std::errc{} || end != port.data() + port.size() || port_number > u16) {
    usage("--server wants HOST:PORT with PORT in 0..65535, not '" + server + "'");
  }
  config.port = static_cast<std::uint16_t>(port_number);
  if (vm.count("file")) config.file = vm["file"].as<std::string>();
  config.clients = checked<std::size_t>(vm, "clients", 1, most);
  config.transfers = checked<std::size_t>(vm, "transfers", 0, most);
  if (vm.count("blksize")) config.blksize = checked<std::uint16_t>(vm, "blksize", 0, u16);
  if (vm.count("windowsize")) config.windowsize = checked<std::uint16_t>(vm, "windowsize", 0, u16);
  if (vm.count("expect-sha256")) config.expect_sha256 = vm["expect-sha256"].as<std::string>();
  config.timeout = std::chrono::milliseconds(checked<std::int64_t>(vm, "timeout-ms", 0, most / 1'000'000));
  config.deadline = std::chrono::seconds(checked<std::int64_t>(vm, "deadline-s", 0, most / 1'000'000'000));
  if (config.file.empty()) usage("--file is required");
  if (config.transfers == 0) config.transfers = config.clients;
  return config;
}

class Load {
 public:
  explicit Load(Config config) : config_(std::move(config)), epoll_(::epoll_create1(EPOLL_CLOEXEC)) {
    auto address = deskfarm::tftp::detail::make_address(config_.host, config_.port);
    if (!address) usage("--server host must be an IP literal");
    server_ = address->first;
    Request request{Opcode::rrq, config_.file, "octet", {}};
    if (config_.blksize) request.options.push_back({"blksize", std::to_string(*config_.blksize)});
    request.options.push_back({"tsize", "0"});
    if (config_.windowsize) request.options.push_back({"windowsize", std::to_string(*config_.windowsize)});
    encode_request(rrq_, request);
    buffer_.resize(65536 + 16);
  }

  int run() {
    const auto started = Clock::now();
    const auto deadline = started + config_.deadline;
    slots_.resize(config_.clients);
    for (std::size_t i = 0; i < config_.clients && launched_ < config_.transfers; ++i) launch(i);
    std::vector<epoll_event> events(1024);
    auto next_scan = Clock::now() + std::chrono::milliseconds(100);
    // Bounded by --deadline-s.
    while (finished_ < config_.transfers && Clock::now() < deadline) {
      const int count = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), 50);
      for (int e = 0; e < count; ++e) on_readable(events[static_cast<std::size_t>(e)].data.u64);
      if (Clock::now() >= next_scan) {
        scan_timeouts();
        next_scan = Clock::now() + std::chrono::milliseconds(100);
      }
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    const double mib = static_cast<double>(total_bytes_) / (1024.0 * 1024.0);
    std::printf("tftp_load: %zu/%zu transfers ok, %zu failed, %.1f MiB in %.3f s: %.1f MiB/s, %.1f transfers/s, %llu resends\n",
                ok_, config_.transfers, failed_, mib, seconds, mib / seconds, static_cast<double>(ok_) / seconds,
                static_cast<unsigned long long>(resends_));
    if (!first_error_.empty()) std::printf("tftp_load: first failure: %s\n", first_error_.c_str());
    return (ok_ == config_.transfers) ? 0 : 1;
  }

 private:
  void launch(std::size_t slot) {
    auto download = std::make_unique<Download>();
    download->fd = Fd(::socket(server_.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    const int buffer = 1 << 20;
    ::setsockopt(download->fd.get(), SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.u64 = slot;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, download->fd.get(), &event);
    download->last_sent = rrq_;
    download->last_activity = Clock::now();
    send(*download, rrq_, server_);
    slots_[slot] = std::move(download);
    ++launched_;
  }

  void send(Download& download, const std::vector<std::byte>& bytes, const sockaddr_storage& to) {
    ::sendto(download.fd.get(), bytes.data(), bytes.size(), 0, reinterpret_cast<const sockaddr*>(&to),
             deskfarm::tftp::detail::address_length(to));
  }

  void send_ack(Download& download, std::uint16_t block) {
    download.last_sent.clear();
    encode_ack(download.last_sent, block);
    send(download, download.last_sent, *download.tid);
  }

  void end(std::size_t slot, bool success, const std::string& why) {
    Download& download = *slots_[slot];
    ++finished_;
    if (success) {
      ++ok_;
      total_bytes_ += download.bytes;
    } else {
      ++failed_;
      if (first_error_.empty()) first_error_ = why;
    }
    slots_[slot].reset();
    if (launched_ < config_.transfers) launch(slot);
  }

  void complete(std::size_t slot) {
    Download& download = *slots_[slot];
    if (download.tsize && *download.tsize != download.bytes) {
      return end(slot, false, "size " + std::to_string(download.bytes) + " != tsize " + std::to_string(*download.tsize));
    }
    if (!config_.expect_sha256.empty()) {
      const std::string got = Poco::DigestEngine::digestToHex(download.sha.digest());
      if (got != config_.expect_sha256) return end(slot, false, "sha256 " + got + " != expected");
    }
    end(slot, true, "");
  }

  void on_readable(std::size_t slot) {
    // Bounded: at most 64 datagrams per wake-up, so one fast transfer cannot starve the others.
    for (int i = 0; i < 64 && slots_[slot]; ++i) {
      Download& download = *slots_[slot];
      sockaddr_storage from{};
      socklen_t length = sizeof from;
      const ssize_t got = ::recvfrom(download.fd.get(), buffer_.data(), buffer_.size(), MSG_DONTWAIT,
                                     reinterpret_cast<sockaddr*>(&from), &length);
      if (got < 0) return;
      if (download.tid && !deskfarm::tftp::detail::same_endpoint(from, *download.tid)) continue;
      const auto parsed = parse_packet(std::span<const std::byte>(buffer_.data(), static_cast<std::size_t>(got)));
      const auto* packet = std::get_if<Packet>(&parsed);
      if (packet == nullptr) continue;
      download.last_activity = Clock::now();
      download.retries = 0;
      if (const auto* error = std::get_if<Error>(packet)) {
        return end(slot, false, "ERROR " + std::to_string(static_cast<unsigned>(error->code)) + " " + error->message);
      }
      if (const auto* oack = std::get_if<Oack>(packet)) {
        if (download.expected != 1) continue;
        download.tid = from;
        for (const auto& option : oack->options) {
          const auto number = parse_option_number(option.value, 0, ~0ull);
          if (!number) continue;
          if (option.name == "blksize") download.blksize = static_cast<std::uint16_t>(*number);
          if (option.name == "windowsize") download.windowsize = static_cast<std::uint16_t>(*number);
          if (option.name == "tsize") download.tsize = *number;
        }
        send_ack(download, 0);
        continue;
      }
      const auto* data = std::get_if<Data>(packet);
      if (data == nullptr) continue;
      if (!download.tid) download.tid = from;
      if (data->block != static_cast<std::uint16_t>(download.expected & 0xffff)) {
        if (download.expected > 1) send_ack(download, static_cast<std::uint16_t>((download.expected - 1) & 0xffff));
        download.in_window = 0;
        continue;
      }
      download.sha.update(data->payload.data(), static_cast<unsigned>(data->payload.size()));
      download.bytes += data->payload.size();
      ++download.expected;
      if (data->payload.size() < download.blksize) {
        send_ack(download, data->block);
        return complete(slot);
      }
      if (++download.in_window >= download.windowsize) {
        send_ack(download, data->block);
        download.in_window = 0;
      }
    }
  }

  void scan_timeouts() {
    const auto now = Clock::now();
    for (std::size_t slot = 0; slot < slots_.size(); ++slot) {
      if (!slots_[slot]) continue;
      Download& download = *slots_[slot];
      if (now - download.last_activity < config_.timeout) continue;
      if (++download.retries > 5) {
        end(slot, false, "no reply after 5 resends");
        continue;
      }
      ++resends_;
      download.in_window = 0;
      send(download, download.last_sent, download.tid ? *download.tid : server_);
      download.last_activity = now;
    }
  }

  Config config_;
  Fd epoll_;
  sockaddr_storage server_{};
  std::vector<std::byte> rrq_;
  std::vector<std::byte> buffer_;
  std::vector<std::unique_ptr<Download>> slots_;
  std::size_t launched_ = 0;
  std::size_t finished_ = 0;
  std::size_t ok_ = 0;
  std::size_t failed_ = 0;
  std::uint64_t total_bytes_ = 0;
  std::uint64_t resends_ = 0;
  std::string first_error_;
};

}  // namespace

int main(int argc, char** argv) {
  Load load(parse(argc, argv));
  return load.run();
}
