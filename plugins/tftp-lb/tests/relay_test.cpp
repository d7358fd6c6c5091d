// The relay alone, without the plugin, once with each engine: io_uring (multishot receives, the sends queued as
// submissions, one io_uring_enter per turn) and epoll (a burst per socket with recvmmsg, its output with one
// sendmmsg). These tests blast datagrams and check that nothing is reordered, lost or sent to the wrong session,
// and that the session rules still hold.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <time.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <map>
#include <set>

#include <deskfarm/tftp/server.hpp>

#include "busy_poll.hpp"
#include "relay.hpp"
#include "tftp_lb_lab.hpp"

namespace {

using namespace tftp_lb_test;
using tftp_lb::Relay;
using tftp_lb::RelayStats;

sockaddr_in endpoint(const char* host, std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  ::inet_pton(AF_INET, host, &a.sin_addr);
  return a;
}

std::vector<std::byte> data(std::uint16_t block, std::size_t size) {
  std::vector<std::byte> payload(size, static_cast<std::byte>(block & 0xff));
  std::vector<std::byte> out;
  tftp::encode_data(out, block, payload);
  return out;
}
/// The TFTP packet of type T in `bytes` (its spans point into `bytes`); fails the test if it is anything else.
template <typename T>
T packet_of(const std::vector<std::byte>& bytes) {
  const auto parsed = tftp::parse_packet(bytes);
  const auto* packet = std::get_if<tftp::Packet>(&parsed);
  REQUIRE(packet);
  const auto* got = std::get_if<T>(packet);
  REQUIRE(got);
  return *got;
}

/// A relay on 127.0.0.2 in front of one backend listening on 127.0.0.1.
struct RelayLab {
  dt::UdpSocket backend{"127.0.0.1"};  // the backend's port 69
  Relay relay;
  explicit RelayLab(const std::string& engine, bool eligible = true,
                    std::optional<std::chrono::microseconds> busy_poll = std::nullopt)
      : relay(options(engine, busy_poll)) {
    relay.start();
    REQUIRE(relay.engine() == engine);  // the engine asked for carries the test, not a fallback
    relay.set_backends({{"b", endpoint("127.0.0.1", backend.port()), 1, eligible}});
  }
  static tftp_lb::RelayOptions options(const std::string& engine, std::optional<std::chrono::microseconds> busy_poll) {
    tftp_lb::RelayOptions o;
    o.engine = *tftp_lb::relay_engine_from(engine);
    if (busy_poll) o.busy_poll = *busy_poll;
    o.vip = endpoint("127.0.0.2", 0);
    o.method = tftp_lb::Method::round_robin;
    return o;
  }
  /// The relay's counters once `done` holds for them (they are published every 20 ms).
  template <typename F>
  RelayStats stats_when(F done) {
    RelayStats s;
    dt::eventually([&] { return done(s = relay.stats()); }, 5s);
    return s;
  }
};

}  // namespace

TEST_CASE("relay: bursts of DATA and ACKs for two clients on one address arrive complete and each in its own order") {
  const std::string engine = TFTP_LB_ENGINE();
  const auto started = std::chrono::steady_clock::now();
  RelayLab lab(engine);
  // Two clients on one address, two ports: two sessions.
  dt::UdpSocket a("127.0.0.4"), b("127.0.0.4");
  a.send_to("127.0.0.2", lab.relay.port(), rrq("f"));
  b.send_to("127.0.0.2", lab.relay.port(), rrq("f"));
  // The backend sees each request from its own session port on the virtual server's address.
  std::vector<std::uint16_t> ports;  // session ports, in the order the backend got the requests
  for (int k = 0; k < 2; ++k) {
    const auto r = lab.backend.receive(5s);
    REQUIRE(r);
    CHECK(r->host == "127.0.0.2");
    ports.push_back(r->port);
  }
  REQUIRE(ports[0] != ports[1]);

  // Two transfer ports on the backend, one per session; each sends 64 full blocks and a short one as one burst,
  // interleaved with the other's.
  dt::UdpSocket tid0("127.0.0.1"), tid1("127.0.0.1");
  constexpr std::uint16_t blocks = 65;
  for (std::uint16_t n = 1; n <= blocks; ++n) {
    tid0.send_to("127.0.0.2", ports[0], data(n, n < blocks ? 512 : 100));
    tid1.send_to("127.0.0.2", ports[1], data(n, n < blocks ? 512 : 7));
  }
  // Which client got which session depends on which request the relay read first: each client must see one
  // session's blocks 1..65, in order, all from one port of the virtual server.
  std::uint16_t seen_port[2] = {0, 0};
  dt::UdpSocket* clients[2] = {&a, &b};
  for (int c = 0; c < 2; ++c) {
    for (std::uint16_t n = 1; n <= blocks; ++n) {
      const auto d = clients[c]->receive(5s);
      INFO("client " << c << ", block " << n);
      REQUIRE(d);
      CHECK(d->host == "127.0.0.2");
      if (n == 1) seen_port[c] = d->port;
      CHECK(d->port == seen_port[c]);
      const auto got = packet_of<tftp::Data>(d->bytes);
      CHECK(got.block == n);
    }
  }
  CHECK(std::set<std::uint16_t>{seen_port[0], seen_port[1]} == std::set<std::uint16_t>{ports[0], ports[1]});

  // Each client ACKs all its blocks in one burst; each transfer port gets its own ACKs in order.
  for (std::uint16_t n = 1; n <= blocks; ++n) {
    a.send_to("127.0.0.2", seen_port[0], ack(n));
    b.send_to("127.0.0.2", seen_port[1], ack(n));
  }
  dt::UdpSocket* tids[2] = {&tid0, &tid1};
  for (int t = 0; t < 2; ++t)
    for (std::uint16_t n = 1; n <= blocks; ++n) {
      const auto d = tids[t]->receive(5s);
      INFO("transfer port " << t << ", ACK " << n);
      REQUIRE(d);
      CHECK(d->host == "127.0.0.2");
      CHECK(d->port == ports[t]);
      const auto got = packet_of<tftp::Ack>(d->bytes);
      CHECK(got.block == n);
    }

  // The ACK of the short block ended both sessions; every datagram was relayed, in as many calls as it took.
  const auto s = lab.stats_when([](const RelayStats& now) { return now.sessions_finished == 2; });
  CHECK(s.sessions_finished == 2);
  CHECK(s.sessions_started == 2);
  CHECK(s.packets_to_client == 2 * blocks);
  CHECK(s.packets_to_backend == 2 + 2 * blocks);
  CHECK(s.socket_errors == 0);
  CHECK(s.wrong_tid == 0);
  const auto datagrams = 2 + 4 * blocks;
  INFO(engine << ": receive calls " << s.receive_calls << ", io_uring_enter calls " << s.ring_enters << " for "
              << datagrams << " datagrams");
  const auto calls = engine == "io_uring" ? s.ring_enters : s.receive_calls;
  CHECK(calls >= 1);
  // At most one call per datagram; io_uring's turns also end at the loop's 100 ms timeout and at the wake-up
  // that brought the backends, and a turn's sends must not cost a turn of their own.
  const auto idle_turns = 2 + (std::chrono::steady_clock::now() - started) / 100ms;
  CHECK(calls <= static_cast<std::uint64_t>(datagrams + idle_turns));
}

TEST_CASE("relay: a burst to a session with a wrong port and a stranger inside it: ERROR 5, a drop, and the transfer goes on in order") {
  RelayLab lab(TFTP_LB_ENGINE());
  dt::UdpSocket client("127.0.0.4");
  client.send_to("127.0.0.2", lab.relay.port(), rrq("f"));
  const auto r = lab.backend.receive(5s);
  REQUIRE(r);
  const auto session = r->port;
  dt::UdpSocket tid("127.0.0.1"), other_port("127.0.0.1"), stranger("127.0.0.5");
  // One burst: DATA 1, a packet from the backend's address on another port, a stranger's, DATA 2.
  tid.send_to("127.0.0.2", session, data(1, 512));
  other_port.send_to("127.0.0.2", session, data(7, 512));
  stranger.send_to("127.0.0.2", session, data(8, 512));
  tid.send_to("127.0.0.2", session, data(2, 3));
  for (std::uint16_t n = 1; n <= 2; ++n) {
    const auto d = client.receive(5s);
    REQUIRE(d);
    const auto got = packet_of<tftp::Data>(d->bytes);
    CHECK(got.block == n);
  }
  CHECK_FALSE(client.receive(200ms));  // nothing of the intruders reached the client
  const auto e = other_port.receive(5s);
  REQUIRE(e);
  const auto error = packet_of<tftp::Error>(e->bytes);
  CHECK(error.code == tftp::ErrorCode::unknown_tid);
  CHECK_FALSE(stranger.receive(200ms));  // never answered
  const auto s = lab.stats_when([](const RelayStats& now) { return now.wrong_tid == 1 && now.foreign_dropped == 1; });
  CHECK(s.wrong_tid == 1);
  CHECK(s.foreign_dropped == 1);
  CHECK(s.packets_to_client == 2);
}

TEST_CASE("relay: a storm of requests to the virtual server: one session per client, a resent request to the same one, junk counted") {
  const std::string engine = TFTP_LB_ENGINE();
  RelayLab lab(engine);
  constexpr int clients = 24;
  std::vector<std::unique_ptr<dt::UdpSocket>> c;
  for (int k = 0; k < clients; ++k) c.push_back(std::make_unique<dt::UdpSocket>("127.0.0.4"));
  dt::UdpSocket junk("127.0.0.4");
  // Every client's request twice, as one storm, with a non-request and a non-TFTP datagram inside it.
  for (int round = 0; round < 2; ++round)
    for (int k = 0; k < clients; ++k) {
      c[static_cast<std::size_t>(k)]->send_to("127.0.0.2", lab.relay.port(), rrq("f" + std::to_string(k)));
      if (k == clients / 2 && round == 0) {
        junk.send_to("127.0.0.2", lab.relay.port(), ack(1));
        junk.send_to("127.0.0.2", lab.relay.port(), {std::byte{0}, std::byte{9}});
      }
    }
  // The backend gets both copies of each request, both from that client's session port, and a port per client.
  std::map<std::string, std::set<std::uint16_t>> ports_of_file;
  for (int k = 0; k < 2 * clients; ++k) {
    const auto d = lab.backend.receive(5s);
    INFO("request " << k);
    REQUIRE(d);
    const auto request = packet_of<tftp::Request>(d->bytes);
    ports_of_file[request.filename].insert(d->port);
  }
  CHECK(ports_of_file.size() == static_cast<std::size_t>(clients));
  std::set<std::uint16_t> all;
  for (const auto& [file, ports] : ports_of_file) {
    INFO(file);
    CHECK(ports.size() == 1);
    all.insert(ports.begin(), ports.end());
  }
  CHECK(all.size() == static_cast<std::size_t>(clients));
  const auto s = lab.stats_when([](const RelayStats& now) { return now.packets_to_backend == 2 * clients; });
  CHECK(s.sessions_started == clients);
  CHECK(s.packets_to_backend == 2 * clients);
  CHECK(s.not_a_request == 1);
  CHECK(s.malformed_client == 1);
  // The engine's own system calls moved the storm: io_uring_enter alone, or recvmmsg and sendmmsg/sendto alone.
  INFO(engine);
  if (engine == "io_uring") {
    CHECK(s.ring_enters > 0);
    CHECK(s.receive_calls == 0);
    CHECK(s.send_calls == 0);
  } else {
    CHECK(s.ring_enters == 0);
    CHECK(s.receive_calls > 0);
    CHECK(s.send_calls >= clients);  // each new session's request leaves from its own socket
  }
}

TEST_CASE("relay: a boot storm's burst of 2,100 read requests waits in the virtual server's queue, none lost") {
  // Each client's first request opens a session (a socket, a send to the backend), so the relay falls behind a
  // burst, and the requests wait in the virtual server's receive queue: Linux's default one holds about 200.
  const std::string engine = TFTP_LB_ENGINE();
  {
    const int probe = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    const int granted = tftp::set_receive_buffer(probe, tftp::storm_receive_buffer);
    ::close(probe);
    if (granted < tftp::storm_receive_buffer) {
      dt::missing("a 4 MiB UDP receive buffer (run as root, or raise net.core.rmem_max to 4194304)");
      return;
    }
  }
  RelayLab lab(engine);
  constexpr int clients = 300;  // one socket each here and one per session in the relay: within 1,024 descriptors
  constexpr int copies = 7;
  std::vector<std::unique_ptr<dt::UdpSocket>> c;
  for (int k = 0; k < clients; ++k) c.push_back(std::make_unique<dt::UdpSocket>("127.0.0.4"));
  std::vector<std::vector<std::byte>> requests;
  for (int k = 0; k < clients; ++k) requests.push_back(rrq("f" + std::to_string(k)));
  for (int round = 0; round < copies; ++round)
    for (int k = 0; k < clients; ++k) c[static_cast<std::size_t>(k)]->send_to("127.0.0.2", lab.relay.port(), requests[static_cast<std::size_t>(k)]);
  const auto s = lab.stats_when([](const RelayStats& now) { return now.packets_to_backend == clients * copies; });
  INFO(engine);
  CHECK(s.sessions_started == clients);
  CHECK(s.packets_to_backend == clients * copies);  // every request of the burst reached the relay
}

TEST_CASE("relay: with no backend eligible, every request of a storm gets ERROR 0 from the virtual server's port") {
  RelayLab lab(TFTP_LB_ENGINE(), false);
  constexpr int clients = 16;
  std::vector<std::unique_ptr<dt::UdpSocket>> c;
  for (int k = 0; k < clients; ++k) c.push_back(std::make_unique<dt::UdpSocket>("127.0.0.4"));
  // set_backends() is applied by the relay thread: the first refusal proves it was.
  REQUIRE(dt::eventually(
      [&] {
        c[0]->send_to("127.0.0.2", lab.relay.port(), rrq("f"));
        return c[0]->receive(100ms).has_value();
      },
      5s));
  for (auto& s : c) s->send_to("127.0.0.2", lab.relay.port(), rrq("f"));
  for (int k = 0; k < clients; ++k) {
    const auto d = c[static_cast<std::size_t>(k)]->receive(5s);
    INFO("client " << k);
    REQUIRE(d);
    CHECK(d->port == lab.relay.port());
    const auto error = packet_of<tftp::Error>(d->bytes);
    CHECK(error.message == "no TFTP backend available, try again later");
  }
  CHECK_FALSE(lab.backend.receive(200ms));
  const auto s = lab.stats_when([](const RelayStats& now) { return now.no_backend >= clients + 1; });
  CHECK(s.sessions_started == 0);
  CHECK(s.no_backend >= clients + 1);
}

namespace {

/// CPU time of this whole process (the relay thread's, when the test's own thread only sleeps).
std::chrono::nanoseconds process_cpu() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return std::chrono::seconds(t.tv_sec) + std::chrono::nanoseconds(t.tv_nsec);
}

/// A lockstep transfer through the lab's relay: RRQ, then `blocks` DATA (the last one short) each ACKed before the
/// next is sent, as tftp clients and servers do. Checks every block arrives once, in order, from the virtual server.
void lockstep(RelayLab& lab, std::uint16_t blocks) {
  dt::UdpSocket client("127.0.0.4");
  client.send_to("127.0.0.2", lab.relay.port(), rrq("f"));
  const auto r = lab.backend.receive(5s);
  REQUIRE(r);
  const auto session = r->port;
  dt::UdpSocket tid("127.0.0.1");
  std::uint16_t server_port = 0;
  for (std::uint16_t n = 1; n <= blocks; ++n) {
    tid.send_to("127.0.0.2", session, data(n, n < blocks ? 512 : 10));
    const auto d = client.receive(5s);
    INFO("block " << n);
    REQUIRE(d);
    REQUIRE(d->host == "127.0.0.2");
    if (n == 1) server_port = d->port;
    REQUIRE(d->port == server_port);
    REQUIRE(packet_of<tftp::Data>(d->bytes).block == n);
    client.send_to("127.0.0.2", server_port, ack(n));
    const auto a = tid.receive(5s);
    REQUIRE(a);
    REQUIRE(a->port == session);
    REQUIRE(packet_of<tftp::Ack>(a->bytes).block == n);
  }
}

}  // namespace

TEST_CASE("busy poll: polls for a window after work, sleeps after an empty one, backs off after repeated misses") {
  using tftp_lb::BusyPoll;
  const auto t0 = BusyPoll::Clock::time_point{} + 1h;
  SECTION("a window of 0 never polls") {
    BusyPoll b(0us);
    CHECK_FALSE(b.next_polls(true, t0));
    CHECK_FALSE(b.next_polls(false, t0));
  }
  SECTION("work opens a window; a turn inside it polls again, the first one past it sleeps") {
    BusyPoll b(50us);
    CHECK_FALSE(b.next_polls(false, t0));  // idle from the start: sleep
    CHECK(b.next_polls(true, t0));
    CHECK(b.next_polls(false, t0 + 49us));
    CHECK_FALSE(b.next_polls(false, t0 + 50us));
    CHECK_FALSE(b.next_polls(false, t0 + 1s));  // still idle: still sleeping
    CHECK(b.next_polls(true, t0 + 2s));         // work again: a new window
    CHECK(b.next_polls(true, t0 + 2s + 40us));  // a poll found work: the window starts over
    CHECK(b.next_polls(false, t0 + 2s + 80us));
  }
  SECTION("after kMaxMisses empty windows in a row, work is followed by sleep for kBackoffTurns turns") {
    BusyPoll b(10us);
    auto now = t0;
    for (unsigned m = 0; m < BusyPoll::kMaxMisses; ++m) {
      CHECK(b.next_polls(true, now));
      now += 1ms;  // the next datagram comes after the window: a miss
      CHECK_FALSE(b.next_polls(false, now));
    }
    CHECK(b.backing_off());
    for (unsigned t = 0; t < BusyPoll::kBackoffTurns; ++t) {
      INFO("turn " << t);
      REQUIRE_FALSE(b.next_polls(true, now += 1ms));
    }
    CHECK_FALSE(b.backing_off());
    CHECK(b.next_polls(true, now));  // tries again
  }
  SECTION("a poll that finds work forgives the misses before it") {
    BusyPoll b(10us);
    auto now = t0;
    for (unsigned m = 0; m + 1 < BusyPoll::kMaxMisses; ++m) {
      CHECK(b.next_polls(true, now));
      CHECK_FALSE(b.next_polls(false, now += 1ms));
    }
    CHECK(b.next_polls(true, now));
    CHECK(b.next_polls(true, now + 5us));  // a hit
    CHECK_FALSE(b.next_polls(false, now += 1ms));  // one miss, not the kMaxMisses-th
    CHECK_FALSE(b.backing_off());
  }
}

TEST_CASE("relay: a lockstep transfer with busy polling on arrives whole and in order, and the polls catch datagrams") {
  const std::string engine = TFTP_LB_ENGINE();
  RelayLab lab(engine, true, 1000us);  // the longest window: the test's own turnaround fits in it even when loaded
  constexpr std::uint16_t blocks = 200;
  lockstep(lab, blocks);
  const auto s = lab.stats_when([](const RelayStats& now) { return now.sessions_finished == 1; });
  INFO(engine << ": busy polls " << s.busy_polls << ", of them with datagrams " << s.busy_poll_hits);
  CHECK(s.packets_to_client == blocks);
  CHECK(s.packets_to_backend == 1 + blocks);
  CHECK(s.socket_errors == 0);
  CHECK(s.busy_polls > 0);
  CHECK(s.busy_poll_hits > 0);  // some datagram was found by a poll, not a wake-up
  CHECK(s.busy_poll_hits <= s.busy_polls);
}

TEST_CASE("relay: io_uring relays a lockstep transfer in one io_uring_enter per datagram, its sends included") {
  const auto started = std::chrono::steady_clock::now();
  RelayLab lab("io_uring");
  constexpr std::uint16_t blocks = 200;
  lockstep(lab, blocks);
  const auto s = lab.stats_when([](const RelayStats& now) { return now.sessions_finished == 1; });
  const auto datagrams = 1 + 2 * blocks;
  // Besides the datagrams' turns: the loop's 100 ms timeouts and the wake-up that brought the backends.
  const auto idle_turns = 2 + (std::chrono::steady_clock::now() - started) / 100ms;
  INFO("io_uring_enter calls " << s.ring_enters << " for " << datagrams << " datagrams, idle turns at most "
                               << idle_turns);
  CHECK(s.packets_to_client == blocks);
  CHECK(s.busy_polls == 0);
  CHECK(s.ring_enters <= static_cast<std::uint64_t>(datagrams + idle_turns));
}

TEST_CASE("relay: with busy polling on, an idle balancer stops polling and uses no CPU") {
  const std::string engine = TFTP_LB_ENGINE();
  RelayLab lab(engine, true, 1000us);
  lockstep(lab, 20);  // traffic, so the relay did poll
  const auto polled = lab.stats_when([](const RelayStats& now) { return now.sessions_finished == 1 && now.busy_polls > 0; });
  REQUIRE(polled.busy_polls > 0);
  std::this_thread::sleep_for(100ms);  // the last window (1 ms) is over
  const auto before = lab.relay.stats();
  const auto cpu_before = process_cpu();
  std::this_thread::sleep_for(2s);
  const auto cpu = process_cpu() - cpu_before;
  const auto after = lab.stats_when([&](const RelayStats& now) { return now.sessions_lingering == 0; });
  const double cpu_ms = static_cast<double>(cpu.count()) / 1e6;
  INFO(engine << ": CPU over 2 s idle " << cpu_ms << " ms; busy polls "
              << before.busy_polls << " -> " << after.busy_polls);
  CHECK(after.busy_polls == before.busy_polls);  // no datagram, no poll
  CHECK(cpu < 40ms);                              // a spinning relay would burn most of the 2 s
}

TEST_CASE("relay tc-bpf: the program completes a read request's session from the backend's first reply, and leaves to user space what it does not know") {
  if (const auto& why = tc_bpf_unavailable()) {
    WARN(dt::skip_marker << ": the tc-bpf engine cannot attach on this machine: " << *why);
    return;
  }
  auto options = RelayLab::options("tc-bpf", std::nullopt);
  options.idle_timeout = 1s;
  options.linger = 200ms;
  dt::UdpSocket backend("127.0.0.1");
  Relay relay(options);
  relay.start();
  REQUIRE(relay.engine() == "tc-bpf");
  relay.set_backends({{"b", endpoint("127.0.0.1", backend.port()), 1, true}});
  const auto stats_when = [&](auto done) {
    RelayStats s;
    dt::eventually([&] { return done(s = relay.stats()); }, 5s);
    return s;
  };
  const auto request = [&](dt::UdpSocket& client) {
    client.send_to("127.0.0.2", relay.port(), rrq("f"));
    const auto r = backend.receive(5s);
    REQUIRE(r);
    return r->port;  // the session's port on the virtual server
  };

  // 1. An OACK (blksize 2000, the name in mixed case) from a new port completes the session in the kernel. A
  // stranger's reply before it changes nothing: only the chosen backend's address may give the transfer ID.
  dt::UdpSocket a("127.0.0.4");
  const auto pa = request(a);
  dt::UdpSocket stranger("127.0.0.5"), tid("127.0.0.1"), other_port("127.0.0.1");
  stranger.send_to("127.0.0.2", pa, data(1, 10));
  std::vector<std::byte> oack;
  tftp::encode_oack(oack, {{"BlkSize", "2000"}, {"tsize", "3000"}});
  tid.send_to("127.0.0.2", pa, oack);
  auto got = a.receive(5s);
  REQUIRE(got);
  CHECK(got->host == "127.0.0.2");
  CHECK(got->port == pa);
  CHECK(got->bytes == oack);
  a.send_to("127.0.0.2", pa, ack(0));
  auto at_backend = tid.receive(5s);  // through the kernel: from the session port
  REQUIRE(at_backend);
  CHECK(at_backend->host == "127.0.0.2");
  CHECK(at_backend->port == pa);
  CHECK(packet_of<tftp::Ack>(at_backend->bytes).block == 0);
  // Another port of the backend, now that the program knows the transfer ID: ERROR 5 from user space.
  other_port.send_to("127.0.0.2", pa, data(1, 10));
  const auto e5 = other_port.receive(5s);
  REQUIRE(e5);
  CHECK(packet_of<tftp::Error>(e5->bytes).code == tftp::ErrorCode::unknown_tid);
  // 1,000 bytes is short of the OACK's 2,000: the last block, and the program saw its ACK end the transfer.
  tid.send_to("127.0.0.2", pa, data(1, 1000));
  got = a.receive(5s);
  REQUIRE(got);
  CHECK(packet_of<tftp::Data>(got->bytes).block == 1);
  a.send_to("127.0.0.2", pa, ack(1));
  REQUIRE(tid.receive(5s));
  auto s = stats_when([](const RelayStats& now) { return now.sessions_finished == 1; });
  CHECK(s.sessions_finished == 1);
  CHECK(s.kernel_first_replies == 1);
  CHECK(s.kernel_sessions == 1);
  CHECK(s.packets_to_client == 2);  // the OACK and DATA 1, both by the program
  CHECK(s.kernel_packets_to_client == 2);
  CHECK(s.foreign_dropped == 1);
  CHECK(s.wrong_tid == 1);

  // 2. A first reply the program does not take: an OACK with NUL padding (user space's parser allows it), then
  // an ERROR. User space relays them, learns the transfer ID, and hands the session to the kernel as before.
  dt::UdpSocket b("127.0.0.4"), c("127.0.0.4");
  const auto pb = request(b);
  dt::UdpSocket tid_b("127.0.0.1");
  std::vector<std::byte> padded;
  tftp::encode_oack(padded, {{"tsize", "3000"}});
  padded.resize(padded.size() + 3);
  tid_b.send_to("127.0.0.2", pb, padded);
  got = b.receive(5s);
  REQUIRE(got);
  CHECK(got->port == pb);
  CHECK(got->bytes == padded);
  b.send_to("127.0.0.2", pb, ack(0));
  at_backend = tid_b.receive(5s);
  REQUIRE(at_backend);
  CHECK(at_backend->port == pb);
  const auto pc = request(c);
  dt::UdpSocket tid_c("127.0.0.1");
  std::vector<std::byte> refusal;
  tftp::encode_error(refusal, tftp::ErrorCode::file_not_found, "no f");
  tid_c.send_to("127.0.0.2", pc, refusal);
  got = c.receive(5s);
  REQUIRE(got);
  CHECK(packet_of<tftp::Error>(got->bytes).code == tftp::ErrorCode::file_not_found);
  s = stats_when([](const RelayStats& now) { return now.kernel_sessions == 2 && now.sessions_finished == 2; });
  CHECK(s.kernel_first_replies == 1);
  CHECK(s.kernel_sessions == 2);  // b's, installed by user space
  CHECK(s.sessions_finished == 2);  // c's ERROR

  // 3. A request nobody answers: its session idles out and its PENDING entry leaves the map with it; so do the
  // others' entries (a's and c's after the linger, b's at the idle timeout).
  dt::UdpSocket d("127.0.0.4");
  request(d);
  s = stats_when([](const RelayStats& now) { return now.sessions_active == 0 && now.kernel_entries == 0; });
  CHECK(s.sessions_active == 0);
  CHECK(s.kernel_entries == 0);
  CHECK(s.sessions_idle_closed == 2);  // b and d
  CHECK(s.kernel_orphans_deleted == 0);  // no entry was ever left without its session
  relay.stop();
}

TEST_CASE("relay tc-bpf: an entry no session accounts for (the program completing a session user space let go of) is deleted by the next poll") {
  if (const auto& why = tc_bpf_unavailable()) {
    WARN(dt::skip_marker << ": the tc-bpf engine cannot attach on this machine: " << *why);
    return;
  }
  RelayLab lab("tc-bpf");
  const int map = tftp_lb::TcBpf::session_map_of(static_cast<std::uint32_t>(::getpid()), lab.relay.tc_priority());
  REQUIRE(map >= 0);
  // What the program leaves when it installs a session just as user space closes it: entries of a session index
  // and generation user space no longer has, rewriting a 4-tuple towards a socket that is gone.
  tftp_lb_key key{htonl(0x7f000009), htonl(0x7f000002), htons(4242), htons(4343)};
  tftp_lb_value value{};
  value.session = 0;
  value.gen = 77;
  value.state = TFTP_LB_RUNNING;
  value.last_block = -1;
  REQUIRE(bpf_map_update_elem(map, &key, &value, BPF_NOEXIST) == 0);
  const auto s = lab.stats_when([](const RelayStats& now) { return now.kernel_orphans_deleted == 1; });
  CHECK(s.kernel_orphans_deleted == 1);
  tftp_lb_value left{};
  CHECK(bpf_map_lookup_elem(map, &key, &left) != 0);  // gone
  ::close(map);
}
