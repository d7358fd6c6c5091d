// deskfarm::net::Subnet: the forms manifests write, the mistakes refused, membership and IPv4 host numbering.
#include <catch2/catch.hpp>

#include <deskfarm/net/subnet.hpp>

using deskfarm::net::Family;
using deskfarm::net::Subnet;

TEST_CASE("subnet: IPv4 and IPv6 networks and bare addresses parse with their family, prefix and text") {
  const auto v4 = Subnet::parse("10.1.0.0/16");
  REQUIRE(v4);
  CHECK(v4->family() == Family::ipv4);
  CHECK(v4->prefix() == 16);
  CHECK(v4->text() == "10.1.0.0/16");
  const auto v6 = Subnet::parse("fd00:1:2::/48");
  REQUIRE(v6);
  CHECK(v6->family() == Family::ipv6);
  CHECK(v6->prefix() == 48);
  CHECK(Subnet::parse("192.168.1.20")->prefix() == 32);
  CHECK(Subnet::parse("::1")->prefix() == 128);
  CHECK(Subnet::parse("0.0.0.0/0")->prefix() == 0);
  CHECK(Subnet::parse("::/0")->prefix() == 0);
  CHECK(Subnet::parse("10.1.0.0/016")->prefix() == 16);  // decimal digits, leading zeros read as decimal
  const auto mapped = Subnet::address("::ffff:10.1.2.3");
  REQUIRE(mapped);
  CHECK(mapped->family() == Family::ipv4);  // a dual-stack socket's view of an IPv4 peer
  CHECK(mapped->prefix() == 32);
}

TEST_CASE("subnet: a prefix length outside the family, or not plain decimal, is refused") {
  CHECK_FALSE(Subnet::parse("10.0.0.0/33"));
  CHECK_FALSE(Subnet::parse("fd00::/129"));
  CHECK_FALSE(Subnet::parse("10.0.0.0/"));
  CHECK_FALSE(Subnet::parse("10.0.0.0/-8"));
  CHECK_FALSE(Subnet::parse("10.0.0.0/+8"));
  CHECK_FALSE(Subnet::parse("10.0.0.0/8x"));
  CHECK_FALSE(Subnet::parse("10.0.0.0/ 8"));
  CHECK_FALSE(Subnet::parse("10.0.0.0/0008"));
  CHECK_FALSE(Subnet::parse("10.0.0.0/99999999999"));
  CHECK_FALSE(Subnet::parse("::ffff:10.0.0.0/8"));  // a mapped address with an IPv6 prefix of 8: host bits set
  CHECK(Subnet::parse("::ffff:10.0.0.0/104"));      // as an IPv6 network it stays IPv6
  CHECK(Subnet::parse("::ffff:10.0.0.0/104")->family() == Family::ipv6);
}

TEST_CASE("subnet: bad octets and words that are no address are refused") {
  for (const char* bad : {"10.0.0.256/8", "10.0.0/8", "10.0.0.0.0/8", "10.0.0.01", "10.0.0.-1", " 10.0.0.0/8",
                          "10.0.0.0/8 ", "host.example", "", "/8", "fd00:::1", "fd00::g/64"}) {
    INFO(bad);
    CHECK_FALSE(Subnet::parse(bad));
  }
}

TEST_CASE("subnet: host bits set are refused, not masked (10.1.2.3/8 is a typo for a host or a network)") {
  CHECK_FALSE(Subnet::parse("10.1.2.3/8"));
  CHECK_FALSE(Subnet::parse("10.1.0.1/16"));
  CHECK_FALSE(Subnet::parse("fd00::1/64"));
  CHECK(Subnet::parse("10.1.2.3/32"));
  CHECK(Subnet::parse("10.1.2.2/31"));
  CHECK_FALSE(Subnet::parse("10.1.2.3/31"));
}

TEST_CASE("subnet: address() takes a host address only") {
  CHECK(Subnet::address("10.1.2.3"));
  CHECK(Subnet::address("fd00::9"));
  CHECK_FALSE(Subnet::address("10.0.0.0/8"));
  CHECK_FALSE(Subnet::address("10.0.0.0/32"));
  CHECK_FALSE(Subnet::address("localhost"));
}

TEST_CASE("subnet: contains() by prefix, within one family, IPv4-mapped peers matching IPv4 networks") {
  const auto net = *Subnet::parse("10.1.0.0/16");
  CHECK(net.contains(*Subnet::address("10.1.255.7")));
  CHECK(net.contains(*Subnet::address("10.1.0.0")));
  CHECK_FALSE(net.contains(*Subnet::address("10.2.0.1")));
  CHECK_FALSE(net.contains(*Subnet::address("10.0.255.255")));
  CHECK(net.contains(*Subnet::address("::ffff:10.1.2.3")));
  CHECK_FALSE(net.contains(*Subnet::address("fd00::1")));
  const auto odd = *Subnet::parse("10.1.2.8/29");  // a prefix that ends inside an octet
  CHECK(odd.contains(*Subnet::address("10.1.2.15")));
  CHECK_FALSE(odd.contains(*Subnet::address("10.1.2.16")));
  CHECK_FALSE(odd.contains(*Subnet::address("10.1.2.7")));
  const auto v6 = *Subnet::parse("fd00:1:2::/48");
  CHECK(v6.contains(*Subnet::address("fd00:1:2:3::9")));
  CHECK_FALSE(v6.contains(*Subnet::address("fd00:1:3::9")));
  CHECK_FALSE(v6.contains(*Subnet::address("10.1.2.3")));
  CHECK(Subnet::parse("192.168.1.20")->contains(*Subnet::address("192.168.1.20")));
  CHECK_FALSE(Subnet::parse("192.168.1.20")->contains(*Subnet::address("192.168.1.21")));
  CHECK(Subnet::parse("0.0.0.0/0")->contains(*Subnet::address("203.0.113.9")));
  CHECK_FALSE(Subnet::parse("0.0.0.0/0")->contains(*Subnet::address("::2")));
  CHECK(Subnet::parse("::/0")->contains(*Subnet::address("fd00::2")));
}

TEST_CASE("subnet: IPv4 host n lies between the network and broadcast addresses, and host_number() reads it back") {
  const auto net = *Subnet::parse("10.1.0.0/16");
  CHECK(net.host_count() == 65534);
  REQUIRE(net.host(1));
  CHECK(net.host(1)->text() == "10.1.0.1");
  CHECK(net.host(258)->text() == "10.1.1.2");
  CHECK(net.host(65534)->text() == "10.1.255.254");
  CHECK(net.host(258)->prefix() == 32);
  CHECK(net.contains(*net.host(258)));
  CHECK_FALSE(net.host(0));      // the network address
  CHECK_FALSE(net.host(65535));  // the broadcast address
  CHECK(net.host_number(*Subnet::address("10.1.1.2")) == 258u);
  CHECK(net.host_number(*Subnet::address("::ffff:10.1.1.2")) == 258u);
  CHECK_FALSE(net.host_number(*Subnet::address("10.1.0.0")));
  CHECK_FALSE(net.host_number(*Subnet::address("10.1.255.255")));
  CHECK_FALSE(net.host_number(*Subnet::address("10.2.0.1")));
  for (std::uint32_t n : {1u, 2u, 255u, 256u, 4097u, 65534u}) CHECK(net.host_number(*net.host(n)) == n);

  const auto small = *Subnet::parse("10.1.0.0/29");
  CHECK(small.host_count() == 6);
  CHECK(small.host(6)->text() == "10.1.0.6");
  CHECK_FALSE(small.host(7));
  CHECK(Subnet::parse("10.1.0.0/30")->host_count() == 2);
  CHECK(Subnet::parse("10.1.0.0/31")->host_count() == 0);
  CHECK(Subnet::parse("10.1.0.1")->host_count() == 0);
  CHECK(Subnet::parse("0.0.0.0/0")->host_count() == 4294967294u);
  CHECK(Subnet::parse("0.0.0.0/0")->host(4294967294u)->text() == "255.255.255.254");
  CHECK(Subnet::parse("fd00::/64")->host_count() == 0);  // IPv6 networks are not numbered
  CHECK_FALSE(Subnet::parse("fd00::/64")->host(1));
}

TEST_CASE("subnet: is_loopback() is 127.0.0.0/8 and ::1 only") {
  CHECK(deskfarm::net::is_loopback("127.0.0.1"));
  CHECK(deskfarm::net::is_loopback("127.255.0.9"));
  CHECK(deskfarm::net::is_loopback("::1"));
  CHECK(deskfarm::net::is_loopback("::ffff:127.0.0.1"));
  CHECK_FALSE(deskfarm::net::is_loopback("128.0.0.1"));
  CHECK_FALSE(deskfarm::net::is_loopback("0.0.0.0"));
  CHECK_FALSE(deskfarm::net::is_loopback("::"));
  CHECK_FALSE(deskfarm::net::is_loopback("localhost"));
  CHECK_FALSE(deskfarm::net::is_loopback("127.0.0.0/8"));
}
