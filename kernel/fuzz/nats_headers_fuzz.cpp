// Fuzzes the NATS type headers of messages from other processes: any block through both readers, which must agree
// wherever the exact one answers; and the input's first line as a type name through the writer and back.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "nats_headers.hpp"

using namespace deskfarm::kernel;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view block(reinterpret_cast<const char*>(data), size);
  const auto type = header_value(block, nats_type_header);
  const auto version = header_value(block, nats_version_header);
  if (const auto own = own_headers(block)) {
    if (!type || !version || *type != own->first || *version != own->second) std::abort();
  }
  // A type name deskfarm would send (no line break, no space at either end) comes back as written.
  const std::string_view name = block.substr(0, block.find('\n'));
  const bool trimmed = !name.empty() && name.front() != ' ' && name.back() != ' ' && name.front() != '\t' &&
                       name.back() != '\t' && name.find_first_of("\v\f") == std::string_view::npos;
  if (header_safe(name) && trimmed) {
    std::string encoded;
    encode_headers(encoded, name, static_cast<std::uint32_t>(size));
    const auto back = own_headers(encoded);
    if (!back || back->first != name || back->second != std::to_string(size)) std::abort();
  }
  return 0;
}
