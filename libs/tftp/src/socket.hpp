#pragma once
// Internal RAII and address helpers shared by the server, the client and the bench tools.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace deskfarm::tftp::detail {

/// Owns one file descriptor; closes it on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

/// Parses an IPv4/IPv6 literal plus port; nullopt if `address` is not a literal.
std::optional<std::pair<sockaddr_storage, socklen_t>> make_address(std::string_view address, std::uint16_t port);
/// An endpoint string split into its IP literal and optional port.
struct Endpoint {
  std::string host;                  ///< Without brackets: "127.0.0.1", "::1".
  std::optional<std::uint16_t> port;
};
/// Splits "1.2.3.4", "1.2.3.4:69", "::1", "[::1]" or "[::1]:69"; nullopt if the host is no IP literal or the port
/// is not a number in 0..65535.
std::optional<Endpoint> parse_endpoint(std::string_view text);
/// "1.2.3.4:69" or "[::1]:69".
std::string format_address(const sockaddr_storage& address);
/// Port of an AF_INET/AF_INET6 address in host order.
std::uint16_t address_port(const sockaddr_storage& address);
/// Same family, IP and port.
bool same_endpoint(const sockaddr_storage& a, const sockaddr_storage& b);
/// Same family and IP, any port.
bool same_host(const sockaddr_storage& a, const sockaddr_storage& b);
/// socklen_t matching the family of `address`.
socklen_t address_length(const sockaddr_storage& address);
/// errno text, thread-safe.
std::string errno_text(int error);

}  // namespace deskfarm::tftp::detail
