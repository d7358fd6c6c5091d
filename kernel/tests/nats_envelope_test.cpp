// How a typed message travels over NATS: the envelope line's exact bytes, and what a receiver refuses.
#include <catch2/catch.hpp>

#include "nats_envelope.hpp"

using namespace deskfarm::kernel;

TEST_CASE("nats envelope: one line with the type and its version, then the body") {
  std::string payload;
  encode_envelope(payload, "deskfarm.ddc.Register", 3);
  CHECK(payload == "deskfarm.ddc.Register@3\n");
  payload += "{\"name\":\"vda-1\"}\nsecond line";
  const auto e = open_envelope(payload);
  REQUIRE(e);
  CHECK(e->type == "deskfarm.ddc.Register");
  CHECK(e->version == 3);
  CHECK(e->body == "{\"name\":\"vda-1\"}\nsecond line");
  const auto empty_body = open_envelope("deskfarm.empty@1\n");
  REQUIRE(empty_body);
  CHECK(empty_body->body.empty());
  const auto last_at = open_envelope("vendor@example.Event@2\nx");  // the version follows the line's last '@'
  REQUIRE(last_at);
  CHECK(last_at->type == "vendor@example.Event");
  CHECK(last_at->version == 2);
  CHECK(open_envelope("t@4294967295\n")->version == 4294967295u);
}

TEST_CASE("nats envelope: a payload without a type line, a name or a 32-bit decimal version is refused") {
  for (const char* bad : {"", "{\"json\":1}", "deskfarm.text\nbody", "deskfarm.text@\nbody", "@1\nbody",
                          "deskfarm.text@seven\nbody", "deskfarm.text@-1\n", "deskfarm.text@+1\n", "deskfarm.text@1 \n",
                          "deskfarm.text@1\r\n", "deskfarm.text@4294967296\n", "deskfarm.text@1", "user@example.com\nhi"}) {
    INFO(bad);
    CHECK_FALSE(open_envelope(bad));
  }
  // A name longer than any sender writes is refused without searching the rest of a large body for a line end.
  CHECK_FALSE(open_envelope(std::string(max_type_name + 1, 'a') + "@1\n"));
  CHECK(open_envelope(std::string(max_type_name, 'a') + "@1\n"));
  CHECK_FALSE(open_envelope(std::string(1 << 20, 'x') + "@1\n"));
}

TEST_CASE("nats envelope: a type name a receiver would not read is not sent") {
  CHECK(envelope_safe("deskfarm.text"));
  CHECK_FALSE(envelope_safe(""));
  CHECK_FALSE(envelope_safe("two\nlines"));
  CHECK_FALSE(envelope_safe(std::string(max_type_name + 1, 'a')));
}
