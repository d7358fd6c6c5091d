#pragma once
// Big-endian field access for NBD messages.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace deskfarm::nbd::detail {

inline std::uint64_t get_be(const std::byte* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<std::uint8_t>(p[i]);
  return v;
}
inline void put_be(std::byte* p, std::uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i, v >>= 8) p[i] = static_cast<std::byte>(v & 0xff);
}
/// Appends a big-endian field to an outgoing message.
inline void append_be(std::vector<std::byte>& out, std::uint64_t v, int bytes) {
  out.resize(out.size() + static_cast<std::size_t>(bytes));
  put_be(out.data() + out.size() - bytes, v, bytes);
}
inline void append_bytes(std::vector<std::byte>& out, std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  out.insert(out.end(), p, p + s.size());
}
inline std::string hex32(std::uint64_t v) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s = "0x";
  for (int i = 28; i >= 0; i -= 4) s += kHex[(v >> i) & 15];
  return s;
}

}  // namespace deskfarm::nbd::detail
