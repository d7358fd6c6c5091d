#include "tc_bpf.hpp"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <net/if.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "tftp_lb_tc_object.hpp"  // generated at build time: the compiled BPF object (bpf/tftp_lb_tc.bpf.c)

namespace deskfarm::tftp_lb {

namespace {

constexpr std::uint32_t kHandle = 0xdf1b;  // every tc-bpf balancer's filter: told apart by priority
constexpr const char* kProgram = "tftp_lb_ingress";

std::string error_text(int e) { return std::strerror(e < 0 ? -e : e); }

// libbpf prints its own diagnostics (the verifier's log, netlink errors) to stderr by default; the reason that
// matters is returned to the relay, which logs one line.
int quiet(enum libbpf_print_level, const char*, va_list) { return 0; }

/// A filter priority per virtual server (1..0xbfff), so several balancers share loopback's clsact and a restarted
/// balancer on the same address replaces its dead predecessor's filter.
std::uint32_t priority_of(const sockaddr_in& vip) {
  std::uint32_t h = 2166136261u;
  for (const auto byte : {vip.sin_addr.s_addr, static_cast<std::uint32_t>(vip.sin_port)})
    for (int k = 0; k < 4; ++k) h = (h ^ ((byte >> (8 * k)) & 0xffu)) * 16777619u;
  return 1 + h % 0xbfff;
}

/// Every loaded program of this plugin (by name), with the ids of its maps (at most 4: it has two). Bounded by the
/// number of BPF programs loaded on the machine (at most 65,536 looked at).
void each_program(const std::function<void(std::uint32_t prog, const std::uint32_t* maps, std::uint32_t n)>& visit) {
  std::uint32_t id = 0;
  for (int n = 0; n < 65536 && bpf_prog_get_next_id(id, &id) == 0; ++n) {
    const int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_prog_info info{};
    std::uint32_t map_ids[4] = {};
    info.nr_map_ids = 4;
    info.map_ids = reinterpret_cast<std::uint64_t>(map_ids);
    std::uint32_t len = sizeof info;
    const bool ours = bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && std::strcmp(info.name, kProgram) == 0;
    ::close(fd);
    if (ours) visit(id, map_ids, std::min<std::uint32_t>(info.nr_map_ids, 4));
  }
}

/// A descriptor of map `id` when its name starts with `prefix` (the kernel keeps 15 characters), else -1.
int map_named(std::uint32_t id, const char* prefix) {
  const int fd = bpf_map_get_fd_by_id(id);
  if (fd < 0) return -1;
  bpf_map_info info{};
  std::uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && std::strncmp(info.name, prefix, std::strlen(prefix)) == 0)
    return fd;
  ::close(fd);
  return -1;
}

/// The owner recorded in one of a program's maps; false when none of them is the owner map or it is empty.
bool owner_of(const std::uint32_t* maps, std::uint32_t n, tftp_lb_owner& owner) {
  for (std::uint32_t m = 0; m < n; ++m) {
    const int fd = map_named(maps[m], "tftp_lb_owner");
    if (fd < 0) continue;
    const std::uint32_t zero = 0;
    const bool found = bpf_map_lookup_elem(fd, &zero, &owner) == 0;
    ::close(fd);
    return found;
  }
  return false;
}

/// Detaches every filter of this program whose owner process no longer exists.
void detach_stale(const std::function<void(const std::string&)>& log) {
  each_program([&](std::uint32_t id, const std::uint32_t* maps, std::uint32_t n) {
    tftp_lb_owner owner{};
    if (!owner_of(maps, n, owner) || owner.pid == 0 || ::kill(static_cast<pid_t>(owner.pid), 0) == 0 || errno != ESRCH)
      return;  // no owner recorded yet, or its balancer still runs (EPERM: alive, someone else's)
    DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = static_cast<int>(owner.ifindex), .attach_point = BPF_TC_INGRESS);
    DECLARE_LIBBPF_OPTS(bpf_tc_opts, query, .handle = owner.handle, .priority = owner.priority);
    // Only if that filter still runs the dead balancer's program: a live balancer restarted on the same virtual
    // server may have replaced it (same handle and priority) since this loop listed the program.
    if (bpf_tc_query(&hook, &query) != 0 || query.prog_id != id) return;
    DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = owner.handle, .priority = owner.priority);
    if (bpf_tc_detach(&hook, &opts) == 0 && log)
      log("tc-bpf: detached a stale filter (priority " + std::to_string(owner.priority) + ") of balancer PID " +
          std::to_string(owner.pid) + ", which is gone");
  });
}

}  // namespace

std::unique_ptr<TcBpf> TcBpf::open(const sockaddr_in& vip, std::size_t max_sessions,
                                   const std::function<void(const std::string&)>& log, std::string& why) {
  if ((ntohl(vip.sin_addr.s_addr) >> 24) != 127) {
    // On loopback a rewritten datagram keeps its local-delivery route and goes on to the new destination's socket.
    // Another device would need an egress redirect with a FIB lookup and new MAC addresses: not built.
    why = "the virtual server is not on loopback (127.0.0.0/8); the tc-bpf engine relays on loopback only";
    return nullptr;
  }
  if (::geteuid() != 0) {
    why = "not root (loading and attaching a tc BPF program needs CAP_BPF and CAP_NET_ADMIN)";
    return nullptr;
  }
  libbpf_set_print(quiet);
  std::unique_ptr<TcBpf> t(new TcBpf());
  t->device_ = "lo";
  t->ifindex_ = static_cast<int>(::if_nametoindex("lo"));
  t->priority_ = priority_of(vip);
  if (t->ifindex_ == 0) {
    why = "no loopback device 'lo'";
    return nullptr;
  }
  DECLARE_LIBBPF_OPTS(bpf_object_open_opts, open_opts, .object_name = "tftp_lb_tc");
  t->object_ = bpf_object__open_mem(tftp_lb_tc_object, sizeof tftp_lb_tc_object, &open_opts);
  if (!t->object_) {
    why = "opening the BPF object: " + error_text(errno);
    return nullptr;
  }
  bpf_map* sessions = bpf_object__find_map_by_name(t->object_, "tftp_lb_sessions");
  bpf_map* owner_map = bpf_object__find_map_by_name(t->object_, "tftp_lb_owner");
  bpf_program* prog = bpf_object__find_program_by_name(t->object_, kProgram);
  if (!sessions || !owner_map || !prog) {
    why = "the BPF object lacks its map or program (a build problem)";
    return nullptr;
  }
  bpf_map__set_max_entries(sessions, static_cast<std::uint32_t>(std::max<std::size_t>(3 * max_sessions, 16)));
  if (const int e = bpf_object__load(t->object_); e != 0) {
    why = "loading the BPF program: " + error_text(e) + " (needs a kernel with BPF and CAP_BPF; see dmesg)";
    return nullptr;
  }
  t->map_fd_ = bpf_map__fd(sessions);
  detach_stale(log);
  DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = t->ifindex_, .attach_point = BPF_TC_INGRESS);
  if (const int e = bpf_tc_hook_create(&hook); e != 0 && e != -EEXIST) {
    why = "creating the clsact qdisc on lo: " + error_text(e) + " (a kernel without CONFIG_NET_SCH_INGRESS?)";
    return nullptr;
  }
  const tftp_lb_owner owner{static_cast<std::uint32_t>(::getpid()), static_cast<std::uint32_t>(t->ifindex_),
                            t->priority_, kHandle};
  const std::uint32_t zero = 0;
  bpf_map_update_elem(bpf_map__fd(owner_map), &zero, &owner, BPF_ANY);
  // REPLACE: a balancer on the same virtual server that was killed left its filter here; ours takes its place.
  DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = bpf_program__fd(prog), .flags = BPF_TC_F_REPLACE,
                      .handle = kHandle, .priority = t->priority_);
  if (const int e = bpf_tc_attach(&hook, &opts); e != 0) {
    why = "attaching the tc filter on lo ingress (priority " + std::to_string(t->priority_) + "): " + error_text(e);
    return nullptr;
  }
  t->attached_ = true;
  return t;
}

TcBpf::~TcBpf() {
  if (attached_) {
    DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex_, .attach_point = BPF_TC_INGRESS);
    DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kHandle, .priority = priority_);
    // The clsact qdisc stays: other filters (other balancers, other tools) may hang on it.
    bpf_tc_detach(&hook, &opts);
  }
  if (object_) bpf_object__close(object_);  // closes the program and map descriptors: the kernel frees them
}

int TcBpf::session_map_of(std::uint32_t pid, std::uint32_t priority) {
  int found = -1;
  each_program([&](std::uint32_t, const std::uint32_t* maps, std::uint32_t n) {
    tftp_lb_owner owner{};
    if (found >= 0 || !owner_of(maps, n, owner) || owner.pid != pid || owner.priority != priority) return;
    for (std::uint32_t m = 0; m < n && found < 0; ++m) found = map_named(maps[m], "tftp_lb_sess");
  });
  return found;
}

bool TcBpf::put(const tftp_lb_key& key, const tftp_lb_value& value) {
  return bpf_map_update_elem(map_fd_, &key, &value, BPF_ANY) == 0;
}

bool TcBpf::get(const tftp_lb_key& key, tftp_lb_value& value) const {
  return bpf_map_lookup_elem(map_fd_, &key, &value) == 0;
}

void TcBpf::erase(const tftp_lb_key& key) { bpf_map_delete_elem(map_fd_, &key); }

bool TcBpf::take(const tftp_lb_key& key, tftp_lb_value& value) {
  return bpf_map_lookup_and_delete_elem(map_fd_, &key, &value) == 0;
}

std::size_t TcBpf::for_each(const std::function<void(const tftp_lb_key&, const tftp_lb_value&)>& visit) const {
  constexpr std::uint32_t kChunk = 256;
  std::vector<tftp_lb_key> keys(kChunk);
  std::vector<tftp_lb_value> values(kChunk);
  std::uint32_t in = 0, out = 0;
  std::size_t seen = 0;
  // Bounded: each call returns up to kChunk entries or ends the map; 1,025 calls cover 262,144 entries.
  for (int calls = 0; calls < 1025; ++calls) {
    std::uint32_t count = kChunk;
    const int r = bpf_map_lookup_batch(map_fd_, calls == 0 ? nullptr : &in, &out, keys.data(), values.data(),
                                       &count, nullptr);
    const int e = r < 0 ? errno : 0;
    for (std::uint32_t k = 0; k < count && (r == 0 || e == ENOENT); ++k) visit(keys[k], values[k]);
    if (r == 0 || e == ENOENT) seen += count;
    if (r < 0) break;  // ENOENT: the end; anything else: this poll stops, the next one starts over
    in = out;
  }
  return seen;
}

}  // namespace deskfarm::tftp_lb
