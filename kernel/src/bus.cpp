#include "bus.hpp"

#include <stdexcept>

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
  std::unique_lock lock(mutex_);
  if (auto it = routes_.find(subject); it != routes_.end()) return it->second;
  auto r = std::make_shared<Route>();
  for (const auto& sub : subs_) {
    if (sdk::subject_matches(sub->pattern, subject)) r->subs.push_back(sub);
  }
  r->stats = stats_for_locked(subject);
  if (routes_.size() >= max_cached_routes) routes_.clear();
  routes_.emplace(subject, r);
  return r;
}

void BusCore::publish(sdk::Message message) {
  check_subject(message.subject, false);
  const auto r = route(message.subject);
  r->stats->published.fetch_add(1, std::memory_order_relaxed);
  if (r->subs.empty()) return;
  const auto shared = std::make_shared<const sdk::Message>(std::move(message));
  std::uint64_t delivered = 0;
  for (const auto& sub : r->subs) {
    if (sub->strand->deliver(shared, sub, block_timeout_)) ++delivered;
  }
  r->stats->delivered.fetch_add(delivered, std::memory_order_relaxed);
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
  std::unique_lock lock(mutex_);
  sub->dropped = &stats_for_locked("$drops." + sub->pattern)->dropped;
  subs_.push_back(sub);
  routes_.clear();
  return sub;
}

void BusCore::unsubscribe(const std::shared_ptr<Subscriber>& sub) {
  sub->active.store(false, std::memory_order_release);
  std::unique_lock lock(mutex_);
  std::erase(subs_, sub);
  routes_.clear();
}

void BusCore::request(sdk::Message message, std::chrono::nanoseconds timeout, sdk::ReplyHandler on_reply,
                      Strand& requester) {
  check_subject(message.subject, false);
  const auto r = route(message.subject);
  r->stats->published.fetch_add(1, std::memory_order_relaxed);
  if (r->subs.empty()) {
    requester.post([h = std::move(on_reply), s = message.subject] { h(nullptr, "no responders on '" + s + "'"); });
    return;
  }
  const std::uint64_t id = next_inbox_.fetch_add(1, std::memory_order_relaxed);
  message.reply_to = std::string(inbox_prefix) + std::to_string(id);
  {
    std::lock_guard lock(pending_mutex_);
    pending_.emplace(id, Pending{std::move(on_reply), &requester, 0});
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count();
  const sdk::TimerId timer = clock_.after(timeout, requester, [this, id, ms, subject = message.subject] {
    fail_pending(id, "timeout after " + std::to_string(ms) + " ms waiting for a reply on '" + subject + "'");
  });
  {
    std::lock_guard lock(pending_mutex_);
    if (auto it = pending_.find(id); it != pending_.end()) it->second.timer = timer;
  }
  const auto shared = std::make_shared<const sdk::Message>(std::move(message));
  std::uint64_t delivered = 0;
  for (const auto& sub : r->subs) {
    if (sub->strand->deliver(shared, sub, block_timeout_)) ++delivered;
  }
  r->stats->delivered.fetch_add(delivered, std::memory_order_relaxed);
}

void BusCore::fail_pending(std::uint64_t id, std::string reason) {
  Pending p;
  {
    std::lock_guard lock(pending_mutex_);
    auto it = pending_.find(id);
    if (it == pending_.end()) return;
    p = std::move(it->second);
    pending_.erase(it);
  }
  p.on_reply(nullptr, reason);  // the timer already runs on the requester's strand
}

void BusCore::reply(const sdk::Message& request, sdk::Message reply) {
  const std::string_view to = request.reply_to;
  if (!to.starts_with(inbox_prefix)) throw std::invalid_argument("bus: reply to a message that is not a request");
  const std::uint64_t id = std::stoull(std::string(to.substr(inbox_prefix.size())));
  Pending p;
  {
    std::lock_guard lock(pending_mutex_);
    auto it = pending_.find(id);
    if (it == pending_.end()) {
      late_replies_.fetch_add(1, std::memory_order_relaxed);  // timed out, or a second responder
      return;
    }
    p = std::move(it->second);
    pending_.erase(it);
  }
  clock_.cancel(p.timer);
  reply.subject = request.reply_to;
  p.requester->post([h = std::move(p.on_reply), m = std::make_shared<sdk::Message>(std::move(reply))] { h(m.get(), {}); });
}

std::map<std::string, std::array<std::uint64_t, 3>> BusCore::subject_counters() const {
  std::map<std::string, std::array<std::uint64_t, 3>> out;
  std::shared_lock lock(mutex_);
  for (const auto& [subject, s] : stats_) {
    out[subject] = {s->published.load(), s->delivered.load(), s->dropped.load()};
  }
  return out;
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
}

}  // namespace deskfarm::kernel
