#pragma once
// The farm key's two uses, shared by the controller (plugins/ddc) and the agent (plugins/vda): signing a
// registration (HMAC-SHA256, hex) and comparing signatures in constant time. Citrix uses Kerberos between VDA
// and DDC; a farm key with a nonce and the time gives the same two checks (who signed, and not a replay)
// without a directory.
#include <cstdint>
#include <random>
#include <string>
#include <string_view>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

namespace deskfarm::farm_key {

inline std::string hex(const unsigned char* data, std::size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (std::size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[data[i] >> 4];
    out[2 * i + 1] = digits[data[i] & 15];
  }
  return out;
}

/// Hex HMAC-SHA256 of `text` under `key`; "" for an empty key (a farm without authentication).
inline std::string sign(std::string_view key, std::string_view text) {
  if (key.empty()) return {};
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(text.data()),
       text.size(), mac, &len);
  return hex(mac, len);
}

/// True when `signature` is sign(key, text); constant time in the signature's length.
inline bool verify(std::string_view key, std::string_view text, std::string_view signature) {
  const std::string expected = sign(key, text);
  if (expected.size() != signature.size()) return false;
  return CRYPTO_memcmp(expected.data(), signature.data(), expected.size()) == 0;
}

/// 128 random bits as hex (nonces, tokens).
template <class Rng>
std::string random_hex(Rng& rng) {
  unsigned char bytes[16];
  for (std::size_t i = 0; i < sizeof bytes; i += 8) {
    const std::uint64_t v = rng();
    for (std::size_t j = 0; j < 8; ++j) bytes[i + j] = static_cast<unsigned char>(v >> (8 * j));
  }
  return hex(bytes, sizeof bytes);
}

}  // namespace deskfarm::farm_key
