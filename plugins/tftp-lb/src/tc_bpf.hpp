#pragma once
// The tc-bpf relay engine's kernel half (README "tc-bpf"): a tc (clsact) ingress program on loopback that relays
// an established session's datagrams inside the kernel, and the session map user space fills and polls. The relay
// keeps everything else (requests, backend choice, the transfer ID, errors, timeouts); this class only loads,
// attaches, fills, reads and detaches.
#include <netinet/in.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "tc_bpf_map.h"

struct bpf_object;

namespace deskfarm::tftp_lb {

class TcBpf {
 public:
  /// Loads the program with a map for `max_sessions` sessions (three entries each: two established, one pending) and attaches it to the ingress
  /// of the device that carries `vip` (loopback only, see README) at a priority derived from the virtual server's
  /// address and port. First detaches filters of this program whose balancer process is gone (a SIGKILL leaves
  /// them). Null, with `why` saying what failed, when BPF is unavailable (not root, no clsact, a kernel without BPF).
  static std::unique_ptr<TcBpf> open(const sockaddr_in& vip, std::size_t max_sessions,
                                     const std::function<void(const std::string&)>& log, std::string& why);
  ~TcBpf();  // detaches the filter; the program and map go with the last reference
  TcBpf(const TcBpf&) = delete;
  TcBpf& operator=(const TcBpf&) = delete;

  /// Adds or replaces an entry; false (with errno) when the map refuses it (full).
  bool put(const tftp_lb_key& key, const tftp_lb_value& value);
  /// The entry's current value; false when there is none.
  bool get(const tftp_lb_key& key, tftp_lb_value& value) const;
  void erase(const tftp_lb_key& key);
  /// Reads and deletes an entry in one system call; false when there is none.
  bool take(const tftp_lb_key& key, tftp_lb_value& value);
  /// Every entry, read in batches (a few system calls for the whole map). Returns the entries visited.
  std::size_t for_each(const std::function<void(const tftp_lb_key&, const tftp_lb_value&)>& visit) const;

  /// A descriptor of the session map of the tc-bpf balancer in process `pid` whose filter has `priority`, or -1
  /// (for tests, which plant entries in it).
  static int session_map_of(std::uint32_t pid, std::uint32_t priority);

  std::uint32_t priority() const { return priority_; }
  const std::string& device() const { return device_; }

 private:
  TcBpf() = default;
  bpf_object* object_ = nullptr;
  int map_fd_ = -1;
  int ifindex_ = 0;
  std::uint32_t priority_ = 0;
  std::string device_;
  bool attached_ = false;
};

}  // namespace deskfarm::tftp_lb
