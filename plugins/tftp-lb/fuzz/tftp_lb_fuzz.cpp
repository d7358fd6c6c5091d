// Fuzzes what the balancer parses from its manifest and decides per packet: "IPv4:port" endpoints (anything
// that parses prints back to the same address), udp-ecv hex send strings (two digits per byte, nothing else
// accepted), the picker (never an ineligible backend, always one when any is eligible) and the monitor's
// verdicts (DOWN only after enough failures, UP only after enough successes in a row).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "balancing.hpp"

namespace {
using namespace deskfarm::tftp_lb;

void endpoint(std::string_view text) {
  const auto a = parse_ipv4_endpoint(text);
  if (!a) return;
  const auto again = parse_ipv4_endpoint(to_string(*a));
  if (!again || again->sin_addr.s_addr != a->sin_addr.s_addr || again->sin_port != a->sin_port) std::abort();
}

void hex(std::string_view text) {
  if (text.empty()) return;  // no hex at all means the default RRQ, not zero bytes
  std::string error;
  const auto bytes = ecv_payload("", text, "ARDBP32.BIN", error);
  std::size_t digits = 0;
  for (char c : text)
    if (c != ' ' && c != ':' && c != '-') ++digits;
  if (bytes && (digits % 2 != 0 || bytes->size() != digits / 2)) std::abort();
  if (!bytes && error.empty()) std::abort();
}

void pick(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return;
  const auto method = static_cast<Method>(data[0] % 3);
  Picker picker(method);
  std::vector<Candidate> candidates;
  for (std::size_t i = 1; i + 1 < size && candidates.size() < 64; i += 2)
    candidates.push_back({static_cast<std::uint32_t>(data[i] % 100 + 1), (data[i + 1] & 1) != 0, data[i + 1] / 2u,
                          static_cast<std::uint64_t>(i) * 7919});
  bool any = false;
  for (const auto& c : candidates) any = any || c.eligible;
  for (std::uint32_t client = 0; client < 8; ++client) {
    const auto chosen = picker.pick(candidates, client * 2654435761u);
    if (chosen.has_value() != any) std::abort();
    if (chosen && (*chosen >= candidates.size() || !candidates[*chosen].eligible)) std::abort();
  }
}

void verdicts(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return;
  HealthRules rules{data[0] % 32 + 1, data[1] % 33, data[2] % 32 + 1};
  HealthTracker t(rules);
  int failures = 0, successes = 0;
  for (std::size_t i = 3; i < size; ++i) {
    const bool ok = (data[i] & 1) != 0;
    failures = ok ? 0 : failures + 1;
    successes = ok ? successes + 1 : 0;
    const bool was = t.up();
    const auto change = t.record(ok);
    if (change && *change == was) std::abort();         // a change changes the state
    if (change && *change && !ok) std::abort();         // a failure never brings a backend UP
    if (change && !*change && ok) std::abort();         // a success never takes it DOWN
    if (change && !*change && failures < 1) std::abort();
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  endpoint(text);
  hex(text);
  pick(data, size);
  verdicts(data, size);
  return 0;
}
