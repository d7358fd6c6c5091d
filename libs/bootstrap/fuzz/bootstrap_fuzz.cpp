// Fuzzes the bootstrap parser twice per input: as given (framing, magic, checksum) and re-sealed with a valid
// checksum, so the field parser is reached too. Anything that parses must survive encode -> parse unchanged. The
// same bytes as a TFTP name: a boot script name that parses must name the same request once written again.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "deskfarm/bootstrap/boot_script.hpp"
#include "deskfarm/bootstrap/bootstrap.hpp"

namespace {
using namespace deskfarm::bootstrap;

void round_trip(std::string_view bytes) {
  Bootstrap b;
  try {
    b = parse(bytes);
  } catch (const BootstrapError&) {
    return;
  }
  const std::string again = encode(b);  // must not throw: parse() only returns valid values
  if (!(parse(again) == b)) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  round_trip(bytes);
  // Re-seal: keep everything before a "sha256 = " line (or all of it) and append a correct checksum.
  std::string_view body = bytes;
  if (auto p = body.rfind("sha256 = "); p != std::string_view::npos) body = body.substr(0, p);
  if (body.size() <= max_size) round_trip(seal(body));
  if (const auto r = parse_boot_script_name(bytes)) {
    const auto again = parse_boot_script_name(boot_script_name(r->version, r->mac));
    if (!again || again->version != r->version || again->mac != r->mac) std::abort();
  }
  return 0;
}
