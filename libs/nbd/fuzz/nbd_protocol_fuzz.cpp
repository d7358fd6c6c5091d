// Drives the NBD session state machine (option haggling, then transmission) from a byte buffer.
// Input = the client's byte stream; the server's replies are discarded (their framing is checked by the tests).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "deskfarm/nbd/session.hpp"
#include "deskfarm/nbd/write_cache.hpp"

namespace {

using namespace deskfarm::nbd;

class BufferTransport final : public Transport {
 public:
  BufferTransport(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool read_exact(std::span<std::byte> out) override {
    if (out.size() > size_ - pos_) return false;
    if (!out.empty()) std::memcpy(out.data(), data_ + pos_, out.size());
    pos_ += out.size();
    return true;
  }
  bool write_all(std::span<const std::span<const std::byte>> parts) override {
    for (const auto& p : parts) written_ += p.size();
    return true;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  std::size_t written_ = 0;
};

std::shared_ptr<Export> shared_base() {
  static auto base = [] {
    std::vector<std::byte> bytes(256 * 1024);
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(i * 131 + 7);
    return std::make_shared<MemoryExport>(bytes, true);
  }();
  return base;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  BufferTransport transport(data, size);
  // "ro": the shared base; "" or "rw": a fresh RAM-only write cache (small, so ENOSPC is reachable).
  Resolver resolver = [](std::string_view name, std::string_view) -> Resolution {
    if (name == "ro") return {shared_base(), {}};
    if (name.empty() || name == "rw") {
      WriteCacheOptions o;
      o.ram_limit = 64 * 1024;
      return {std::make_shared<WriteCache>(shared_base(), o), {}};
    }
    if (name == "throw") throw std::runtime_error("resolver exploded");
    return {nullptr, "unknown device"};
  };
  Lister lister = [](std::string_view) {
    return std::vector<ExportEntry>{{"ro", "shared base"}, {"rw", "write cache"}};
  };
  SessionLimits limits;
  limits.max_payload = 128 * 1024;  // keeps each input's allocations small under ASan
  limits.max_options = 64;
  Session session(transport, resolver, lister, "192.0.2.1", limits);
  session.run();
  return 0;
}
