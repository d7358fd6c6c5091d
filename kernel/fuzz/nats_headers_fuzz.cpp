// Fuzzes the NATS type header of messages from other processes: any block through both readers, which must agree
// wherever the exact one answers, and the value through split_type(); and the input's first line as a type name
// through the writer and back.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "nats_headers.hpp"

using namespace deskfarm::kernel;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view block(reinterpret_cast<const char*>(data), size);
  const auto value = header_value(block, nats_type_header);
  if (const auto own = own_type_header(block)) {
    if (!value || *value != *own) std::abort();
  }
  if (value) {
    if (const auto typed = split_type(*value)) {
      // The parts lie within the value, and the name is everything before the version's '@'.
      if (typed->type.empty() || typed->type.size() >= value->size() || (*value)[typed->type.size()] != '@') std::abort();
    }
  }
  // A type name deskfarm would send (no line break, no space at either end) comes back as written.
  const std::string_view name = block.substr(0, block.find('\n'));
  const bool trimmed = !name.empty() && name.front() != ' ' && name.back() != ' ' && name.front() != '\t' &&
                       name.back() != '\t' && name.find_first_of("\v\f") == std::string_view::npos;
  if (header_safe(name) && trimmed) {
    std::string encoded;
    encode_headers(encoded, name, static_cast<std::uint32_t>(size));
    const auto back = own_type_header(encoded);
    const auto typed = back ? split_type(*back) : std::nullopt;
    if (!typed || typed->type != name || typed->version != size) std::abort();
  }
  return 0;
}
