#include "password.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <stdexcept>

namespace deskfarm::directory {

std::vector<std::uint8_t> pbkdf2_sha256(std::string_view password, const std::vector<std::uint8_t>& salt,
                                        std::int64_t iterations, std::size_t length) {
  if (iterations < 1 || iterations > 100000000) throw std::invalid_argument("PBKDF2: iterations out of range");
  std::vector<std::uint8_t> out(length);
  if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), salt.data(), static_cast<int>(salt.size()),
                        static_cast<int>(iterations), EVP_sha256(), static_cast<int>(length), out.data()) != 1)
    throw std::runtime_error("PBKDF2: OpenSSL's PKCS5_PBKDF2_HMAC failed");
  return out;
}

std::string ab64_encode(const std::vector<std::uint8_t>& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), bytes.data(), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (auto& c : out)
    if (c == '+') c = '.';
  return out;
}

std::optional<std::vector<std::uint8_t>> ab64_decode(std::string_view text) {
  std::string b64(text);
  for (auto& c : b64) {
    if (c == '.') c = '+';
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
    if (!ok) return std::nullopt;
  }
  if (b64.size() % 4 == 1) return std::nullopt;
  const std::size_t pad = (4 - b64.size() % 4) % 4;
  b64.append(pad, '=');
  std::vector<std::uint8_t> out(b64.size() / 4 * 3);
  const int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
  if (n < 0) return std::nullopt;
  out.resize(static_cast<std::size_t>(n) - pad);  // EVP_DecodeBlock counts the padding as zero bytes
  return out;
}

std::optional<PasswordHash> parse_hash(std::string_view text, std::string& error) {
  constexpr std::string_view prefix = "$pbkdf2-sha256$";
  if (!text.starts_with(prefix)) {
    error = "is not a \"$pbkdf2-sha256$ITERATIONS$SALT$CHECKSUM\" hash (a clear password never goes in the manifest)";
    return std::nullopt;
  }
  std::vector<std::string_view> parts;
  std::string_view rest = text.substr(prefix.size());
  for (;;) {
    const auto d = rest.find('$');
    parts.push_back(rest.substr(0, d));
    if (d == std::string_view::npos) break;
    rest.remove_prefix(d + 1);
  }
  if (parts.size() != 3) {
    error = "has " + std::to_string(parts.size()) + " fields after $pbkdf2-sha256$, expected 3 (iterations, salt, checksum)";
    return std::nullopt;
  }
  PasswordHash h;
  if (parts[0].empty() || parts[0].size() > 9 || parts[0].find_first_not_of("0123456789") != std::string_view::npos) {
    error = "has iterations that are not a number";
    return std::nullopt;
  }
  h.iterations = std::stoll(std::string(parts[0]));
  if (h.iterations < kMinIterations) {
    error = "has " + std::to_string(h.iterations) + " iterations, fewer than " + std::to_string(kMinIterations);
    return std::nullopt;
  }
  auto salt = ab64_decode(parts[1]);
  auto key = ab64_decode(parts[2]);
  if (!salt || salt->size() < 8) {
    error = "has a salt that is not adapted base64 of 8 bytes or more";
    return std::nullopt;
  }
  if (!key || key->size() != kKeyBytes) {
    error = "has a checksum that is not adapted base64 of 32 bytes";
    return std::nullopt;
  }
  h.salt = std::move(*salt);
  h.key = std::move(*key);
  return h;
}

std::string format_hash(const PasswordHash& h) {
  return "$pbkdf2-sha256$" + std::to_string(h.iterations) + "$" + ab64_encode(h.salt) + "$" + ab64_encode(h.key);
}

std::string make_hash(std::string_view password, std::int64_t iterations) {
  if (iterations < kMinIterations) throw std::invalid_argument("iterations: at least " + std::to_string(kMinIterations));
  PasswordHash h;
  h.iterations = iterations;
  h.salt.resize(kSaltBytes);
  if (RAND_bytes(h.salt.data(), static_cast<int>(h.salt.size())) != 1)
    throw std::runtime_error("OpenSSL's RAND_bytes failed: no salt for the password hash");
  h.key = pbkdf2_sha256(password, h.salt, iterations);
  return format_hash(h);
}

bool verify(std::string_view password, const PasswordHash& hash) {
  const auto key = pbkdf2_sha256(password, hash.salt, hash.iterations, hash.key.size());
  return CRYPTO_memcmp(key.data(), hash.key.data(), key.size()) == 0;
}

}  // namespace deskfarm::directory
