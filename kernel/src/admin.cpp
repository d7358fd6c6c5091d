#include "admin.hpp"

#include <poll.h>

#include <algorithm>
#include <cctype>
#include <sstream>
#include <stdexcept>

#include <Poco/JSON/Stringifier.h>
#include <Poco/Net/IPAddress.h>
#include <Poco/Net/NetException.h>

#include "deployment.hpp"
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

std::string response_text(int code, const char* reason, const std::string& type, const std::string& body, bool head_only,
                          const std::string& extra_headers = {}) {
  std::string out = "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + type +
                    "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n" + extra_headers + "\r\n";
  if (!head_only) out += body;
  return out;
}

/// Best effort: the socket has a send timeout, and a client that stops reading is simply dropped.
void send_all(Poco::Net::StreamSocket& socket, const std::string& data) {
  try {
    for (std::size_t sent = 0; sent < data.size();) {
      const int n = socket.sendBytes(data.data() + sent, static_cast<int>(data.size() - sent));
      if (n <= 0) return;
      sent += static_cast<std::size_t>(n);
    }
  } catch (const Poco::Exception&) {
  }
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

AdminServer::AdminServer(Deployment& deployment, const std::string& address, std::string token, AdminLimits limits)
    : deployment_(deployment), token_(std::move(token)), limits_(limits) {
  if (auto error = admin_address_error(address, token_); !error.empty()) throw std::invalid_argument(error);
  auto [host, port] = parse_host_port(address, "admin address");
  host_ = host;
  listener_.bind(Poco::Net::SocketAddress(host, port), true);
  listener_.listen(64);
  reader_ = std::thread([this] { reader(); });
  for (unsigned i = 0; i < limits_.workers; ++i) workers_.emplace_back([this] { worker(); });
}

AdminServer::~AdminServer() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  ready_.notify_all();
  reader_.join();
  for (auto& w : workers_) w.join();
}

std::string AdminServer::address() const {
  const std::string host = host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_;
  return host + ":" + std::to_string(listener_.address().port());
}

void AdminServer::reader() {
  std::vector<Pending> pending;
  std::vector<pollfd> fds;
  while (!stopping_) {
    fds.assign(1, pollfd{listener_.impl()->sockfd(), POLLIN, 0});
    for (auto& p : pending) fds.push_back(pollfd{p.socket.impl()->sockfd(), POLLIN, 0});
    ::poll(fds.data(), fds.size(), 100);  // short, so stopping_ is seen soon
    const auto now = std::chrono::steady_clock::now();
    std::vector<bool> done(pending.size(), false);
    for (std::size_t i = 0; i < pending.size(); ++i) {
      auto& p = pending[i];
      if (fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[4096];
        int n = 0;
        try {
          n = p.socket.receiveBytes(buf, sizeof buf);
        } catch (const Poco::Exception&) {
          n = 0;
        }
        if (n <= 0) {
          done[i] = true;  // the client went away
          continue;
        }
        p.head.append(buf, static_cast<std::size_t>(n));
        if (const auto end = head_end(p.head); end != std::string::npos) {
          // A POST carries a body (at most 1 MiB), read within the same deadline as the head.
          const auto length = content_length(p.head.substr(0, end));
          if (length == std::string::npos || length > max_body) {
            send_all(p.socket, response_text(413, "Payload Too Large", "text/plain; charset=utf-8",
                                             "a request body is at most 1 MiB, with a numeric Content-Length\n", false));
            done[i] = true;
            continue;
          }
          if (p.head.size() < end + length) continue;
          done[i] = true;
          std::unique_lock lock(mutex_);
          if (queue_.size() >= limits_.max_queued) {
            lock.unlock();
            send_all(p.socket, response_text(503, "Service Unavailable", "text/plain; charset=utf-8", "busy, try again\n", false));
          } else {
            queue_.push_back(Request{p.socket, std::move(p.head)});
            lock.unlock();
            ready_.notify_one();
          }
          continue;
        }
        if (head_end(p.head) == std::string::npos && p.head.size() > limits_.max_head_bytes) {
          send_all(p.socket, response_text(431, "Request Header Fields Too Large", "text/plain; charset=utf-8",
                                           "request head over " + std::to_string(limits_.max_head_bytes) + " bytes\n", false));
          done[i] = true;
          continue;
        }
      }
      if (now >= p.deadline) {
        send_all(p.socket, response_text(408, "Request Timeout", "text/plain; charset=utf-8",
                                         "no complete request within " + std::to_string(limits_.request_deadline.count()) + " ms\n",
                                         false));
        done[i] = true;
      }
    }
    for (std::size_t i = pending.size(); i-- > 0;) {
      if (done[i]) pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));  // closes the socket unless queued
    }
    if (fds[0].revents & POLLIN) {
      try {
        Poco::Net::StreamSocket s = listener_.acceptConnection();
        s.setSendTimeout(Poco::Timespan(limits_.request_deadline.count() * 1000));
        pending.push_back(Pending{std::move(s), {}, now + limits_.request_deadline});
        if (pending.size() > limits_.max_connections) pending.erase(pending.begin());  // the oldest reader loses
      } catch (const Poco::Exception&) {
      }
    }
  }
}

void AdminServer::worker() {
  while (true) {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    Request request = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    answer(request);
    try {
      request.socket.shutdownSend();
    } catch (const Poco::Exception&) {
    }
  }
}

void AdminServer::answer(Request& request) {
  const auto line_end = request.head.find_first_of("\r\n");
  std::istringstream first(request.head.substr(0, line_end));
  std::string method, uri;
  first >> method >> uri;
  const bool head_only = method == "HEAD";
  const std::string path = uri.substr(0, uri.find('?'));
  const std::string text = "text/plain; charset=utf-8";
  if (!token_.empty() && !equal_constant_time(header(request.head, "Authorization"), "Bearer " + token_)) {
    send_all(request.socket, response_text(401, "Unauthorized", text, "this endpoint needs Authorization: Bearer <admin token>\n",
                                           head_only, "WWW-Authenticate: Bearer\r\n"));
    return;
  }
  if (method == "POST" && path.starts_with("/request/")) return bus_request(request, path.substr(9));
  if (method != "GET" && method != "HEAD") {
    send_all(request.socket, response_text(405, "Method Not Allowed", text, "only GET, or POST /request/SUBJECT\n", false,
                                           "Allow: GET, HEAD, POST\r\n"));
    return;
  }
  try {
    if (path == "/metrics") {
      send_all(request.socket, response_text(200, "OK", "text/plain; version=0.0.4; charset=utf-8", deployment_.metrics_text(), head_only));
    } else if (path == "/status") {
      std::ostringstream json;
      Poco::JSON::Stringifier::stringify(deployment_.status(), json, 2);
      send_all(request.socket, response_text(200, "OK", "application/json", deployment_.redact(json.str()) + "\n", head_only));
    } else if (path == "/") {
      send_all(request.socket, response_text(200, "OK", text,
                                             "deskfarm admin endpoint: GET /status (JSON), GET /metrics (Prometheus), "
                                             "POST /request/SUBJECT (a JSON bus request)\n",
                                             head_only));
    } else {
      send_all(request.socket, response_text(404, "Not Found", text, "no such resource " + path + "; try /status or /metrics\n", head_only));
    }
  } catch (const std::exception& e) {
    send_all(request.socket, response_text(500, "Internal Server Error", text, "error: " + deployment_.redact(e.what()) + "\n", head_only));
  }
}

void AdminServer::bus_request(Request& request, const std::string& subject) {
  std::string body = request.head.substr(head_end(request.head));
  if (body.empty()) body = "{}";
  long timeout_ms = 10000;
  if (const auto t = header(request.head, "X-Timeout-Ms"); !t.empty()) timeout_ms = std::clamp(std::atol(t.c_str()), 1L, 600000L);
  const auto a = deployment_.request(subject, body, std::chrono::milliseconds(timeout_ms));
  const std::string json = "application/json";
  if (a.ok) {
    send_all(request.socket, response_text(200, "OK", json, deployment_.redact(a.body) + "\n", false, "X-Reply-Type: " + a.type + "\r\n"));
    return;
  }
  // A plugin's Error envelope goes out as it is; the kernel's own failures get the same shape.
  const std::string envelope = a.type == "error" ? a.body : sdk::to_value(sdk::Error{a.type, a.body}).to_json();
  const int code = a.type == "timeout" ? 504 : a.type == "no_responders" ? 404 : a.type == "bad_request" ? 400 : 502;
  const char* reason = code == 504 ? "Gateway Timeout" : code == 404 ? "Not Found" : code == 400 ? "Bad Request" : "Bad Gateway";
  send_all(request.socket, response_text(code, reason, json, deployment_.redact(envelope) + "\n", false));
}

}  // namespace deskfarm::kernel
