#pragma once
// The license role's contract: concurrent licences per farm, one per user however many sessions the user has
// (checked out at the user's first connection, back at the last logoff), and what a controller needs to keep
// brokering while the licence server does not answer (grace.hpp: 30 days from the first failure).
#include <cstdint>
#include <string>
#include <vector>

#include <deskfarm/sdk/service.hpp>

namespace deskfarm::interfaces::license {

using sdk::field;

/// Refusal codes of CheckoutReply::code (the text in `reason` names the farm, the counts and what to do).
inline constexpr const char* kNoLicenses = "no_licenses";      ///< every licence of the farm is held by other users
inline constexpr const char* kUnknownFarm = "unknown_farm";    ///< the licence server holds no licences for the farm
inline constexpr const char* kSessionConflict = "session_conflict";  ///< the session id is checked out to another user
inline constexpr const char* kGraceExpired = "grace_expired";  ///< client side: no answer for longer than the grace
inline constexpr const char* kServerError = "server_error";    ///< client side: the server answered with an error

/// license.<instance>.checkout: a session of `user` in `farm` starts (a connection is brokered).
struct Checkout {
  static constexpr std::string_view type_name = "deskfarm.license.Checkout";
  static constexpr std::uint32_t type_version = 1;
  std::string user;        ///< "DOMAIN\\name" or "name": compared exactly
  std::string session_id;  ///< unique in the farm; checking out the same session twice is one checkout
  std::string farm;
  static constexpr auto fields() {
    return std::tuple{field("user", &Checkout::user), field("session_id", &Checkout::session_id), field("farm", &Checkout::farm)};
  }
};

/// The answer to a Checkout: granted, or refused with a code and a reason. A refusal is an answer, not an error:
/// sdk::Error replies mean the request itself failed (timeout, bad_request, the data store failed).
struct CheckoutReply {
  static constexpr std::string_view type_name = "deskfarm.license.CheckoutReply";
  static constexpr std::uint32_t type_version = 1;
  bool granted = false;
  std::string code;    ///< "" when granted, else one of the k… refusal codes
  std::string reason;  ///< one line for a person: why, and what to do
  bool new_license = false;  ///< this checkout took a licence (the user's first session); false: the user already held one
  std::int64_t in_use = 0;   ///< licences of the farm in use after this checkout
  std::int64_t total = 0;    ///< licences of the farm
  bool grace = false;        ///< client side: granted without the server, inside the grace period
  std::int64_t grace_hours_left = 0;  ///< with `grace`: hours until sessions are refused
  static constexpr auto fields() {
    return std::tuple{field("granted", &CheckoutReply::granted), field("code", &CheckoutReply::code),
                      field("reason", &CheckoutReply::reason), field("new_license", &CheckoutReply::new_license),
                      field("in_use", &CheckoutReply::in_use), field("total", &CheckoutReply::total),
                      field("grace", &CheckoutReply::grace), field("grace_hours_left", &CheckoutReply::grace_hours_left)};
  }
};

/// license.<instance>.checkin: a session ended (logoff). The user's licence goes back with the last session.
struct Checkin {
  static constexpr std::string_view type_name = "deskfarm.license.Checkin";
  static constexpr std::uint32_t type_version = 1;
  std::string user;
  std::string session_id;
  std::string farm;
  static constexpr auto fields() {
    return std::tuple{field("user", &Checkin::user), field("session_id", &Checkin::session_id), field("farm", &Checkin::farm)};
  }
};

struct CheckinReply {
  static constexpr std::string_view type_name = "deskfarm.license.CheckinReply";
  static constexpr std::uint32_t type_version = 1;
  bool known = false;        ///< the session was checked out (a second checkin of one session is not an error)
  bool released = false;     ///< the user's licence went back (this was the user's last session)
  std::int64_t sessions_left = 0;  ///< the user's sessions still holding the licence
  std::int64_t in_use = 0;
  static constexpr auto fields() {
    return std::tuple{field("known", &CheckinReply::known), field("released", &CheckinReply::released),
                      field("sessions_left", &CheckinReply::sessions_left), field("in_use", &CheckinReply::in_use)};
  }
};

/// One farm's licences.
struct FarmLicenses {
  static constexpr std::string_view type_name = "deskfarm.license.FarmLicenses";
  static constexpr std::uint32_t type_version = 1;
  std::string farm;
  std::int64_t total = 0;
  std::int64_t in_use = 0;    ///< users holding a licence
  std::int64_t sessions = 0;  ///< sessions of those users
  std::int64_t refused = 0;   ///< checkouts refused since the server started (no_licenses)
  static constexpr auto fields() {
    return std::tuple{field("farm", &FarmLicenses::farm), field("total", &FarmLicenses::total),
                      field("in_use", &FarmLicenses::in_use), field("sessions", &FarmLicenses::sessions),
                      field("refused", &FarmLicenses::refused)};
  }
};

/// license.<instance>.status (sdk::Empty → LicenseStatus) from the server; the grace fields are filled by a
/// controller's LicenseClient (grace.hpp), which alone can tell that the server does not answer (the server's own
/// answer always says reachable, no grace).
struct LicenseStatus {
  static constexpr std::string_view type_name = "deskfarm.license.LicenseStatus";
  static constexpr std::uint32_t type_version = 1;
  std::vector<FarmLicenses> farms;
  bool reachable = true;            ///< the licence server answered the last request
  bool grace_active = false;        ///< sessions are allowed without the server (LicensingGracePeriodActive)
  std::string grace_since;          ///< ISO 8601 UTC of the first unanswered request, "" without grace
  std::int64_t grace_hours_left = 0;  ///< LicensingGraceHoursLeft; 0 once the grace has ended
  std::int64_t grace_days_left = 0;   ///< whole days of grace_hours_left
  bool grace_expired = false;       ///< the grace has ended: new sessions are refused (grace_expired)
  std::int64_t grace_sessions = 0;  ///< sessions granted in grace, checked out for real once the server answers
  static constexpr auto fields() {
    return std::tuple{field("farms", &LicenseStatus::farms), field("reachable", &LicenseStatus::reachable),
                      field("grace_active", &LicenseStatus::grace_active), field("grace_since", &LicenseStatus::grace_since),
                      field("grace_hours_left", &LicenseStatus::grace_hours_left),
                      field("grace_days_left", &LicenseStatus::grace_days_left),
                      field("grace_expired", &LicenseStatus::grace_expired),
                      field("grace_sessions", &LicenseStatus::grace_sessions)};
  }
};

/// license.<instance>.<request>: "checkout", "checkin", "status".
inline std::string subject(std::string_view instance, std::string_view request) {
  return "license." + std::string(instance) + "." + std::string(request);
}

}  // namespace deskfarm::interfaces::license
