// The NATS type header between deskfarm processes: its exact bytes, both readers, and the split of its value.
#include <catch2/catch.hpp>

#include "nats_headers.hpp"

using namespace deskfarm::kernel;

TEST_CASE("nats headers: one Deskfarm-Type header carries the type and its version") {
  std::string block;
  encode_headers(block, "deskfarm.ddc.Register", 3);
  CHECK(block == "NATS/1.0\r\nDeskfarm-Type: deskfarm.ddc.Register@3\r\n\r\n");
  CHECK(own_type_header(block) == "deskfarm.ddc.Register@3");
  CHECK(header_value(block, nats_type_header) == "deskfarm.ddc.Register@3");
  const auto typed = split_type("deskfarm.ddc.Register@3");
  REQUIRE(typed);
  CHECK(typed->type == "deskfarm.ddc.Register");
  CHECK(typed->version == 3);
}

TEST_CASE("nats headers: another layout is left to the general reader, which trims as libnats does") {
  const std::string block = "NATS/1.0\r\nTrace-Id: abc\r\nDeskfarm-Type:  deskfarm.text@1 \r\n\r\n";
  CHECK_FALSE(own_type_header(block));
  CHECK(header_value(block, nats_type_header) == "deskfarm.text@1");
  CHECK_FALSE(own_type_header("NATS/1.0\r\nDeskfarm-Type: deskfarm.text@1\r\nTrace-Id: abc\r\n\r\n"));
  CHECK_FALSE(own_type_header("NATS/1.0\r\nDeskfarm-Type: deskfarm.text@1\r\n"));  // cut short
  CHECK_FALSE(header_value("NATS/1.0\r\nDeskfarm-Type: a@1\r\n b\r\n\r\n", nats_type_header));  // folded: libnats reads it
  CHECK_FALSE(header_value("", nats_type_header));
}

TEST_CASE("nats headers: a type value without a name or a 32-bit decimal version is refused") {
  for (const char* bad : {"deskfarm.text", "deskfarm.text@", "@1", "deskfarm.text@seven", "deskfarm.text@-1",
                          "deskfarm.text@+1", "deskfarm.text@1 ", "deskfarm.text@4294967296", ""}) {
    INFO(bad);
    CHECK_FALSE(split_type(bad));
  }
  const auto last_at = split_type("vendor@example.Event@2");  // the version follows the last '@'
  REQUIRE(last_at);
  CHECK(last_at->type == "vendor@example.Event");
  CHECK(last_at->version == 2);
  CHECK(split_type("t@4294967295")->version == 4294967295u);
}
