#include "deskfarm/nfuse/ica.hpp"

#include <stdexcept>

namespace deskfarm::nfuse {

namespace {

void check_value(const char* field, const std::string& v) {
  if (v.find_first_of("\r\n") != std::string::npos)
    throw std::invalid_argument(std::string("ICA file: ") + field + " contains a line break, which would end the INI line");
}

}  // namespace

std::string write_ica(const IcaFile& f) {
  if (f.name.empty()) throw std::invalid_argument("ICA file: name is empty (it names the [ApplicationServers] entry and its section)");
  if (f.name.find_first_of("[]=\r\n") != std::string::npos)
    throw std::invalid_argument("ICA file: name '" + f.name + "' contains one of [ ] = or a line break");
  if (f.address.empty()) throw std::invalid_argument("ICA file: address is empty (where the client connects)");
  if (f.desired_color != 1 && f.desired_color != 2 && f.desired_color != 4 && f.desired_color != 8)
    throw std::invalid_argument("ICA file: desired_color " + std::to_string(f.desired_color) + " is not 1, 2, 4 or 8");
  if (f.ssl_enable && f.ssl_proxy_host.empty())
    throw std::invalid_argument("ICA file: ssl_enable without ssl_proxy_host (the gateway, \"host:443\")");
  for (const auto& [field, value] : {std::pair{"title", &f.title}, std::pair{"address", &f.address},
                                     std::pair{"initial_program", &f.initial_program}, std::pair{"logon_ticket", &f.logon_ticket},
                                     std::pair{"logon_ticket_type", &f.logon_ticket_type},
                                     std::pair{"ssl_proxy_host", &f.ssl_proxy_host}, std::pair{"cgp_address", &f.cgp_address},
                                     std::pair{"client_name", &f.client_name}})
    check_value(field, *value);

  std::string out;
  auto line = [&](const std::string& l) { out += l + "\r\n"; };
  line("[WFClient]");
  line("Version=2");
  if (!f.client_name.empty()) line("ClientName=" + f.client_name);
  line("RemoveICAFile=yes");
  line("");
  line("[ApplicationServers]");
  line(f.name + "=");
  line("");
  line("[" + f.name + "]");
  line("Address=" + f.address);
  line("InitialProgram=" + f.initial_program);
  line("Title=" + (f.title.empty() ? f.name : f.title));
  line("TransportDriver=TCP/IP");
  line("WinStationDriver=ICA 3.0");
  line("DesiredColor=" + std::to_string(f.desired_color));
  line("TWIMode=On");
  if (!f.logon_ticket.empty()) {
    line("LogonTicket=" + f.logon_ticket);
    line("LogonTicketType=" + f.logon_ticket_type);
  }
  if (!f.cgp_address.empty()) line("CGPAddress=" + f.cgp_address);
  line(std::string("SSLEnable=") + (f.ssl_enable ? "On" : "Off"));
  if (f.ssl_enable) line("SSLProxyHost=" + f.ssl_proxy_host);
  return out;
}

IniSections parse_ini(std::string_view text) {
  IniSections out;
  std::string section;
  std::size_t number = 0;
  while (!text.empty()) {
    ++number;
    const auto nl = text.find('\n');
    std::string l(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (!l.empty() && l.back() == '\r') l.pop_back();
    if (l.empty() || l[0] == ';') continue;
    if (l.front() == '[') {
      if (l.back() != ']') throw std::invalid_argument("INI line " + std::to_string(number) + ": section header without ']'");
      section = l.substr(1, l.size() - 2);
      out[section];
      continue;
    }
    const auto eq = l.find('=');
    if (eq == std::string::npos) throw std::invalid_argument("INI line " + std::to_string(number) + ": no '=' in '" + l + "'");
    if (section.empty()) throw std::invalid_argument("INI line " + std::to_string(number) + ": a key before any section");
    out[section][l.substr(0, eq)] = l.substr(eq + 1);
  }
  return out;
}

}  // namespace deskfarm::nfuse
