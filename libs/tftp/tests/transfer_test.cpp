#include <catch2/catch.hpp>

#include "socket.hpp"
#include "transfer.hpp"

using namespace deskfarm::tftp;
using namespace deskfarm::tftp::detail;

namespace {

Request rrq(std::vector<Option> options, std::string mode = "octet") {
  return Request{Opcode::rrq, "file", std::move(mode), std::move(options)};
}

}  // namespace

TEST_CASE("a client asking for blksize 1468 gets an OACK with 1468") {
  const auto negotiated = negotiate(rrq({{"blksize", "1468"}}), ServerOptions{}, 1000);
  CHECK(negotiated.blksize == 1468);
  CHECK(negotiated.oack == std::vector<Option>{{"blksize", "1468"}});
}

TEST_CASE("blksize above the cap is clamped, below 8 or junk is left out of the OACK") {
  ServerOptions options;
  options.max_blksize = 1024;
  CHECK(negotiate(rrq({{"blksize", "65464"}}), options, 1).blksize == 1024);
  CHECK(negotiate(rrq({{"blksize", "100000"}}), options, 1).blksize == 1024);
  CHECK(negotiate(rrq({{"blksize", "7"}}), options, 1).oack.empty());
  CHECK(negotiate(rrq({{"blksize", "abc"}}), options, 1).oack.empty());
  CHECK(negotiate(rrq({{"blksize", "7"}}), options, 1).blksize == 512);
}

TEST_CASE("tsize=0 is answered with the real size, in octet mode only") {
  CHECK(negotiate(rrq({{"tsize", "0"}}), ServerOptions{}, 123456).oack == std::vector<Option>{{"tsize", "123456"}});
  CHECK(negotiate(rrq({{"tsize", "0"}}, "netascii"), ServerOptions{}, 10).oack.empty());
}

TEST_CASE("an empty file asked for tsize gets tsize=0 in the OACK (RFC 2349), or none with omit_zero_tsize") {
  CHECK(negotiate(rrq({{"tsize", "0"}}), ServerOptions{}, 0).oack == std::vector<Option>{{"tsize", "0"}});
  CHECK(negotiate(rrq({{"tsize", "0"}, {"blksize", "1468"}}), ServerOptions{}, 0).oack ==
        std::vector<Option>{{"tsize", "0"}, {"blksize", "1468"}});
  ServerOptions options;
  options.omit_zero_tsize = true;
  CHECK(negotiate(rrq({{"tsize", "0"}, {"blksize", "1468"}}), options, 0).oack == std::vector<Option>{{"blksize", "1468"}});
  CHECK(negotiate(rrq({{"tsize", "0"}}), options, 1).oack == std::vector<Option>{{"tsize", "1"}});
}

TEST_CASE("endpoint strings: IPv4 and IPv6 literals, brackets and an optional port parse, junk does not") {
  using deskfarm::tftp::detail::parse_endpoint;
  struct Case {
    const char* text;
    const char* host;
    std::optional<std::uint16_t> port;
  };
  for (const auto& c : {Case{"127.0.0.1", "127.0.0.1", {}}, Case{"0.0.0.0:69", "0.0.0.0", 69}, Case{"::1", "::1", {}},
                        Case{"[::1]", "::1", {}}, Case{"[::]:69", "::", 69}, Case{"[fe80::1]:65535", "fe80::1", 65535}}) {
    INFO(c.text);
    const auto endpoint = parse_endpoint(c.text);
    REQUIRE(endpoint.has_value());
    CHECK(endpoint->host == c.host);
    CHECK(endpoint->port == c.port);
  }
  for (const char* junk : {"", "localhost", "[127.0.0.1]", "[::1", "[::1]69", "[::1]:", "127.0.0.1:", "127.0.0.1:65536",
                           "127.0.0.1:x", "[::1]:-1", "1.2.3.4.5"}) {
    INFO(junk);
    CHECK_FALSE(parse_endpoint(junk).has_value());
  }
}

TEST_CASE("timeout 1..255 is echoed, anything else is left out") {
  CHECK(negotiate(rrq({{"timeout", "1"}}), ServerOptions{}, 1).oack == std::vector<Option>{{"timeout", "1"}});
  CHECK(negotiate(rrq({{"timeout", "255"}}), ServerOptions{}, 1).timeout_seconds == 255u);
  CHECK(negotiate(rrq({{"timeout", "0"}}), ServerOptions{}, 1).oack.empty());
  CHECK(negotiate(rrq({{"timeout", "256"}}), ServerOptions{}, 1).oack.empty());
}

TEST_CASE("windowsize is granted only when asked and allowed, capped in blocks and in bytes") {
  ServerOptions options;
  CHECK(negotiate(rrq({}), options, 1).windowsize == 1);
  CHECK(negotiate(rrq({{"windowsize", "8"}}), options, 1).windowsize == 8);
  CHECK(negotiate(rrq({{"windowsize", "64"}}), options, 1).windowsize == 16);
  options.max_window_bytes = 4 * 1468;
  CHECK(negotiate(rrq({{"windowsize", "64"}, {"blksize", "1468"}}), options, 1).oack ==
        std::vector<Option>{{"windowsize", "4"}, {"blksize", "1468"}});
  options.allow_windowsize = false;
  CHECK(negotiate(rrq({{"windowsize", "8"}}), options, 1).oack.empty());
}

TEST_CASE("unknown and duplicate options are ignored without an error") {
  const auto negotiated = negotiate(rrq({{"x-color", "blue"}, {"blksize", "1024"}, {"blksize", "8"}, {"multicast", ""}}), ServerOptions{}, 1);
  CHECK(negotiated.oack == std::vector<Option>{{"blksize", "1024"}});
}

TEST_CASE("refuse switches keep each option out of the OACK") {
  ServerOptions options;
  options.refuse_blksize = options.refuse_tsize = options.refuse_timeout = options.refuse_windowsize = true;
  const auto negotiated = negotiate(rrq({{"blksize", "1024"}, {"tsize", "0"}, {"timeout", "3"}, {"windowsize", "4"}}), options, 1);
  CHECK(negotiated.oack.empty());
  CHECK(negotiated.blksize == 512);
  CHECK(negotiated.windowsize == 1);
}

TEST_CASE("the sender waits for ACK 0 after an OACK, then sends the first window") {
  Transfer transfer(10 * 512, 512, 4, true, true);
  CHECK(transfer.start().oack);
  Burst next;
  CHECK(transfer.on_ack(1, next) == Transfer::AckResult::stale);
  CHECK(transfer.on_ack(0, next) == Transfer::AckResult::advanced);
  CHECK(next.first == 1);
  CHECK(next.last == 4);
}

TEST_CASE("a duplicate ACK never produces DATA and a partial-window ACK restarts the window after it") {
  Transfer transfer(10 * 512, 512, 4, false, true);
  Burst first = transfer.start();
  CHECK((first.first == 1 && first.last == 4));
  Burst next;
  CHECK(transfer.on_ack(4, next) == Transfer::AckResult::advanced);
  CHECK((next.first == 5 && next.last == 8));
  CHECK(transfer.on_ack(4, next) == Transfer::AckResult::duplicate);
  CHECK(next.empty());
  CHECK(transfer.on_ack(6, next) == Transfer::AckResult::advanced);
  CHECK((next.first == 7 && next.last == 10));
  const Burst again = transfer.resend();
  CHECK((again.first == 7 && again.last == 10));
}

TEST_CASE("a file that is a multiple of blksize ends with an empty block") {
  Transfer transfer(1024, 512, 1, false, true);
  CHECK(transfer.total_blocks() == 3);
  CHECK(transfer.block_length(2) == 512);
  CHECK(transfer.block_length(3) == 0);
  Transfer empty(0, 512, 1, false, true);
  CHECK(empty.total_blocks() == 1);
  CHECK(empty.block_length(1) == 0);
}

TEST_CASE("block numbers roll over to 0 by default and to 1 when configured") {
  Transfer to_zero(100'000'000, 512, 1, false, true);
  CHECK(to_zero.wire_block(65535) == 65535);
  CHECK(to_zero.wire_block(65536) == 0);
  CHECK(to_zero.wire_block(65537) == 1);
  Transfer to_one(100'000'000, 512, 1, false, false);
  CHECK(to_one.wire_block(65536) == 1);
  CHECK(to_one.wire_block(131071) == 1);
}

TEST_CASE("ACKs across the 16-bit wrap advance the absolute block count") {
  Transfer transfer(70'000ull * 8 + 3, 8, 16, false, true);
  Burst burst = transfer.start();
  // Bounded: one ACK per window over 70,001 blocks.
  for (int step = 0; step < 10'000; ++step) {
    Burst next;
    const auto result = transfer.on_ack(transfer.wire_block(burst.last), next);
    if (result == Transfer::AckResult::complete) break;
    REQUIRE(result == Transfer::AckResult::advanced);
    burst = next;
  }
  CHECK(transfer.acked() == transfer.total_blocks());
  CHECK(transfer.total_blocks() == 70'001);
}
