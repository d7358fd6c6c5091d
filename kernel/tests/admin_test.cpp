// The admin endpoint against a deployment in this process (fixture_service answers `adder.adder.sum` at once and
// `adder.adder.later` after slow_ms from a timer), spoken to over raw sockets so every byte of HTTP is visible:
// keep-alive, replies after the deadline, clients that leave before their answer, and the in-flight bound.
#include <poll.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>
#include <catch2/catch.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/metrics_text.hpp>
#include <deskfarm/testing/peers.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "admin.hpp"
#include "deployment.hpp"

using namespace deskfarm;
using namespace deskfarm::kernel;
using namespace std::chrono_literals;

namespace {

/// A deployment of one fixture_service instance ("adder") and its admin endpoint.
struct Endpoint {
  explicit Endpoint(int slow_ms, AdminLimits limits = AdminLimits(), const std::string& clock = "real")
      : deployment(manifest(slow_ms, clock), catalog, log) {
    deployment.start();
    admin = std::make_unique<AdminServer>(deployment, "127.0.0.1:0", "", limits);
  }
  ~Endpoint() {
    admin.reset();  // as `deskfarm run` does: the endpoint first, then the deployment
    deployment.stop();
  }
  Manifest manifest(int slow_ms, const std::string& clock) {
    const std::string text = "[deployment]\nname = \"lab\"\nclock = \"" + clock + "\"\nstate_dir = \"" + (scratch.path() / "var").string() +
                             "\"\n\n[instances.adder]\nplugin = \"fixture_service\"\nslow_ms = " + std::to_string(slow_ms) + "\n";
    deskfarm::testing::write_text(scratch.path() / "lab.toml", text);
    return load_manifest(scratch.path() / "lab.toml");
  }
  /// A field of the fixture's status (later_pending, later_peak, later_answered).
  std::int64_t fixture(const std::string& field) {
    auto s = deployment.status();
    auto instances = s->getArray("instances");
    for (std::size_t i = 0; i < instances->size(); ++i) {
      auto inst = instances->getObject(static_cast<unsigned>(i));
      auto fields = inst->getObject("fields");
      if (inst->getValue<std::string>("name") == "adder" && fields && fields->has(field)) return fields->getValue<std::int64_t>(field);
    }
    return -1;
  }
  Poco::Net::SocketAddress address() const { return Poco::Net::SocketAddress(admin->address()); }
  /// One series of the endpoint's own metrics ("deskfarm_admin_inflight"); -1 when it is not there.
  double metric(const std::string& series) const { return deskfarm::testing::metric_sample(admin->metrics_text(), series); }

  deskfarm::testing::TempDir scratch{"deskfarm-admin"};
  LogSink log{sdk::LogLevel::warning};
  PluginCatalog catalog{{FIXTURE_PLUGIN_DIR}};
  Deployment deployment;
  std::unique_ptr<AdminServer> admin;
};

std::string post(const std::string& subject, const std::string& json, int timeout_ms = 5000, const std::string& extra = "") {
  return "POST /request/" + subject + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Timeout-Ms: " +
         std::to_string(timeout_ms) + "\r\nContent-Length: " + std::to_string(json.size()) + "\r\n" + extra + "\r\n" + json;
}

void send_text(Poco::Net::StreamSocket& s, const std::string& text) {
  for (std::size_t sent = 0; sent < text.size();) sent += static_cast<std::size_t>(s.sendBytes(text.data() + sent, static_cast<int>(text.size() - sent)));
}

struct Answer {
  int status = 0;
  std::string head, body;
  bool keep_alive() const { return head.find("\r\nConnection: keep-alive\r\n") != std::string::npos; }
};

/// Reads one whole answer (head and Content-Length body) within `limit`; status 0 when the connection ended first.
/// `buffer` keeps what came after it (a pipelined answer).
Answer read_answer(Poco::Net::StreamSocket& s, std::string& buffer, std::chrono::milliseconds limit = 10s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  Answer a;
  while (std::chrono::steady_clock::now() < until) {
    const auto end = buffer.find("\r\n\r\n");
    if (end != std::string::npos) {
      const auto cl = buffer.find("Content-Length: ");
      const std::size_t length = cl < end ? std::stoul(buffer.substr(cl + 16)) : 0;
      if (buffer.size() >= end + 4 + length) {
        a.head = buffer.substr(0, end + 4);
        a.body = buffer.substr(end + 4, length);
        a.status = std::stoi(a.head.substr(9, 3));
        buffer.erase(0, end + 4 + length);
        return a;
      }
    }
    pollfd p{s.impl()->sockfd(), POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    char chunk[4096];
    const int n = s.receiveBytes(chunk, sizeof chunk);
    if (n <= 0) return a;
    buffer.append(chunk, static_cast<std::size_t>(n));
  }
  return a;
}

Answer ask(Poco::Net::StreamSocket& s, const std::string& request) {
  send_text(s, request);
  std::string buffer;
  return read_answer(s, buffer);
}

/// True when the peer closed the connection within `limit` (a read sees the end).
bool closed_by_peer(Poco::Net::StreamSocket& s, std::chrono::milliseconds limit) {
  pollfd p{s.impl()->sockfd(), POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) return false;
  char c;
  try {
    return s.receiveBytes(&c, 1) <= 0;
  } catch (const Poco::Exception&) {
    return true;  // reset
  }
}

}  // namespace

TEST_CASE("admin keep-alive: one connection serves requests in turn and pipelined, and closes at its bound") {
  AdminLimits limits;
  limits.max_requests_per_connection = 5;
  Endpoint e(0, limits);
  Poco::Net::StreamSocket s(e.address());
  for (int i = 1; i <= 3; ++i) {
    const auto a = ask(s, post("adder.adder.sum", "{\"terms\":[" + std::to_string(i) + ",2]}"));
    INFO(a.head << a.body);
    CHECK(a.status == 200);
    CHECK(a.body.find("\"total\":" + std::to_string(i + 2)) != std::string::npos);
    CHECK(a.keep_alive());
  }
  // Two requests in one write: two answers, in order; the fifth is the last this connection serves.
  send_text(s, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n" + post("adder.adder.sum", "{\"terms\":[40,2]}"));
  std::string buffer;
  const auto status = read_answer(s, buffer);
  const auto fifth = read_answer(s, buffer);
  CHECK(status.status == 200);
  CHECK(status.body.find("\"instances\"") != std::string::npos);
  CHECK(status.keep_alive());
  CHECK(fifth.status == 200);
  CHECK(fifth.body.find("\"total\":42") != std::string::npos);
  CHECK(fifth.head.find("\r\nConnection: close\r\n") != std::string::npos);
  CHECK(closed_by_peer(s, 2s));
  CHECK(e.metric("deskfarm_admin_reused_total") == 4);

  // A body larger than a head may be (8 KiB) still arrives whole.
  std::string terms = "1";
  for (int i = 0; i < 5000; ++i) terms += ",1";
  Poco::Net::StreamSocket big(e.address());
  const auto sum = ask(big, post("adder.adder.sum", "{\"terms\":[" + terms + "]}"));
  CHECK(sum.status == 200);
  CHECK(sum.body.find("\"total\":5001") != std::string::npos);

  // HTTP/1.0 without keep-alive, and HTTP/1.1 asking for close: one answer each, then the end.
  Poco::Net::StreamSocket old(e.address());
  const auto a10 = ask(old, "GET / HTTP/1.0\r\n\r\n");
  CHECK(a10.status == 200);
  CHECK(!a10.keep_alive());
  CHECK(closed_by_peer(old, 2s));
  Poco::Net::StreamSocket once(e.address());
  CHECK(ask(once, post("adder.adder.sum", "{\"terms\":[1]}", 5000, "Connection: close\r\n")).status == 200);
  CHECK(closed_by_peer(once, 2s));
}

TEST_CASE("admin keep-alive: 16 clients sending 2,000 requests on kept connections, in turn and pipelined, get every answer") {
  Endpoint e(0);
  constexpr int clients = 16, each = 125;
  std::vector<std::unique_ptr<Poco::Net::StreamSocket>> sockets;
  std::vector<std::string> buffers(clients);
  for (int c = 0; c < clients; ++c) sockets.push_back(std::make_unique<Poco::Net::StreamSocket>(e.address()));
  int ok = 0, wrong = 0, lost = 0, closing = 0;
  // In turn: each round, every client sends its next request, then every client reads its answer (as curl
  // --parallel does on its kept connections, one transfer at a time per connection).
  for (int round = 0; round < each; ++round) {
    for (int c = 0; c < clients; ++c)
      send_text(*sockets[c], post("adder.adder.sum", "{\"terms\":[" + std::to_string(round) + "," + std::to_string(c) + "]}"));
    for (int c = 0; c < clients; ++c) {
      const auto a = read_answer(*sockets[c], buffers[c]);
      if (a.status == 0) ++lost;
      else if (a.status == 200 && a.body.find("\"total\":" + std::to_string(round + c)) != std::string::npos) ++ok;
      else ++wrong;
      closing += !a.keep_alive();
    }
  }
  CHECK(ok == clients * each);
  CHECK(wrong == 0);
  CHECK(lost == 0);
  CHECK(closing == 0);
  CHECK(e.metric("deskfarm_admin_reused_total") == clients * (each - 1));
  // Pipelined: 100 requests in one write on one connection, 100 answers in order.
  std::string burst;
  for (int i = 0; i < 100; ++i) burst += post("adder.adder.sum", "{\"terms\":[" + std::to_string(i) + ",1000]}");
  send_text(*sockets[0], burst);
  int in_order = 0;
  for (int i = 0; i < 100; ++i) {
    const auto a = read_answer(*sockets[0], buffers[0]);
    in_order += a.status == 200 && a.body.find("\"total\":" + std::to_string(i + 1000)) != std::string::npos;
  }
  CHECK(in_order == 100);
  CHECK(e.metric("deskfarm_admin_requests_total{code=\"200\"}") == clients * each + 100);
}

TEST_CASE("admin keep-alive: an idle connection is closed after the idle timeout, without an answer") {
  AdminLimits limits;
  limits.idle_timeout = 300ms;
  Endpoint e(0, limits);
  Poco::Net::StreamSocket s(e.address());
  CHECK(ask(s, "GET / HTTP/1.1\r\n\r\n").status == 200);
  const auto idle_from = std::chrono::steady_clock::now();
  std::string rest;
  CHECK(read_answer(s, rest, 3s).status == 0);  // the end, not a 408
  CHECK(rest.empty());
  CHECK(std::chrono::steady_clock::now() - idle_from < 2s);
}

TEST_CASE("admin: beyond max_connections readers the oldest is dropped unanswered, and the others are served") {
  AdminLimits limits;
  limits.max_connections = 4;
  Endpoint e(0, limits);
  std::vector<std::unique_ptr<Poco::Net::StreamSocket>> readers;
  for (int i = 0; i < 5; ++i) {
    readers.push_back(std::make_unique<Poco::Net::StreamSocket>(e.address()));
    send_text(*readers.back(), "GET / HTTP/1.1\r\n");  // half a head
    std::this_thread::sleep_for(50ms);  // accepted in this order
  }
  CHECK(closed_by_peer(*readers[0], 2s));
  for (int i = 1; i < 5; ++i) {
    std::string buffer;
    send_text(*readers[static_cast<std::size_t>(i)], "\r\n");
    CHECK(read_answer(*readers[static_cast<std::size_t>(i)], buffer, 5s).status == 200);
  }
}

TEST_CASE("admin: a responder answering after the bus deadline gets 504 at the deadline, and its late reply goes nowhere") {
  Endpoint e(600);  // adder.adder.later answers after 600 ms
  Poco::Net::StreamSocket s(e.address());
  const auto asked = std::chrono::steady_clock::now();
  const auto late = ask(s, post("adder.adder.later", "{\"terms\":[1,2]}", 150));
  const auto waited = std::chrono::steady_clock::now() - asked;
  INFO(late.head << late.body);
  CHECK(late.status == 504);
  CHECK(late.body.find("\"code\":\"timeout\"") != std::string::npos);
  CHECK(waited < 550ms);  // the deadline, not the responder
  CHECK(late.keep_alive());
  // The responder answers later; the connection meanwhile serves the next request, and nothing else arrives on it.
  CHECK(deskfarm::testing::eventually([&] { return e.fixture("later_answered") == 1; }, 5s));
  CHECK(ask(s, post("adder.adder.sum", "{\"terms\":[2,3]}")).body.find("\"total\":5") != std::string::npos);
  std::string rest;
  CHECK(read_answer(s, rest, 300ms).status == 0);
  CHECK(rest.empty());
  CHECK(e.metric("deskfarm_admin_inflight") == 0);
}

TEST_CASE("admin: when the deployment clock never fires a bus timeout (virtual), the endpoint's backstop answers 504, "
          "and the reply that comes after it is dropped") {
  Endpoint e(600, AdminLimits(), "virtual");  // simulated time moves only when the test advances it
  Poco::Net::StreamSocket s(e.address());
  const auto late = ask(s, post("adder.adder.later", "{\"terms\":[1,2]}", 100));
  INFO(late.head << late.body);
  CHECK(late.status == 504);
  CHECK(late.body.find("no reply within 100 ms") != std::string::npos);
  CHECK(e.metric("deskfarm_admin_inflight") == 0);
  // Now simulated time passes: the bus's own timeout and the responder's answer come, after the HTTP answer went.
  e.deployment.virtual_clock()->advance(std::chrono::seconds(1));
  CHECK(deskfarm::testing::eventually([&] { return e.metric("deskfarm_admin_dropped_total{reason=\"late\"}") == 1; }, 5s));
  CHECK(ask(s, post("adder.adder.sum", "{\"terms\":[2,3]}")).body.find("\"total\":5") != std::string::npos);
}

TEST_CASE("admin: clients that close before their answer: the answers are dropped, the in-flight slots come back") {
  Endpoint e(300);
  for (int i = 0; i < 20; ++i) {
    Poco::Net::StreamSocket s(e.address());
    send_text(s, post("adder.adder.later", "{\"terms\":[1]}", 5000));
    CHECK(deskfarm::testing::eventually([&] { return e.metric("deskfarm_admin_inflight_peak") > 0; }, 5s));
    s.close();  // gone before the responder answers
  }
  CHECK(deskfarm::testing::eventually([&] { return e.fixture("later_answered") == 20; }, 10s));
  CHECK(deskfarm::testing::eventually([&] { return e.metric("deskfarm_admin_inflight") == 0; }, 5s));
  // The I/O thread drops an orphaned answer after the reply freed its slot: wait for it as for the slot.
  CHECK(deskfarm::testing::eventually([&] { return e.metric("deskfarm_admin_dropped_total{reason=\"orphaned\"}") == 20; }, 5s));
  Poco::Net::StreamSocket next(e.address());
  CHECK(ask(next, post("adder.adder.sum", "{\"terms\":[2,3]}")).status == 200);
}

TEST_CASE("admin: 1,000 concurrent requests against a slow responder stay within admin_inflight, 503 beyond, "
          "and every client gets an answer") {
  AdminLimits limits;
  limits.max_inflight = 100;
  limits.max_connections = 1100;  // no reader dropped: this test is about the in-flight bound
  limits.max_queued = 1100;
  Endpoint e(3000, limits);
  std::vector<std::unique_ptr<Poco::Net::StreamSocket>> clients;
  for (int i = 0; i < 1000; ++i) {
    clients.push_back(std::make_unique<Poco::Net::StreamSocket>(e.address()));
    send_text(*clients.back(), post("adder.adder.later", "{\"terms\":[" + std::to_string(i) + "]}", 20000));
  }
  int ok = 0, busy = 0, other = 0;
  std::string first_busy, first_other;
  for (auto& c : clients) {
    std::string buffer;
    const auto a = read_answer(*c, buffer, 30s);
    if (a.status == 200) {
      ++ok;
    } else if (a.status == 503) {
      ++busy;
      if (first_busy.empty()) first_busy = a.body;
    } else {
      ++other;
      if (first_other.empty()) first_other = std::to_string(a.status) + " " + a.body;
    }
  }
  INFO("first 503: " << first_busy << "first other: " << first_other);
  CHECK(other == 0);
  CHECK(ok + busy == 1000);
  CHECK(ok >= 100);
  CHECK(busy > 0);
  CHECK(first_busy.find("100 bus requests already wait for their replies (admin_inflight") != std::string::npos);
  CHECK(e.metric("deskfarm_admin_inflight_peak") == 100);
  const auto held = e.fixture("later_peak");  // what the responder itself held at once
  CHECK(held > 0);
  CHECK(held <= 100);
  CHECK(e.metric("deskfarm_admin_refused_total{reason=\"inflight\"}") == busy);
  CHECK(e.metric("deskfarm_admin_inflight") == 0);
}

TEST_CASE("admin /metrics (read with curl): answers by status 200, 404, 503, 504, in flight now and at most, and the latency histogram") {
  if (!deskfarm::testing::require_program("curl")) return;
  AdminLimits limits;
  limits.max_inflight = 1;
  Endpoint e(2500, limits);  // adder.adder.later answers after 2.5 s
  const std::string base = "http://" + e.admin->address();
  const auto curl = [&](std::vector<std::string> args) {
    std::vector<std::string> argv{"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"};
    argv.insert(argv.end(), args.begin(), args.end());
    return deskfarm::testing::run_child(argv, 20s).out;
  };
  const auto post_args = [&](const std::string& subject, const std::string& timeout_ms) {
    return std::vector<std::string>{"-H", "Content-Type: application/json", "-H", "X-Timeout-Ms: " + timeout_ms,
                                    "--data-binary", "{\"terms\":[1,2]}", base + "/request/" + subject};
  };
  CHECK(curl({base + "/status"}) == "200");
  CHECK(curl({base + "/nowhere"}) == "404");
  CHECK(curl(post_args("adder.nobody.sum", "2000")) == "404");  // no responder
  // One slow request holds the only in-flight slot (admin_inflight = 1): a second is refused 503, and the slow one
  // runs into its 1.5 s deadline, 504 (long enough for the second curl to start on a loaded machine).
  std::string slow;
  std::thread holder([&] { slow = curl(post_args("adder.adder.later", "1500")); });
  const bool held = deskfarm::testing::eventually([&] { return e.metric("deskfarm_admin_inflight") == 1; }, 5s);
  const auto busy = curl(post_args("adder.adder.sum", "2000"));
  holder.join();
  REQUIRE(held);
  CHECK(busy == "503");
  CHECK(slow == "504");

  auto m = deskfarm::testing::run_child({"curl", "-sf", base + "/metrics"}, 20s);
  INFO(m.out);
  REQUIRE(m.exit_code == 0);
  CHECK(m.out.find("# TYPE deskfarm_admin_requests_total counter") != std::string::npos);
  CHECK(deskfarm::testing::metric_sample(m.out, "deskfarm_admin_requests_total{code=\"200\"}") == 1);  // /status; this /metrics is counted once sent
  CHECK(deskfarm::testing::metric_sample(m.out, "deskfarm_admin_requests_total{code=\"404\"}") == 2);
  CHECK(deskfarm::testing::metric_sample(m.out, "deskfarm_admin_requests_total{code=\"503\"}") == 1);
  CHECK(deskfarm::testing::metric_sample(m.out, "deskfarm_admin_requests_total{code=\"504\"}") == 1);
  CHECK(deskfarm::testing::metric_sample(m.out, "deskfarm_admin_inflight") == 0);
  CHECK(deskfarm::testing::metric_sample(m.out, "deskfarm_admin_inflight_peak") == 1);
  CHECK(deskfarm::testing::metric_sample(m.out, "deskfarm_admin_refused_total{reason=\"inflight\"}") == 1);
  CHECK(m.out.find("# TYPE deskfarm_admin_request_seconds histogram") != std::string::npos);
  CHECK(deskfarm::testing::metric_sample(m.out, "deskfarm_admin_request_seconds_count") == 5);
  CHECK(deskfarm::testing::metric_sample(m.out, "deskfarm_admin_request_seconds_bucket{le=\"+Inf\"}") == 5);
  // The 504 waited its 1.5 s deadline: it is above the 1 s bound, the four quick answers below it.
  CHECK(deskfarm::testing::metric_sample(m.out, "deskfarm_admin_request_seconds_bucket{le=\"1\"}") == 4);
  CHECK(deskfarm::testing::metric_sample(m.out, "deskfarm_admin_request_seconds_sum") >= 1.5);
  // The next scrape counts the first one.
  auto again = deskfarm::testing::run_child({"curl", "-sf", base + "/metrics"}, 20s);
  CHECK(deskfarm::testing::metric_sample(again.out, "deskfarm_admin_requests_total{code=\"200\"}") == 2);
  // The responder answers after the 504 (the bus drops that reply); the endpoint still holds nothing.
  CHECK(deskfarm::testing::eventually([&] { return e.fixture("later_answered") == 1; }, 10s));
  CHECK(e.metric("deskfarm_admin_inflight") == 0);
}
