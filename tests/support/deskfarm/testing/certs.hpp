#pragma once
// Test certificates made with the openssl command, as an operator would: a CA and a server certificate for
// 127.0.0.1 signed by it (clients check the name), for the TLS tests of NBD and of the bus over NATS.
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/process.hpp>

namespace deskfarm::testing {

/// Writes `dir`/ca-key.pem, `ca_cert` (the CA's certificate), `dir`/server-key.pem and `dir`/server-cert.pem
/// (CN and subjectAltName 127.0.0.1, two days). Empty on success, else the openssl step that failed and its stderr.
inline std::string make_test_certificates(const std::filesystem::path& dir, const std::filesystem::path& ca_cert) {
  write_text(dir / "san.cnf", std::string("subjectAltName = IP:127.0.0.1\n"));
  const std::string d = dir.string();
  const std::vector<std::vector<std::string>> steps{
      {"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
       d + "/ca-key.pem", "-out", ca_cert.string(), "-days", "2", "-subj", "/CN=deskfarm test CA"},
      {"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
       d + "/server-key.pem", "-out", d + "/server.csr", "-subj", "/CN=127.0.0.1"},
      {"openssl", "x509", "-req", "-in", d + "/server.csr", "-CA", ca_cert.string(), "-CAkey", d + "/ca-key.pem",
       "-CAcreateserial", "-out", d + "/server-cert.pem", "-days", "2", "-extfile", d + "/san.cnf"}};
  for (const auto& argv : steps) {
    const auto r = run_child(argv, std::chrono::seconds(60));
    if (r.exit_code != 0) return "openssl " + argv[1] + " failed: " + r.err;
  }
  return {};
}

}  // namespace deskfarm::testing
