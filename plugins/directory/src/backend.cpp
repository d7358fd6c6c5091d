#include "backend.hpp"

#include <algorithm>
#include <cctype>
#include <set>
#include <stdexcept>

namespace deskfarm::directory {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

EmbeddedBackend::EmbeddedBackend(const std::vector<UserEntry>& users) {
  std::set<std::string> groups;
  std::int64_t most = kMinIterations;
  for (std::size_t i = 0; i < users.size(); ++i) {
    const auto& u = users[i];
    const std::string where = "users[" + std::to_string(i) + "] '" + u.name + "'";
    if (u.name.empty() || u.name.find_first_of("\\@/") != std::string::npos)
      throw std::invalid_argument("users[" + std::to_string(i) + "]: name '" + u.name +
                                  "' must be a bare account name (no domain, no '\\', '@' or '/')");
    std::string error;
    auto hash = parse_hash(u.password_hash.reveal(), error);
    if (!hash)
      throw std::invalid_argument(where + ": password_hash " + error +
                                  "; make one with: deskfarm request directory.<instance>.hash-password '{\"password\": \"…\"}'");
    most = std::max(most, hash->iterations);
    if (!users_.emplace(lower(u.name), Entry{Account{u.name, u.groups, u.disabled}, std::move(*hash)}).second)
      throw std::invalid_argument(where + " is listed twice (names compare without case)");
    groups.insert(u.groups.begin(), u.groups.end());
  }
  groups_ = groups.size();
  decoy_.iterations = most;
  decoy_.salt.assign(kSaltBytes, 0x5a);
  decoy_.key.assign(kKeyBytes, 0);
}

AuthOutcome EmbeddedBackend::authenticate(const std::string& user, const std::string& password) const {
  const auto it = users_.find(lower(user));
  if (it == users_.end()) {
    (void)verify(password, decoy_);
    return {AuthStatus::unknown_user, {}};
  }
  if (!verify(password, it->second.hash)) return {AuthStatus::bad_password, {}};
  return {it->second.account.disabled ? AuthStatus::disabled : AuthStatus::ok, it->second.account};
}

std::optional<Account> EmbeddedBackend::find(const std::string& user) const {
  const auto it = users_.find(lower(user));
  if (it == users_.end()) return std::nullopt;
  return it->second.account;
}

}  // namespace deskfarm::directory
