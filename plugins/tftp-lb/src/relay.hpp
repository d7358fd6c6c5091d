#pragma once
// The data plane: one thread relays TFTP transfers between clients and backends through a virtual server,
// following each backend's new transfer port (what a plain UDP proxy cannot do). Two engines, one set of rules:
// io_uring (a multishot receive armed on every socket, the sends queued as submissions, one io_uring_enter per
// turn whatever the turn moved) and epoll (each ready socket read with one recvmmsg, what the burst produces
// sent with one sendmmsg, in order). io_uring is chosen at start when the kernel allows it.
#include <netinet/in.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "balancing.hpp"

namespace deskfarm::tftp_lb {

class TcBpf;

/// Which engine moves the datagrams: `automatic` takes io_uring when the kernel allows it (6.0+, not refused by
/// seccomp or kernel.io_uring_disabled) and epoll otherwise. `tc_bpf` relays established sessions in the kernel
/// (a tc ingress program on loopback, tc_bpf.hpp) and everything else as `automatic` does; without BPF it is
/// `automatic`, with the reason logged.
enum class RelayEngine : std::uint8_t { automatic, io_uring, epoll, tc_bpf };
/// "auto", "io_uring", "epoll", "tc-bpf" (the manifest's `relay` key); nullopt for anything else.
std::optional<RelayEngine> relay_engine_from(std::string_view name);

struct RelayOptions {
  sockaddr_in vip{};                 ///< a specific IPv4 address (never 0.0.0.0: replies must leave from it)
  std::size_t max_sessions = 10000;  ///< a new session beyond it evicts the oldest idle one
  std::chrono::milliseconds idle_timeout{60000};
  /// How long a finished transfer's session stays, so a backend resending its last DATA (our ACK lost)
  /// still reaches the client.
  std::chrono::milliseconds linger{2000};
  Method method = Method::round_robin;
  RelayEngine engine = RelayEngine::automatic;
  /// After a turn that moved datagrams, poll for the next ones without sleeping this long (0 = always sleep):
  /// a lockstep transfer's next datagram comes one round trip later, and a sleep costs a wake-up per hop.
  /// See busy_poll.hpp for the bound.
  std::chrono::microseconds busy_poll{0};
  std::function<void(std::string_view)> log;  ///< one line per event, from the relay thread; default silent
};

/// One backend as the relay needs it. Backends are matched by name across set_backends() calls.
struct RelayBackend {
  std::string name;
  sockaddr_in address{};
  std::uint32_t weight = 1;
  bool eligible = false;  ///< UP and not draining: may get new sessions
};

struct RelayBackendStats {
  std::string name;
  std::uint64_t active = 0;
  std::uint64_t total = 0;
};

struct RelayStats {
  std::uint64_t sessions_started = 0;
  std::uint64_t sessions_active = 0;  ///< in the table (finished ones linger: see sessions_lingering)
  std::uint64_t sessions_lingering = 0;
  std::uint64_t sessions_peak = 0;
  std::uint64_t sessions_finished = 0;  ///< final ACK or an ERROR relayed
  std::uint64_t sessions_idle_closed = 0;
  std::uint64_t sessions_evicted = 0;   ///< the table was full: the oldest idle one made room
  std::uint64_t no_backend = 0;         ///< requests refused (ERROR 0) because no backend was eligible
  std::uint64_t malformed_client = 0;   ///< client datagrams that are not TFTP: dropped
  std::uint64_t malformed_backend = 0;  ///< backend datagrams that are not TFTP: dropped
  std::uint64_t not_a_request = 0;      ///< non-RRQ/WRQ packets to the virtual server without a session: dropped
  std::uint64_t foreign_dropped = 0;    ///< datagrams to a session from neither its client nor its backend
  std::uint64_t wrong_tid = 0;          ///< from the client's or backend's address on another port: ERROR 5 sent
  std::uint64_t socket_errors = 0;      ///< session sockets that could not be opened or sent on
  std::uint64_t packets_to_backend = 0;
  std::uint64_t packets_to_client = 0;
  std::uint64_t bytes_to_client = 0;
  std::uint64_t receive_calls = 0;  ///< recvmmsg calls that returned datagrams (datagrams per call = the batching)
  std::uint64_t send_calls = 0;     ///< sendmmsg/sendto calls
  std::uint64_t ring_enters = 0;    ///< io_uring engine: io_uring_enter calls (one per turn: all receives and sends)
  std::uint64_t busy_polls = 0;      ///< waits that polled without sleeping (io_uring_enter or epoll_wait, timeout 0)
  std::uint64_t busy_poll_hits = 0;  ///< of those, the ones that found datagrams (each a wake-up saved)
  // tc-bpf engine (all counted by the BPF program in its map, read every 100 ms; included in packets_to_* above)
  std::uint64_t kernel_sessions = 0;            ///< sessions handed to the kernel once established
  std::uint64_t kernel_first_replies = 0;       ///< of those, sessions the program completed itself: it relayed the
                                                ///< backend's first reply and learnt its transfer ID (read requests)
  std::uint64_t kernel_entries = 0;             ///< entries in the BPF map at the last poll (two per session)
  std::uint64_t kernel_packets_to_client = 0;   ///< relayed by the BPF program, never reaching a socket
  std::uint64_t kernel_packets_to_backend = 0;
  std::uint64_t kernel_install_errors = 0;      ///< map full or refused: the session stays in user space
  std::uint64_t kernel_orphans_deleted = 0;     ///< entries no session accounted for (a race of the program completing
                                                ///< a session with user space letting go of it), deleted by the poll
  std::vector<RelayBackendStats> backends;
};

/// The relay. start() binds the virtual server and runs the loop; stop() (or the destructor) joins it.
/// Every session has one socket on the virtual server's address: the client sees it as the server's transfer
/// port, the backend as the client's. set_backends() and stats() are safe from any thread.
class Relay {
 public:
  explicit Relay(RelayOptions options);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  /// Binds the virtual server (throws std::runtime_error naming the address), chooses the engine (throws when
  /// io_uring is forced and refused, saying why) and starts the loop.
  void start();
  /// "tc-bpf", "io_uring" or "epoll" once started (tc-bpf: its user-space half runs on io_uring or epoll).
  std::string_view engine() const {
    return tc_ ? "tc-bpf" : engine_ == RelayEngine::io_uring ? "io_uring" : "epoll";
  }
  /// tc-bpf: the tc filter's priority on loopback ingress (`tc filter show dev lo ingress`); 0 otherwise.
  std::uint32_t tc_priority() const;
  void stop();
  std::uint16_t port() const { return port_; }
  void set_backends(std::vector<RelayBackend> backends);
  RelayStats stats() const;

 private:
  struct Session;
  struct State;
  struct Ring;
  void loop();

  RelayOptions options_;
  std::uint16_t port_ = 0;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  int epoll_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  mutable std::mutex mutex_;          // guards pending_ and published_
  std::vector<RelayBackend> pending_;
  bool pending_set_ = false;
  RelayStats published_;
  std::unique_ptr<State> state_;      // owned by the loop thread while it runs
  std::unique_ptr<Ring> ring_;        // the io_uring engine's ring and buffers; null with epoll
  std::unique_ptr<TcBpf> tc_;         // the tc-bpf engine's program and map; null without it
  RelayEngine engine_ = RelayEngine::epoll;
};

}  // namespace deskfarm::tftp_lb
