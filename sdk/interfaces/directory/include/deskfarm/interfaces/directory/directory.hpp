#pragma once
// The directory role's contract: who the users are, their passwords and their groups. plugins/directory serves
// it from an embedded directory in the manifest (salted PBKDF2-HMAC-SHA256 hashes only); an LDAP backend serves
// the same requests later, so a controller or an XML service never knows which one answers.
#include <cstdint>
#include <string>
#include <vector>

#include <deskfarm/sdk/service.hpp>

namespace deskfarm::interfaces::directory {

using sdk::field;

/// AuthResult::code values.
inline constexpr const char* kRefused = "refused";    ///< unknown user or wrong password: the same answer for both
inline constexpr const char* kDisabled = "disabled";  ///< the account exists, the password is right, it is disabled
inline constexpr const char* kBadDomain = "bad_domain";  ///< the directory does not serve that domain

/// directory.<instance>.authenticate. The password is an sdk::Secret: it never prints (logs, status, JSON
/// encoding show a mask), so the request travels in process only; a directory across processes needs TLS first.
struct Authenticate {
  static constexpr std::string_view type_name = "deskfarm.directory.Authenticate";
  static constexpr std::uint32_t type_version = 1;
  std::string user;    ///< "alice", "CORP\\alice" or "alice@corp" (names compare without case)
  sdk::Secret password;
  std::string domain;  ///< NT domain ("CORP"); "" = the directory's own
  static constexpr auto fields() {
    return std::tuple{field("user", &Authenticate::user), field("password", &Authenticate::password),
                      field("domain", &Authenticate::domain)};
  }
};

struct AuthResult {
  static constexpr std::string_view type_name = "deskfarm.directory.AuthResult";
  static constexpr std::uint32_t type_version = 1;
  bool ok = false;
  std::string code;    ///< "" when ok, else kRefused, kDisabled or kBadDomain
  std::string reason;  ///< for a person; never says whether the user exists
  std::string user;    ///< when ok: the account's name as the directory spells it
  std::string domain;  ///< when ok: the directory's domain
  std::vector<std::string> groups;  ///< when ok: the user's groups
  static constexpr auto fields() {
    return std::tuple{field("ok", &AuthResult::ok), field("code", &AuthResult::code), field("reason", &AuthResult::reason),
                      field("user", &AuthResult::user), field("domain", &AuthResult::domain),
                      field("groups", &AuthResult::groups)};
  }
};

/// directory.<instance>.groups-of: a user's groups (for access lists: which desktops a user may use).
struct GroupsOf {
  static constexpr std::string_view type_name = "deskfarm.directory.GroupsOf";
  static constexpr std::uint32_t type_version = 1;
  std::string user;
  std::string domain;
  static constexpr auto fields() { return std::tuple{field("user", &GroupsOf::user), field("domain", &GroupsOf::domain)}; }
};

struct Groups {
  static constexpr std::string_view type_name = "deskfarm.directory.Groups";
  static constexpr std::uint32_t type_version = 1;
  bool known = false;  ///< false: no such user (groups empty)
  std::string user;    ///< as the directory spells it
  std::vector<std::string> groups;
  static constexpr auto fields() {
    return std::tuple{field("known", &Groups::known), field("user", &Groups::user), field("groups", &Groups::groups)};
  }
};

/// directory.<instance>.hash-password: a hash to put in the manifest (users[].password_hash) for a password;
/// `deskfarm request directory.<instance>.hash-password '{"password": "…"}' MANIFEST` prints it.
struct HashPassword {
  static constexpr std::string_view type_name = "deskfarm.directory.HashPassword";
  static constexpr std::uint32_t type_version = 1;
  sdk::Secret password;
  std::int64_t iterations = 0;  ///< 0 = the directory's default
  static constexpr auto fields() {
    return std::tuple{field("password", &HashPassword::password), field("iterations", &HashPassword::iterations)};
  }
};

struct PasswordHash {
  static constexpr std::string_view type_name = "deskfarm.directory.PasswordHash";
  static constexpr std::uint32_t type_version = 1;
  std::string hash;  ///< "$pbkdf2-sha256$<iterations>$<salt>$<checksum>" (passlib's format)
  static constexpr auto fields() { return std::tuple{field("hash", &PasswordHash::hash)}; }
};

/// directory.<instance>.<request>: "authenticate", "groups-of", "hash-password".
inline std::string subject(std::string_view instance, std::string_view request) {
  return "directory." + std::string(instance) + "." + std::string(request);
}

}  // namespace deskfarm::interfaces::directory
