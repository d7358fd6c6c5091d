#include "bus.hpp"

#include <algorithm>
#include <charconv>
#include <stdexcept>

#include "metrics.hpp"

namespace deskfarm::kernel {

namespace {
constexpr std::string_view inbox_prefix = "_INBOX.";
constexpr std::size_t max_cached_routes = 100000;

void check_subject(std::string_view subject, bool is_pattern) {
  if (auto error = sdk::subject_error(subject, is_pattern); !error.empty()) throw std::invalid_argument("bus: " + error);
}
}  // namespace

BusCore::BusCore(sdk::Clock& clock, std::chrono::milliseconds block_timeout)
    : clock_(clock), block_timeout_(block_timeout) {}

BusCore::~BusCore() {
  {
    std::lock_guard lock(pending_mutex_);
    closing_ = true;  // a sweep that runs from now on neither expires nor re-arms
    if (sweep_timer_ != 0) clock_.cancel(sweep_timer_);
  }
  sweeper_.reset();  // drops a queued sweep, waits for a running one
}

SubjectStats* BusCore::stats_for_locked(const std::string& subject) {
  auto& slot = stats_[subject];
  if (!slot) slot = std::make_unique<SubjectStats>();
  return slot.get();
}

std::shared_ptr<const BusCore::Route> BusCore::route(const std::string& subject) {
  {
    std::shared_lock lock(mutex_);
    if (auto it = routes_.find(subject); it != routes_.end()) return it->second;
  }
  check_subject(subject, false);  // only well-formed subjects are cached, so a hit needs no check
  std::unique_lock lock(mutex_);
  if (auto it = routes_.find(subject); it != routes_.end()) return it->second;
  auto r = std::make_shared<Route>();
  std::vector<std::string_view> matched;
  for (const auto& [pattern, count] : patterns_) {
    if (sdk::subject_matches(pattern, subject)) matched.push_back(pattern);
  }
  if (!matched.empty()) {
    for (const auto& sub : subs_) {  // in subscription order
      if (std::find(matched.begin(), matched.end(), sub->pattern) != matched.end()) r->subs.push_back(sub);
    }
  }
  r->stats = stats_for_locked(subject);
  if (routes_.size() >= max_cached_routes) clear_routes_locked();
  routes_.emplace(subject, r);
  return r;
}

void BusCore::clear_routes_locked() {
  routes_.clear();
  routes_epoch_.fetch_add(1, std::memory_order_release);
}

std::shared_ptr<const BusCore::Route> BusCore::route(const std::string& subject, RouteCache& cache) {
  // A subscription that came before this call cleared the routes first: the epoch read here is then newer than
  // the cached one, and the route is looked up again.
  const auto epoch = routes_epoch_.load(std::memory_order_acquire);
  std::shared_ptr<const Route> r;
  if (cache.owner == this && cache.epoch == epoch && cache.subject == subject) r = cache.route.lock();
  if (!r) {
    r = route(subject);
    cache.owner = this;
    cache.epoch = epoch;
    cache.subject = subject;
    cache.route = r;
  }
  return r;
}

void BusCore::publish(sdk::Message message) {
  thread_local RouteCache cache;
  const auto r = route(message.subject, cache);
  r->stats->published.fetch_add(1, std::memory_order_relaxed);
  if (remote_) remote_->publish(message);  // other processes get the encoding; this one keeps the object
  if (r->subs.empty()) return;
  r->stats->delivered.fetch_add(deliver(r->subs, std::move(message)), std::memory_order_relaxed);
}

std::uint64_t BusCore::deliver(const Subscribers& subs, sdk::Message&& message) {
  if (subs.size() == 1) {
    // One receiver, the common case: the message moves into its queue, no shared copy is allocated.
    const auto& sub = subs.front();
    return sub->strand->deliver(std::move(message), sub, block_timeout_) ? 1 : 0;
  }
  const auto shared = std::make_shared<const sdk::Message>(std::move(message));
  std::uint64_t delivered = 0;
  for (const auto& sub : subs) {
    if (sub->strand->deliver(shared, sub, block_timeout_)) ++delivered;
  }
  return delivered;
}

std::shared_ptr<Subscriber> BusCore::subscribe(std::string pattern, sdk::Handler handler,
                                               sdk::SubscribeOptions options, Strand& strand) {
  check_subject(pattern, true);
  if (options.queue_limit == 0) throw std::invalid_argument("bus: queue_limit must be at least 1");
  auto sub = std::make_shared<Subscriber>();
  sub->pattern = std::move(pattern);
  sub->handler = std::move(handler);
  sub->strand = &strand;
  sub->limit = options.queue_limit;
  sub->overflow = options.overflow;
  bool watched = false;
  {
    std::unique_lock lock(mutex_);
    auto& dropped = dropped_[sub->pattern];
    if (!dropped) dropped = std::make_unique<std::atomic<std::uint64_t>>(0);
    sub->dropped = dropped.get();
    subs_.push_back(sub);
    if (++patterns_[sub->pattern] == 1 && remote_) {
      remote_->watch(sub->pattern);
      watched = true;
    }
    clear_routes_locked();
  }
  // A subscription made before another process publishes gets that publication: it is in place at the
  // NATS server when subscribe() returns.
  if (watched) remote_->settle();
  return sub;
}

void BusCore::unsubscribe(const std::shared_ptr<Subscriber>& sub) {
  sub->active.store(false, std::memory_order_release);
  std::unique_lock lock(mutex_);
  if (std::erase(subs_, sub) > 0) {
    if (auto it = patterns_.find(sub->pattern); it != patterns_.end() && --it->second == 0) {
      patterns_.erase(it);
      if (remote_) remote_->unwatch(sub->pattern);
    }
  }
  clear_routes_locked();
}

std::unique_ptr<BusCore::RemoteRest> BusCore::deliver_remote(sdk::Message&& message, bool now, RouteCache& cache) {
  const auto r = route(message.subject, cache);  // the transport checked the subject
  const auto& subs = r->subs;
  std::uint64_t delivered = 0;
  std::unique_ptr<RemoteRest> rest;
  // What is left for finish_remote(): the subscribers from `next` on.
  const auto leave = [&](std::shared_ptr<const sdk::Message> m, std::size_t next) {
    rest = std::make_unique<RemoteRest>(RemoteRest{r, std::move(m), next});
  };
  if (!now) {
    leave(std::make_shared<const sdk::Message>(std::move(message)), 0);
  } else if (subs.size() == 1) {  // one receiver, the common case: the message moves into its queue
    const auto offered = subs.front()->strand->offer(std::move(message), subs.front());
    if (offered == Strand::Offer::queued) delivered = 1;
    // A full queue left the message as it was.
    else if (offered == Strand::Offer::full) leave(std::make_shared<const sdk::Message>(std::move(message)), 0);
  } else if (!subs.empty()) {
    const auto shared = std::make_shared<const sdk::Message>(std::move(message));
    for (std::size_t i = 0; i < subs.size(); ++i) {
      const auto offered = subs[i]->strand->offer(shared, subs[i]);
      if (offered == Strand::Offer::queued) ++delivered;
      if (offered == Strand::Offer::full) {
        leave(shared, i);
        break;
      }
    }
  }
  if (delivered > 0) r->stats->delivered.fetch_add(delivered, std::memory_order_relaxed);
  return rest;
}

void BusCore::finish_remote(RemoteRest& rest) {
  const auto& subs = rest.route->subs;
  std::uint64_t delivered = 0;
  for (std::size_t i = rest.next; i < subs.size(); ++i) {
    if (subs[i]->strand->deliver(rest.message, subs[i], block_timeout_)) ++delivered;
  }
  rest.route->stats->delivered.fetch_add(delivered, std::memory_order_relaxed);
}

void BusCore::request(sdk::Message message, std::chrono::nanoseconds timeout, sdk::ReplyHandler on_reply,
                      Strand& requester) {
  const auto r = route(message.subject);
  r->stats->published.fetch_add(1, std::memory_order_relaxed);
  if (r->subs.empty() && !remote_) {
    requester.post([h = std::move(on_reply), s = message.subject] { h(nullptr, "no responders on '" + s + "'"); });
    return;
  }
  const std::uint64_t id = next_inbox_.fetch_add(1, std::memory_order_relaxed);
  // "_INBOX." and up to 8 digits stay within the string's inline buffer: no allocation per request.
  char digits[24];
  const auto end = std::to_chars(digits, digits + sizeof digits, id).ptr;
  message.reply_to.reserve(inbox_prefix.size() + static_cast<std::size_t>(end - digits));
  message.reply_to.assign(inbox_prefix).append(digits, end);
  {
    std::lock_guard lock(pending_mutex_);
    const auto deadline = clock_.now() + timeout;
    pending_.emplace(id, Pending{std::move(on_reply), &requester, deadline,
                                 std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count(), message.subject,
                                 r->subs.size()});
    deadlines_.emplace_back(deadline, id);
    std::push_heap(deadlines_.begin(), deadlines_.end(), std::greater<>{});
    // Answered requests leave their entry behind; drop them before they outnumber the live ones.
    if (deadlines_.size() > 2 * pending_.size() + 64) {
      std::erase_if(deadlines_, [&](const auto& d) { return !pending_.contains(d.second); });
      std::make_heap(deadlines_.begin(), deadlines_.end(), std::greater<>{});
    }
    if (!sweeper_) sweeper_ = std::make_unique<Strand>(requester.pool(), "bus.timeouts");
    if (!armed_for_ || deadline < *armed_for_) arm_sweep_locked(deadline);
  }
  if (remote_) remote_->request(message, id);  // after the request is pending: an answer may come at once
  if (r->subs.empty()) return;
  r->stats->delivered.fetch_add(deliver(r->subs, std::move(message)), std::memory_order_relaxed);
}

void BusCore::arm_sweep_locked(sdk::TimePoint deadline) {
  if (sweep_timer_ != 0) clock_.cancel(sweep_timer_);  // if it already fired, that sweep just finds less to do
  const std::uint64_t seq = ++sweep_seq_;
  armed_for_ = deadline;
  sweep_timer_ = clock_.after(deadline - clock_.now(), *sweeper_, [this, seq] { sweep(seq); });
}

void BusCore::sweep(std::uint64_t seq) {
  {
    std::lock_guard lock(pending_mutex_);
    if (closing_) return;
    if (seq == sweep_seq_) {
      sweep_timer_ = 0;
      armed_for_.reset();
    }
    const auto now = clock_.now();
    while (!deadlines_.empty()) {
      const auto [deadline, id] = deadlines_.front();
      const auto it = pending_.find(id);
      if (it != pending_.end() && deadline > now) break;
      std::pop_heap(deadlines_.begin(), deadlines_.end(), std::greater<>{});
      deadlines_.pop_back();
      if (it != pending_.end()) {
        // Posted under the lock, in (deadline, id) order, so forget_requests() cannot race the post.
        Pending& p = it->second;
        p.requester->post([h = std::move(p.on_reply), ms = p.timeout_ms, subject = std::move(p.subject)] {
          h(nullptr, "timeout after " + std::to_string(ms) + " ms waiting for a reply on '" + subject + "'");
        });
        pending_.erase(it);
      }
    }
    if (!deadlines_.empty() && (!armed_for_ || deadlines_.front().first < *armed_for_)) {
      arm_sweep_locked(deadlines_.front().first);
    }
  }
}

void BusCore::reply(const sdk::Message& request, sdk::Message reply) {
  const std::string_view to = request.reply_to;
  std::uint64_t id = 0;
  const char* digits = to.data() + std::min(to.size(), inbox_prefix.size());
  const auto parsed = std::from_chars(digits, to.data() + to.size(), id);
  if (!to.starts_with(inbox_prefix) || parsed.ec != std::errc{} || parsed.ptr != to.data() + to.size()) {
    // Not one of this process's inboxes: a request from another process, answered through the transport.
    if (remote_ && !to.empty()) {
      reply.subject = request.reply_to;
      remote_->reply(request.reply_to, reply);
      return;
    }
    throw std::invalid_argument("bus: reply to a message that is not a request");
  }
  reply.subject = request.reply_to;
  auto message = std::make_shared<sdk::Message>(std::move(reply));
  std::lock_guard lock(pending_mutex_);  // held across the post: see forget_requests()
  auto it = pending_.find(id);
  if (it == pending_.end()) {
    late_replies_.fetch_add(1, std::memory_order_relaxed);  // timed out, or a second responder
    return;
  }
  complete_locked(it, std::move(message));
}

void BusCore::complete_locked(std::unordered_map<std::uint64_t, Pending>::iterator it, std::shared_ptr<sdk::Message> message) {
  it->second.requester->post([h = std::move(it->second.on_reply), m = std::move(message)] { h(m.get(), {}); });
  pending_.erase(it);
}

void BusCore::remote_reply(std::uint64_t id, sdk::Message&& reply, bool no_responders, bool count_late) {
  std::shared_ptr<sdk::Message> message;
  if (!no_responders) message = std::make_shared<sdk::Message>(std::move(reply));
  std::lock_guard lock(pending_mutex_);
  auto it = pending_.find(id);
  if (it == pending_.end()) {
    if (!no_responders && count_late) late_replies_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (!no_responders) return complete_locked(it, std::move(message));
  if (it->second.local_responders > 0) return;  // a subscriber in this process answers
  it->second.requester->post([h = std::move(it->second.on_reply), s = std::move(it->second.subject)] {
    h(nullptr, "no responders on '" + s + "'");
  });
  pending_.erase(it);
}

void BusCore::forget_requests(const Strand& requester) {
  std::lock_guard lock(pending_mutex_);
  std::erase_if(pending_, [&](const auto& entry) { return entry.second.requester == &requester; });
}

std::map<std::string, std::array<std::uint64_t, 2>> BusCore::subject_counters() const {
  std::map<std::string, std::array<std::uint64_t, 2>> out;
  std::shared_lock lock(mutex_);
  for (const auto& [subject, s] : stats_) out[subject] = {s->published.load(), s->delivered.load()};
  return out;
}

std::map<std::string, std::uint64_t> BusCore::dropped_counters() const {
  std::map<std::string, std::uint64_t> out;
  std::shared_lock lock(mutex_);
  for (const auto& [pattern, n] : dropped_) out[pattern] = n->load();
  return out;
}

std::string BusCore::metrics_text() const {
  std::string published = "# HELP deskfarm_bus_published_total Messages published, by subject.\n"
                          "# TYPE deskfarm_bus_published_total counter\n";
  std::string delivered = "# HELP deskfarm_bus_delivered_total Messages queued to subscribers, by subject.\n"
                          "# TYPE deskfarm_bus_delivered_total counter\n";
  for (const auto& [subject, c] : subject_counters()) {
    const auto labels = render_labels({{"subject", subject}});
    published += "deskfarm_bus_published_total" + labels + " " + std::to_string(c[0]) + "\n";
    delivered += "deskfarm_bus_delivered_total" + labels + " " + std::to_string(c[1]) + "\n";
  }
  std::string dropped = "# HELP deskfarm_bus_dropped_total Messages dropped by a full subscriber queue, by subscription pattern.\n"
                        "# TYPE deskfarm_bus_dropped_total counter\n";
  for (const auto& [pattern, n] : dropped_counters()) {
    dropped += "deskfarm_bus_dropped_total" + render_labels({{"pattern", pattern}}) + " " + std::to_string(n) + "\n";
  }
  std::string refused = "# HELP deskfarm_bus_version_refused_total Messages a receiver refused because it understands another "
                        "version of their type (in this process).\n# TYPE deskfarm_bus_version_refused_total counter\n";
  for (const auto& r : sdk::detail::version_refusals()) {
    refused += "deskfarm_bus_version_refused_total" +
               render_labels({{"type", r.type}, {"sent", std::to_string(r.sent)}, {"understood", std::to_string(r.understood)}}) +
               " " + std::to_string(r.count) + "\n";
  }
  return published + delivered + dropped + refused +
         "# HELP deskfarm_bus_late_replies_total Replies that arrived after their request was answered or timed out.\n"
         "# TYPE deskfarm_bus_late_replies_total counter\ndeskfarm_bus_late_replies_total " +
         std::to_string(late_replies()) + "\n";
}

void InstanceBus::publish(sdk::Message message) { core_.publish(std::move(message)); }

sdk::Subscription InstanceBus::subscribe(std::string pattern, sdk::Handler handler, sdk::SubscribeOptions options) {
  auto sub = core_.subscribe(std::move(pattern), std::move(handler), options, strand_);
  {
    std::lock_guard lock(mutex_);
    subs_.push_back(sub);
  }
  return sdk::Subscription([this, weak = std::weak_ptr<Subscriber>(sub)] {
    if (auto s = weak.lock()) core_.unsubscribe(s);
  });
}

void InstanceBus::request(sdk::Message message, std::chrono::nanoseconds timeout, sdk::ReplyHandler on_reply) {
  core_.request(std::move(message), timeout, std::move(on_reply), strand_);
}

void InstanceBus::reply(const sdk::Message& request, sdk::Message reply) { core_.reply(request, std::move(reply)); }

void InstanceBus::close() {
  std::vector<std::weak_ptr<Subscriber>> subs;
  {
    std::lock_guard lock(mutex_);
    subs.swap(subs_);
  }
  for (auto& weak : subs) {
    if (auto s = weak.lock()) core_.unsubscribe(s);
  }
  core_.forget_requests(strand_);
}

}  // namespace deskfarm::kernel
