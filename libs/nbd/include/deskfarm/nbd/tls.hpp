#pragma once
// TLS for the NBD server (NBD_OPT_STARTTLS), on OpenSSL: X.509 certificates, optionally verifying clients against a
// CA, and pre-shared keys in the format nbdkit, qemu and GnuTLS's psktool use ("identity:hexkey" per line).
#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>

namespace deskfarm::nbd {

/// A TLS setting is unusable; the message names the file or key and what is wrong.
class TlsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TlsOptions {
  std::filesystem::path certificate;  ///< PEM chain, server certificate first ("" = no X.509)
  std::filesystem::path key;          ///< PEM private key of `certificate`
  std::filesystem::path client_ca;    ///< PEM CA bundle: clients must present a certificate it signed ("" = none asked)
  std::filesystem::path psk_file;     ///< "identity:hexkey" lines ("" = no PSK)
  bool configured() const { return !certificate.empty() || !psk_file.empty(); }
};

/// One server's TLS settings, loaded once (certificates, keys and PSKs read and checked at construction).
class TlsContext {
 public:
  /// Throws TlsError naming the file and the problem (missing, unreadable, key not matching the certificate,
  /// malformed PSK line with its number).
  explicit TlsContext(const TlsOptions& options);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;
  /// The OpenSSL SSL_CTX* (opaque here so that users of this header need no OpenSSL headers).
  void* native() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The server side of one TLS connection over a non-blocking socket. Calls return how far they got; the caller
/// polls the socket for `wants()` and calls again, so its own deadlines stay in charge.
class TlsStream {
 public:
  enum class Io { done, want_read, want_write, closed, failed };

  TlsStream(const TlsContext& context, int fd);
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  /// Runs the server handshake.
  Io accept();
  /// Reads up to out.size() bytes into `out`; `got` says how many (done: at least one).
  Io read(std::span<std::byte> out, std::size_t& got);
  /// Writes `in` (may be partial: `put` says how much).
  Io write(std::span<const std::byte> in, std::size_t& put);
  /// Bytes decrypted and waiting (no need to poll the socket before reading them).
  std::size_t pending() const;
  /// Sends close_notify (best effort).
  void shutdown();
  /// Why the last call failed (OpenSSL's reason), for the log.
  const std::string& error() const { return error_; }
  /// After accept: "TLSv1.3 TLS_AES_256_GCM_SHA384, PSK identity alice" or "... client CN=…".
  std::string describe() const;

 private:
  Io result(int rc, const char* what);
  void* ssl_;
  std::string error_;
};

}  // namespace deskfarm::nbd
