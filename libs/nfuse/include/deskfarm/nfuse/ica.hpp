#pragma once
// The ICA launch file (application/x-ica) the XML service's caller hands the client: INI text with [WFClient],
// [ApplicationServers] listing the entry, and the entry's own section with the address, the logon ticket and the
// gateway settings.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace deskfarm::nfuse {

inline constexpr std::string_view kIcaContentType = "application/x-ica";

struct IcaFile {
  std::string name;     ///< the entry: [ApplicationServers] "name=" and section [name] (must match exactly)
  std::string title;    ///< shown by the client; "" = name
  std::string address;  ///< "10.0.0.5:1494"; through a gateway ";<version>;<authority>;<STA ticket>"
  std::string initial_program = "#Desktop";
  std::string logon_ticket;
  std::string logon_ticket_type = "CTXS1";
  bool ssl_enable = false;
  std::string ssl_proxy_host;  ///< "gateway:443" with ssl_enable
  std::string cgp_address = "*:2598";  ///< session reliability; "" = none
  std::string client_name;
  std::int64_t desired_color = 8;  ///< 1, 2, 4 or 8
  bool operator==(const IcaFile&) const = default;
};

/// The file's text (CRLF lines). Throws std::invalid_argument naming the field when a value would break the INI
/// syntax (a line break, a name with '[' ']' '='), or a required field is empty (name, address).
std::string write_ica(const IcaFile& f);

/// INI text → section → key → value (for clients and tests); throws std::invalid_argument naming the line.
using IniSections = std::map<std::string, std::map<std::string, std::string>>;
IniSections parse_ini(std::string_view text);

}  // namespace deskfarm::nfuse
