// The client's own bounds: giving up after max_retransmits, junk counted, a stop request honoured.
#include <catch2/catch.hpp>

#include <stop_token>
#include <thread>

#include "deskfarm/tftp/client.hpp"
#include "test_support.hpp"

using namespace tftp_test;
using deskfarm::tftp::Client;
using deskfarm::tftp::ClientError;
using deskfarm::tftp::ClientOptions;
using Clock = std::chrono::steady_clock;

namespace {

/// What get() threw (empty if it returned).
std::string error_of(const ClientOptions& options, std::uint16_t port) {
  try {
    (void)Client(options).get("127.0.0.1", port, "boot.bin");
  } catch (const ClientError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("tftp client gives up after max_retransmits resends to a silent server, naming it and the tries") {
  RawSocket silent;  // bound, never answers
  ClientOptions o;
  o.retransmit = 50ms;
  o.max_retransmits = 2;
  const auto t0 = Clock::now();
  const auto error = error_of(o, silent.port());
  CHECK(Clock::now() - t0 < 1s);  // the 10 s deadline is not what ended it
  CHECK_THAT(error, Catch::Contains("from 127.0.0.1:" + std::to_string(silent.port())) &&
                        Catch::Contains("no answer after 3 tries 50 ms apart"));
  int requests = 0;
  while (silent.receive(50ms)) ++requests;  // bounded: the client is gone, the queue holds what it sent
  CHECK(requests == 3);
}

TEST_CASE("tftp client counts junk answers and still gives up after max_retransmits") {
  RawSocket junk;
  ClientOptions o;
  o.retransmit = 300ms;
  o.max_retransmits = 1;
  std::string error;  // written by the client's thread, read after join
  std::jthread client([&] { error = error_of(o, junk.port()); });
  const auto rrq = junk.receive(2s);
  if (rrq) junk.send(rrq->from_port, {std::byte{0xde}, std::byte{0xad}, std::byte{0xbe}, std::byte{0xef}});
  client.join();
  REQUIRE(rrq);
  CHECK_THAT(error, Catch::Contains("no answer after 2 tries 300 ms apart (1 malformed datagrams ignored)"));
}

TEST_CASE("tftp client returns soon after a stop request") {
  RawSocket silent;
  std::stop_source stop;
  ClientOptions o;
  o.retransmit = 10s;
  o.stop = stop.get_token();
  std::jthread stopper([&] {
    std::this_thread::sleep_for(100ms);
    stop.request_stop();
  });
  const auto t0 = Clock::now();
  const auto error = error_of(o, silent.port());
  CHECK(Clock::now() - t0 < 1s);
  CHECK_THAT(error, Catch::Contains("stopped"));
}
