#pragma once
// Test helpers: temporary directories, raw UDP sockets on 127.0.0.1, child processes stopped by PID.
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "deskfarm/tftp/packet.hpp"
#include "deskfarm/tftp/server.hpp"

namespace tftp_test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

/// A fresh directory under /tmp, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "deskfarm-tftp-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

inline std::string pattern_bytes(std::size_t size, unsigned seed = 1) {
  std::string bytes(size, '\0');
  std::minstd_rand random(seed);
  for (auto& c : bytes) c = static_cast<char>(random() & 0xff);
  return bytes;
}

inline void write_file(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline std::string to_string(const std::vector<std::byte>& bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

inline std::vector<std::byte> to_bytes(std::string_view text) {
  const auto* first = reinterpret_cast<const std::byte*>(text.data());
  return std::vector<std::byte>(first, first + text.size());
}

/// A UDP socket on 127.0.0.1 with an ephemeral port.
class RawSocket {
 public:
  RawSocket() : fd_(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) throw std::runtime_error("raw socket bind failed");
  }
  ~RawSocket() { ::close(fd_); }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  void send(std::uint16_t port, const std::vector<std::byte>& bytes) const {
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    to.sin_port = htons(port);
    ::sendto(fd_, bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
  }
  struct Received {
    std::vector<std::byte> bytes;
    std::uint16_t from_port = 0;
  };
  /// Next datagram within `wait`, or nullopt.
  std::optional<Received> receive(std::chrono::milliseconds wait) const {
    pollfd poll_fd{fd_, POLLIN, 0};
    if (::poll(&poll_fd, 1, static_cast<int>(wait.count())) <= 0) return std::nullopt;
    Received received;
    received.bytes.resize(65536);
    sockaddr_in from{};
    socklen_t length = sizeof from;
    const ssize_t got = ::recvfrom(fd_, received.bytes.data(), received.bytes.size(), 0, reinterpret_cast<sockaddr*>(&from), &length);
    if (got < 0) return std::nullopt;
    received.bytes.resize(static_cast<std::size_t>(got));
    received.from_port = ntohs(from.sin_port);
    return received;
  }
  /// Parsed next packet within `wait`.
  std::optional<std::pair<deskfarm::tftp::Packet, std::uint16_t>> receive_packet(std::chrono::milliseconds wait) const {
    auto received = receive(wait);
    if (!received) return std::nullopt;
    auto parsed = deskfarm::tftp::parse_packet(received->bytes);
    if (auto* packet = std::get_if<deskfarm::tftp::Packet>(&parsed)) {
      // Payload views point into `received`, which dies here: copy DATA into a stable owner.
      if (auto* data = std::get_if<deskfarm::tftp::Data>(packet)) {
        last_payload_.assign(data->payload.begin(), data->payload.end());
        data->payload = last_payload_;
      }
      return std::pair{*packet, received->from_port};
    }
    return std::nullopt;
  }
  int fd() const { return fd_; }

 private:
  int fd_;
  mutable std::vector<std::byte> last_payload_;
};

inline std::vector<std::byte> rrq(const std::string& file, std::vector<deskfarm::tftp::Option> options = {},
                                  const std::string& mode = "octet") {
  std::vector<std::byte> out;
  deskfarm::tftp::encode_request(out, deskfarm::tftp::Request{deskfarm::tftp::Opcode::rrq, file, mode, std::move(options)});
  return out;
}

inline std::vector<std::byte> ack(std::uint16_t block) {
  std::vector<std::byte> out;
  deskfarm::tftp::encode_ack(out, block);
  return out;
}

/// Waits (bounded) until `predicate(server.stats())` holds.
template <typename Predicate>
bool wait_for_stats(const deskfarm::tftp::Server& server, Predicate predicate, std::chrono::milliseconds limit = 5000ms) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (predicate(server.stats())) return true;
    std::this_thread::sleep_for(5ms);
  }
  return predicate(server.stats());
}

/// A child process; killed (SIGKILL) and reaped by PID on destruction unless it already exited.
class ChildProcess {
 public:
  explicit ChildProcess(std::vector<std::string> argv, const fs::path& output = "/dev/null") {
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      const int out = ::open(output.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int null_in = ::open("/dev/null", O_RDONLY);
      if (out >= 0) {
        ::dup2(out, 1);
        ::dup2(out, 2);
      }
      if (null_in >= 0) ::dup2(null_in, 0);
      std::vector<char*> args;
      for (auto& arg : argv) args.push_back(arg.data());
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
  }
  ~ChildProcess() {
    if (pid_ > 0 && !status_) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  /// Exit code within `limit`; on timeout the child is killed and nullopt returned.
  std::optional<int> wait(std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!status_) {
      int status = 0;
      const pid_t done = ::waitpid(pid_, &status, WNOHANG);
      if (done == pid_) {
        status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        break;
      }
      if (std::chrono::steady_clock::now() >= until) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        status_ = -1;
        return std::nullopt;
      }
      std::this_thread::sleep_for(10ms);
    }
    return status_;
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

}  // namespace tftp_test
