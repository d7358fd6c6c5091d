#pragma once
// Small blocking TFTP client (RRQ only) for tests and health monitors; holds the whole file in memory.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "deskfarm/tftp/packet.hpp"

namespace deskfarm::tftp {

/// What the client asks for; unset options are not sent.
struct ClientOptions {
  std::optional<std::uint16_t> blksize;     ///< RFC 2348.
  bool tsize = false;                       ///< Ask for tsize=0 (RFC 2349).
  std::optional<std::uint8_t> timeout;      ///< Seconds, RFC 2349.
  std::optional<std::uint16_t> windowsize;  ///< RFC 7440.
  std::vector<Option> extra_options;        ///< Sent as is (e.g. unknown options, for tests).
  std::string mode = "octet";
  std::chrono::milliseconds retransmit{500};   ///< Resend of the RRQ or the last ACK.
  std::chrono::milliseconds deadline{10'000};  ///< Total time for the whole download.
  std::size_t max_bytes = std::size_t{256} << 20;  ///< Refuse to buffer more than this.
  bool rollover_to_zero = true;                ///< Expect block 0 after 65535 (else 1).
  /// Give up after this many resends of one packet (RRQ or ACK) without an answer; unset = only the deadline.
  /// The error then says "no answer after N tries" (N = resends + 1) and counts malformed datagrams ignored.
  std::optional<int> max_retransmits;
  /// Local IP literal to send from ("" = the kernel picks), e.g. one 127.x.y.z per simulated machine.
  std::string bind_address;
  /// get() returns within ~50 ms of a stop request, throwing ClientError "stopped".
  std::stop_token stop;
};

/// A finished download.
struct ClientResult {
  std::vector<std::byte> data;
  std::vector<Option> oack;           ///< Options the server acknowledged; empty if it sent no OACK.
  std::uint16_t blksize = default_blksize;
  std::uint16_t windowsize = 1;
  std::optional<std::uint64_t> tsize;
  std::uint16_t server_port = 0;      ///< The transfer port (TID) the server used.
  std::uint64_t blocks = 0;
};

/// A failed download; `code` is set when the server sent an ERROR.
class ClientError : public std::runtime_error {
 public:
  ClientError(const std::string& message, std::optional<ErrorCode> code) : std::runtime_error(message), code_(code) {}
  /// ERROR code from the server, if that is how it failed.
  std::optional<ErrorCode> code() const { return code_; }

 private:
  std::optional<ErrorCode> code_;
};

/// Blocking RRQ client; one get() at a time per object.
class Client {
 public:
  explicit Client(ClientOptions options = {}) : options_(std::move(options)) {}
  /// Downloads `filename` from host:port (IP literal or name); throws ClientError.
  ClientResult get(std::string_view host, std::uint16_t port, std::string_view filename) const;

 private:
  ClientOptions options_;
};

}  // namespace deskfarm::tftp
