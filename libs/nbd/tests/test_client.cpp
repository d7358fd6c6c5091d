// The client's bounds (ClientOptions): a connect/greeting timeout, a stop request, a local bind address.
#include <catch2/catch.hpp>

#include <chrono>
#include <stop_token>
#include <thread>

#include "deskfarm/nbd/client.hpp"
#include "support.hpp"

using namespace deskfarm::nbd;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// A TCP port on 127.0.0.1 that accepts connections (the kernel's backlog) but never sends a byte.
struct MuteServer {
  UniqueFd fd{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  std::uint16_t port = 0;
  MuteServer() {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd.get(), 8);
    socklen_t len = sizeof a;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
};

std::string error_of(std::uint16_t port, ClientOptions options) {
  try {
    Client c("127.0.0.1", port, "disk", std::move(options));
  } catch (const ClientError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("nbd client with a timeout gives up on a server that never greets") {
  MuteServer mute;
  const auto t0 = Clock::now();
  const auto error = error_of(mute.port, ClientOptions{200ms});
  CHECK(Clock::now() - t0 < 2s);
  CHECK_THAT(error, Catch::Contains("127.0.0.1:" + std::to_string(mute.port)) && Catch::Contains("no answer within 200 ms"));
}

TEST_CASE("nbd client returns at once when its stop token is requested while it waits") {
  MuteServer mute;
  std::stop_source stop;
  std::jthread stopper([&] {
    std::this_thread::sleep_for(100ms);
    stop.request_stop();
  });
  const auto t0 = Clock::now();
  const auto error = error_of(mute.port, ClientOptions{60s, "", stop.get_token()});
  CHECK(Clock::now() - t0 < 2s);
  CHECK_THAT(error, Catch::Contains("stopped"));
}

TEST_CASE("nbd client refuses a bind address that is not an IP literal") {
  MuteServer mute;
  CHECK_THAT(error_of(mute.port, ClientOptions{1s, "not-an-ip", {}}), Catch::Contains("bind address 'not-an-ip'"));
}
