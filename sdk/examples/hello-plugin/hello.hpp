#pragma once
// hello's message types: what its users (and its test) send on the bus.
#include <deskfarm/sdk/record.hpp>

/// A ping on hello.ping: the name to greet. The reply is a deskfarm::sdk::Text "<greeting>, <name>".
struct Ping {
  static constexpr std::string_view type_name = "deskfarm.hello.Ping";
  static constexpr std::uint32_t type_version = 1;
  std::string name;
  static constexpr auto fields() { return std::tuple{deskfarm::sdk::field("name", &Ping::name)}; }
};
