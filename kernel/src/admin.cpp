#include "admin.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <deque>
#include <map>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <unordered_map>

#include <Poco/JSON/Stringifier.h>
#include <Poco/Net/IPAddress.h>
#include <Poco/Net/NetException.h>

#include "deployment.hpp"
#include "metrics.hpp"
#include "deskfarm/sdk/service.hpp"

namespace deskfarm::kernel {

std::pair<std::string, std::uint16_t> parse_host_port(const std::string& text, const std::string& what) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw std::invalid_argument(what + " '" + text + "' is not HOST:PORT (e.g. \"127.0.0.1:9900\")");
  std::string host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string port_text = text.substr(colon + 1);
  char* end = nullptr;
  const long port = std::strtol(port_text.c_str(), &end, 10);
  if (port_text.empty() || *end != '\0' || port < 0 || port > 65535)
    throw std::invalid_argument(what + " '" + text + "' has no valid port (0-65535)");
  return {host, static_cast<std::uint16_t>(port)};
}

std::string admin_address_error(const std::string& address, const std::string& token) {
  const auto host = parse_host_port(address, "admin address").first;
  if (!token.empty() || host == "localhost") return {};
  Poco::Net::IPAddress ip;
  if (Poco::Net::IPAddress::tryParse(host, ip) && ip.isLoopback()) return {};
  return "admin address '" + address +
         "' is not a loopback address, and the admin endpoint would serve /status and /metrics to anyone: use "
         "127.0.0.1:PORT, or set admin_token = \"${SOME_ENV}\" under [deployment] (or DESKFARM_ADMIN_TOKEN) so "
         "requests need \"Authorization: Bearer <token>\"";
}

bool equal_constant_time(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const std::size_t n = std::max(a.size(), b.size());
  for (std::size_t i = 0; i < n; ++i) {
    const auto x = static_cast<unsigned char>(i < a.size() ? a[i] : 0);
    const auto y = static_cast<unsigned char>(i < b.size() ? b[i] : 0);
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

namespace {

AdminAnswer response_text(int code, const char* reason, const std::string& type, const std::string& body, bool head_only,
                       bool keep_alive, const std::string& extra_headers = {}) {
  std::string out = "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + type +
                    "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: " +
                    (keep_alive ? "keep-alive" : "close") + "\r\n" + extra_headers + "\r\n";
  if (!head_only) out += body;
  return {code, std::move(out)};
}

/// The value of header `name` (case-insensitive) in a request head, or empty.
std::string header(const std::string& head, std::string_view name) {
  std::istringstream lines(head);
  std::string line;
  std::getline(lines, line);  // request line
  while (std::getline(lines, line)) {
    const auto colon = line.find(':');
    if (colon != name.size()) continue;
    if (!std::equal(name.begin(), name.end(), line.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
        }))
      continue;
    std::string value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.erase(0, 1);
    while (!value.empty() && (value.back() == '\r' || value.back() == ' ')) value.pop_back();
    return value;
  }
  return {};
}

constexpr std::size_t max_body = 1 << 20;

/// Where the head of a request ends (after its blank line), or npos while it has not.
std::size_t head_end(const std::string& data) {
  const auto crlf = data.find("\r\n\r\n");
  const auto lf = data.find("\n\n");
  if (crlf == std::string::npos && lf == std::string::npos) return std::string::npos;
  return crlf != std::string::npos && (lf == std::string::npos || crlf < lf) ? crlf + 4 : lf + 2;
}

/// The declared body length of a request head (0 without Content-Length); npos when it is not a number.
std::size_t content_length(const std::string& head) {
  const std::string v = header(head, "Content-Length");
  if (v.empty()) return 0;
  if (v.size() > 9 || !std::all_of(v.begin(), v.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }))
    return std::string::npos;
  return static_cast<std::size_t>(std::stoul(v));
}

}  // namespace


namespace {

using Clock = std::chrono::steady_clock;
const std::string plain_text = "text/plain; charset=utf-8";

/// HTTP/1.1 keeps a connection unless it says "close"; HTTP/1.0 only when it asks for keep-alive.
bool wants_keep_alive(const std::string& head) {
  const auto line_end = head.find_first_of("\r\n");
  const std::string line = head.substr(0, line_end);
  std::string connection = header(head, "Connection");
  std::transform(connection.begin(), connection.end(), connection.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (line.ends_with("HTTP/1.1")) return connection.find("close") == std::string::npos;
  return connection.find("keep-alive") != std::string::npos;
}

/// The HTTP answer to a bus request's outcome: the reply's JSON, or the error envelope with its status.
AdminAnswer render(const Deployment& deployment, const BusAnswer& a, bool keep_alive) {
  const std::string json = "application/json";
  if (a.ok)
    return response_text(200, "OK", json, deployment.redact(a.body) + "\n", false, keep_alive, "X-Reply-Type: " + a.type + "\r\n");
  // A plugin's Error envelope goes out as it is; the kernel's own failures get the same shape.
  const std::string envelope = a.type == "error" ? a.body : sdk::to_value(sdk::Error{a.type, a.body}).to_json();
  const int code = a.type == "timeout" ? 504 : a.type == "no_responders" ? 404 : a.type == "bad_request" ? 400 : 502;
  const char* reason = code == 504 ? "Gateway Timeout" : code == 404 ? "Not Found" : code == 400 ? "Bad Request" : "Bad Gateway";
  return response_text(code, reason, json, deployment.redact(envelope) + "\n", false, keep_alive);
}

}  // namespace

struct AdminServer::Shared {
  Shared() : wake_fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (wake_fd < 0) throw std::system_error(errno, std::generic_category(), "admin endpoint: eventfd for its I/O thread");
  }
  ~Shared() { ::close(wake_fd); }
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;

  struct Answer {
    std::uint64_t connection = 0;
    AdminAnswer response;
    bool keep_alive = false;  ///< what the answer's Connection header says
  };
  struct InFlight {
    Clock::time_point backstop;  ///< real time: the bus's own timeout runs on the deployment clock, maybe virtual
    std::chrono::milliseconds timeout{0};
    bool keep_alive = false;
  };

  /// Wakes the I/O thread's poll.
  void wake() const {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(wake_fd, &one, sizeof one);  // a full counter is awake already
  }
  void answer(std::uint64_t connection, AdminAnswer response, bool keep_alive) {
    {
      std::lock_guard lock(mutex);
      answers.push_back(Answer{connection, std::move(response), keep_alive});
    }
    wake();
  }
  /// A bus request's outcome: the first of the reply and the backstop answers, the other is dropped.
  void complete(std::uint64_t connection, AdminAnswer response) {
    {
      std::lock_guard lock(mutex);
      const auto it = inflight.find(connection);
      if (it == inflight.end()) {
        dropped_late.inc();  // the backstop answered already
        return;
      }
      answers.push_back(Answer{connection, std::move(response), it->second.keep_alive});
      inflight.erase(it);
      inflight_now.set(static_cast<double>(inflight.size()));
    }
    wake();
  }
  /// Counts an answer begun by its status and the time since its request was whole.
  void record_answer(int code, Clock::duration took) {
    latency.observe(std::chrono::duration<double>(took).count());
    std::lock_guard lock(mutex);
    answer_counter(code).inc();
  }
  /// The series of deskfarm_admin_requests_total for `code`; the caller holds `mutex`.
  sdk::Counter& answer_counter(int code) {
    auto& c = by_code[code];
    if (!c) c = &metrics.counter("deskfarm_admin_requests_total", kRequestsHelp, {{"code", std::to_string(code)}});
    return *c;
  }
  static constexpr const char* kRequestsHelp =
      "Answers of the admin endpoint by HTTP status (200, 404 no such resource or no responder, 503 busy, 504 no reply in time, ...).";

  const int wake_fd;
  std::mutex mutex;
  std::condition_variable ready;
  bool stopping = false;
  std::deque<Job> jobs;
  std::vector<Answer> answers;
  std::unordered_map<std::uint64_t, InFlight> inflight;  ///< by connection: a connection has one request at a time

  // The endpoint's own metrics (deskfarm_admin_*), served after the deployment's. A registry of its own: these
  // outlive the deployment's runtime as long as a late bus reply still holds this Shared.
  MetricsRegistry metrics;
  std::map<int, sdk::Counter*> by_code;  ///< under `mutex`
  sdk::Gauge& inflight_now = metrics.gauge("deskfarm_admin_inflight", "Bus requests of the admin endpoint waiting for their reply now.", {});
  sdk::Gauge& inflight_peak = metrics.gauge(
      "deskfarm_admin_inflight_peak", "The most bus requests of the admin endpoint that waited at once (admin_inflight bounds it).", {});
  sdk::Counter& refused_inflight = metrics.counter("deskfarm_admin_refused_total", kRefusedHelp, {{"reason", "inflight"}});
  sdk::Counter& refused_queue = metrics.counter("deskfarm_admin_refused_total", kRefusedHelp, {{"reason", "queue"}});
  sdk::Counter& dropped_late = metrics.counter("deskfarm_admin_dropped_total", kDroppedHelp, {{"reason", "late"}});
  sdk::Counter& dropped_orphaned = metrics.counter("deskfarm_admin_dropped_total", kDroppedHelp, {{"reason", "orphaned"}});
  sdk::Counter& reused = metrics.counter("deskfarm_admin_reused_total",
                                         "Requests on a kept-alive connection that had answered before.", {});
  sdk::Histogram& latency = metrics.histogram("deskfarm_admin_request_seconds", "Seconds from a whole request received to its answer begun.",
                                              {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10}, {});
  static constexpr const char* kRefusedHelp =
      "Requests answered 503 by reason: inflight (admin_inflight reached), queue (workers' queue full).";
  static constexpr const char* kDroppedHelp =
      "Answers dropped by reason: late (a bus reply after its 504), orphaned (the client had gone).";
};

struct AdminServer::Connection {
  enum class State { reading, busy, writing };
  Poco::Net::StreamSocket socket;
  int fd = -1;
  State state = State::reading;
  std::string in;   ///< received, not yet a whole request (or the next one, sent early)
  std::string out;  ///< the answer being sent
  std::size_t sent = 0;
  Clock::time_point deadline;
  std::size_t served = 0;
  bool close_after = false;
  Clock::time_point received{};  ///< when the request being answered was whole (the latency's start)
};

AdminServer::AdminServer(Deployment& deployment, const std::string& address, std::string token, AdminLimits limits)
    : deployment_(deployment), token_(std::move(token)), limits_(limits), shared_(std::make_shared<Shared>()) {
  {
    std::lock_guard lock(shared_->mutex);
    for (int code : {200, 404, 503, 504}) shared_->answer_counter(code);  // the outcomes a dashboard watches, from the start
  }
  if (auto error = admin_address_error(address, token_); !error.empty()) throw std::invalid_argument(error);
  auto [host, port] = parse_host_port(address, "admin address");
  host_ = host;
  listener_.bind(Poco::Net::SocketAddress(host, port), true);
  listener_.listen(256);
  io_ = std::thread([this] { io(); });
  for (unsigned i = 0; i < std::max(1u, limits_.workers); ++i) workers_.emplace_back([this] { worker(); });
}

AdminServer::~AdminServer() {
  {
    std::lock_guard lock(shared_->mutex);
    shared_->stopping = true;
  }
  shared_->ready.notify_all();
  shared_->wake();
  io_.join();
  for (auto& w : workers_) w.join();
}

std::string AdminServer::address() const {
  const std::string host = host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_;
  return host + ":" + std::to_string(listener_.address().port());
}

std::string AdminServer::metrics_text() const { return shared_->metrics.render(); }

void AdminServer::io() {
  std::map<std::uint64_t, Connection> connections;  // by id, so the oldest comes first
  std::uint64_t next_id = 1;
  std::vector<pollfd> fds;
  std::vector<std::uint64_t> ids;

  const auto start_answer = [&](Connection& c, AdminAnswer response, bool keep_alive) {
    shared_->record_answer(response.code, c.received == Clock::time_point{} ? Clock::duration::zero() : Clock::now() - c.received);
    c.received = {};
    c.out = std::move(response.text);
    c.sent = 0;
    c.close_after = !keep_alive;
    c.state = Connection::State::writing;
    c.deadline = Clock::now() + limits_.request_deadline;
  };
  // Reads one whole request out of c.in, if there is one, and hands it to the workers (or answers it at once).
  const auto take_request = [&](std::uint64_t id, Connection& c) {
    const auto end = head_end(c.in);
    c.received = Clock::now();
    if (end == std::string::npos ? c.in.size() > limits_.max_head_bytes : end > limits_.max_head_bytes + 4) {
      start_answer(c, response_text(431, "Request Header Fields Too Large", plain_text,
                                    "request head over " + std::to_string(limits_.max_head_bytes) + " bytes\n", false, false),
                   false);
      return;
    }
    if (end == std::string::npos) return;
    // A POST carries a body (at most 1 MiB), read within the same deadline as the head.
    const auto length = content_length(c.in.substr(0, end));
    if (length == std::string::npos || length > max_body) {
      start_answer(c, response_text(413, "Payload Too Large", plain_text, "a request body is at most 1 MiB, with a numeric Content-Length\n",
                                    false, false),
                   false);
      return;
    }
    if (c.in.size() < end + length) return;
    Job job{id, c.in.substr(0, end), c.in.substr(end, length), false};
    c.in.erase(0, end + length);
    job.keep_alive = wants_keep_alive(job.head) && c.served + 1 < limits_.max_requests_per_connection;
    std::unique_lock lock(shared_->mutex);
    if (c.served > 0) shared_->reused.inc();
    if (shared_->jobs.size() >= limits_.max_queued) {
      shared_->refused_queue.inc();
      lock.unlock();
      start_answer(c, response_text(503, "Service Unavailable", plain_text,
                                    "busy: " + std::to_string(limits_.max_queued) + " requests already wait for the admin workers; try again\n",
                                    false, job.keep_alive),
                   job.keep_alive);
      return;
    }
    shared_->jobs.push_back(std::move(job));
    lock.unlock();
    shared_->ready.notify_one();
    c.state = Connection::State::busy;
  };
  // Moves a connection on as far as it can without blocking; false when it is done with (closed).
  const auto advance = [&](std::uint64_t id, Connection& c) {
    for (int step = 0; step < 64; ++step) {  // each step answers or takes one request: bounded by what was received
      if (c.state == Connection::State::busy) return true;
      if (c.state == Connection::State::writing) {
        while (c.sent < c.out.size()) {
          const auto n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL | MSG_DONTWAIT);
          if (n > 0) {
            c.sent += static_cast<std::size_t>(n);
          } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return true;  // POLLOUT says when to go on
          } else if (!(n < 0 && errno == EINTR)) {
            return false;  // the client went away
          }
        }
        if (c.close_after) return false;
        ++c.served;
        c.out.clear();
        c.state = Connection::State::reading;
        c.deadline = Clock::now() + limits_.idle_timeout;
      }
      take_request(id, c);
      if (c.state == Connection::State::reading) return true;  // not a whole request yet
    }
    return true;
  };
  const auto close = [&](std::map<std::uint64_t, Connection>::iterator it) {
    try {
      it->second.socket.shutdownSend();  // the answer, if any, is out: end it cleanly
    } catch (const Poco::Exception&) {
    }
    return connections.erase(it);
  };

  while (true) {
    std::vector<Shared::Answer> answers;
    {
      std::lock_guard lock(shared_->mutex);
      if (shared_->stopping) return;
      answers.swap(shared_->answers);
      // The backstop: a bus request whose timeout the deployment clock has not fired (a virtual clock) is answered 504.
      const auto now = Clock::now();
      for (auto it = shared_->inflight.begin(); it != shared_->inflight.end();) {
        if (it->second.backstop > now) {
          ++it;
          continue;
        }
        const std::string envelope = sdk::to_value(sdk::Error{"timeout", "no reply within " + std::to_string(it->second.timeout.count()) + " ms"}).to_json();
        answers.push_back(Shared::Answer{
            it->first, response_text(504, "Gateway Timeout", "application/json", envelope + "\n", false, it->second.keep_alive),
            it->second.keep_alive});
        it = shared_->inflight.erase(it);
      }
      shared_->inflight_now.set(static_cast<double>(shared_->inflight.size()));
    }
    for (auto& a : answers) {
      auto it = connections.find(a.connection);
      if (it == connections.end() || it->second.state != Connection::State::busy) {
        shared_->dropped_orphaned.inc();  // the client closed before its answer
        continue;
      }
      start_answer(it->second, std::move(a.response), a.keep_alive);
      if (!advance(it->first, it->second)) close(it);
    }

    fds.assign({pollfd{shared_->wake_fd, POLLIN, 0}, pollfd{listener_.impl()->sockfd(), POLLIN, 0}});
    ids.clear();
    for (auto& [id, c] : connections) {
      short events = 0;
      if (c.state == Connection::State::writing) events = POLLOUT;
      else if (c.state == Connection::State::reading) events = POLLIN;  // a body may be up to 1 MiB
      else if (c.in.size() <= limits_.max_head_bytes) events = POLLIN;  // busy: a client that leaves is seen
      fds.push_back(pollfd{c.fd, events, 0});
      ids.push_back(id);
    }
    ::poll(fds.data(), fds.size(), 100);  // short: deadlines and the backstop are looked at every turn
    if (fds[0].revents & POLLIN) {
      std::uint64_t count = 0;
      [[maybe_unused]] const auto n = ::read(shared_->wake_fd, &count, sizeof count);
    }
    const auto now = Clock::now();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      auto it = connections.find(ids[i]);
      if (it == connections.end()) continue;
      auto& c = it->second;
      const short revents = fds[i + 2].revents;
      bool keep = true;
      if (revents & (POLLIN | POLLHUP | POLLERR) && c.state != Connection::State::writing) {
        char buf[4096];
        const auto n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) c.in.append(buf, static_cast<std::size_t>(n));
        else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) keep = false;  // the client went away
        if (keep && c.state == Connection::State::reading) keep = advance(it->first, c);
      } else if (revents & (POLLOUT | POLLHUP | POLLERR) && c.state == Connection::State::writing) {
        keep = advance(it->first, c);
      }
      if (keep && now >= c.deadline) {
        if (c.state == Connection::State::writing) {
          keep = false;  // a client that does not read its answer
        } else if (c.state == Connection::State::reading) {
          if (c.served > 0 && c.in.empty()) {
            keep = false;  // idle between requests: closed without a word, as keep-alive servers do
          } else {
            start_answer(c, response_text(408, "Request Timeout", plain_text,
                                          "no complete request within " + std::to_string(limits_.request_deadline.count()) + " ms\n", false,
                                          false),
                         false);
            keep = advance(it->first, c);
          }
        }
      }
      if (!keep) close(it);
    }
    if (fds[1].revents & POLLIN) {
      try {
        Poco::Net::StreamSocket s = listener_.acceptConnection();
        s.setBlocking(false);
        const int fd = s.impl()->sockfd();
        connections.emplace(next_id++, Connection{std::move(s), fd, Connection::State::reading, {}, {}, 0, now + limits_.request_deadline, 0, false, {}});
        std::size_t reading = 0;
        for (const auto& [id, c] : connections) reading += c.state == Connection::State::reading ? 1 : 0;
        if (reading > limits_.max_connections) {
          for (auto it = connections.begin(); it != connections.end(); ++it) {
            if (it->second.state == Connection::State::reading) {
              close(it);  // the oldest reader loses
              break;
            }
          }
        }
      } catch (const Poco::Exception&) {
      }
    }
  }
}

void AdminServer::worker() {
  while (true) {
    Job job;
    {
      std::unique_lock lock(shared_->mutex);
      shared_->ready.wait(lock, [&] { return shared_->stopping || !shared_->jobs.empty(); });
      if (shared_->stopping) return;
      job = std::move(shared_->jobs.front());
      shared_->jobs.pop_front();
    }
    auto response = answer(job);
    if (response.code) shared_->answer(job.connection, std::move(response), job.keep_alive);
  }
}

AdminAnswer AdminServer::answer(const Job& job) {
  const auto line_end = job.head.find_first_of("\r\n");
  std::istringstream first(job.head.substr(0, line_end));
  std::string method, uri;
  first >> method >> uri;
  const bool head_only = method == "HEAD";
  const bool keep = job.keep_alive;
  const std::string path = uri.substr(0, uri.find('?'));
  if (!token_.empty() && !equal_constant_time(header(job.head, "Authorization"), "Bearer " + token_))
    return response_text(401, "Unauthorized", plain_text, "this endpoint needs Authorization: Bearer <admin token>\n", head_only, keep,
                         "WWW-Authenticate: Bearer\r\n");
  if (method == "POST" && path.starts_with("/request/")) return bus_request(job, path.substr(9));
  if (method != "GET" && method != "HEAD")
    return response_text(405, "Method Not Allowed", plain_text, "only GET, or POST /request/SUBJECT\n", false, keep, "Allow: GET, HEAD, POST\r\n");
  try {
    if (path == "/metrics")
      return response_text(200, "OK", "text/plain; version=0.0.4; charset=utf-8", deployment_.metrics_text() + metrics_text(), head_only, keep);
    if (path == "/status") {
      std::ostringstream json;
      Poco::JSON::Stringifier::stringify(deployment_.status(), json, 2);
      return response_text(200, "OK", "application/json", deployment_.redact(json.str()) + "\n", head_only, keep);
    }
    if (path == "/")
      return response_text(200, "OK", plain_text,
                           "deskfarm admin endpoint: GET /status (JSON), GET /metrics (Prometheus), POST /request/SUBJECT (a JSON bus request)\n",
                           head_only, keep);
    return response_text(404, "Not Found", plain_text, "no such resource " + path + "; try /status or /metrics\n", head_only, keep);
  } catch (const std::exception& e) {
    return response_text(500, "Internal Server Error", plain_text, "error: " + deployment_.redact(e.what()) + "\n", head_only, keep);
  }
}

AdminAnswer AdminServer::bus_request(const Job& job, const std::string& subject) {
  const std::string body = job.body.empty() ? "{}" : job.body;
  long timeout_ms = 10000;
  if (const auto t = header(job.head, "X-Timeout-Ms"); !t.empty()) timeout_ms = std::clamp(std::atol(t.c_str()), 1L, 600000L);
  const std::chrono::milliseconds timeout(timeout_ms);
  {
    std::lock_guard lock(shared_->mutex);
    if (shared_->inflight.size() >= limits_.max_inflight) {
      shared_->refused_inflight.inc();
      return response_text(503, "Service Unavailable", plain_text,
                           "busy: " + std::to_string(limits_.max_inflight) +
                               " bus requests already wait for their replies (admin_inflight under [deployment]); try again shortly\n",
                           false, job.keep_alive);
    }
    shared_->inflight[job.connection] = Shared::InFlight{Clock::now() + timeout + std::chrono::seconds(2), timeout, job.keep_alive};
    const auto now = static_cast<double>(shared_->inflight.size());
    shared_->inflight_now.set(now);
    shared_->inflight_peak.set(std::max(shared_->inflight_peak.value(), now));
  }
  // The reply completes the answer from the bus; `shared` keeps what it writes into alive, whatever came first.
  deployment_.request_async(subject, body, timeout,
                            [shared = shared_, deployment = &deployment_, connection = job.connection, keep = job.keep_alive](BusAnswer a) {
                              shared->complete(connection, render(*deployment, a, keep));
                            });
  return {};
}

}  // namespace deskfarm::kernel
