// bus_bench: throughput and request/reply latency of the in-process bus (BusCore on Strands over a
// worker Pool), each printed beside a baseline measured in the same run: a plain std::mutex +
// std::condition_variable + std::deque queue between threads.
//   bus_bench [--messages N] [--round-trips N] [--workers N] [--runs N] [--only 1to1|1to8|rr]
// Throughput is first publish to last message handled; a run's figure is the median of --runs runs.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "bus.hpp"
#include "clock.hpp"
#include "executor.hpp"

using namespace deskfarm;
using namespace deskfarm::kernel;
using Steady = std::chrono::steady_clock;

namespace {

/// The smallest useful message: a sequence number, so the bench can check per-subscriber order.
struct Tick {
  static constexpr std::string_view type_name = "bench.tick";
  static constexpr std::uint32_t type_version = 1;
  std::uint64_t seq = 0;
  std::string encode() const { return std::to_string(seq); }
  static Tick decode(std::string_view bytes) { return Tick{std::stoull(std::string(bytes))}; }
};

struct Options {
  std::uint64_t messages = 2'000'000;
  std::uint64_t round_trips = 200'000;
  unsigned workers = 2;
  int runs = 3;
  std::string only;  // "1to1", "1to8" or "rr": one bus measurement alone, for profiling
};

constexpr std::size_t fan_out = 8;
constexpr std::uint64_t warm_up_round_trips = 20'000;

double seconds_between(Steady::time_point a, Steady::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "bus_bench: %s\n", what.c_str());
  std::exit(1);
}

// Waits for the consumers to finish without competing with them for the two cores.
void wait_for(const std::atomic<bool>& done) {
  while (!done.load(std::memory_order_acquire)) std::this_thread::sleep_for(std::chrono::microseconds(200));
}

/// The baseline: one lock, one condition variable, notify on every push, pop one at a time.
template <class T>
class PlainQueue {
 public:
  void push(T value) {
    {
      std::lock_guard lock(mutex_);
      items_.push_back(std::move(value));
    }
    ready_.notify_one();
  }
  T pop() {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [&] { return !items_.empty(); });
    T value = std::move(items_.front());
    items_.pop_front();
    return value;
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<T> items_;
};

sdk::Message tick(std::string subject, std::uint64_t seq) { return sdk::make_message(std::move(subject), Tick{seq}); }

// ---- 1 -> k publish/subscribe ------------------------------------------------------------------

/// Messages per second published by one thread and handled by `k` subscribers on their own strands.
double bus_fan_out(const Options& o, std::size_t k) {
  Pool pool(o.workers);
  RealClock clock;
  BusCore bus(clock, std::chrono::seconds(10));
  std::vector<std::unique_ptr<Strand>> strands;
  std::vector<std::shared_ptr<Subscriber>> subs;
  std::vector<std::uint64_t> next(k, 0);
  std::atomic<std::size_t> remaining{k};
  std::atomic<bool> done{false};
  std::atomic<bool> out_of_order{false};
  Steady::time_point end{};
  for (std::size_t i = 0; i < k; ++i) {
    strands.push_back(std::make_unique<Strand>(pool, "sub-" + std::to_string(i)));
    subs.push_back(bus.subscribe(
        "bench.x",
        [&, i](const sdk::Message& m) {
          const Tick* t = sdk::body_as<Tick>(m);
          if (!t || t->seq != next[i]) out_of_order.store(true, std::memory_order_relaxed);
          if (++next[i] == o.messages && remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            end = Steady::now();
            done.store(true, std::memory_order_release);
          }
        },
        {}, *strands[i]));
  }
  const auto start = Steady::now();
  for (std::uint64_t s = 0; s < o.messages; ++s) bus.publish(tick("bench.x", s));
  wait_for(done);
  if (out_of_order) fail("a subscriber saw messages out of publish order");
  if (!pool.wait_idle(std::chrono::seconds(10))) fail("pool did not go idle");
  for (auto& sub : subs) bus.unsubscribe(sub);
  return static_cast<double>(o.messages) / seconds_between(start, end);
}

double plain_fan_out(const Options& o, std::size_t k) {
  std::vector<std::unique_ptr<PlainQueue<sdk::Message>>> queues;
  for (std::size_t i = 0; i < k; ++i) queues.push_back(std::make_unique<PlainQueue<sdk::Message>>());
  std::atomic<std::size_t> remaining{k};
  std::atomic<bool> done{false};
  std::atomic<bool> out_of_order{false};
  Steady::time_point end{};
  std::vector<std::jthread> consumers;
  for (std::size_t i = 0; i < k; ++i) {
    consumers.emplace_back([&, i] {
      for (std::uint64_t expect = 0; expect < o.messages; ++expect) {
        const sdk::Message m = queues[i]->pop();
        const Tick* t = sdk::body_as<Tick>(m);
        if (!t || t->seq != expect) out_of_order.store(true, std::memory_order_relaxed);
      }
      if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        end = Steady::now();
        done.store(true, std::memory_order_release);
      }
    });
  }
  const auto start = Steady::now();
  for (std::uint64_t s = 0; s < o.messages; ++s) {
    // Same work per message as the bus: one Message, its body shared by every receiver.
    const sdk::Message m = tick("bench.x", s);
    for (auto& q : queues) q->push(m);
  }
  wait_for(done);
  if (out_of_order) fail("baseline consumer saw messages out of order");
  return static_cast<double>(o.messages) / seconds_between(start, end);
}

// ---- request/reply -----------------------------------------------------------------------------

struct Latency {
  double p50 = 0, p99 = 0, p999 = 0;  // microseconds
};

Latency percentiles(std::vector<std::int64_t>& ns) {
  std::sort(ns.begin(), ns.end());
  auto at = [&](double q) {
    const auto i = std::min(ns.size() - 1, static_cast<std::size_t>(q * static_cast<double>(ns.size())));
    return static_cast<double>(ns[i]) / 1000.0;
  };
  return {at(0.50), at(0.99), at(0.999)};
}

/// Closed loop: the requester's reply handler sends the next request.
Latency bus_round_trips(const Options& o) {
  Pool pool(o.workers);
  RealClock clock;
  BusCore bus(clock, std::chrono::seconds(10));
  Strand requester(pool, "requester"), responder(pool, "responder");
  auto sub = bus.subscribe(
      "bench.rpc", [&](const sdk::Message& m) { bus.reply(m, tick("", sdk::body_as<Tick>(m)->seq)); }, {}, responder);
  const std::uint64_t total = warm_up_round_trips + o.round_trips;
  std::vector<std::int64_t> ns;
  ns.reserve(o.round_trips);
  std::uint64_t sent = 0;
  Steady::time_point t0{};
  std::atomic<bool> done{false};
  std::string error;
  std::function<void()> send_next;
  const sdk::ReplyHandler on_reply = [&](const sdk::Message* reply, std::string_view why) {
    const auto t1 = Steady::now();
    if (!reply || sdk::body_as<Tick>(*reply)->seq != sent - 1) {
      error = reply ? "reply to the wrong request" : std::string(why);
      done.store(true, std::memory_order_release);
      return;
    }
    if (sent > warm_up_round_trips) ns.push_back((t1 - t0).count());
    if (sent == total) {
      done.store(true, std::memory_order_release);
      return;
    }
    send_next();
  };
  send_next = [&] {
    t0 = Steady::now();
    bus.request(tick("bench.rpc", sent++), std::chrono::seconds(5), on_reply, requester);
  };
  requester.post(send_next);
  wait_for(done);
  if (!error.empty()) fail("request failed: " + error);
  if (!pool.wait_idle(std::chrono::seconds(10))) fail("pool did not go idle");
  bus.unsubscribe(sub);
  return percentiles(ns);
}

Latency plain_round_trips(const Options& o) {
  PlainQueue<sdk::Message> to_server, to_client;
  const std::uint64_t total = warm_up_round_trips + o.round_trips;
  std::jthread server([&] {
    for (std::uint64_t i = 0; i < total; ++i) {
      const sdk::Message m = to_server.pop();
      to_client.push(tick("", sdk::body_as<Tick>(m)->seq));
    }
  });
  std::vector<std::int64_t> ns;
  ns.reserve(o.round_trips);
  for (std::uint64_t i = 0; i < total; ++i) {
    const auto t0 = Steady::now();
    to_server.push(tick("bench.rpc", i));
    const sdk::Message reply = to_client.pop();
    const auto t1 = Steady::now();
    if (sdk::body_as<Tick>(reply)->seq != i) fail("baseline reply to the wrong request");
    if (i >= warm_up_round_trips) ns.push_back((t1 - t0).count());
  }
  return percentiles(ns);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) fail("option " + a + " needs a value (usage: --messages N --round-trips N --workers N --runs N)");
    const std::string v = argv[++i];
    try {
      if (a == "--messages") o.messages = std::stoull(v);
      else if (a == "--round-trips") o.round_trips = std::stoull(v);
      else if (a == "--workers") o.workers = static_cast<unsigned>(std::stoul(v));
      else if (a == "--runs") o.runs = std::stoi(v);
      else if (a == "--only") o.only = v;
      else fail("unknown option " + a + " (known: --messages --round-trips --workers --runs --only)");
    } catch (const std::logic_error&) {
      fail("option " + a + ": '" + v + "' is not a number");
    }
  }
  if (o.messages == 0 || o.round_trips == 0 || o.workers == 0 || o.runs < 1) fail("every option must be at least 1");
  return o;
}

template <class F>
double median_of(int runs, F measure) {
  std::vector<double> v;
  for (int r = 0; r < runs; ++r) v.push_back(measure());
  return median(v);
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  std::printf("bus_bench: %llu messages, %llu round trips (+%llu warm-up), %u workers, %u hardware threads, median of %d\n\n",
              static_cast<unsigned long long>(o.messages), static_cast<unsigned long long>(o.round_trips),
              static_cast<unsigned long long>(warm_up_round_trips), o.workers, std::thread::hardware_concurrency(), o.runs);

  if (!o.only.empty()) {
    for (int r = 0; r < o.runs; ++r) {
      if (o.only == "1to1") std::printf("1->1 %.2f M messages/s\n", bus_fan_out(o, 1) / 1e6);
      else if (o.only == "1to8") std::printf("1->8 %.2f M messages/s\n", bus_fan_out(o, fan_out) / 1e6);
      else if (o.only == "rr") {
        const Latency l = bus_round_trips(o);
        std::printf("request/reply p50 %.2f us p99 %.2f us p99.9 %.2f us\n", l.p50, l.p99, l.p999);
      }
      else fail("--only takes 1to1, 1to8 or rr");
    }
    return 0;
  }
  const double bus1 = median_of(o.runs, [&] { return bus_fan_out(o, 1); });
  const double plain1 = median_of(o.runs, [&] { return plain_fan_out(o, 1); });
  const double bus8 = median_of(o.runs, [&] { return bus_fan_out(o, fan_out); });
  const double plain8 = median_of(o.runs, [&] { return plain_fan_out(o, fan_out); });

  std::vector<Latency> bus_l, plain_l;
  for (int r = 0; r < o.runs; ++r) {
    bus_l.push_back(bus_round_trips(o));
    plain_l.push_back(plain_round_trips(o));
  }
  auto med = [](const std::vector<Latency>& v, double Latency::*field) {
    std::vector<double> xs;
    for (const auto& l : v) xs.push_back(l.*field);
    return median(xs);
  };

  std::printf("| measurement                     | bus          | baseline     | ratio |\n");
  std::printf("|---------------------------------|--------------|--------------|-------|\n");
  auto row = [](const char* what, double ours, double base, const char* unit, bool higher_is_better) {
    std::printf("| %-31s | %8.2f %-3s | %8.2f %-3s | %5.2f |\n", what, ours, unit, base, unit,
                higher_is_better ? ours / base : base / ours);
  };
  row("1->1 messages/s", bus1 / 1e6, plain1 / 1e6, "M", true);
  row("1->8 messages published/s", bus8 / 1e6, plain8 / 1e6, "M", true);
  row("1->8 deliveries/s", bus8 * fan_out / 1e6, plain8 * fan_out / 1e6, "M", true);
  row("request/reply p50", med(bus_l, &Latency::p50), med(plain_l, &Latency::p50), "us", false);
  row("request/reply p99", med(bus_l, &Latency::p99), med(plain_l, &Latency::p99), "us", false);
  row("request/reply p99.9", med(bus_l, &Latency::p999), med(plain_l, &Latency::p999), "us", false);
  std::printf("\nratio: throughput bus/baseline, latency baseline/bus; above 1 means the bus is faster.\n");
  return 0;
}
