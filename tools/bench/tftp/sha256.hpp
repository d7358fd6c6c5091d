#pragma once
// Minimal streaming SHA-256 (FIPS 180-4) for the bench: no dependency just to check downloads.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace deskfarm::bench {

/// Incremental SHA-256.
class Sha256 {
 public:
  Sha256();
  /// Adds bytes to the digest.
  void update(const void* data, std::size_t size);
  /// Finishes and returns the lower-case hex digest; the object must not be updated afterwards.
  std::string hex();

 private:
  void block(const std::uint8_t* chunk);
  std::array<std::uint32_t, 8> state_;
  std::array<std::uint8_t, 64> buffer_{};
  std::size_t buffered_ = 0;
  std::uint64_t length_ = 0;
};

}  // namespace deskfarm::bench
