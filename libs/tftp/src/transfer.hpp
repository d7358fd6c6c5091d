#pragma once
// Internal, sans-IO: option negotiation and the sending side of one RRQ. The server drives it with packets and
// timer ticks; the fuzzer drives it directly. No sockets, no clocks.
#include <cstdint>
#include <optional>
#include <vector>

#include "deskfarm/tftp/packet.hpp"
#include "deskfarm/tftp/server.hpp"

namespace deskfarm::tftp::detail {

/// Result of RFC 2347 negotiation for one RRQ.
struct Negotiated {
  std::uint16_t blksize = default_blksize;
  std::uint16_t windowsize = 1;
  std::optional<unsigned> timeout_seconds;
  std::optional<std::uint64_t> tsize;
  std::vector<Option> oack;  ///< Empty: send DATA 1 straight away, no OACK.
};

/// Accepts only options the client asked for and the server allows; unknown or invalid ones are left out.
Negotiated negotiate(const Request& request, const ServerOptions& options, std::uint64_t file_size);

/// Block range [first, last] (absolute, 1-based) to put on the wire, or the OACK when `oack` is set.
struct Burst {
  bool oack = false;
  std::uint64_t first = 1;
  std::uint64_t last = 0;  ///< last < first: nothing to send.
  bool empty() const { return !oack && last < first; }
};

/// Sender state of one transfer [RFC 1350 §6, RFC 7440 §4]; absolute block numbers never wrap.
class Transfer {
 public:
  Transfer(std::uint64_t size, std::uint16_t blksize, std::uint16_t windowsize, bool oack, bool rollover_to_zero);

  enum class AckResult { advanced, complete, duplicate, stale };

  /// What to send first: the OACK, or the first window.
  Burst start();
  /// Applies an ACK; on `advanced`, `next` is the new window (RFC 7440: from the acknowledged block on).
  AckResult on_ack(std::uint16_t wire_block, Burst& next);
  /// What to send again after a timeout: the OACK, or the window after the last acknowledged block.
  Burst resend() const;

  std::uint16_t wire_block(std::uint64_t absolute) const;
  std::uint64_t total_blocks() const { return total_blocks_; }
  std::uint64_t acked() const { return acked_; }
  bool awaiting_oack_ack() const { return awaiting_oack_ack_; }
  /// True once the final (short or empty) block has been sent at least once.
  bool all_sent() const { return sent_ == total_blocks_; }
  /// Byte range of one absolute block within the file.
  std::uint64_t block_offset(std::uint64_t absolute) const { return (absolute - 1) * blksize_; }
  std::size_t block_length(std::uint64_t absolute) const;
  std::uint16_t blksize() const { return blksize_; }

 private:
  Burst window_from(std::uint64_t first);

  std::uint64_t size_;
  std::uint16_t blksize_;
  std::uint16_t windowsize_;
  bool rollover_to_zero_;
  bool awaiting_oack_ack_;
  std::uint64_t total_blocks_;
  std::uint64_t acked_ = 0;
  std::uint64_t sent_ = 0;
};

}  // namespace deskfarm::tftp::detail
