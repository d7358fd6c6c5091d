#pragma once
// One NBD connection's protocol state machine (fixed newstyle handshake + transmission), independent of sockets.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "deskfarm/nbd/export.hpp"

namespace deskfarm::nbd {

/// One NBD_OPT_LIST entry.
struct ExportEntry {
  std::string name;         ///< export name clients pass to NBD_OPT_GO
  std::string description;  ///< free text shown by nbdinfo --list
};

/// The answer to "which export is NAME for PEER": a backend, or a message for the client ("unknown device").
struct Resolution {
  std::shared_ptr<Export> backend;  ///< null means refused
  std::string error;                ///< sent to the client with NBD_REP_ERR_UNKNOWN (or _POLICY) when refused
  /// Refused because this peer may not have it (the export exists): NBD_REP_ERR_POLICY, and the server warns.
  bool denied = false;
  /// Served only over TLS: a plain connection gets NBD_REP_ERR_TLS_REQD (the backend is let go unused).
  bool needs_tls = false;
};

/// Called on NBD_OPT_GO, NBD_OPT_INFO and NBD_OPT_EXPORT_NAME with (export name, peer IP address).
using Resolver = std::function<Resolution(std::string_view name, std::string_view peer)>;
/// Called on NBD_OPT_LIST with the peer IP address. Without one, listing is off: NBD_REP_ERR_POLICY.
using Lister = std::function<std::vector<ExportEntry>(std::string_view peer)>;

/// The byte stream a session runs on: a socket in the server, a buffer in the fuzzer.
class Transport {
 public:
  virtual ~Transport() = default;
  /// Fills `out` completely; false on end of stream, error or timeout.
  virtual bool read_exact(std::span<std::byte> out) = 0;
  /// Sends every part in order; false if the peer is gone.
  virtual bool write_all(std::span<const std::span<const std::byte>> parts) = 0;
  /// Called once when option haggling ends (the server lifts its handshake timeout here).
  virtual void enter_transmission() {}
  /// NBD_OPT_STARTTLS: whether this transport can switch to TLS (the server has TLS settings).
  virtual bool tls_available() const { return false; }
  /// Runs the TLS handshake after the STARTTLS ACK; from then on every byte is encrypted. False (and `why`) if it
  /// failed: the connection is unusable.
  virtual bool start_tls(std::string& why) {
    why = "TLS is not configured";
    return false;
  }
  /// True once start_tls() succeeded.
  virtual bool tls_active() const { return false; }
  /// True when no request arrived within a short grace (the transport's choice; it returns as soon as one does):
  /// the session then gives back its payload memory. A client with one request in flight is never idle between
  /// two of them, so its buffer pages stay mapped.
  virtual bool idle() { return false; }
};

/// Limits a session enforces.
struct SessionLimits {
  std::uint32_t max_payload = 32U << 20;  ///< largest READ/WRITE; advertised as the maximum block size
  std::uint32_t max_options = 256;        ///< options per handshake before the client is cut off
  /// Every option but STARTTLS and ABORT is refused with NBD_REP_ERR_TLS_REQD until TLS is up.
  bool require_tls = false;
};

/// Live counters, shared by all sessions of a server.
struct SessionCounters {
  std::atomic<std::uint64_t> requests{0};       ///< transmission requests handled
  std::atomic<std::uint64_t> bytes_read{0};     ///< payload bytes sent for READ
  std::atomic<std::uint64_t> bytes_written{0};  ///< payload bytes received for WRITE
};

/// How a session ended.
enum class SessionEnd {
  kDisconnected,    ///< NBD_CMD_DISC
  kAborted,         ///< NBD_OPT_ABORT, or refused export on NBD_OPT_EXPORT_NAME
  kPeerClosed,      ///< stream ended without a goodbye (or the server shut it down)
  kHandshakeError,  ///< malformed option haggling
  kProtocolError,   ///< malformed transmission request
};

/// Outcome of Session::run().
struct SessionResult {
  SessionEnd end = SessionEnd::kPeerClosed;
  std::string reason;  ///< what happened, with the request number or option
  std::string export_name;
};

/// READ and WRITE payloads move through a connection in pieces of at most this size, so a connection holds at most
/// this much payload memory whatever the request length (up to max_payload) and however slow its peer.
inline constexpr std::uint32_t kIoChunk = 1U << 20;

/// One connection's payload memory: kIoChunk of address space mapped at the first payload, its pages given back to
/// the kernel (beyond the first kKeep bytes) whenever the connection goes idle, so thousands of idle devices cost
/// almost nothing, and a WRITE header alone costs nothing until its payload arrives.
class PayloadBuffer {
 public:
  static constexpr std::size_t kKeep = 4096;
  PayloadBuffer() = default;
  ~PayloadBuffer();
  PayloadBuffer(const PayloadBuffer&) = delete;
  PayloadBuffer& operator=(const PayloadBuffer&) = delete;
  /// `size` (at most kIoChunk) bytes, contents undefined; throws std::bad_alloc if the mapping fails.
  std::span<std::byte> get(std::uint32_t size);
  /// Gives back the pages beyond kKeep that requests have touched.
  void trim();

 private:
  std::byte* base_ = nullptr;
  std::size_t touched_ = 0;
};

/// Runs the protocol for one client over a Transport.
class Session {
 public:
  Session(Transport& transport, const Resolver& resolver, const Lister& lister, std::string peer,
          SessionLimits limits = {}, SessionCounters* counters = nullptr);
  /// Handshake, then requests until the client leaves or breaks the protocol; never throws for peer behaviour.
  SessionResult run();

 private:
  bool handshake(SessionResult& result);
  void transmission(SessionResult& result);
  bool send_option_reply(std::uint32_t option, std::uint32_t type, std::span<const std::byte> data);
  bool send_option_error(std::uint32_t option, std::uint32_t type, std::string_view message);
  bool handle_info_or_go(std::uint32_t option, std::span<const std::byte> data, SessionResult& result, bool& go);
  bool send_simple_reply(std::uint64_t cookie, std::uint32_t error, std::span<const std::byte> payload = {});
  Resolution resolve(std::string_view name);
  std::uint16_t transmission_flags() const;
  /// The error for a WRITE/WRITE_ZEROES before it touches the export: bad flags or length, read-only, past the end.
  std::uint32_t check_modify(std::uint16_t flags, std::uint64_t offset, std::uint32_t length, std::uint64_t size) const;

  Transport& transport_;
  const Resolver& resolver_;
  const Lister& lister_;
  std::string peer_;
  SessionLimits limits_;
  SessionCounters* counters_;
  bool no_zeroes_ = false;
  std::shared_ptr<Export> export_;
  std::vector<std::byte> buffer_;  // option data (at most 64 KiB)
  PayloadBuffer payload_;  // READ/WRITE payload chunks
};

/// Maps an Export's errno to the NBD error value on the wire (unknown values become EINVAL, as the spec asks).
std::uint32_t to_wire_error(int err);

}  // namespace deskfarm::nbd
