// directory: the directory role. Users and groups from the manifest (passwords only as salted PBKDF2-HMAC-SHA256
// hashes), answered through the Backend interface that an LDAP backend implements later. Hashing is slow on
// purpose, so every authentication runs on the blocking pool; an unknown user and a wrong password get the same
// answer (and cost the same time), and are counted apart only in the metrics.
#include <map>
#include <memory>

#include <deskfarm/interfaces/directory/directory.hpp>
#include <deskfarm/sdk/plugin.hpp>

#include "backend.hpp"

namespace {

using namespace deskfarm;
using namespace deskfarm::sdk;
namespace api = deskfarm::interfaces::directory;
using directory::lower;

constexpr const char* provides[] = {"directory", nullptr};

struct DirectoryConfig {
  std::string domain;
  std::vector<directory::UserEntry> users;
  std::int64_t hash_iterations = directory::kDefaultIterations;
};

constexpr auto user_schema = schema<directory::UserEntry>(
    option("name", &directory::UserEntry::name, nullptr, "account name without domain (compared without case)"),
    option("password_hash", &directory::UserEntry::password_hash, nullptr,
           "\"$pbkdf2-sha256$ITERATIONS$SALT$CHECKSUM\" (hash-password request, or passlib); never a clear password"),
    option("groups", &directory::UserEntry::groups, "[]", "groups the user belongs to"),
    option("disabled", &directory::UserEntry::disabled, "false", "the account exists but may not log on"));

constexpr auto directory_schema = schema<DirectoryConfig>(
    option("domain", &DirectoryConfig::domain, "\"DESKFARM\"", "NT domain the directory serves (\"CORP\" in CORP\\alice)"),
    option("users", &DirectoryConfig::users, "[]", "the accounts", user_schema),
    option("hash_iterations", &DirectoryConfig::hash_iterations, "600000", "PBKDF2 iterations of hashes made by the hash-password request")
        .range(directory::kMinIterations, 10000000));

std::shared_ptr<const directory::Backend> make_backend(const DirectoryConfig& c) {
  try {
    return std::make_shared<directory::EmbeddedBackend>(c.users);
  } catch (const std::invalid_argument& e) {
    throw ConfigError("users", e.what());
  }
}

/// "CORP\alice", "alice@corp" or "alice" with a domain beside it → the bare name, or nullopt for another domain.
std::optional<std::string> account_name(const std::string& user, std::string domain, const std::string& served) {
  std::string name = user;
  if (const auto slash = user.find('\\'); slash != std::string::npos) {
    domain = user.substr(0, slash);
    name = user.substr(slash + 1);
  } else if (const auto at = user.rfind('@'); at != std::string::npos) {
    domain = user.substr(at + 1);
    name = user.substr(0, at);
  }
  if (!domain.empty() && lower(domain) != lower(served)) return std::nullopt;
  return name;
}

class Directory final : public Plugin {
 public:
  explicit Directory(Context& ctx)
      : ctx_(ctx), config_(directory_schema.bind(ctx.config())), backend_(make_backend(config_)) {
    auto& m = ctx_.metrics();
    const std::string answered = "Authentications answered, per result";
    const std::string refused = "Refused authentications by cause (the answer is the same for both causes)";
    for (const char* r : {"ok", api::kRefused, api::kDisabled, api::kBadDomain})
      results_[r] = &m.counter("deskfarm_directory_authentications_total", answered, {{"result", r}});
    unknown_user_ = &m.counter("deskfarm_directory_refused_total", refused, {{"cause", "unknown_user"}});
    bad_password_ = &m.counter("deskfarm_directory_refused_total", refused, {{"cause", "bad_password"}});
  }

  static void validate(const Config& config) { (void)make_backend(directory_schema.bind(config)); }

  void start() override {
    subs_.push_back(serve_async<api::Authenticate, api::AuthResult>(
        ctx_.bus(), api::subject(ctx_.name(), "authenticate"),
        [this](const api::Authenticate& req, Responder<api::AuthResult> r) { authenticate(req, r); }));
    subs_.push_back(serve<api::GroupsOf, api::Groups>(ctx_.bus(), api::subject(ctx_.name(), "groups-of"),
                                                      [this](const api::GroupsOf& req) { return groups_of(req); }));
    subs_.push_back(serve_async<api::HashPassword, api::PasswordHash>(
        ctx_.bus(), api::subject(ctx_.name(), "hash-password"),
        [this](const api::HashPassword& req, Responder<api::PasswordHash> r) { hash_password(req, r); }));
    ctx_.log().info("directory " + config_.domain + ": " + std::to_string(backend_->user_count()) + " users, " +
                    std::to_string(backend_->group_count()) + " groups");
  }

  void stop() override { subs_.clear(); }

  void status(Value& out) const override {
    out.set("domain", config_.domain);
    out.set("backend", "embedded");
    out.set("users", static_cast<std::int64_t>(backend_->user_count()));
    out.set("groups", static_cast<std::int64_t>(backend_->group_count()));
    out.set("authenticated", ok_);
    out.set("refused", refused_);
    out.set("disabled_refused", disabled_);
    out.set("in_flight", in_flight_);
  }

 private:
  void count(const std::string& result, Counter* cause = nullptr) {
    results_.at(result)->inc();
    if (cause) cause->inc();
  }

  void authenticate(const api::Authenticate& req, Responder<api::AuthResult> r) {
    const auto name = account_name(req.user, req.domain, config_.domain);
    if (!name) {
      count(api::kBadDomain);
      ++refused_;
      api::AuthResult res;
      res.code = api::kBadDomain;
      res.reason = "this directory serves domain " + config_.domain + ", not the one in '" + req.user +
                   (req.domain.empty() ? "" : "' / '" + req.domain) + "'";
      return r.ok(res);
    }
    ++in_flight_;
    ctx_.run_blocking(
        [backend = backend_, name = *name, password = req.password](std::stop_token) {
          return std::make_shared<directory::AuthOutcome>(backend->authenticate(name, password.reveal()));
        },
        [this, r, user = req.user](Reply<std::shared_ptr<directory::AuthOutcome>> reply) mutable {
          --in_flight_;
          if (!reply) return r.fail("failed", "directory " + config_.domain + ": authentication failed: " + reply.error().message);
          const auto& o = **reply;
          api::AuthResult res;
          switch (o.status) {
            case directory::AuthStatus::ok:
              ++ok_;
              count("ok");
              res.ok = true;
              res.user = o.account.name;
              res.domain = config_.domain;
              res.groups = o.account.groups;
              break;
            case directory::AuthStatus::disabled:
              ++disabled_;
              count(api::kDisabled);
              res.code = api::kDisabled;
              res.reason = "the account " + config_.domain + "\\" + o.account.name + " is disabled; ask an administrator";
              break;
            case directory::AuthStatus::unknown_user:
            case directory::AuthStatus::bad_password:
              ++refused_;
              count(api::kRefused, o.status == directory::AuthStatus::unknown_user ? unknown_user_ : bad_password_);
              res.code = api::kRefused;
              res.reason = "unknown user name or bad password";
              ctx_.log().info("refused a logon as '" + user + "'");
              break;
          }
          r.ok(res);
        });
  }

  api::Groups groups_of(const api::GroupsOf& req) const {
    api::Groups g;
    const auto name = account_name(req.user, req.domain, config_.domain);
    if (!name) return g;
    if (auto a = backend_->find(*name)) {
      g.known = true;
      g.user = a->name;
      g.groups = a->groups;
    }
    return g;
  }

  void hash_password(const api::HashPassword& req, Responder<api::PasswordHash> r) {
    if (req.password.empty()) return r.fail("bad_request", "hash-password: the password is empty");
    const std::int64_t iterations = req.iterations == 0 ? config_.hash_iterations : req.iterations;
    if (iterations < directory::kMinIterations || iterations > 10000000)
      return r.fail("bad_request", "hash-password: iterations " + std::to_string(iterations) + " is outside " +
                                       std::to_string(directory::kMinIterations) + "..10000000");
    ctx_.run_blocking([password = req.password, iterations](std::stop_token) {
                        return api::PasswordHash{directory::make_hash(password.reveal(), iterations)};
                      },
                      [r](Reply<api::PasswordHash> reply) mutable {
                        if (reply) r.ok(*reply);
                        else r.fail(reply.error().code, reply.error().message);
                      });
  }

  Context& ctx_;
  DirectoryConfig config_;
  std::shared_ptr<const directory::Backend> backend_;
  std::vector<Subscription> subs_;
  std::int64_t ok_ = 0, refused_ = 0, disabled_ = 0, in_flight_ = 0;
  std::map<std::string, Counter*> results_;
  Counter* unknown_user_ = nullptr;
  Counter* bad_password_ = nullptr;
};

}  // namespace

DESKFARM_PLUGIN(Directory, "directory", "1.0.0",
                "Directory of users and groups (embedded in the manifest; PBKDF2 password hashes): authenticate, groups",
                provides, nullptr, directory_schema)
