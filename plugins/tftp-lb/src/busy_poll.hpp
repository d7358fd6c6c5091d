#pragma once
// Adaptive busy polling for the relay thread. A lockstep TFTP transfer (one DATA, one ACK) sends its next datagram
// one round trip after the last one; a relay that goes to sleep in between pays a wake-up (being woken, scheduled,
// then sending: ~20 µs per hop on loopback) on every datagram, which halves a single transfer's throughput. So
// after a turn that moved datagrams the relay polls without sleeping for up to a window, and sleeps only once a
// whole window brought nothing. A trickle slower than the window would keep a core busy for nothing: after
// kMaxMisses empty windows in a row the relay sleeps at once for the next kBackoffTurns turns with work, then
// tries again. Idle, it sleeps after one window: no CPU.
#include <chrono>
#include <cstdint>

namespace deskfarm::tftp_lb {

class BusyPoll {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr unsigned kMaxMisses = 8;
  static constexpr unsigned kBackoffTurns = 256;

  /// window 0: never poll (every wait sleeps, as without busy polling).
  explicit BusyPoll(std::chrono::microseconds window) : window_(window) {}

  /// After a turn: `found` = it handled datagrams. True when the next wait should poll (not sleep).
  bool next_polls(bool found, Clock::time_point now) {
    if (window_.count() <= 0) return false;
    if (found) {
      if (polling_) misses_ = 0;  // a poll found the next datagram: the window pays
      if (backoff_ > 0) {
        --backoff_;
        polling_ = false;
        return false;
      }
      until_ = now + window_;
      polling_ = true;
      return true;
    }
    if (!polling_) return false;
    if (now < until_) return true;
    polling_ = false;  // a whole window without a datagram: sleep
    if (++misses_ >= kMaxMisses) {
      misses_ = 0;
      backoff_ = kBackoffTurns;
    }
    return false;
  }

  bool backing_off() const { return backoff_ > 0; }

 private:
  std::chrono::microseconds window_;
  Clock::time_point until_{};
  bool polling_ = false;
  unsigned misses_ = 0;
  unsigned backoff_ = 0;
};

}  // namespace deskfarm::tftp_lb
