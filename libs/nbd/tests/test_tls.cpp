// NBD over TLS (NBD_OPT_STARTTLS) with the real clients — libnbd's nbdinfo/nbdcopy and qemu-img, both on GnuTLS —
// against the server's OpenSSL: X.509 certificates and pre-shared keys, required or offered, and bad settings.
#include <catch2/catch.hpp>

#include <thread>

#include "deskfarm/nbd/client.hpp"
#include "deskfarm/nbd/server.hpp"
#include "deskfarm/nbd/tls.hpp"
#include "support.hpp"
#include <deskfarm/testing/certs.hpp>
#include <deskfarm/testing/peers.hpp>

using namespace deskfarm::nbd;
using namespace deskfarm::nbd::test;

namespace {

constexpr std::size_t kSize = 1 << 20;
constexpr const char* kPsk = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A CA, a server certificate for 127.0.0.1 signed by it (libnbd checks the name), and a PSK file — made with the
/// openssl command as an operator would. `dir/client/ca-cert.pem` is what libnbd's tls-certificates wants.
struct Credentials {
  TempDir dir;
  bool made = false;
  Credentials() {
    if (!require_program("openssl")) return;
    std::filesystem::create_directories(dir / "client");
    const auto error = deskfarm::testing::make_test_certificates(dir.path(), dir / "client" / "ca-cert.pem");
    INFO(error);
    REQUIRE(error.empty());
    std::filesystem::create_directories(dir / "psk");
    write_text(dir / "psk" / "keys.psk", "alice:" + std::string(kPsk) + "\n");
    made = true;
  }
  TlsOptions x509() const { return {dir / "server-cert.pem", dir / "server-key.pem", {}, {}}; }
  TlsOptions psk() const { return {{}, {}, {}, dir / "psk" / "keys.psk"}; }
};

/// A server with one export "disk" (a pattern) and one "secret" that is served only over TLS.
struct TlsServer {
  std::shared_ptr<MemoryExport> disk = std::make_shared<MemoryExport>(kSize, false);
  std::unique_ptr<Server> server;
  TlsServer(const TlsOptions& tls, bool require) {
    REQUIRE(disk->write(0, pattern(kSize, 5)) == 0);
    ServerOptions o;
    o.tls = std::make_shared<TlsContext>(tls);
    o.require_tls = require;
    o.handshake_timeout = std::chrono::milliseconds(1500);
    server = std::make_unique<Server>(o, [this](std::string_view name, std::string_view) -> Resolution {
      if (name == "disk") return {disk, {}};
      if (name == "secret") return {disk, {}, false, true};
      return {nullptr, "unknown export"};
    });
    server->start();
  }
  std::string url(const std::string& user, const std::string& name, const std::string& query) const {
    return "nbds://" + user + "127.0.0.1:" + std::to_string(server->bound_port()) + "/" + name + "?" + query;
  }
};

}  // namespace

TEST_CASE("TLS with an X.509 certificate: nbdcopy reads the export and nbdinfo trusts the server through its CA") {
  Credentials c;
  if (!c.made || !require_program("nbdcopy") || !require_program("nbdinfo")) return;
  TlsServer s(c.x509(), true);
  const std::string certs = "tls-certificates=" + (c.dir / "client").string();
  const auto out = c.dir / "copy.img";
  const auto r = run_child({"nbdcopy", s.url("", "disk", certs), out.string()});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(sha256_bytes(read_file(out)) == sha256_bytes(pattern(kSize, 5)));
  // A client that trusts another CA refuses this server: the certificate is really checked.
  std::filesystem::create_directories(c.dir / "other");
  const auto other = run_child({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                "-nodes", "-keyout", (c.dir / "other" / "k.pem").string(), "-out",
                                (c.dir / "other" / "ca-cert.pem").string(), "-days", "2", "-subj", "/CN=other"});
  REQUIRE(other.exit_code == 0);
  const auto refused = run_child({"nbdinfo", "--size", s.url("", "disk", "tls-certificates=" + (c.dir / "other").string())});
  CHECK(refused.exit_code != 0);
  // And the server goes on serving after that failed handshake.
  const auto size = run_child({"nbdinfo", "--size", s.url("", "disk", certs)});
  CHECK(size.out == std::to_string(kSize) + "\n");
}

TEST_CASE("TLS with a pre-shared key: libnbd and qemu-img read with the right key, a wrong key is refused") {
  Credentials c;
  if (!c.made || !require_program("nbdinfo") || !require_program("qemu-img")) return;
  TlsServer s(c.psk(), true);
  const std::string keys = "tls-psk-file=" + (c.dir / "psk" / "keys.psk").string();
  const auto size = run_child({"nbdinfo", "--size", s.url("alice@", "disk", keys)});
  INFO(size.err);
  CHECK(size.out == std::to_string(kSize) + "\n");
  const auto qemu = run_child({"qemu-img", "info", "--output=json", "--object",
                               "tls-creds-psk,id=tls0,endpoint=client,dir=" + (c.dir / "psk").string() + ",username=alice",
                               "--image-opts", "driver=nbd,host=127.0.0.1,port=" + std::to_string(s.server->bound_port()) +
                                                   ",export=disk,tls-creds=tls0"});
  INFO(qemu.err);
  CHECK_THAT(qemu.out, Catch::Contains("\"virtual-size\": " + std::to_string(kSize)));
  std::filesystem::create_directories(c.dir / "wrong");
  write_text(c.dir / "wrong" / "keys.psk", std::string("alice:") + std::string(64, 'f') + "\n");
  const auto wrong = run_child({"nbdinfo", "--size", s.url("alice@", "disk", "tls-psk-file=" + (c.dir / "wrong" / "keys.psk").string())});
  CHECK(wrong.exit_code != 0);
  const auto stranger = run_child({"nbdinfo", "--size", s.url("mallory@", "disk", keys)});
  CHECK(stranger.exit_code != 0);
}

TEST_CASE("with TLS required a plain client is refused with NBD_REP_ERR_TLS_REQD and NBD_OPT_EXPORT_NAME is hung up") {
  Credentials c;
  if (!c.made) return;
  TlsServer s(c.psk(), true);
  try {
    Client plain("127.0.0.1", s.server->bound_port(), "disk");
    FAIL("a plain client got the export");
  } catch (const ClientError& e) {
    CHECK_THAT(e.what(), Catch::Contains("0x80000005") && Catch::Contains("requires TLS"));
  }
  RawSocket raw(s.server->bound_port());
  greet(raw);
  send_option(raw, proto::kOptExportName, Msg{}.str("disk").bytes);
  CHECK(raw.closed_by_peer());
}

TEST_CASE("with TLS offered an export marked TLS-only is refused in plain text and served over TLS") {
  Credentials c;
  if (!c.made || !require_program("nbdinfo")) return;
  TlsServer s(c.psk(), false);
  Client plain("127.0.0.1", s.server->bound_port(), "disk");  // not TLS-only: plain is fine
  CHECK(plain.size() == kSize);
  try {
    Client secret("127.0.0.1", s.server->bound_port(), "secret");
    FAIL("a TLS-only export was served in plain text");
  } catch (const ClientError& e) {
    CHECK_THAT(e.what(), Catch::Contains("0x80000005") && Catch::Contains("only over TLS"));
  }
  const auto size = run_child({"nbdinfo", "--size", s.url("alice@", "secret",
                                                          "tls-psk-file=" + (c.dir / "psk" / "keys.psk").string())});
  INFO(size.err);
  CHECK(size.out == std::to_string(kSize) + "\n");
}

TEST_CASE("a client that asks for STARTTLS and never shakes hands is cut at the handshake deadline") {
  Credentials c;
  if (!c.made) return;
  TlsServer s(c.psk(), true);
  RawSocket raw(s.server->bound_port());
  greet(raw);
  send_option(raw, proto::kOptStartTls);
  const auto ack = read_reply(raw);
  CHECK(ack.type == proto::kRepAck);
  const auto start = std::chrono::steady_clock::now();
  CHECK(raw.closed_by_peer());  // no ClientHello: the 1.5 s handshake deadline ends it
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(4));
  CHECK(eventually([&] { return s.server->stats().active == 0; }, std::chrono::seconds(5)));
}

TEST_CASE("bad TLS settings are refused naming the file and the problem") {
  TempDir dir;
  CHECK_THROWS_WITH(TlsContext(TlsOptions{}), Catch::Contains("needs a certificate and key, or a PSK file"));
  CHECK_THROWS_WITH(TlsContext(TlsOptions{dir / "missing.pem", dir / "key.pem", {}, {}}),
                    Catch::Contains("missing.pem"));
  CHECK_THROWS_WITH(TlsContext(TlsOptions{dir / "cert.pem", {}, {}, {}}), Catch::Contains("both a certificate and its"));
  write_text(dir / "keys.psk", std::string("alice:0123\n"));
  CHECK_THROWS_WITH(TlsContext(TlsOptions{{}, {}, {}, dir / "keys.psk"}),
                    Catch::Contains("keys.psk line 1") && Catch::Contains("16.."));
  write_text(dir / "keys.psk", std::string("# comment\n\nalice ") + kPsk + "\n");
  CHECK_THROWS_WITH(TlsContext(TlsOptions{{}, {}, {}, dir / "keys.psk"}),
                    Catch::Contains("line 3") && Catch::Contains("identity:hexkey"));
  write_text(dir / "keys.psk", std::string("alice:") + kPsk + "\nalice:" + kPsk + "\n");
  CHECK_THROWS_WITH(TlsContext(TlsOptions{{}, {}, {}, dir / "keys.psk"}), Catch::Contains("appears twice"));
}
