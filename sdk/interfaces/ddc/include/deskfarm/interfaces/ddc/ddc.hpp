#pragma once
// The contract between desktop agents (vda) and Desktop Delivery Controllers (ddc), between controllers, and
// between a controller and the roles it calls: the licence server (license.<instance>.checkout) and the XML
// service (which brokers through ddc.<instance>.admin.broker). Agents find controllers ListOfDDCs-style,
// register (signed with the farm key, a nonce and the time), heartbeat every 30 s; a controller drops an agent
// silent for 60 s. The controller a desktop is registered with owns it: only it hands the desktop to a user,
// so two controllers never give one desktop to two users; the others forward to it (ddc.<owner>.prepare).
#include <cstdint>
#include <string>
#include <vector>

#include <deskfarm/sdk/service.hpp>

namespace deskfarm::interfaces::ddc {

using sdk::field;

// ---- words ----
/// Session states an agent reports (the Windows session states that matter to brokering).
inline constexpr const char* kNoSession = "none";
inline constexpr const char* kActive = "active";
inline constexpr const char* kDisconnected = "disconnected";
/// SessionEvent kinds.
inline constexpr const char* kLogon = "logon";
inline constexpr const char* kDisconnect = "disconnect";
inline constexpr const char* kReconnect = "reconnect";
inline constexpr const char* kLogoff = "logoff";
/// Registration states of a desktop as the farm sees it.
inline constexpr const char* kRegistered = "registered";
inline constexpr const char* kUnregistered = "unregistered";
inline constexpr const char* kQuarantined = "quarantined";
/// Refusal reasons (Registered::reason, BrokerDecision::reason, Ack::reason).
inline constexpr const char* kBadSignature = "bad_signature";     ///< the registration's HMAC does not verify
inline constexpr const char* kReplayed = "replayed";              ///< nonce seen before, or time outside the window
inline constexpr const char* kNotProvisioned = "not_provisioned"; ///< no desktop group of the farm holds it
inline constexpr const char* kUnknownAgent = "unknown_agent";     ///< heartbeat or event without a registration here
inline constexpr const char* kNoDesktop = "no_desktop";           ///< nothing idle and nothing left to start
inline constexpr const char* kMaintenance = "maintenance";        ///< the only candidates are in maintenance mode
inline constexpr const char* kAgentRefused = "agent_refused";     ///< the agent refused the session (untrusted controller)
inline constexpr const char* kNotEntitled = "not_entitled";       ///< the user is in no desktop group
inline constexpr const char* kNoLicense = "no_license";           ///< the licence server refused a licence
inline constexpr const char* kStarting = "starting";              ///< a desktop is being started: ask again

/// The port a desktop's agent takes ICA connections on (Citrix's; session reliability's 2598 relays to it).
inline constexpr int kIcaPort = 1494;

// ---- agent → controller ----
/// ddc.<controller>.register → Registered. `signature` = hex HMAC-SHA256 over signing_text() with the farm key
/// (empty when the farm has no key). The current session rides along, so a controller that takes over after
/// another one died knows who is logged on. `address` is where clients reach the desktop's agent ("10.1.0.7:1494":
/// its VM's lease from the hypervisor and kIcaPort); an agent older than the field, or a VM on a network without a
/// subnet, sends "" and the controller hands out the desktop's name instead.
struct Register {
  static constexpr std::string_view type_name = "deskfarm.ddc.Register";
  static constexpr std::uint32_t type_version = 1;
  std::string desktop;     ///< the VM's name ("desktop-1")
  std::string vm;          ///< the hypervisor's VM id
  std::string mac;
  std::string hypervisor;  ///< the adapter instance that runs the VM
  std::string agent;       ///< the vda instance, serving vda.<agent>.prepare
  std::string nonce;       ///< random, hex, never reused
  std::int64_t time_ms = 0;  ///< deployment time of signing (ms since the epoch)
  std::string signature;
  std::string session_state = kNoSession;
  std::string user;
  std::string endpoint;
  std::string agent_version = "1";
  std::string address;  ///< added after version 1 went out: a sender without it is read as ""
  static constexpr auto fields() {
    return std::tuple{field("desktop", &Register::desktop),     field("vm", &Register::vm),
                      field("mac", &Register::mac),             field("hypervisor", &Register::hypervisor),
                      field("agent", &Register::agent),         field("nonce", &Register::nonce),
                      field("time_ms", &Register::time_ms),     field("signature", &Register::signature),
                      field("session_state", &Register::session_state), field("user", &Register::user),
                      field("endpoint", &Register::endpoint),   field("agent_version", &Register::agent_version),
                      field("address", &Register::address)};
  }
  /// What the signature covers, in this order; the address when there is one (so nobody redirects a desktop's
  /// clients by rewriting it, and an agent without the field signs what it always did).
  std::string signing_text(std::string_view controller) const {
    return "register|" + desktop + "|" + vm + "|" + mac + "|" + std::string(controller) + "|" + nonce + "|" +
           std::to_string(time_ms) + (address.empty() ? "" : "|" + address);
  }
};

/// The reply to Register. Accepted: `token` authenticates later heartbeats and events, and `proof` (HMAC over
/// "controller|<controller>|<nonce>") lets the agent check it talks to a controller of the farm. Refused:
/// `reason` is one of the refusal words above and `detail` says what to do.
struct Registered {
  static constexpr std::string_view type_name = "deskfarm.ddc.Registered";
  static constexpr std::uint32_t type_version = 1;
  bool accepted = false;
  std::string controller;
  std::string token;
  std::string proof;
  std::string reason;
  std::string detail;
  std::int64_t heartbeat_s = 30;  ///< the period the controller expects
  static constexpr auto fields() {
    return std::tuple{field("accepted", &Registered::accepted), field("controller", &Registered::controller),
                      field("token", &Registered::token),       field("proof", &Registered::proof),
                      field("reason", &Registered::reason),     field("detail", &Registered::detail),
                      field("heartbeat_s", &Registered::heartbeat_s)};
  }
  static std::string proof_text(std::string_view controller, std::string_view nonce) {
    return "controller|" + std::string(controller) + "|" + std::string(nonce);
  }
};

/// ddc.<controller>.heartbeat → Ack; ddc.<controller>.deregister (Deregister) → Ack.
struct Heartbeat {
  static constexpr std::string_view type_name = "deskfarm.ddc.Heartbeat";
  static constexpr std::uint32_t type_version = 1;
  std::string desktop;
  std::string token;
  std::string session_state = kNoSession;
  static constexpr auto fields() {
    return std::tuple{field("desktop", &Heartbeat::desktop), field("token", &Heartbeat::token),
                      field("session_state", &Heartbeat::session_state)};
  }
};
struct Deregister {
  static constexpr std::string_view type_name = "deskfarm.ddc.Deregister";
  static constexpr std::uint32_t type_version = 1;
  std::string desktop;
  std::string token;
  std::string reason;  ///< "shutdown", "untrusted controller", …
  static constexpr auto fields() {
    return std::tuple{field("desktop", &Deregister::desktop), field("token", &Deregister::token),
                      field("reason", &Deregister::reason)};
  }
};
/// ddc.<controller>.session → Ack: a session changed on the desktop.
struct SessionEvent {
  static constexpr std::string_view type_name = "deskfarm.ddc.SessionEvent";
  static constexpr std::uint32_t type_version = 1;
  std::string desktop;
  std::string token;
  std::string kind;  ///< logon, disconnect, reconnect, logoff
  std::string user;
  std::string endpoint;  ///< the client device the session is (or was last) connected from
  static constexpr auto fields() {
    return std::tuple{field("desktop", &SessionEvent::desktop), field("token", &SessionEvent::token),
                      field("kind", &SessionEvent::kind),       field("user", &SessionEvent::user),
                      field("endpoint", &SessionEvent::endpoint)};
  }
};
/// A yes or no with the reason (one of the refusal words) and a sentence.
struct Ack {
  static constexpr std::string_view type_name = "deskfarm.ddc.Ack";
  static constexpr std::uint32_t type_version = 1;
  bool ok = false;
  std::string reason;
  std::string detail;
  static constexpr auto fields() {
    return std::tuple{field("ok", &Ack::ok), field("reason", &Ack::reason), field("detail", &Ack::detail)};
  }
};

// ---- controller → agent ----
/// vda.<agent>.prepare → Ack: the owning controller asks the desktop's agent to take a session for `user`
/// (`kind` logon or reconnect). The agent refuses a controller outside its trusted list (ListOfSIDs).
struct PrepareSession {
  static constexpr std::string_view type_name = "deskfarm.ddc.PrepareSession";
  static constexpr std::uint32_t type_version = 1;
  std::string desktop;
  std::string controller;
  std::string kind = kLogon;
  std::string user;
  std::string endpoint;
  static constexpr auto fields() {
    return std::tuple{field("desktop", &PrepareSession::desktop), field("controller", &PrepareSession::controller),
                      field("kind", &PrepareSession::kind),       field("user", &PrepareSession::user),
                      field("endpoint", &PrepareSession::endpoint)};
  }
};
/// vda.<agent>.admin.session → Ack: simulates the user's own action in a session: "disconnect", "reconnect"
/// (from `endpoint`), "logoff". The agent then reports the SessionEvent to its controller.
struct SessionAction {
  static constexpr std::string_view type_name = "deskfarm.ddc.SessionAction";
  static constexpr std::uint32_t type_version = 1;
  std::string desktop;
  std::string action;
  std::string endpoint;
  static constexpr auto fields() {
    return std::tuple{field("desktop", &SessionAction::desktop), field("action", &SessionAction::action),
                      field("endpoint", &SessionAction::endpoint)};
  }
};

// ---- brokering ----
/// ddc.<controller>.admin.broker → BrokerDecision: a user at an endpoint asks for a desktop (the XML service's
/// RequestAddress calls this). `group` "" = any group the user may use.
struct BrokerRequest {
  static constexpr std::string_view type_name = "deskfarm.ddc.BrokerRequest";
  static constexpr std::uint32_t type_version = 1;
  std::string user;
  std::string endpoint;
  std::string group;
  static constexpr auto fields() {
    return std::tuple{field("user", &BrokerRequest::user), field("endpoint", &BrokerRequest::endpoint),
                      field("group", &BrokerRequest::group)};
  }
};
/// `outcome`: "connect" (go to `desktop`), "starting" (a desktop is being started for the pool: ask again),
/// "refused" (`reason` one of the refusal words). `why` explains the choice in a sentence, always.
struct BrokerDecision {
  static constexpr std::string_view type_name = "deskfarm.ddc.BrokerDecision";
  static constexpr std::uint32_t type_version = 1;
  std::string outcome;
  std::string desktop;
  std::string group;
  std::string kind;        ///< logon or reconnect
  std::string controller;  ///< the controller that owns the desktop (decided)
  std::string broker;      ///< the controller that was asked
  std::string address;     ///< where the client connects: the address the agent registered, else the desktop's name
  std::string reason;
  std::string why;
  bool licensed = false;   ///< a licence was checked out, or granted in grace (`why` says so); false: no licence server
  static constexpr auto fields() {
    return std::tuple{field("outcome", &BrokerDecision::outcome), field("desktop", &BrokerDecision::desktop),
                      field("group", &BrokerDecision::group),     field("kind", &BrokerDecision::kind),
                      field("controller", &BrokerDecision::controller), field("broker", &BrokerDecision::broker),
                      field("address", &BrokerDecision::address), field("reason", &BrokerDecision::reason),
                      field("why", &BrokerDecision::why),         field("licensed", &BrokerDecision::licensed)};
  }
};
/// ddc.<owner>.prepare → BrokerDecision: a controller forwards its choice to the desktop's owner, which
/// reserves it (or refuses: taken meanwhile, maintenance, agent refused) and asks the agent.
struct Prepare {
  static constexpr std::string_view type_name = "deskfarm.ddc.Prepare";
  static constexpr std::uint32_t type_version = 1;
  std::string desktop;
  std::string user;
  std::string endpoint;
  std::string kind = kLogon;
  std::string broker;
  std::string why;  ///< the broker's explanation, completed by the owner
  bool assign = false;  ///< record the desktop as the user's (assigned and pooled-static groups)
  static constexpr auto fields() {
    return std::tuple{field("desktop", &Prepare::desktop), field("user", &Prepare::user),
                      field("endpoint", &Prepare::endpoint), field("kind", &Prepare::kind),
                      field("broker", &Prepare::broker),   field("why", &Prepare::why),
                      field("assign", &Prepare::assign)};
  }
};
/// ddc.<pool master>.start (ddc.beside.<zdc>.start when the controllers follow ima) → BrokerDecision: a controller
/// with nothing idle for a user asks the pool master to start a desktop: the named one (the user's assigned
/// desktop), else an off desktop of the first of `groups` that has one. Only the master issues power actions, so two controllers never start the same machine. Outcome
/// "starting" (with the desktop and group) or a refusal (`no_desktop`: none left to start).
struct StartDesktop {
  static constexpr std::string_view type_name = "deskfarm.ddc.StartDesktop";
  static constexpr std::uint32_t type_version = 1;
  std::string desktop;
  std::vector<std::string> groups;
  std::string user;
  std::string broker;
  static constexpr auto fields() {
    return std::tuple{field("desktop", &StartDesktop::desktop), field("groups", &StartDesktop::groups),
                      field("user", &StartDesktop::user), field("broker", &StartDesktop::broker)};
  }
};

// ---- state the controllers share (published on ddc.<controller>.desktops) ----
struct DesktopStatus {
  static constexpr std::string_view type_name = "deskfarm.ddc.DesktopStatus";
  static constexpr std::uint32_t type_version = 1;
  std::string desktop;
  std::string group;
  std::string registration = kUnregistered;
  std::string controller;  ///< the owner while registered
  std::string agent;
  std::string vm;
  std::string mac;
  std::string hypervisor;
  std::string session_state = kNoSession;
  std::string user;
  std::string endpoint;
  std::string assigned_to;  ///< assigned and pooled-static groups
  bool maintenance = false;
  std::int64_t since_ms = 0;  ///< when the owner last changed it (orders updates from two controllers)
  std::string address;        ///< what its agent registered ("" = none: an older agent)
  static constexpr auto fields() {
    return std::tuple{field("desktop", &DesktopStatus::desktop),   field("group", &DesktopStatus::group),
                      field("registration", &DesktopStatus::registration),
                      field("controller", &DesktopStatus::controller), field("agent", &DesktopStatus::agent),
                      field("vm", &DesktopStatus::vm),             field("mac", &DesktopStatus::mac),
                      field("hypervisor", &DesktopStatus::hypervisor),
                      field("session_state", &DesktopStatus::session_state), field("user", &DesktopStatus::user),
                      field("endpoint", &DesktopStatus::endpoint), field("assigned_to", &DesktopStatus::assigned_to),
                      field("maintenance", &DesktopStatus::maintenance), field("since_ms", &DesktopStatus::since_ms),
                      field("address", &DesktopStatus::address)};
  }
};

/// ddc.<controller>.admin.desktops (DesktopQuery) → DesktopList; `group` or `user` "" = all.
struct DesktopQuery {
  static constexpr std::string_view type_name = "deskfarm.ddc.DesktopQuery";
  static constexpr std::uint32_t type_version = 1;
  std::string group;
  std::string user;
  static constexpr auto fields() { return std::tuple{field("group", &DesktopQuery::group), field("user", &DesktopQuery::user)}; }
};
struct DesktopList {
  static constexpr std::string_view type_name = "deskfarm.ddc.DesktopList";
  static constexpr std::uint32_t type_version = 1;
  std::vector<DesktopStatus> desktops;
  static constexpr auto fields() { return std::tuple{field("desktops", &DesktopList::desktops)}; }
};

/// One desktop group as a controller sees it: ddc.<controller>.admin.groups (Empty) → GroupList.
struct GroupStatus {
  std::string name;
  std::string kind;  ///< pooled-random, pooled-static, assigned
  std::string reconnect;
  std::string period;  ///< peak, business, off_hours (now)
  std::int64_t idle_target = 0;
  std::int64_t desktops = 0, registered = 0, idle = 0, in_use = 0, disconnected = 0, maintenance = 0, quarantined = 0;
  static constexpr auto fields() {
    return std::tuple{field("name", &GroupStatus::name),           field("kind", &GroupStatus::kind),
                      field("reconnect", &GroupStatus::reconnect), field("period", &GroupStatus::period),
                      field("idle_target", &GroupStatus::idle_target), field("desktops", &GroupStatus::desktops),
                      field("registered", &GroupStatus::registered), field("idle", &GroupStatus::idle),
                      field("in_use", &GroupStatus::in_use),       field("disconnected", &GroupStatus::disconnected),
                      field("maintenance", &GroupStatus::maintenance), field("quarantined", &GroupStatus::quarantined)};
  }
};
struct GroupList {
  static constexpr std::string_view type_name = "deskfarm.ddc.GroupList";
  static constexpr std::uint32_t type_version = 1;
  std::vector<GroupStatus> groups;
  static constexpr auto fields() { return std::tuple{field("groups", &GroupList::groups)}; }
};

/// ddc.<controller>.admin.maintenance → Ack: maintenance mode on or off for a desktop or a whole group; every
/// controller applies it (published on ddc.maintenance).
struct Maintenance {
  static constexpr std::string_view type_name = "deskfarm.ddc.Maintenance";
  static constexpr std::uint32_t type_version = 1;
  std::string desktop;
  std::string group;
  bool on = true;
  static constexpr auto fields() {
    return std::tuple{field("desktop", &Maintenance::desktop), field("group", &Maintenance::group), field("on", &Maintenance::on)};
  }
};

// ---- controller → licence server ----
// The controller checks licences out and in through interfaces/license (LicenseClient, with the 30-day grace);
// the session id it uses is "<desktop>/<user>" (one session per desktop and user: a desktop freed by a logoff
// may be brokered again before its checkin reached the server).

// ---- subjects ----
/// ddc.<controller>.<what>: register, heartbeat, deregister, session, prepare, admin.broker, admin.desktops,
/// admin.groups, admin.maintenance; published: ddc.<controller>.desktops (DesktopStatus).
inline std::string subject(std::string_view controller, std::string_view what) {
  return "ddc." + std::string(controller) + "." + std::string(what);
}
/// ddc.beside.<ima>.<what>: the controller that runs beside the ima server <ima> (its `ima` key). "start" there is
/// how a controller reaches the pool master, the controller beside its zone's data collector, by the ZDC's name.
inline std::string beside_subject(std::string_view ima, std::string_view what) {
  return "ddc.beside." + std::string(ima) + "." + std::string(what);
}
inline constexpr const char* all_desktop_updates = "ddc.*.desktops";
inline constexpr const char* maintenance_updates = "ddc.maintenance";
/// vda.<agent>.prepare, vda.<agent>.admin.session.
inline std::string agent_subject(std::string_view agent, std::string_view what) {
  return "vda." + std::string(agent) + "." + std::string(what);
}

}  // namespace deskfarm::interfaces::ddc
