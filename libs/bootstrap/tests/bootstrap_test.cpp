#include <catch2/catch.hpp>

#include "deskfarm/bootstrap/boot_script.hpp"
#include "deskfarm/bootstrap/bootstrap.hpp"
#include "deskfarm/bootstrap/keys.hpp"

using namespace deskfarm::bootstrap;

namespace {
Bootstrap sample() {
  Bootstrap b;
  b.version = 7;
  b.login_servers = {{"10.0.0.5", 6910}, {"pvs-2.farm.local", 6911}};
  return b;
}
std::string replace(std::string s, const std::string& from, const std::string& to) {
  const auto p = s.find(from);
  REQUIRE(p != std::string::npos);
  return s.replace(p, from.size(), to);
}
// Changes the body and re-seals it, so only the field check can object.
std::string edit_sealed(const std::string& file, const std::string& from, const std::string& to) {
  const std::string body = file.substr(0, file.rfind("sha256 = "));
  return seal(replace(body, from, to));
}
}  // namespace

TEST_CASE("a bootstrap survives encode and parse unchanged, defaults included") {
  const Bootstrap b = sample();
  const std::string file = encode(b);
  CHECK(file.starts_with("DESKFARM-BOOTSTRAP 1\nversion = 7\nlogin_server = 10.0.0.5:6910\n"));
  CHECK(parse(file) == b);
  CHECK(b.login_polling_timeout_ms == 5000);
  CHECK(b.login_general_timeout_ms == 30000);
}

TEST_CASE("static addressing and every option round-trip") {
  Bootstrap b = sample();
  b.addressing = Addressing::static_ip;
  b.static_address = {"10.0.1.20", "255.255.255.0", "10.0.1.1", "10.0.1.2"};
  b.recovery = Recovery::reboot_to_hd;
  b.recovery_time_s = 0;
  b.verbose = b.interrupt_safe = true;
  b.advanced_memory = false;
  b.login_servers = {{"a", 1}, {"b", 2}, {"c", 3}, {"d", 65535}};
  CHECK(parse(encode(b)) == b);
}

TEST_CASE("encode refuses more than four login servers, none, or a bad host") {
  Bootstrap b = sample();
  b.login_servers.assign(5, {"10.0.0.1", 6910});
  CHECK_THROWS_WITH(encode(b), Catch::Contains("at most 4"));
  b.login_servers.clear();
  CHECK_THROWS_WITH(encode(b), Catch::Contains("at least one login server"));
  b.login_servers = {{"bad host", 1}};
  CHECK_THROWS_WITH(encode(b), Catch::Contains("neither an IPv4 address nor a DNS name"));
}

TEST_CASE("a wrong magic is named before the checksum") {
  const std::string file = replace(encode(sample()), "DESKFARM-BOOTSTRAP", "ARDBP32-BOOTSTRA");
  try {
    parse(file);
    FAIL("parsed");
  } catch (const BootstrapError& e) {
    CHECK(e.field() == "magic");
    CHECK(e.line() == 1);
    CHECK(std::string(e.what()).find("bad magic") != std::string::npos);
  }
}

TEST_CASE("an unknown format version is refused with the fix") {
  const std::string file = replace(encode(sample()), "DESKFARM-BOOTSTRAP 1", "DESKFARM-BOOTSTRAP 2");
  CHECK_THROWS_WITH(parse(file), Catch::Contains("format version '2' is not supported") &&
                                     Catch::Contains("regenerate"));
}

TEST_CASE("one flipped byte fails the checksum, naming the line and byte offset") {
  std::string file = encode(sample());
  file[file.find("6910")] = '7';
  try {
    parse(file);
    FAIL("parsed");
  } catch (const BootstrapError& e) {
    CHECK(e.field() == "sha256");
    CHECK(e.offset() == file.rfind("sha256 = ") + 9);
    CHECK(std::string(e.what()).find("checksum mismatch") != std::string::npos);
  }
}

TEST_CASE("a truncated download is named as such") {
  const std::string file = encode(sample());
  CHECK_THROWS_WITH(parse(file.substr(0, file.size() - 5)), Catch::Contains("truncated"));
  CHECK_THROWS_WITH(parse(""), Catch::Contains("truncated"));
}

TEST_CASE("bad field values are refused with the field, line and byte offset of the value") {
  const std::string file = encode(sample());
  const std::string bad = edit_sealed(file, "login_polling_timeout_ms = 5000", "login_polling_timeout_ms = 50");
  try {
    parse(bad);
    FAIL("parsed");
  } catch (const BootstrapError& e) {
    CHECK(e.field() == "login_polling_timeout_ms");
    CHECK(e.line() == 6);
    CHECK(e.offset() == bad.find("= 50\n") + 2);
    CHECK(std::string(e.what()).find("line 6 (byte") != std::string::npos);
    CHECK(std::string(e.what()).find("outside 1000..300000") != std::string::npos);
  }
  CHECK_THROWS_WITH(parse(edit_sealed(file, "recovery = restore_network", "recovery = pray")),
                    Catch::Contains("neither reboot_to_hd nor restore_network"));
  CHECK_THROWS_WITH(parse(edit_sealed(file, "10.0.0.5:6910", "10.0.0.5:0")), Catch::Contains("port '0'"));
  CHECK_THROWS_WITH(parse(edit_sealed(file, "verbose = false", "verbose = 0")), Catch::Contains("verbose '0'"));
  CHECK_THROWS_WITH(parse(edit_sealed(file, "verbose = false\n", "verbose = false\nverbose = true\n")),
                    Catch::Contains("given twice"));
  CHECK_THROWS_WITH(parse(edit_sealed(file, "verbose = false\n", "colour = blue\n")),
                    Catch::Contains("unknown key 'colour'"));
  CHECK_THROWS_WITH(parse(edit_sealed(file, "verbose = false\n", "")), Catch::Contains("'verbose' is missing"));
  CHECK_THROWS_WITH(parse(edit_sealed(file, "addressing = dhcp", "addressing = static")),
                    Catch::Contains("needs 'ip'"));
  CHECK_THROWS_WITH(parse(edit_sealed(file, "version = 7", "version = 07")), Catch::Contains("not a decimal"));
  CHECK_THROWS_WITH(parse(edit_sealed(file, "version = 7", "version = 7\r")), Catch::Contains("control"));
}

TEST_CASE("the general timeout may not be shorter than one polling round") {
  Bootstrap b = sample();
  b.login_general_timeout_ms = 2000;
  CHECK_THROWS_WITH(encode(b), Catch::Contains("shorter than login_polling_timeout_ms"));
}

TEST_CASE("login server endpoints parse from host:port text") {
  CHECK(parse_endpoint("127.0.0.1:10809") == Endpoint{"127.0.0.1", 10809});
  CHECK_THROWS_WITH(parse_endpoint("127.0.0.1"), Catch::Contains("not host:port"));
  CHECK_THROWS_WITH(parse_endpoint("-x:1"), Catch::Contains("neither"));
  CHECK_THROWS_WITH(parse_endpoint("h:70000"), Catch::Contains("not 1..65535"));
}

TEST_CASE("from_keys maps the manifest keys onto a record and names the manifest key at fault") {
  Keys k;
  k.login_servers = {"10.0.0.5:6910", "pvs-2.example:6911"};
  k.bootstrap_version = 7;
  k.recovery = "reboot_to_hd";
  k.addressing = "static";
  k.static_ip = "10.1.0.20";
  k.static_mask = "255.255.255.0";
  k.static_gateway = "10.1.0.1";
  const auto b = from_keys(k);
  CHECK(b.version == 7);
  CHECK(b.login_servers.size() == 2);
  CHECK(b.login_servers[1].port == 6911);
  CHECK(b.recovery == Recovery::reboot_to_hd);
  CHECK(b.static_address.gateway == "10.1.0.1");
  CHECK(validate(b).empty());

  auto key_of = [](Keys bad) {
    try {
      (void)from_keys(bad);
    } catch (const KeyError& e) {
      return e.key();
    }
    return std::string("(accepted)");
  };
  auto bad = k;
  bad.static_mask = "255.255.0";
  CHECK(key_of(bad) == "static_mask");
  bad = k;
  bad.login_servers = {"a:1", "a:2", "a:3", "a:4", "a:5"};
  CHECK(key_of(bad) == "login_servers");
  bad = k;
  bad.login_servers = {"10.0.0.5"};
  CHECK(key_of(bad) == "login_servers");
  bad = k;
  bad.login_general_timeout_ms = 2000;
  CHECK(key_of(bad) == "login_general_timeout_ms");
  bad = k;
  bad.bootstrap_version = 0;
  CHECK(key_of(bad) == "bootstrap_version");
  bad = k;
  bad.login_servers.clear();  // the caller fills these in (pvs: its own stream address)
  CHECK(key_of(bad) == "(accepted)");
}

TEST_CASE("a boot script name carries the device's MAC and boot record version and reads back") {
  CHECK(boot_script_name(42, "${net0/mac:hexhyp}") == "deskfarm/v42/${net0/mac:hexhyp}/boot.ipxe");
  const auto r = parse_boot_script_name(boot_script_name(42, "52-54-00-AB-cd-01"));
  REQUIRE(r);
  CHECK(r->version == 42);
  CHECK(r->mac == "52:54:00:ab:cd:01");
  CHECK(parse_boot_script_name("DESKFARM/V7/52:54:00:00:00:01/BOOT.IPXE")->mac == "52:54:00:00:00:01");
}

TEST_CASE("a name that is not a boot script name is refused") {
  for (const char* bad : {"ARDBP32.BIN", "deskfarm/boot.ipxe", "deskfarm/v/52-54-00-00-00-01/boot.ipxe",
                          "deskfarm/vx/52-54-00-00-00-01/boot.ipxe", "deskfarm/v1/52-54-00-00-00/boot.ipxe",
                          "deskfarm/v1/52-54:00-00-00-01/boot.ipxe", "deskfarm/v1/52-54-00-00-00-0g/boot.ipxe",
                          "deskfarm/v99999999999/52-54-00-00-00-01/boot.ipxe", "deskfarm/v1/52-54-00-00-00-01/boot.ipx"}) {
    INFO(bad);
    CHECK_FALSE(parse_boot_script_name(bad));
  }
}
