#include "deskfarm/nbd/tls.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cctype>
#include <fstream>
#include <map>
#include <vector>

namespace deskfarm::nbd {
namespace {

std::string openssl_reason() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no reason given" : out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// "identity:hexkey" per line (psktool's keys.psk); blank lines and '#' comments skipped.
std::map<std::string, std::vector<unsigned char>> read_psk_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw TlsError("nbd: cannot read the PSK file " + path.string());
  std::map<std::string, std::vector<unsigned char>> keys;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const auto where = path.string() + " line " + std::to_string(number);
    const auto colon = line.find(':');
    if (colon == std::string::npos || colon == 0)
      throw TlsError("nbd: PSK file " + where + " is not \"identity:hexkey\"");
    const std::string identity = line.substr(0, colon), hex = line.substr(colon + 1);
    if (identity.size() > 128) throw TlsError("nbd: PSK file " + where + ": identity longer than 128 bytes");
    if (hex.size() < 32 || hex.size() % 2 != 0 || hex.size() > 2 * PSK_MAX_PSK_LEN)
      throw TlsError("nbd: PSK file " + where + ": the key must be 16.." + std::to_string(PSK_MAX_PSK_LEN) +
                     " bytes written as an even number of hex digits");
    std::vector<unsigned char> key(hex.size() / 2);
    for (std::size_t i = 0; i < key.size(); ++i) {
      const int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
      if (hi < 0 || lo < 0) throw TlsError("nbd: PSK file " + where + ": the key has a character that is not hex");
      key[i] = static_cast<unsigned char>(hi * 16 + lo);
    }
    if (!keys.emplace(identity, std::move(key)).second)
      throw TlsError("nbd: PSK file " + where + ": identity '" + identity + "' appears twice");
  }
  if (keys.empty()) throw TlsError("nbd: PSK file " + path.string() + " holds no key");
  return keys;
}

int psk_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

unsigned int psk_server(SSL* ssl, const char* identity, unsigned char* psk, unsigned int max_len) {
  const auto* keys = static_cast<const std::map<std::string, std::vector<unsigned char>>*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), psk_index()));
  if (!keys || !identity) return 0;
  const auto it = keys->find(identity);
  if (it == keys->end() || it->second.size() > max_len) return 0;  // unknown identity: the handshake fails
  std::copy(it->second.begin(), it->second.end(), psk);
  return static_cast<unsigned int>(it->second.size());
}

}  // namespace

struct TlsContext::Impl {
  SSL_CTX* ctx = nullptr;
  std::map<std::string, std::vector<unsigned char>> psk;
  ~Impl() {
    if (ctx) SSL_CTX_free(ctx);
  }
};

TlsContext::TlsContext(const TlsOptions& o) : impl_(std::make_unique<Impl>()) {
  if (!o.configured()) throw TlsError("nbd: TLS needs a certificate and key, or a PSK file");
  if (o.certificate.empty() != o.key.empty())
    throw TlsError("nbd: TLS needs both a certificate and its private key (one of them is missing)");
  impl_->ctx = SSL_CTX_new(TLS_server_method());
  if (!impl_->ctx) throw TlsError("nbd: cannot create a TLS context: " + openssl_reason());
  SSL_CTX* ctx = impl_->ctx;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);  // the NBD spec: TLS 1.2 or later
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
  if (!o.certificate.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, o.certificate.c_str()) != 1)
      throw TlsError("nbd: cannot load the TLS certificate " + o.certificate.string() + ": " + openssl_reason());
    if (SSL_CTX_use_PrivateKey_file(ctx, o.key.c_str(), SSL_FILETYPE_PEM) != 1)
      throw TlsError("nbd: cannot load the TLS key " + o.key.string() + ": " + openssl_reason());
    if (SSL_CTX_check_private_key(ctx) != 1)
      throw TlsError("nbd: the TLS key " + o.key.string() + " does not match the certificate " + o.certificate.string());
  }
  if (!o.client_ca.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, o.client_ca.c_str(), nullptr) != 1)
      throw TlsError("nbd: cannot load the client CA " + o.client_ca.string() + ": " + openssl_reason());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  if (!o.psk_file.empty()) {
    impl_->psk = read_psk_file(o.psk_file);
    SSL_CTX_set_ex_data(ctx, psk_index(), &impl_->psk);
    // Also used for TLS 1.3 (OpenSSL derives a SHA-256 PSK session from it), which GnuTLS clients offer first.
    SSL_CTX_set_psk_server_callback(ctx, psk_server);
    if (o.certificate.empty()) {
      // PSK only: TLS 1.2 needs PSK cipher suites (TLS 1.3 suites work with PSKs as they are).
      SSL_CTX_set_cipher_list(ctx, "PSK:DHEPSK:ECDHEPSK:!aNULL:!eNULL");
    }
  }
}

TlsContext::~TlsContext() = default;

void* TlsContext::native() const { return impl_->ctx; }

TlsStream::TlsStream(const TlsContext& context, int fd) : ssl_(SSL_new(static_cast<SSL_CTX*>(context.native()))) {
  if (!ssl_) throw TlsError("nbd: cannot start TLS on a connection: " + openssl_reason());
  SSL_set_fd(static_cast<SSL*>(ssl_), fd);
}

TlsStream::~TlsStream() { SSL_free(static_cast<SSL*>(ssl_)); }

TlsStream::Io TlsStream::result(int rc, const char* what) {
  if (rc > 0) return Io::done;
  switch (SSL_get_error(static_cast<SSL*>(ssl_), rc)) {
    case SSL_ERROR_WANT_READ: return Io::want_read;
    case SSL_ERROR_WANT_WRITE: return Io::want_write;
    case SSL_ERROR_ZERO_RETURN: return Io::closed;
    case SSL_ERROR_SYSCALL:
      error_ = std::string(what) + ": the peer went away";
      ERR_clear_error();
      return Io::closed;
    default:
      error_ = std::string(what) + ": " + openssl_reason();
      return Io::failed;
  }
}

TlsStream::Io TlsStream::accept() { return result(SSL_accept(static_cast<SSL*>(ssl_)), "TLS handshake"); }

TlsStream::Io TlsStream::read(std::span<std::byte> out, std::size_t& got) {
  got = 0;
  const int rc = SSL_read_ex(static_cast<SSL*>(ssl_), out.data(), out.size(), &got);
  return rc == 1 ? Io::done : result(rc, "TLS read");
}

TlsStream::Io TlsStream::write(std::span<const std::byte> in, std::size_t& put) {
  put = 0;
  const int rc = SSL_write_ex(static_cast<SSL*>(ssl_), in.data(), in.size(), &put);
  return rc == 1 ? Io::done : result(rc, "TLS write");
}

std::size_t TlsStream::pending() const { return static_cast<std::size_t>(SSL_pending(static_cast<SSL*>(ssl_))); }

void TlsStream::shutdown() {
  SSL_shutdown(static_cast<SSL*>(ssl_));
  ERR_clear_error();
}

std::string TlsStream::describe() const {
  auto* ssl = static_cast<SSL*>(ssl_);
  std::string out = std::string(SSL_get_version(ssl)) + " " + SSL_get_cipher_name(ssl);
  if (const char* id = SSL_get_psk_identity(ssl)) out += ", PSK identity " + std::string(id);
  if (X509* peer = SSL_get1_peer_certificate(ssl)) {
    char name[256];
    X509_NAME_oneline(X509_get_subject_name(peer), name, sizeof name);
    out += ", client " + std::string(name);
    X509_free(peer);
  }
  return out;
}

}  // namespace deskfarm::nbd
