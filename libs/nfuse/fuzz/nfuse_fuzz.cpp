// Fuzzes the NFuseProtocol request parser: any input either parses or throws ProtocolError (whose error reply must
// be writable and readable again), and whatever parses must survive write_request -> parse_request unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "deskfarm/nfuse/nfuse.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace deskfarm::nfuse;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  Document d;
  try {
    d = parse_request(bytes);
  } catch (const ProtocolError& e) {
    const std::string reply = write_error(e);
    if (e.request_type().empty()) return 0;  // <ResponseError>: no reply type of its own to read back
    std::string detail;
    (void)parse_reply(reply, &detail);  // the error reply is a valid document carrying the message
    if (detail != e.what()) std::abort();
    return 0;
  }
  if (!(parse_request(write_request(d)) == d)) std::abort();
  return 0;
}
