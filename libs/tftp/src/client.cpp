#include "deskfarm/tftp/client.hpp"

#include <cerrno>
#include <cstring>

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include "socket.hpp"

namespace deskfarm::tftp {
using namespace detail;

namespace {

using Clock = std::chrono::steady_clock;

sockaddr_storage resolve(std::string_view host, std::uint16_t port) {
  if (auto literal = make_address(host, port)) return literal->first;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* list = nullptr;
  const std::string name(host);
  const int status = ::getaddrinfo(name.c_str(), std::to_string(port).c_str(), &hints, &list);
  if (status != 0 || list == nullptr) throw ClientError("tftp client: cannot resolve '" + name + "': " + ::gai_strerror(status), std::nullopt);
  sockaddr_storage result{};
  std::memcpy(&result, list->ai_addr, list->ai_addrlen);
  ::freeaddrinfo(list);
  return result;
}

}  // namespace

ClientResult Client::get(std::string_view host, std::uint16_t port, std::string_view filename) const {
  const sockaddr_storage server = resolve(host, port);
  const std::string where = "tftp client: " + std::string(filename) + " from " + format_address(server);
  auto fail = [&](const std::string& why, std::optional<ErrorCode> code = std::nullopt) -> ClientError {
    return ClientError(where + ": " + why, code);
  };
  Fd fd(::socket(server.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) throw fail("socket: " + errno_text(errno));
  if (!options_.bind_address.empty()) {
    const auto local = make_address(options_.bind_address, 0);
    if (!local) throw fail("bind address '" + options_.bind_address + "' is not an IP literal");
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&local->first), local->second) != 0) {
      throw fail("cannot bind to " + options_.bind_address + ": " + errno_text(errno));
    }
  }

  Request request{Opcode::rrq, std::string(filename), options_.mode, {}};
  if (options_.blksize) request.options.push_back({"blksize", std::to_string(*options_.blksize)});
  if (options_.tsize) request.options.push_back({"tsize", "0"});
  if (options_.timeout) request.options.push_back({"timeout", std::to_string(*options_.timeout)});
  if (options_.windowsize) request.options.push_back({"windowsize", std::to_string(*options_.windowsize)});
  for (const auto& option : options_.extra_options) request.options.push_back(option);
  std::vector<std::byte> rrq;
  encode_request(rrq, request);

  ClientResult result;
  std::optional<sockaddr_storage> tid;
  std::uint64_t expected = 1;  // absolute number of the next block we want
  std::uint16_t in_window = 0;
  std::vector<std::byte> last_sent = rrq;
  std::vector<std::byte> buffer(65536 + 16);
  std::vector<std::byte> out;
  const auto deadline = Clock::now() + options_.deadline;
  int resends = 0;     // of the packet in last_sent, without an answer that moved the transfer on
  int malformed = 0;   // datagrams from the server's host that are not TFTP
  // A stop request is noticed within this (the poll is sliced only when a stop can come).
  constexpr auto stop_slice = std::chrono::milliseconds(50);
  auto wire = [&](std::uint64_t absolute) -> std::uint16_t {
    if (options_.rollover_to_zero) return static_cast<std::uint16_t>(absolute & 0xffff);
    return absolute == 0 ? 0 : static_cast<std::uint16_t>((absolute - 1) % 65535 + 1);
  };
  auto send_to = [&](const std::vector<std::byte>& bytes, const sockaddr_storage& to) {
    ::sendto(fd.get(), bytes.data(), bytes.size(), 0, reinterpret_cast<const sockaddr*>(&to), address_length(to));
  };
  auto send_ack = [&](std::uint16_t block) {
    out.clear();
    encode_ack(out, block);
    last_sent = out;
    send_to(out, *tid);
  };
  send_to(rrq, server);
  auto resend_at = Clock::now() + options_.retransmit;

  // Bounded by the deadline: every pass waits at most until it.
  while (true) {
    const auto now = Clock::now();
    if (now >= deadline) throw fail("deadline of " + std::to_string(options_.deadline.count()) + " ms passed after " + std::to_string(result.data.size()) + " bytes");
    if (options_.stop.stop_requested()) throw fail("stopped after " + std::to_string(result.data.size()) + " bytes");
    if (now >= resend_at) {
      if (options_.max_retransmits && resends >= *options_.max_retransmits) {
        std::string why = "no answer after " + std::to_string(resends + 1) + " tries " +
                          std::to_string(options_.retransmit.count()) + " ms apart";
        if (malformed > 0) why += " (" + std::to_string(malformed) + " malformed datagrams ignored)";
        throw fail(why + (result.data.empty() ? "" : " at " + std::to_string(result.data.size()) + " bytes"));
      }
      send_to(last_sent, tid ? *tid : server);
      ++resends;
      resend_at = now + options_.retransmit;
    }
    auto wake = std::min(deadline, resend_at);
    if (options_.stop.stop_possible()) wake = std::min(wake, now + stop_slice);
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(wake - now).count();
    pollfd poll_fd{fd.get(), POLLIN, 0};
    const int ready = ::poll(&poll_fd, 1, static_cast<int>(std::max<long long>(wait, 1)));
    if (ready <= 0) continue;
    sockaddr_storage from{};
    socklen_t length = sizeof from;
    const ssize_t got = ::recvfrom(fd.get(), buffer.data(), buffer.size(), 0, reinterpret_cast<sockaddr*>(&from), &length);
    if (got < 0) continue;
    if (!same_host(from, server)) continue;
    if (tid && !same_endpoint(from, *tid)) {
      out.clear();
      encode_error(out, ErrorCode::unknown_tid, "unknown transfer ID");
      send_to(out, from);
      continue;
    }
    const auto parsed = parse_packet(std::span<const std::byte>(buffer.data(), static_cast<std::size_t>(got)));
    const auto* packet = std::get_if<Packet>(&parsed);
    if (packet == nullptr) {
      ++malformed;
      continue;
    }
    if (const auto* error = std::get_if<Error>(packet)) {
      throw fail("server sent ERROR " + std::to_string(static_cast<unsigned>(error->code)) + " '" + error->message + "'", error->code);
    }
    if (const auto* oack = std::get_if<Oack>(packet)) {
      if (expected != 1 || in_window != 0) continue;  // late duplicate OACK
      tid = from;
      result.server_port = address_port(from);
      result.oack = oack->options;
      for (const auto& option : oack->options) {
        if (option.name == "blksize") {
          const auto value = parse_option_number(option.value, min_blksize, options_.blksize.value_or(0));
          if (!value) throw fail("OACK blksize '" + option.value + "' was not asked for or is out of range");
          result.blksize = static_cast<std::uint16_t>(*value);
        } else if (option.name == "windowsize") {
          const auto value = parse_option_number(option.value, 1, options_.windowsize.value_or(0));
          if (!value) throw fail("OACK windowsize '" + option.value + "' was not asked for or is out of range");
          result.windowsize = static_cast<std::uint16_t>(*value);
        } else if (option.name == "tsize") {
          result.tsize = parse_option_number(option.value, 0, options_.max_bytes);
          if (!options_.tsize || !result.tsize) throw fail("OACK tsize '" + option.value + "' was not asked for or is too large");
        }
      }
      send_ack(0);
      resends = 0;
      resend_at = Clock::now() + options_.retransmit;
      continue;
    }
    const auto* data = std::get_if<Data>(packet);
    if (data == nullptr) continue;
    if (!tid) {
      tid = from;
      result.server_port = address_port(from);
    }
    if (data->payload.size() > result.blksize) throw fail("DATA block larger than blksize " + std::to_string(result.blksize));
    if (data->block != wire(expected)) {
      // Out of order or repeated: tell the sender where we are so it restarts the window (RFC 7440 §4).
      if (expected > 1 || !result.oack.empty()) send_ack(wire(expected - 1));
      in_window = 0;
      continue;
    }
    if (result.data.size() + data->payload.size() > options_.max_bytes) throw fail("file larger than max_bytes");
    result.data.insert(result.data.end(), data->payload.begin(), data->payload.end());
    ++result.blocks;
    ++expected;
    ++in_window;
    if (data->payload.size() < result.blksize) {
      send_ack(data->block);  // the final ACK; the server may not wait for it
      return result;
    }
    if (in_window >= result.windowsize) {
      send_ack(data->block);
      in_window = 0;
    }
    resends = 0;
    resend_at = Clock::now() + options_.retransmit;
  }
}

}  // namespace deskfarm::tftp
