// The balancer's pure logic: endpoints, udp-ecv send strings, backend choice, monitor verdicts, DHCP text.
#include <arpa/inet.h>

#include <map>

#include <catch2/catch.hpp>

#include <deskfarm/tftp/packet.hpp>

#include "balancing.hpp"

using namespace deskfarm::tftp_lb;

TEST_CASE("IPv4 endpoints parse and print back, and names, IPv6, junk and ports above 65535 are refused") {
  const auto a = parse_ipv4_endpoint("10.0.0.5:69");
  REQUIRE(a);
  CHECK(to_string(*a) == "10.0.0.5:69");
  CHECK(host_of(*a) == "10.0.0.5");
  for (const char* bad : {"pvs-1:69", "[::1]:69", "10.0.0.5", "10.0.0.5:", "10.0.0.5:65536", "10.0.0.5:-1", ":69",
                          "10.0.0.5:69x", "10.0.0.256:69"})
    CHECK_FALSE(parse_ipv4_endpoint(bad));
}

TEST_CASE("the udp-ecv payload is the hex bytes, else the text, else an octet RRQ for the boot file") {
  std::string error;
  const auto hex = ecv_payload("ignored", "0001 41:42-00", "X", error);
  REQUIRE(hex);
  CHECK(*hex == std::vector<std::byte>{std::byte{0}, std::byte{1}, std::byte{'A'}, std::byte{'B'}, std::byte{0}});
  const auto text = ecv_payload("hi", "", "X", error);
  REQUIRE(text);
  CHECK(text->size() == 2);
  const auto rrq = ecv_payload("", "", "ARDBP32.BIN", error);
  REQUIRE(rrq);
  const auto parsed = deskfarm::tftp::parse_packet(*rrq);
  const auto* request = std::get_if<deskfarm::tftp::Request>(&std::get<deskfarm::tftp::Packet>(parsed));
  REQUIRE(request);
  CHECK(request->filename == "ARDBP32.BIN");
  CHECK(request->mode == "octet");
  CHECK_FALSE(ecv_payload("", "0g", "X", error));
  CHECK(error.find("'g' at offset 1") != std::string::npos);
  CHECK_FALSE(ecv_payload("", "012", "X", error));
  CHECK(error.find("odd number") != std::string::npos);
}

namespace {
std::map<std::size_t, int> spread(Picker& p, std::vector<Candidate>& c, int n) {
  std::map<std::size_t, int> got;
  for (int i = 0; i < n; ++i) {
    const auto chosen = p.pick(c, static_cast<std::uint32_t>(0x0a000000 + i));
    REQUIRE(chosen);
    ++got[*chosen];
  }
  return got;
}
std::vector<Candidate> three() {
  return {{1, true, 0, stable_hash("a")}, {2, true, 0, stable_hash("b")}, {1, false, 0, stable_hash("c")}};
}
}  // namespace

TEST_CASE("weighted round robin follows the weights exactly and never picks an ineligible backend") {
  Picker p(Method::round_robin);
  auto c = three();
  const auto got = spread(p, c, 300);
  CHECK(got.at(0) == 100);
  CHECK(got.at(1) == 200);
  CHECK(got.count(2) == 0);
  for (auto& x : c) x.eligible = false;
  CHECK_FALSE(p.pick(c, 1));
}

TEST_CASE("least sessions picks the lowest sessions per weight") {
  Picker p(Method::least_sessions);
  std::vector<Candidate> c{{1, true, 3, 1}, {2, true, 5, 2}, {1, true, 2, 3}, {1, false, 0, 4}};
  CHECK(p.pick(c, 0) == 2u);  // 2/1 < 5/2 < 3/1; the ineligible one with 0 is never taken
  c[2].active = 4;            // 5/2 = 2.5 is now the lowest
  CHECK(p.pick(c, 0) == 1u);
}

TEST_CASE("source_ip keeps each client on one backend, follows the weights, and a backend going down moves only its clients") {
  Picker p(Method::source_ip);
  auto c = three();
  std::map<std::uint32_t, std::size_t> first;
  for (std::uint32_t ip = 0; ip < 3000; ++ip) first[ip] = *p.pick(c, ip);
  for (std::uint32_t ip = 0; ip < 3000; ++ip) CHECK(*p.pick(c, ip) == first[ip]);  // the tsize probe and the download
  int on_b = 0;
  for (const auto& [ip, b] : first) on_b += b == 1;
  CHECK(on_b > 1800);  // weight 2 of 3: about 2,000
  CHECK(on_b < 2200);
  c[0].eligible = false;
  for (const auto& [ip, b] : first)
    if (b == 1) CHECK(*p.pick(c, ip) == 1u);
}

TEST_CASE("monitor verdicts: DOWN after `retries` failures (or failure_retries of them), UP after success_retries") {
  SECTION("all of retries must fail by default") {
    HealthTracker t({3, 0, 2});
    CHECK(t.record(true) == std::optional<bool>(true));
    CHECK_FALSE(t.record(false));
    CHECK_FALSE(t.record(false));
    CHECK_FALSE(t.record(true));  // a success in between resets the run
    CHECK_FALSE(t.record(false));
    CHECK_FALSE(t.record(false));
    CHECK(t.record(false) == std::optional<bool>(false));
    CHECK_FALSE(t.record(true));  // success_retries = 2
    CHECK(t.record(true) == std::optional<bool>(true));
  }
  SECTION("failure_retries of the last retries") {
    HealthTracker t({3, 2, 1});
    CHECK(t.record(true));
    CHECK_FALSE(t.record(false));
    CHECK_FALSE(t.record(true));
    CHECK(t.record(false) == std::optional<bool>(false));  // 2 of the last 3 failed
  }
  SECTION("a backend that never answered stays DOWN without a transition") {
    HealthTracker t({3, 0, 1});
    CHECK_FALSE(t.record(false));
    CHECK_FALSE(t.up());
    CHECK(t.record(true) == std::optional<bool>(true));
  }
}

TEST_CASE("DHCP option 66/67 text for ISC dhcpd, Kea and dnsmasq names the virtual server and the boot file") {
  const auto isc = dhcp_config("isc", "10.0.0.10", "ARDBP32.BIN");
  REQUIRE(isc);
  CHECK(isc->find("option tftp-server-name \"10.0.0.10\";") != std::string::npos);
  CHECK(isc->find("filename \"ARDBP32.BIN\";") != std::string::npos);
  const auto kea = dhcp_config("kea", "10.0.0.10", "ARDBP32.BIN");
  REQUIRE(kea);
  CHECK(kea->find("\"code\": 66, \"data\": \"10.0.0.10\"") != std::string::npos);
  CHECK(kea->find("\"code\": 67, \"data\": \"ARDBP32.BIN\"") != std::string::npos);
  const auto dnsmasq = dhcp_config("dnsmasq", "10.0.0.10", "ARDBP32.BIN");
  REQUIRE(dnsmasq);
  CHECK(dnsmasq->find("dhcp-option=66,\"10.0.0.10\"") != std::string::npos);
  CHECK(dnsmasq->find("dhcp-option=67,\"ARDBP32.BIN\"") != std::string::npos);
  CHECK_FALSE(dhcp_config("windows", "10.0.0.10", "x"));
}
