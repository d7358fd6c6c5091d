#include <deskfarm/bootstrap/keys.hpp>

namespace deskfarm::bootstrap {

Bootstrap from_keys(const Keys& k) {
  Bootstrap b;
  if (k.login_servers.size() > max_login_servers)
    throw KeyError("login_servers", "login_servers has " + std::to_string(k.login_servers.size()) +
                                        " entries; at most 4 fit in a bootstrap (1..4, in failover order)");
  for (const auto& s : k.login_servers) {
    try {
      b.login_servers.push_back(parse_endpoint(s, "login_servers"));
    } catch (const BootstrapError& e) {
      throw KeyError("login_servers", std::string(e.what()).substr(std::string_view("bootstrap: ").size()));
    }
  }
  // validate() below rejects what does not fit; the casts only keep what fits.
  auto u32 = [](std::int64_t v) { return v < 0 || v > 0xffffffffLL ? 0u : static_cast<std::uint32_t>(v); };
  b.version = u32(k.bootstrap_version);
  b.login_polling_timeout_ms = u32(k.login_polling_timeout_ms);
  b.login_general_timeout_ms = u32(k.login_general_timeout_ms);
  b.recovery_time_s = u32(k.recovery_time_s);
  if (k.recovery != "restore_network" && k.recovery != "reboot_to_hd")
    throw KeyError("recovery", "recovery '" + k.recovery + "' is neither restore_network nor reboot_to_hd");
  b.recovery = k.recovery == "reboot_to_hd" ? Recovery::reboot_to_hd : Recovery::restore_network;
  if (k.addressing != "dhcp" && k.addressing != "static")
    throw KeyError("addressing", "addressing '" + k.addressing + "' is neither dhcp nor static");
  if (k.addressing == "static") {
    b.addressing = Addressing::static_ip;
    b.static_address = {k.static_ip, k.static_mask, k.static_gateway, k.static_dns};
  }
  b.verbose = k.verbose;
  b.interrupt_safe = k.interrupt_safe;
  b.advanced_memory = k.advanced_memory;

  // The record's own check is the one that counts; with no servers yet, a placeholder lets it check the rest.
  Bootstrap probe = b;
  if (probe.login_servers.empty()) probe.login_servers = {{"127.0.0.1", 1}};
  if (auto e = validate(probe); !e.empty()) {
    // validate() names the record's field first; the manifest's key is the same but for two spellings.
    std::string f = e.substr(0, e.find_first_of(" :"));
    if (f == "ip" || f == "mask" || f == "gateway" || f == "dns") f = "static_" + f;
    else if (f == "version") f = "bootstrap_version";
    else if (f == "login_server") f = "login_servers";
    throw KeyError(f, f == e.substr(0, f.size()) ? e : f + ": " + e);
  }
  return b;
}

}  // namespace deskfarm::bootstrap
