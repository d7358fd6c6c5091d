// The directory plugin in a real deployment and its password hashes: PBKDF2-HMAC-SHA256 against RFC test vectors,
// passlib's format, authentication with every spelling of a user, the same answer for an unknown user and a
// wrong password (counted apart in the metrics only), groups, hash-password, and manifests refused naming the key.
#include <catch2/catch.hpp>

#include <deskfarm/interfaces/directory/directory.hpp>
#include <deskfarm/testing/conformance_catch.hpp>
#include <deskfarm/testing/harness.hpp>

#include "backend.hpp"
#include "password.hpp"

namespace dt = deskfarm::testing;
namespace api = deskfarm::interfaces::directory;
using namespace deskfarm;

namespace {

std::string hex(const std::vector<std::uint8_t>& b) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (auto c : b) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::vector<std::uint8_t> bytes(std::string_view s) { return {s.begin(), s.end()}; }

// Few iterations keep the tests quick; the manifest's hash carries its own count.
const std::string alice_hash = directory::make_hash("wonderland", 1000);
const std::string bob_hash = directory::make_hash("builder", 1000);

std::string manifest() {
  return "[instances.dir]\nplugin = \"directory\"\ndomain = \"CORP\"\nusers = [\n"
         "  { name = \"Alice\", password_hash = \"" + alice_hash + "\", groups = [\"Sales\", \"Remote\"] },\n"
         "  { name = \"bob\", password_hash = \"" + bob_hash + "\", disabled = true },\n]\n";
}

std::unique_ptr<dt::Harness> deployment(const std::string& toml) {
  dt::HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR};
  auto h = std::make_unique<dt::Harness>(toml, o);
  h->start();
  return h;
}

api::AuthResult authenticate(dt::Harness& h, const std::string& user, const std::string& password, const std::string& domain = "") {
  auto r = h.request<api::Authenticate, api::AuthResult>(api::subject("dir", "authenticate"),
                                                          api::Authenticate{user, sdk::Secret(password), domain});
  if (!r) FAIL("authenticate " << user << ": " << r.error().code << ": " << r.error().message);
  return r.value();
}

std::string manifest_error(const std::string& toml) {
  try {
    deployment(toml);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("PBKDF2-HMAC-SHA256 gives the published test vectors", "[directory][password]") {
  // RFC 7914 section 11 (PBKDF2-HMAC-SHA256) and the widely used c = 1 / 4096 vectors.
  CHECK(hex(directory::pbkdf2_sha256("password", bytes("salt"), 1)) ==
        "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b");
  CHECK(hex(directory::pbkdf2_sha256("password", bytes("salt"), 4096)) ==
        "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a");
  CHECK(hex(directory::pbkdf2_sha256("passwd", bytes("salt"), 1, 64)) ==
        "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783");
}

TEST_CASE("password hashes: passlib's format, random salts, verification, errors that never echo the text", "[directory][password]") {
  // A hash made by passlib.hash.pbkdf2_sha256 (rounds 1000, password "password"), as an operator may bring one.
  std::string error;
  const auto passlib = directory::parse_hash(
      "$pbkdf2-sha256$1000$ZGVza2Zhcm0tc2FsdA$" + directory::ab64_encode(directory::pbkdf2_sha256("password", bytes("deskfarm-salt"), 1000)),
      error);
  REQUIRE(passlib);
  CHECK(passlib->salt == bytes("deskfarm-salt"));
  CHECK(directory::verify("password", *passlib));
  CHECK_FALSE(directory::verify("Password", *passlib));

  const auto a = directory::make_hash("secret", 1000);
  const auto b = directory::make_hash("secret", 1000);
  CHECK(a != b);  // salted
  CHECK(a.starts_with("$pbkdf2-sha256$1000$"));
  auto parsed = directory::parse_hash(a, error);
  REQUIRE(parsed);
  CHECK(parsed->salt.size() == directory::kSaltBytes);
  CHECK(directory::format_hash(*parsed) == a);
  CHECK(directory::verify("secret", *parsed));
  CHECK_FALSE(directory::verify("secreT", *parsed));

  CHECK_FALSE(directory::parse_hash("hunter2", error));
  CHECK(error.find("clear password") != std::string::npos);
  CHECK(error.find("hunter2") == std::string::npos);
  CHECK_FALSE(directory::parse_hash("$pbkdf2-sha256$10$c2FsdHNhbHQ$" + std::string(43, 'A'), error));
  CHECK(error.find("fewer than 1000") != std::string::npos);
  CHECK_FALSE(directory::parse_hash("$pbkdf2-sha256$1000$c2FsdHNhbHQ$AAAA", error));
  CHECK(error.find("checksum") != std::string::npos);
  CHECK_FALSE(directory::parse_hash("$pbkdf2-sha256$1000$c2FsdHNhbHQ", error));
  CHECK(error.find("expected 3") != std::string::npos);
}

TEST_CASE("authenticate: every spelling of a user, groups in the answer", "[directory]") {
  auto h = deployment(manifest());
  for (auto [user, domain] : {std::pair{"alice", ""}, std::pair{"ALICE", "corp"}, std::pair{"CORP\\alice", ""},
                              std::pair{"alice@corp", ""}}) {
    INFO(user << " / " << domain);
    auto r = authenticate(*h, user, "wonderland", domain);
    CHECK(r.ok);
    CHECK(r.code.empty());
    CHECK(r.user == "Alice");
    CHECK(r.domain == "CORP");
    CHECK(r.groups == std::vector<std::string>{"Sales", "Remote"});
  }
  auto other = authenticate(*h, "OTHER\\alice", "wonderland");
  CHECK_FALSE(other.ok);
  CHECK(other.code == api::kBadDomain);
}

TEST_CASE("an unknown user and a wrong password get the same answer, counted apart only in the metrics", "[directory]") {
  auto h = deployment(manifest());
  auto wrong = authenticate(*h, "alice", "wonderlanD");
  auto unknown = authenticate(*h, "mallory", "wonderland");
  CHECK_FALSE(wrong.ok);
  CHECK(wrong.code == api::kRefused);
  CHECK(sdk::to_value(wrong) == sdk::to_value(unknown));  // field by field the same
  auto disabled = authenticate(*h, "bob", "builder");
  CHECK(disabled.code == api::kDisabled);
  CHECK(authenticate(*h, "bob", "nope").code == api::kRefused);  // a disabled account with a wrong password: refused

  const auto status = h->instance_status("dir");
  CHECK(status.find("refused")->as_integer() == 3);
  CHECK(status.find("disabled_refused")->as_integer() == 1);
  CHECK(status.find("users")->as_integer() == 2);
  CHECK(status.find("groups")->as_integer() == 2);
  const auto metrics = h->metrics_text();
  CHECK(metrics.find("deskfarm_directory_refused_total{instance=\"dir\",cause=\"unknown_user\"} 1") != std::string::npos);
  CHECK(metrics.find("deskfarm_directory_refused_total{instance=\"dir\",cause=\"bad_password\"} 2") != std::string::npos);
  CHECK(metrics.find("deskfarm_directory_authentications_total{instance=\"dir\",result=\"refused\"} 3") != std::string::npos);
  // Neither a password nor a hash shows in the status or the log.
  const auto whole = h->status().to_json();
  CHECK(whole.find("wonderland") == std::string::npos);
  CHECK(whole.find("pbkdf2") == std::string::npos);
  for (const auto& line : h->logs()) {
    CHECK(line.find("wonderland") == std::string::npos);
    CHECK(line.find("pbkdf2") == std::string::npos);
  }
}

TEST_CASE("groups-of and hash-password", "[directory]") {
  auto h = deployment(manifest());
  auto g = h->request<api::GroupsOf, api::Groups>(api::subject("dir", "groups-of"), api::GroupsOf{"CORP\\ALICE", ""});
  REQUIRE(g);
  CHECK(g->known);
  CHECK(g->user == "Alice");
  CHECK(g->groups == std::vector<std::string>{"Sales", "Remote"});
  auto none = h->request<api::GroupsOf, api::Groups>(api::subject("dir", "groups-of"), api::GroupsOf{"mallory", ""});
  REQUIRE(none);
  CHECK_FALSE(none->known);
  CHECK(none->groups.empty());

  // What an operator runs: deskfarm request directory.dir.hash-password '{"password": "…", "iterations": 2000}'.
  auto answer = h->json_request(api::subject("dir", "hash-password"), R"({"password": "s3cret pass", "iterations": 2000})");
  REQUIRE(answer.ok);
  const auto start = answer.body.find("$pbkdf2-sha256$2000$");
  REQUIRE(start != std::string::npos);
  const std::string hash = answer.body.substr(start, answer.body.find('"', start) - start);
  auto h2 = deployment("[instances.dir]\nplugin = \"directory\"\nusers = [{ name = \"carol\", password_hash = \"" + hash + "\" }]\n");
  CHECK(authenticate(*h2, "carol", "s3cret pass").ok);
  CHECK_FALSE(authenticate(*h2, "carol", "s3cret pas").ok);
  auto empty = h->json_request(api::subject("dir", "hash-password"), R"({"password": ""})");
  CHECK_FALSE(empty.ok);
}

TEST_CASE("the directory refuses clear passwords and duplicate users, naming the key and the user", "[directory]") {
  auto clear = manifest_error("[instances.dir]\nplugin = \"directory\"\nusers = [{ name = \"eve\", password_hash = \"hunter2\" }]\n");
  CHECK(clear.find("users") != std::string::npos);
  CHECK(clear.find("'eve'") != std::string::npos);
  CHECK(clear.find("clear password") != std::string::npos);
  CHECK(clear.find("hunter2") == std::string::npos);
  auto twice = manifest_error("[instances.dir]\nplugin = \"directory\"\nusers = [{ name = \"eve\", password_hash = \"" + alice_hash +
                              "\" }, { name = \"EVE\", password_hash = \"" + bob_hash + "\" }]\n");
  CHECK(twice.find("listed twice") != std::string::npos);
  auto domain = manifest_error("[instances.dir]\nplugin = \"directory\"\nusers = [{ name = \"CORP\\\\eve\", password_hash = \"" +
                               alice_hash + "\" }]\n");
  CHECK(domain.find("bare account name") != std::string::npos);
}

namespace {
dt::conformance::Subject conformance_subject() {
  dt::conformance::Subject s;
  s.plugin = "directory";
  s.instance = "dir";
  s.manifest_toml = manifest();
  s.options.plugin_path = {PLUGIN_DIR};
  return s;
}
}  // namespace

DESKFARM_CONFORMANCE_SUITE("directory", conformance_subject)
