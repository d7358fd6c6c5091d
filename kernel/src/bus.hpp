#pragma once
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "deskfarm/sdk/bus.hpp"
#include "deskfarm/sdk/clock.hpp"
#include "executor.hpp"

namespace deskfarm::kernel {

/// Per-subject counters, shown at /metrics.
struct SubjectStats {
  std::atomic<std::uint64_t> published{0};
  std::atomic<std::uint64_t> delivered{0};
};

/// What carries the bus to other processes (NATS). BusCore calls it with its own locks held (so watch and
/// unwatch keep their order), so it never calls back into BusCore from inside these calls.
class RemoteTransport {
 public:
  virtual ~RemoteTransport() = default;
  /// A publication of this process, for the subscribers of other processes.
  virtual void publish(const sdk::Message& message) = 0;
  /// A request of this process; answers come back through BusCore::remote_reply(id, …).
  virtual void request(const sdk::Message& message, std::uint64_t id) = 0;
  /// This process's answer to a request that came from another process (`to` is its reply subject).
  virtual void reply(const std::string& to, const sdk::Message& reply) = 0;
  /// The first subscription of this process on `pattern` was made / the last one ended.
  virtual void watch(const std::string& pattern) = 0;
  virtual void unwatch(const std::string& pattern) = 0;
  /// Waits (bounded) until what watch() sent is in place at the other end; called without BusCore's locks.
  virtual void settle() = 0;
};

/// The in-process bus shared by every instance. Delivery is by pointer (no serialisation); each
/// subscriber's messages go to its instance's strand, so per-publisher order is kept per subscriber.
class BusCore {
 public:
  BusCore(sdk::Clock& clock, std::chrono::milliseconds block_timeout);
  ~BusCore();
  BusCore(const BusCore&) = delete;
  BusCore& operator=(const BusCore&) = delete;
  void publish(sdk::Message message);
  std::shared_ptr<Subscriber> subscribe(std::string pattern, sdk::Handler handler, sdk::SubscribeOptions options,
                                        Strand& strand);
  void unsubscribe(const std::shared_ptr<Subscriber>& sub);
  void request(sdk::Message message, std::chrono::nanoseconds timeout, sdk::ReplyHandler on_reply, Strand& requester);
  void reply(const sdk::Message& request, sdk::Message reply);
  /// Drops the pending requests made from `requester` (its instance stopped): their replies and
  /// timeouts must never reach a strand that is about to be destroyed.
  void forget_requests(const Strand& requester);

  /// Carries the bus to other processes too; set before anything subscribes, kept until the bus is destroyed.
  void attach(RemoteTransport* remote) { remote_ = remote; }
  /// What a delivery from another process left for a thread that may wait: the subscriber `next` of `route`
  /// (whose queue was full and who waits for room) and the ones after it.
  struct RemoteRest;
  /// A message from another process, for every subscriber in this process whose pattern matches its subject (the
  /// transport receives each message once, however many of this process's patterns match it). Never waits: when
  /// a subscriber that waits for room has a full queue, or `now` is false (earlier messages are still being
  /// finished, and order is kept), what is left is returned for finish_remote(); nullptr when nothing is.
  /// `cache` is the caller's (one per thread): the route of the subject it last delivered.
  struct RouteCache;
  std::unique_ptr<RemoteRest> deliver_remote(sdk::Message&& message, bool now, RouteCache& cache);
  /// Delivers what deliver_remote() left, waiting for room as long as the bus's block timeout allows.
  void finish_remote(RemoteRest& rest);
  /// The answer to request `id` from another process, or (`no_responders`) the transport's word that no other
  /// process subscribes to its subject: that fails the request only when none in this process does either.
  /// `count_late` false: the transport may bring this reply twice, and a second copy is no late reply.
  void remote_reply(std::uint64_t id, sdk::Message&& reply, bool no_responders, bool count_late = true);

  /// A snapshot of the per-subject counters: {published, delivered}.
  std::map<std::string, std::array<std::uint64_t, 2>> subject_counters() const;
  /// A snapshot of the messages dropped by full queues, per subscription pattern.
  std::map<std::string, std::uint64_t> dropped_counters() const;
  std::uint64_t late_replies() const { return late_replies_.load(); }
  /// The bus's own metric families in Prometheus text: published, delivered, dropped, late replies.
  std::string metrics_text() const;

 private:
  struct Route {
    std::vector<std::shared_ptr<Subscriber>> subs;
    SubjectStats* stats;
  };

 public:
  struct RemoteRest {
    std::shared_ptr<const Route> route;
    std::shared_ptr<const sdk::Message> message;
    std::size_t next = 0;
  };
  /// The route of the subject a thread used last, for one BusCore (a process may run several).
  struct RouteCache {
    const BusCore* owner = nullptr;
    std::uint64_t epoch = 0;  // routes_epoch_ when it was looked up
    std::string subject;
    std::weak_ptr<const Route> route;
  };

 private:
  struct Pending {
    sdk::ReplyHandler on_reply;
    Strand* requester = nullptr;
    sdk::TimePoint deadline;
    std::chrono::milliseconds::rep timeout_ms = 0;
    std::string subject;
    std::size_t local_responders = 0;  // subscribers in this process the request was queued to
  };
  std::shared_ptr<const Route> route(const std::string& subject);
  /// Empties routes_ and starts a new epoch; mutex_ held exclusively.
  void clear_routes_locked();
  /// route(), through `cache`: a stream mostly repeats its subject, and its route is looked up again only once a
  /// subscription came or went (a new routes_epoch_; the reference is weak, so it pins no subscriber of a stopped
  /// instance).
  std::shared_ptr<const Route> route(const std::string& subject, RouteCache& cache);
  /// Hands `message` to request `it`'s requester and forgets the request; pending_mutex_ held.
  void complete_locked(std::unordered_map<std::uint64_t, Pending>::iterator it, std::shared_ptr<sdk::Message> message);
  /// Queues `message` for every one of `subs`; returns how many took it.
  std::uint64_t deliver(const std::vector<std::shared_ptr<Subscriber>>& subs, sdk::Message&& message);
  SubjectStats* stats_for_locked(const std::string& subject);
  /// Arms the one clock timer that expires requests, for `deadline`; pending_mutex_ held.
  void arm_sweep_locked(sdk::TimePoint deadline);
  /// Fails every request past its deadline and re-arms for the next one (on sweeper_).
  void sweep(std::uint64_t seq);

  sdk::Clock& clock_;
  std::chrono::milliseconds block_timeout_;
  mutable std::shared_mutex mutex_;
  std::vector<std::shared_ptr<Subscriber>> subs_;
  // Subscriptions per distinct pattern: a new subject is matched once per pattern, not once per subscriber
  // (10,000 instances subscribed to one pattern would cost 10,000 matches per subject).
  std::unordered_map<std::string, std::size_t> patterns_;
  std::unordered_map<std::string, std::shared_ptr<const Route>> routes_;  // cache, cleared on (un)subscribe
  std::atomic<std::uint64_t> routes_epoch_{0};  // counts the clears of routes_ (written under mutex_)
  using Subscribers = std::vector<std::shared_ptr<Subscriber>>;
  RemoteTransport* remote_ = nullptr;
  std::unordered_map<std::string, std::unique_ptr<SubjectStats>> stats_;
  std::unordered_map<std::string, std::unique_ptr<std::atomic<std::uint64_t>>> dropped_;  // by pattern
  // Request timeouts: one clock timer for the earliest deadline instead of a timer added and
  // cancelled per request, which cost a wake-up of the clock thread on every round trip.
  std::mutex pending_mutex_;
  std::unordered_map<std::uint64_t, Pending> pending_;
  std::vector<std::pair<sdk::TimePoint, std::uint64_t>> deadlines_;  // min-heap; answered ones linger
  std::optional<sdk::TimePoint> armed_for_;
  sdk::TimerId sweep_timer_ = 0;
  std::uint64_t sweep_seq_ = 0;
  bool closing_ = false;
  std::unique_ptr<Strand> sweeper_;  // where the sweep timer runs; created with the first request
  std::atomic<std::uint64_t> next_inbox_{1};
  std::atomic<std::uint64_t> late_replies_{0};
};

/// The bus as one instance sees it: handlers run on the instance's strand; its subscriptions end
/// when the instance stops.
class InstanceBus final : public sdk::Bus {
 public:
  InstanceBus(BusCore& core, Strand& strand) : core_(core), strand_(strand) {}
  ~InstanceBus() override { close(); }
  void publish(sdk::Message message) override;
  sdk::Subscription subscribe(std::string pattern, sdk::Handler handler, sdk::SubscribeOptions options) override;
  void request(sdk::Message message, std::chrono::nanoseconds timeout, sdk::ReplyHandler on_reply) override;
  void reply(const sdk::Message& request, sdk::Message reply) override;
  /// Ends every subscription this instance made and forgets its pending requests.
  void close();

 private:
  BusCore& core_;
  Strand& strand_;
  std::mutex mutex_;
  std::vector<std::weak_ptr<Subscriber>> subs_;
};

}  // namespace deskfarm::kernel
