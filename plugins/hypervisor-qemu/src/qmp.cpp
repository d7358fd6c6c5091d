// The QMP client: see qmp.hpp.
#include "qmp.hpp"

#include <sstream>
#include <thread>

#include <Poco/JSON/Parser.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/SocketAddress.h>

namespace deskfarm::qemu {

namespace {

Poco::Timespan span(std::chrono::steady_clock::duration d) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  return Poco::Timespan(us > 0 ? us : 0);
}

}  // namespace

Qmp::Qmp(const std::filesystem::path& path, std::chrono::milliseconds timeout) : path_(path.string()) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  // QEMU creates the socket a moment after it starts: retry until it accepts (bounded by the deadline).
  for (int attempt = 0;; ++attempt) {
    try {
      socket_.connect(Poco::Net::SocketAddress(Poco::Net::SocketAddress::UNIX_LOCAL, path_), span(deadline - std::chrono::steady_clock::now()));
      break;
    } catch (const Poco::Exception& e) {
      if (std::chrono::steady_clock::now() >= deadline || attempt > 10000)
        throw QmpError("connection", "QMP socket " + path_ + " did not accept a connection: " + e.displayText());
      socket_ = Poco::Net::StreamSocket();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  auto greeting = read(deadline);
  if (!greeting || !greeting->has("QMP"))
    throw QmpError("connection", "QMP socket " + path_ + " sent no greeting within " + std::to_string(timeout.count()) + " ms");
  execute("qmp_capabilities", nullptr, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()) +
                                          std::chrono::milliseconds(100));
}

void Qmp::send(const Poco::JSON::Object& message) {
  std::ostringstream out;
  message.stringify(out);
  out << "\n";
  const auto text = out.str();
  try {
    std::size_t sent = 0;
    while (sent < text.size()) {  // bounded: each pass sends at least one byte or throws
      const int n = socket_.sendBytes(text.data() + sent, static_cast<int>(text.size() - sent));
      if (n <= 0) throw QmpError("connection", "QMP socket " + path_ + " closed while sending");
      sent += static_cast<std::size_t>(n);
    }
  } catch (const Poco::Exception& e) {
    throw QmpError("connection", "QMP socket " + path_ + ": " + e.displayText());
  }
}

Poco::JSON::Object::Ptr Qmp::read(std::chrono::steady_clock::time_point deadline) {
  // Bounded by the deadline: each pass either takes a line, receives bytes, or waits until the deadline.
  for (;;) {
    const auto nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      const auto line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
      try {
        Poco::JSON::Parser parser;
        return parser.parse(line).extract<Poco::JSON::Object::Ptr>();
      } catch (const Poco::Exception& e) {
        throw QmpError("connection", "QMP socket " + path_ + " sent a line that is no JSON object (" + e.displayText() + "): " + line);
      }
    }
    const auto left = deadline - std::chrono::steady_clock::now();
    try {
      if (left <= std::chrono::steady_clock::duration::zero() || !socket_.poll(span(left), Poco::Net::Socket::SELECT_READ)) return nullptr;
      char chunk[4096];
      const int n = socket_.receiveBytes(chunk, sizeof chunk);
      if (n <= 0) throw QmpError("connection", "QEMU closed its QMP socket " + path_);
      buffer_.append(chunk, static_cast<std::size_t>(n));
    } catch (const Poco::Exception& e) {
      throw QmpError("connection", "QMP socket " + path_ + ": " + e.displayText());
    }
  }
}

Poco::Dynamic::Var Qmp::execute(const std::string& command, Poco::JSON::Object::Ptr arguments, std::chrono::milliseconds timeout) {
  Poco::JSON::Object message;
  message.set("execute", command);
  if (arguments) message.set("arguments", arguments);
  send(message);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {  // bounded by the deadline (read returns null once it passed)
    auto reply = read(deadline);
    if (!reply) throw QmpError("connection", "QEMU did not answer " + command + " within " + std::to_string(timeout.count()) + " ms");
    if (reply->has("event")) {
      events_.push_back({reply->getValue<std::string>("event"), reply->getObject("data")});
      continue;
    }
    if (reply->has("return")) return reply->get("return");
    if (auto error = reply->getObject("error"))
      throw QmpError(error->optValue<std::string>("class", "GenericError"),
                     command + ": " + error->optValue<std::string>("desc", "(no description)"));
  }
}

std::vector<QmpEvent> Qmp::events(std::chrono::milliseconds wait) {
  const auto deadline = std::chrono::steady_clock::now() + wait;
  // Bounded: at most 64 messages per call, each read bounded by the deadline.
  for (int i = 0; i < 64; ++i) {
    auto message = read(deadline);
    if (!message) break;
    if (message->has("event")) events_.push_back({message->getValue<std::string>("event"), message->getObject("data")});
  }
  std::vector<QmpEvent> out(events_.begin(), events_.end());
  events_.clear();
  return out;
}

}  // namespace deskfarm::qemu
