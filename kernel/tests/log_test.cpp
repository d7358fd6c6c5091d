#include <catch2/catch.hpp>

#include "log.hpp"

using namespace deskfarm;
using namespace deskfarm::kernel;

TEST_CASE("a message with control characters is logged as exactly one line, escaped") {
  LogSink sink;
  std::vector<std::string> lines;
  sink.capture([&](const std::string& l) { lines.push_back(l); });
  // An NBD export name chosen by a client, trying to forge a second log line.
  sink.write(sdk::LogLevel::warning, "pvs-1",
             "unknown export 'x\n2026-01-01T00:00:00.000Z error kernel: forged'\r\t\x01\x1f\x7f end");
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].find('\n') == std::string::npos);
  CHECK(lines[0].find('\r') == std::string::npos);
  CHECK(lines[0].ends_with(
      " warn  pvs-1: unknown export 'x\\n2026-01-01T00:00:00.000Z error kernel: forged'\\r\\t\\x01\\x1f\\x7f end"));
}

TEST_CASE("an instance name with a newline cannot forge a line either") {
  LogSink sink;
  std::vector<std::string> lines;
  sink.capture([&](const std::string& l) { lines.push_back(l); });
  InstanceLogger logger(sink, "a\nb");
  logger.info("plain text, UTF-8 kept: é");
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].ends_with(" info  a\\nb: plain text, UTF-8 kept: é"));
}
