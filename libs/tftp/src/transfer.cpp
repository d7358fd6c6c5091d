#include "transfer.hpp"

#include <algorithm>
#include <limits>
#include <string>

namespace deskfarm::tftp::detail {

Negotiated negotiate(const Request& request, const ServerOptions& options, std::uint64_t file_size) {
  Negotiated result;
  std::optional<std::uint64_t> asked_window;
  // Names accepted in client order; values filled in once blksize is known (windowsize depends on it).
  std::vector<std::string> accepted;
  auto seen = [&](const std::string& name) { return std::find(accepted.begin(), accepted.end(), name) != accepted.end(); };
  for (const auto& option : request.options) {
    if (seen(option.name)) continue;  // duplicates: the first one counts
    if (option.name == "blksize" && !options.refuse_blksize) {
      const auto value = parse_option_number(option.value, min_blksize, std::numeric_limits<std::uint64_t>::max());
      if (!value) continue;
      const std::uint64_t cap = std::clamp<std::uint64_t>(options.max_blksize, min_blksize, max_blksize);
      result.blksize = static_cast<std::uint16_t>(std::min<std::uint64_t>(*value, cap));
      accepted.push_back(option.name);
    } else if (option.name == "tsize" && !options.refuse_tsize && request.mode == "octet") {
      // RFC 2349: the RRQ carries 0, but some clients send garbage; only a number is answered.
      if (!parse_option_number(option.value, 0, std::numeric_limits<std::uint64_t>::max())) continue;
      // RFC 2349 answers tsize=0 for an empty file (dnsmasq and tftpd-hpa do); curl 7.x/8.x rejects that OACK
      // as illegal, so a site whose clients are curl may leave the option out instead, which is always allowed.
      if (file_size == 0 && options.omit_zero_tsize) continue;
      result.tsize = file_size;
      accepted.push_back(option.name);
    } else if (option.name == "timeout" && !options.refuse_timeout) {
      const auto value = parse_option_number(option.value, 1, 255);
      if (!value) continue;
      result.timeout_seconds = static_cast<unsigned>(*value);
      accepted.push_back(option.name);
    } else if (option.name == "windowsize" && !options.refuse_windowsize && options.allow_windowsize) {
      const auto value = parse_option_number(option.value, 1, 65535);
      if (!value) continue;
      asked_window = *value;
      accepted.push_back(option.name);
    }
  }
  if (asked_window) {
    const std::uint64_t by_bytes = std::max<std::uint64_t>(1, options.max_window_bytes / result.blksize);
    // 32768 keeps every in-flight block number unambiguous across a 16-bit wrap.
    const std::uint64_t cap =
        std::clamp<std::uint64_t>(std::min<std::uint64_t>(options.max_windowsize, by_bytes), 1, 32768);
    result.windowsize = static_cast<std::uint16_t>(std::min(*asked_window, cap));
  }
  for (const auto& name : accepted) {
    if (name == "blksize") result.oack.push_back({name, std::to_string(result.blksize)});
    if (name == "tsize") result.oack.push_back({name, std::to_string(*result.tsize)});
    if (name == "timeout") result.oack.push_back({name, std::to_string(*result.timeout_seconds)});
    if (name == "windowsize") result.oack.push_back({name, std::to_string(result.windowsize)});
  }
  return result;
}

Transfer::Transfer(std::uint64_t size, std::uint16_t blksize, std::uint16_t windowsize, bool oack, bool rollover_to_zero)
    : size_(size),
      blksize_(std::max<std::uint16_t>(blksize, 1)),
      windowsize_(std::max<std::uint16_t>(windowsize, 1)),
      rollover_to_zero_(rollover_to_zero),
      awaiting_oack_ack_(oack),
      total_blocks_(size / blksize_ + 1) {}

std::uint16_t Transfer::wire_block(std::uint64_t absolute) const {
  if (absolute == 0) return 0;
  if (rollover_to_zero_) return static_cast<std::uint16_t>(absolute & 0xffff);
  return static_cast<std::uint16_t>((absolute - 1) % 65535 + 1);
}

std::size_t Transfer::block_length(std::uint64_t absolute) const {
  const std::uint64_t offset = block_offset(absolute);
  if (offset >= size_) return 0;
  return static_cast<std::size_t>(std::min<std::uint64_t>(blksize_, size_ - offset));
}

Burst Transfer::window_from(std::uint64_t first) {
  Burst burst;
  burst.first = first;
  burst.last = std::min<std::uint64_t>(first + windowsize_ - 1, total_blocks_);
  sent_ = std::max(sent_, burst.last);
  return burst;
}

Burst Transfer::start() {
  if (awaiting_oack_ack_) return Burst{true, 0, 0};
  return window_from(1);
}

Transfer::AckResult Transfer::on_ack(std::uint16_t wire_block_number, Burst& next) {
  next = Burst{false, 1, 0};
  if (awaiting_oack_ack_) {
    if (wire_block_number != 0) return AckResult::stale;
    awaiting_oack_ack_ = false;
    next = window_from(1);
    return AckResult::advanced;
  }
  // The acknowledged block lies in [acked_, sent_]; the window is far smaller than 65536, so at most one matches.
  std::optional<std::uint64_t> match;
  for (std::uint64_t block = sent_ + 1; block-- > acked_;) {
    if (wire_block(block) == wire_block_number) {
      match = block;
      break;
    }
  }
  if (!match) return AckResult::stale;
  // Never answer a repeated ACK (Sorcerer's Apprentice, RFC 1123 §4.2.3.1): only the timer resends.
  if (*match == acked_) return AckResult::duplicate;
  acked_ = *match;
  if (acked_ == total_blocks_) return AckResult::complete;
  next = window_from(acked_ + 1);
  return AckResult::advanced;
}

Burst Transfer::resend() const {
  if (awaiting_oack_ack_) return Burst{true, 0, 0};
  return Burst{false, acked_ + 1, sent_};
}

}  // namespace deskfarm::tftp::detail
