#pragma once
// The ima role's contract (Independent Management Architecture): servers of a farm grouped in zones, one zone data
// collector (ZDC) per zone elected by newest version, then preference, then highest host ID; members report every
// change of their dynamic data to their ZDC, and ZDCs forward each change to every other zone's ZDC.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <deskfarm/sdk/service.hpp>

namespace deskfarm::interfaces::ima {

using sdk::field;

/// Election preferences, strongest first (Election.preference, Collector.preference).
inline constexpr const char* kMostPreferred = "most_preferred";
inline constexpr const char* kPreferred = "preferred";
inline constexpr const char* kDefault = "default";
inline constexpr const char* kNotPreferred = "not_preferred";

/// Election.kind values.
inline constexpr const char* kCall = "call";            ///< start a round at `epoch`: every member answers with a candidate
inline constexpr const char* kCandidate = "candidate";  ///< a member's rank for the round `epoch`
inline constexpr const char* kElected = "elected";      ///< the winner of round `epoch` takes office; repeated every half keep-alive
inline constexpr const char* kResign = "resign";        ///< the ZDC shuts down gracefully: elect at once
inline constexpr const char* kLeave = "leave";          ///< a member leaves the zone (shutdown, zone change)

/// 3 for most_preferred … 0 for not_preferred; -1 for an unknown name.
inline int preference_rank(std::string_view p) {
  if (p == kMostPreferred) return 3;
  if (p == kPreferred) return 2;
  if (p == kDefault) return 1;
  if (p == kNotPreferred) return 0;
  return -1;
}

/// Compares dotted versions numerically ("1.10.0" > "1.9.2"; a missing part is 0; a non-digit ends a part):
/// negative, 0 or positive as a is older, the same or newer than b.
inline int compare_versions(std::string_view a, std::string_view b) {
  auto next = [](std::string_view& s) {
    std::uint64_t n = 0;
    std::size_t i = 0;
    for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) n = n * 10 + static_cast<std::uint64_t>(s[i] - '0');
    while (i < s.size() && s[i] != '.') ++i;  // a suffix ("1.2.0-rc1") does not count
    s.remove_prefix(i < s.size() ? i + 1 : i);
    return n;
  };
  while (!a.empty() || !b.empty()) {
    const auto x = next(a), y = next(b);
    if (x != y) return x < y ? -1 : 1;
  }
  return 0;
}

/// What a server stands in an election with.
struct Rank {
  std::string version;
  std::string preference;
  std::int64_t host_id = 0;
  std::string instance;  ///< last resort, so that two servers never tie
};

/// True when `a` wins an election against `b`: newest version, then preference, then highest host ID.
inline bool outranks(const Rank& a, const Rank& b) {
  if (int v = compare_versions(a.version, b.version); v != 0) return v > 0;
  if (int p = preference_rank(a.preference) - preference_rank(b.preference); p != 0) return p > 0;
  if (a.host_id != b.host_id) return a.host_id > b.host_id;
  return a.instance > b.instance;
}

/// ima.farm.<farm>.zone.<zone>.election: every election message of a zone. `seq` grows with every message a
/// server sends within one `incarnation` (its start time): a message at or below the last seen is a replay.
struct Election {
  static constexpr std::string_view type_name = "deskfarm.ima.Election";
  static constexpr std::uint32_t type_version = 1;
  std::string kind;  ///< kCall, kCandidate, kElected, kResign, kLeave
  std::string farm;
  std::string zone;
  std::int64_t epoch = 0;  ///< the election round; a ZDC holds office for the epoch it won
  std::int64_t seq = 0;
  std::int64_t incarnation = 0;
  std::string instance;  ///< the sender
  std::int64_t host_id = 0;
  std::string version;
  std::string preference;
  std::string trigger;  ///< with kCall: start, lost, shutdown, zone_change, manual, merge (two collectors of one zone)
  static constexpr auto fields() {
    return std::tuple{field("kind", &Election::kind), field("farm", &Election::farm), field("zone", &Election::zone),
                      field("epoch", &Election::epoch), field("seq", &Election::seq),
                      field("incarnation", &Election::incarnation), field("instance", &Election::instance),
                      field("host_id", &Election::host_id), field("version", &Election::version),
                      field("preference", &Election::preference), field("trigger", &Election::trigger)};
  }
};

/// Session states (Session.state).
inline constexpr const char* kSessionActive = "active";
inline constexpr const char* kSessionDisconnected = "disconnected";

/// A desktop session held by a controller beside a server: part of the server's dynamic data (Change.session_list).
struct Session {
  static constexpr std::string_view type_name = "deskfarm.ima.Session";
  static constexpr std::uint32_t type_version = 1;
  std::string desktop;
  std::string user;
  std::string controller;  ///< the controller (ddc instance) the desktop is registered with
  std::string state;       ///< kSessionActive, kSessionDisconnected
  std::string endpoint;    ///< the client device it is (or was last) connected from
  static constexpr auto fields() {
    return std::tuple{field("desktop", &Session::desktop), field("user", &Session::user), field("controller", &Session::controller),
                      field("state", &Session::state), field("endpoint", &Session::endpoint)};
  }
};

/// ima.<instance>.session: the controller beside a server reports a session change (kind logon, disconnect,
/// reconnect, logoff — the ddc SessionEvent kinds); the server's record changes (its sessions by desktop, and the
/// count) and goes to the ZDC at once, like every change. Answered with the new record (Change).
struct SessionChange {
  static constexpr std::string_view type_name = "deskfarm.ima.SessionChange";
  static constexpr std::uint32_t type_version = 1;
  std::string kind;
  std::string desktop;
  std::string user;
  std::string controller;
  std::string endpoint;
  static constexpr auto fields() {
    return std::tuple{field("kind", &SessionChange::kind), field("desktop", &SessionChange::desktop),
                      field("user", &SessionChange::user), field("controller", &SessionChange::controller),
                      field("endpoint", &SessionChange::endpoint)};
  }
};

/// A server's dynamic data as one change: member → its ZDC on ima.<zdc>.change, ZDC → every other zone's ZDC on
/// ima.<zdc>.forward, and a member's full state on ima.<member>.state. A record replaces an older one of the same
/// origin ((incarnation, seq) larger); `gone` removes it.
struct Change {
  static constexpr std::string_view type_name = "deskfarm.ima.Change";
  static constexpr std::uint32_t type_version = 1;
  std::string farm;
  std::string zone;
  std::string instance;  ///< the server the data belongs to
  std::int64_t host_id = 0;
  std::int64_t incarnation = 0;
  std::int64_t seq = 0;
  std::int64_t sessions = 0;
  double load = 0;  ///< the server's load index, 0 … 10000
  bool gone = false;
  std::string updated;  ///< ISO 8601 UTC, the origin's clock
  std::vector<Session> session_list;  ///< the sessions its controller reported (SessionChange), sorted by desktop
  static constexpr auto fields() {
    return std::tuple{field("farm", &Change::farm), field("zone", &Change::zone), field("instance", &Change::instance),
                      field("host_id", &Change::host_id), field("incarnation", &Change::incarnation),
                      field("seq", &Change::seq), field("sessions", &Change::sessions), field("load", &Change::load),
                      field("gone", &Change::gone), field("updated", &Change::updated),
                      field("session_list", &Change::session_list)};
  }
};

/// The answer to a Change: `accepted` false when the receiver is not the zone's ZDC (the sender then elects).
struct Ack {
  static constexpr std::string_view type_name = "deskfarm.ima.Ack";
  static constexpr std::uint32_t type_version = 1;
  bool accepted = false;
  std::string zdc;  ///< whom the receiver takes for its zone's ZDC
  std::int64_t epoch = 0;
  static constexpr auto fields() {
    return std::tuple{field("accepted", &Ack::accepted), field("zdc", &Ack::zdc), field("epoch", &Ack::epoch)};
  }
};

/// ima.<instance>.zdc (sdk::Empty → Collector): the collector of the server's own zone as it knows it; `instance`
/// is "" while the zone has none (an election runs). The same Collector is published on
/// ima.<instance>.zdc.updates whenever that changes: a controller beside the server follows it (the controller
/// beside the ZDC is the pool master).

/// ima.<instance>.ping: the ZDC asks a silent member, a member its silent ZDC (sdk::Empty → Ack).
/// ima.<instance>.state: a newly elected ZDC asks a member for its full state (sdk::Empty → Change).

/// A zone's collector, as a server knows it; published by a new ZDC on ima.farm.<farm>.collectors.
struct Collector {
  static constexpr std::string_view type_name = "deskfarm.ima.Collector";
  static constexpr std::uint32_t type_version = 1;
  std::string farm;
  std::string zone;
  std::string instance;
  std::int64_t host_id = 0;
  std::string version;
  std::string preference;
  std::int64_t epoch = 0;
  bool reachable = true;  ///< false while forwards to it fail (retried after gateway_validation_s)
  /// The ZDC's incarnation when it announces itself (0: unknown, or a sender without the field): a restarted
  /// one-server zone comes back at the same epoch, and only this tells its announcement from a repeat.
  std::int64_t incarnation = 0;
  static constexpr auto fields() {
    return std::tuple{field("farm", &Collector::farm), field("zone", &Collector::zone),
                      field("instance", &Collector::instance), field("host_id", &Collector::host_id),
                      field("version", &Collector::version), field("preference", &Collector::preference),
                      field("epoch", &Collector::epoch), field("reachable", &Collector::reachable),
                      field("incarnation", &Collector::incarnation)};
  }
};

/// ima.<instance>.admin.querydc (sdk::Empty) and .admin.elect (sdk::Empty, answered once the round is over):
/// the collectors this server knows, its own zone first.
struct Collectors {
  static constexpr std::string_view type_name = "deskfarm.ima.Collectors";
  static constexpr std::uint32_t type_version = 1;
  std::vector<Collector> collectors;
  static constexpr auto fields() { return std::tuple{field("collectors", &Collectors::collectors)}; }
};

/// ima.<instance>.admin.queryds (sdk::Empty): the dynamic data a server holds — as ZDC, every record of its own
/// zone and what other zones' ZDCs forwarded; as a member, its own record only.
struct DynamicData {
  static constexpr std::string_view type_name = "deskfarm.ima.DynamicData";
  static constexpr std::uint32_t type_version = 1;
  std::string instance;
  std::string zone;
  bool zdc = false;
  std::vector<Change> records;  ///< sorted by zone, then instance
  static constexpr auto fields() {
    return std::tuple{field("instance", &DynamicData::instance), field("zone", &DynamicData::zone),
                      field("zdc", &DynamicData::zdc), field("records", &DynamicData::records)};
  }
};

/// ima.<instance>.report: another plugin (or an operator, as .admin.report) sets this server's dynamic data;
/// the change goes to the ZDC at once. Answered with the new record.
struct Report {
  static constexpr std::string_view type_name = "deskfarm.ima.Report";
  static constexpr std::uint32_t type_version = 1;
  std::int64_t sessions = 0;
  double load = 0;
  static constexpr auto fields() { return std::tuple{field("sessions", &Report::sessions), field("load", &Report::load)}; }
};

/// ima.<instance>.admin.zone: move the server to another zone (it leaves the old one; both elect).
struct ZoneMove {
  static constexpr std::string_view type_name = "deskfarm.ima.ZoneMove";
  static constexpr std::uint32_t type_version = 1;
  std::string zone;
  static constexpr auto fields() { return std::tuple{field("zone", &ZoneMove::zone)}; }
};

/// ima.<instance>.admin.fault, for drills inside one process: "crash" makes the server silent at once, as kill -9
/// would (no resign, no leave); "partition" cuts it off from the servers in `peers` (it ignores their election,
/// collector and change-notification messages, and its requests to them fail as timeouts) until "heal". A
/// partition of two groups is one fault on each side, naming the other side.
struct Fault {
  static constexpr std::string_view type_name = "deskfarm.ima.Fault";
  static constexpr std::uint32_t type_version = 1;
  std::string fault;
  std::vector<std::string> peers;  ///< with "partition": the servers cut off (a later field: absent reads as empty)
  static constexpr auto fields() { return std::tuple{field("fault", &Fault::fault), field("peers", &Fault::peers)}; }
};

/// A farm server's static data (what the data store holds for it, and every server's local host cache a copy of).
/// Also the data change notification on ima.farm.<farm>.dcn: a server whose static data changed publishes its new
/// record, and every server of the farm refreshes its local host cache at once.
struct Server {
  static constexpr std::string_view type_name = "deskfarm.ima.Server";
  static constexpr std::uint32_t type_version = 1;
  std::string farm;
  std::string instance;
  std::string zone;
  std::int64_t host_id = 0;
  std::string preference;
  std::string version;
  static constexpr auto fields() {
    return std::tuple{field("farm", &Server::farm),         field("instance", &Server::instance),
                      field("zone", &Server::zone),         field("host_id", &Server::host_id),
                      field("preference", &Server::preference), field("version", &Server::version)};
  }
};

/// Local host cache states (Lhc.state and the "lhc" status field).
inline constexpr const char* kLhcLoading = "loading";  ///< the cache is read; the first refresh from the store runs
inline constexpr const char* kLhcFresh = "fresh";      ///< the last refresh from the data store succeeded
inline constexpr const char* kLhcStale = "stale";      ///< the data store is unreachable: working from the cache
inline constexpr const char* kLhcExpired = "expired";  ///< stale beyond lhc_max_age_h: the server is degraded

/// ima.<instance>.admin.refreshlhc and .admin.recreatelhc (sdk::Empty): the local host cache once the refresh (or
/// the rebuild) is done; an error reply (code "unavailable") when the data store could not be read.
struct Lhc {
  static constexpr std::string_view type_name = "deskfarm.ima.Lhc";
  static constexpr std::uint32_t type_version = 1;
  std::string instance;
  std::string file;
  std::string state;
  std::string refreshed;  ///< ISO 8601 UTC time of the last good refresh; "" when never
  std::int64_t age_s = 0;
  std::vector<Server> servers;  ///< sorted by instance
  static constexpr auto fields() {
    return std::tuple{field("instance", &Lhc::instance), field("file", &Lhc::file),   field("state", &Lhc::state),
                      field("refreshed", &Lhc::refreshed), field("age_s", &Lhc::age_s), field("servers", &Lhc::servers)};
  }
};

/// ima.<instance>.<request>: "ping", "change", "forward", "state", "report", "admin.elect", "admin.querydc", …
inline std::string subject(std::string_view instance, std::string_view request) {
  return "ima." + std::string(instance) + "." + std::string(request);
}
/// ima.<instance>.zdc.updates: the server's own zone's collector, on every change (Collector)
inline std::string zdc_updates_subject(std::string_view instance) { return subject(instance, "zdc.updates"); }
/// ima.farm.<farm>.zone.<zone>.election
inline std::string election_subject(std::string_view farm, std::string_view zone) {
  return "ima.farm." + std::string(farm) + ".zone." + std::string(zone) + ".election";
}
/// ima.farm.<farm>.collectors
inline std::string collectors_subject(std::string_view farm) { return "ima.farm." + std::string(farm) + ".collectors"; }
/// ima.farm.<farm>.dcn: data change notifications (Server)
inline std::string dcn_subject(std::string_view farm) { return "ima.farm." + std::string(farm) + ".dcn"; }

}  // namespace deskfarm::interfaces::ima
