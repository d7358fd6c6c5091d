#pragma once
// Where the directory's accounts come from. The plugin answers the directory contract through a Backend; the
// embedded one reads users and groups from the manifest, and an LDAP backend implements the same two calls later.
// Calls block (a hash with many iterations, a network bind): the plugin runs them on the blocking pool, several at
// once, so a backend is immutable or locks itself.
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <deskfarm/sdk/record.hpp>

#include "password.hpp"

namespace deskfarm::directory {

struct Account {
  std::string name;  ///< as the directory spells it
  std::vector<std::string> groups;
  bool disabled = false;
};

enum class AuthStatus { ok, unknown_user, bad_password, disabled };

struct AuthOutcome {
  AuthStatus status = AuthStatus::unknown_user;
  Account account;  ///< with ok and disabled
};

class Backend {
 public:
  virtual ~Backend() = default;
  /// `user` is a bare account name (no domain); names compare without case.
  virtual AuthOutcome authenticate(const std::string& user, const std::string& password) const = 0;
  virtual std::optional<Account> find(const std::string& user) const = 0;
  virtual std::size_t user_count() const = 0;
  virtual std::size_t group_count() const = 0;
};

struct UserEntry {
  std::string name;
  sdk::Secret password_hash;  ///< a hash, still never shown: describe, status and errors mask it
  std::vector<std::string> groups;
  bool disabled = false;
};

/// Users and groups from the manifest. Throws std::invalid_argument naming the user and what is wrong (a name
/// listed twice, a hash that does not parse).
class EmbeddedBackend final : public Backend {
 public:
  explicit EmbeddedBackend(const std::vector<UserEntry>& users);
  AuthOutcome authenticate(const std::string& user, const std::string& password) const override;
  std::optional<Account> find(const std::string& user) const override;
  std::size_t user_count() const override { return users_.size(); }
  std::size_t group_count() const override { return groups_; }

 private:
  struct Entry {
    Account account;
    PasswordHash hash;
  };
  std::map<std::string, Entry> users_;  // by lower-case name
  std::size_t groups_ = 0;
  PasswordHash decoy_;  // an unknown user costs one hash too, so timing does not tell who exists
};

std::string lower(std::string s);

}  // namespace deskfarm::directory
