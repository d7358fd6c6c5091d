#pragma once
// Minimal blocking NBD client (fixed newstyle, NBD_OPT_GO, simple replies) for tests and tools.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>

#include "deskfarm/nbd/unique_fd.hpp"

namespace deskfarm::nbd {

/// Connecting or negotiating failed; the message names host:port, the export and the server's reason.
class ClientError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Bounds on a connection's waits (for callers that must never hang, like the simulated firmware).
struct ClientOptions {
  /// Bound on connect() and on every later send or receive; 0 = none (block as long as the kernel does).
  std::chrono::milliseconds timeout{0};
  /// Local IP literal to connect from ("" = the kernel picks), e.g. one 127.x.y.z per simulated machine.
  std::string bind_address;
  /// A stop request shuts the socket down: a blocked call returns at once with ClientError "stopped".
  std::stop_token stop;
};

/// One connection to one export. Calls return the NBD error value of the reply (0 = success).
class Client {
 public:
  /// Connects to host:port and selects `export_name` with NBD_OPT_GO; throws ClientError.
  Client(const std::string& host, std::uint16_t port, const std::string& export_name);
  /// The same, with the waits bounded by `options`; a timeout says "no answer within N ms".
  Client(const std::string& host, std::uint16_t port, const std::string& export_name, ClientOptions options);
  Client(Client&&) noexcept = default;
  /// Drops this connection's stop callback before its descriptor closes (the defaulted one would close first).
  Client& operator=(Client&& other) noexcept {
    if (this != &other) {
      on_stop_.reset();
      where_ = std::move(other.where_);
      options_ = std::move(other.options_);
      fd_ = std::move(other.fd_);
      on_stop_ = std::move(other.on_stop_);
      size_ = other.size_;
      flags_ = other.flags_;
      next_cookie_ = other.next_cookie_;
    }
    return *this;
  }
  /// Export size in bytes.
  std::uint64_t size() const { return size_; }
  /// Transmission flags the server sent.
  std::uint16_t flags() const { return flags_; }
  std::uint32_t read(std::uint64_t off, std::span<std::byte> out);
  /// `flags`: NBD command flags, e.g. NBD_CMD_FLAG_FUA (1).
  std::uint32_t write(std::uint64_t off, std::span<const std::byte> in, std::uint16_t flags = 0);
  std::uint32_t flush();
  /// Sends NBD_CMD_DISC; the connection is unusable afterwards.
  void disconnect();

  /// Pipelining: sends one request without waiting for its reply.
  void send_request(std::uint16_t type, std::uint64_t cookie, std::uint64_t off, std::uint32_t length,
                    std::span<const std::byte> payload = {}, std::uint16_t flags = 0);
  /// Receives one simple reply header; returns its error value and sets `cookie`.
  std::uint32_t receive_reply(std::uint64_t& cookie);
  /// Receives a READ payload after a successful receive_reply().
  void receive_payload(std::span<std::byte> out);

 private:
  void send_all(std::span<const std::byte> a, std::span<const std::byte> b = {});
  void recv_all(std::span<std::byte> out);
  void connect_socket(const std::string& host, std::uint16_t port);
  void negotiate(const std::string& export_name);
  /// Why a send or receive failed with errno `err`: a timeout, a stop request or the system's reason.
  std::string failure(int err) const;
  std::string where_;
  ClientOptions options_;
  UniqueFd fd_;
  // Declared after fd_ so it is destroyed first: the callback never sees a closed (or reused) descriptor.
  std::unique_ptr<std::stop_callback<std::function<void()>>> on_stop_;
  std::uint64_t size_ = 0;
  std::uint16_t flags_ = 0;
  std::uint64_t next_cookie_ = 1;
};

}  // namespace deskfarm::nbd
