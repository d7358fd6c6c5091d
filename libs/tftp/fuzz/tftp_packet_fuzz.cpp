// Fuzzes the wire codec, option negotiation and the sender state machine (the server's logic minus sockets).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <algorithm>

#include "deskfarm/tftp/packet.hpp"
#include "deskfarm/tftp/path.hpp"
#include "deskfarm/tftp/server.hpp"
#include "socket.hpp"
#include "transfer.hpp"

namespace {

using namespace deskfarm::tftp;

void check(bool condition) {
  if (!condition) std::abort();
}

// Drives one transfer: sizes from the first bytes, then every 2 bytes are an ACK (0xffff = timer tick).
void drive_transfer(std::span<const std::byte> bytes, const Request* request) {
  if (bytes.size() < 6) return;
  auto byte = [&](std::size_t i) { return std::to_integer<std::uint64_t>(bytes[i]); };
  const std::uint64_t size = (byte(0) << 16 | byte(1) << 8 | byte(2)) * (1 + byte(3) % 4);
  ServerOptions options;
  options.max_windowsize = static_cast<std::uint16_t>(1 + byte(4) % 64);
  options.max_blksize = static_cast<std::uint16_t>(8 + byte(5) * 7);
  options.rollover_to_zero = (byte(4) & 0x80) == 0;
  detail::Negotiated negotiated;
  if (request != nullptr) {
    negotiated = detail::negotiate(*request, options, size);
    check(negotiated.blksize >= min_blksize && negotiated.blksize <= std::max<std::uint16_t>(options.max_blksize, default_blksize));
    check(negotiated.windowsize >= 1 && negotiated.windowsize <= options.max_windowsize);
    for (const auto& option : negotiated.oack) check(request->option(option.name).has_value());
    // RFC 2349: a valid tsize asked in octet mode is answered with the exact size, 0 included.
    for (const auto& option : negotiated.oack) {
      if (option.name == "tsize") check(option.value == std::to_string(size) && negotiated.tsize == size);
    }
  } else {
    negotiated.blksize = static_cast<std::uint16_t>(8 + byte(5));
    negotiated.windowsize = static_cast<std::uint16_t>(1 + byte(4) % 16);
  }
  detail::Transfer transfer(size, negotiated.blksize, negotiated.windowsize, !negotiated.oack.empty(), options.rollover_to_zero);
  auto check_burst = [&](const detail::Burst& burst) {
    if (burst.oack || burst.empty()) return;
    check(burst.first >= 1 && burst.last <= transfer.total_blocks());
    check(burst.last - burst.first < negotiated.windowsize);
    for (std::uint64_t block = burst.first; block <= burst.last; ++block) {
      check(transfer.block_length(block) <= negotiated.blksize);
      check(transfer.block_offset(block) + transfer.block_length(block) <= size);
    }
  };
  check_burst(transfer.start());
  for (std::size_t i = 6; i + 1 < bytes.size(); i += 2) {
    const auto wire = static_cast<std::uint16_t>(byte(i) << 8 | byte(i + 1));
    if (wire == 0xffff) {
      check_burst(transfer.resend());
      continue;
    }
    const std::uint64_t before = transfer.acked();
    detail::Burst next;
    const auto result = transfer.on_ack(wire, next);
    check(transfer.acked() >= before && transfer.acked() <= transfer.total_blocks());
    if (result == detail::Transfer::AckResult::advanced) check_burst(next);
    if (result == detail::Transfer::AckResult::duplicate || result == detail::Transfer::AckResult::stale) check(next.empty());
    if (result == detail::Transfer::AckResult::complete) break;
  }
  // Walking the whole file with in-order ACKs must finish (bounded: a few blocks past the end at most).
  detail::Transfer walk(size % 4096, negotiated.blksize, negotiated.windowsize, false, options.rollover_to_zero);
  detail::Burst burst = walk.start();
  for (std::uint64_t step = 0; step <= walk.total_blocks() + 1; ++step) {
    detail::Burst next;
    if (walk.on_ack(walk.wire_block(burst.last), next) == detail::Transfer::AckResult::complete) return;
    burst = next;
  }
  check(false);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  const auto parsed = parse_packet(bytes);
  const Request* request = nullptr;
  if (const auto* packet = std::get_if<Packet>(&parsed)) {
    if (const auto* parsed_request = std::get_if<Request>(packet)) {
      request = parsed_request;
      // Re-encoding what we parsed must parse back to the same request.
      std::vector<std::byte> encoded;
      encode_request(encoded, *request);
      const auto again = parse_packet(encoded);
      const auto* round = std::get_if<Packet>(&again);
      check(round != nullptr);
      const auto& second = std::get<Request>(*round);
      check(second.filename == request->filename && second.mode == request->mode && second.options == request->options);
      (void)sanitize_request_path(request->filename, true);
    }
  } else {
    check(std::get<ParseError>(parsed).offset <= size);
  }
  drive_transfer(bytes, request);
  // Listen-address strings: whatever parses must name an IP literal the socket layer accepts.
  if (size <= 64) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    if (const auto endpoint = detail::parse_endpoint(text)) check(detail::make_address(endpoint->host, endpoint->port.value_or(0)).has_value());
  }
  return 0;
}
