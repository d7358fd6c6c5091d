#pragma once
// Password hashes: salted PBKDF2-HMAC-SHA256 through OpenSSL, written in passlib's format
// "$pbkdf2-sha256$<iterations>$<salt>$<checksum>" (adapted base64: '.' for '+', no padding), so hashes made
// with Python's passlib work too. Only hashes are ever stored; verification compares in constant time.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace deskfarm::directory {

inline constexpr std::int64_t kMinIterations = 1000;
inline constexpr std::int64_t kDefaultIterations = 600000;  // OWASP's 2023 figure for PBKDF2-HMAC-SHA256
inline constexpr std::size_t kSaltBytes = 16;
inline constexpr std::size_t kKeyBytes = 32;

struct PasswordHash {
  std::int64_t iterations = 0;
  std::vector<std::uint8_t> salt;
  std::vector<std::uint8_t> key;
};

/// PBKDF2-HMAC-SHA256 (RFC 8018) of `password` and `salt`: `length` bytes.
std::vector<std::uint8_t> pbkdf2_sha256(std::string_view password, const std::vector<std::uint8_t>& salt,
                                        std::int64_t iterations, std::size_t length = kKeyBytes);
/// Parses a stored hash; nullopt with `error` saying what is wrong (never echoing the text: it may be a password).
std::optional<PasswordHash> parse_hash(std::string_view text, std::string& error);
/// A new hash of `password` with a random salt (RAND_bytes).
std::string make_hash(std::string_view password, std::int64_t iterations = kDefaultIterations);
std::string format_hash(const PasswordHash& h);
/// True when `password` gives `hash`'s key (constant-time comparison).
bool verify(std::string_view password, const PasswordHash& hash);

/// passlib's adapted base64 ("ab64").
std::string ab64_encode(const std::vector<std::uint8_t>& bytes);
std::optional<std::vector<std::uint8_t>> ab64_decode(std::string_view text);

}  // namespace deskfarm::directory
