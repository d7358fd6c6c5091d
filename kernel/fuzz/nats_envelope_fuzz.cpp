// Fuzzes the envelope of messages from other processes: any payload through open_envelope(), whose parts must lie
// within it as the format says; and the input's first line as a type name through the writer and back.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "nats_envelope.hpp"

using namespace deskfarm::kernel;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view payload(reinterpret_cast<const char*>(data), size);
  if (const auto e = open_envelope(payload)) {
    // type '@' version '\n' body, each part a piece of the payload in that order.
    const std::size_t body_at = static_cast<std::size_t>(e->body.data() - payload.data());
    if (e->type.data() != payload.data() || e->type.empty() || e->type.size() > max_type_name ||
        payload[e->type.size()] != '@' || body_at > size || body_at + e->body.size() != size || payload[body_at - 1] != '\n')
      std::abort();
  }
  // A type name deskfarm would send comes back as written, with its version and the body after it.
  const std::string_view name = payload.substr(0, payload.find('\n'));
  if (envelope_safe(name)) {
    std::string encoded;
    encode_envelope(encoded, name, static_cast<std::uint32_t>(size));
    encoded.append(payload);
    const auto back = open_envelope(encoded);
    if (!back || back->type != name || back->version != size || back->body != payload) std::abort();
  }
  return 0;
}
