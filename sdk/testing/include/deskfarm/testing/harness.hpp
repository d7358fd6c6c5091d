#pragma once
// The SDK's test kit: a deployment in the test's own process, started from TOML text, with the virtual clock,
// a bus probe, typed and JSON requests, run_on and log capture. Framework-neutral: nothing here asserts;
// every call either returns what it saw or throws std::runtime_error naming what it waited for.
//
//   deskfarm::testing::Harness h(R"([instances.greeter]
//   plugin = "hello"
//   )", {.clock = "virtual"});
//   h.start();
//   auto greetings = h.probe("hello.greeter");
//   auto first = greetings.expect_as<deskfarm::sdk::Text>(std::chrono::seconds(31));  // 31 s of virtual time
//
// The kit links the kernel inside libdeskfarm-testing.so; its headers name only SDK and standard types.
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <deskfarm/sdk/bus.hpp>
#include <deskfarm/sdk/clock.hpp>
#include <deskfarm/sdk/context.hpp>
#include <deskfarm/sdk/log.hpp>
#include <deskfarm/sdk/plugin.hpp>
#include <deskfarm/sdk/service.hpp>
#include <deskfarm/sdk/value.hpp>

#define DESKFARM_TESTING_API __attribute__((visibility("default")))

namespace deskfarm::testing {

namespace detail {
struct HarnessCore;
struct ProbeState;
}  // namespace detail

struct HarnessOptions {
  /// Directories searched for NAME.so, in order. Empty: $DESKFARM_PLUGIN_PATH (colon-separated), then the
  /// directories beside the running executable, as the deskfarm command does.
  std::vector<std::filesystem::path> plugin_path;
  /// The deployment's state_dir when the manifest names none. Empty: a fresh temporary directory, removed
  /// when the Harness is destroyed.
  std::filesystem::path state_dir;
  /// Overrides [deployment] clock ("real" or "virtual") when not empty; with a manifest that has no
  /// [deployment] table this is how a test picks the virtual clock.
  std::string clock;
  /// The name error messages give the manifest text ("NAME:line:column: ...").
  std::string source_name = "manifest.toml";
  /// Log lines below this level are neither captured nor echoed.
  sdk::LogLevel log_level = sdk::LogLevel::info;
  /// Also write every captured line to stderr (for debugging a test).
  bool echo_logs = false;
};

/// The answer to a JSON request, as `deskfarm request` shows it: `ok` with the reply's type and JSON body,
/// or not, with an error code as `type` ("timeout", "no_responders", "bad_request", "error" with the
/// plugin's sdk::Error envelope as `body`).
struct JsonAnswer {
  bool ok = false;
  std::string type;
  std::string body;
};

/// What a plugin library declares (its descriptor), read without starting it. Loading it runs the kernel's
/// checks of the descriptor and of its config schema (names, types, defaults, ranges).
struct PluginInfo {
  struct Key {
    std::string name;  ///< "vdisks[].name" for a field of a table array
    std::optional<std::string> default_toml;  ///< nullopt: the key is required
    std::string description;
  };
  std::filesystem::path file;
  std::string name;
  std::string version;
  std::string sdk_version;
  std::string summary;
  std::vector<std::string> provides;
  std::vector<std::string> requires_roles;
  std::vector<Key> config;
};

class Harness;

/// The messages published on a subject pattern from the moment Harness::probe() returned. Copyable: copies
/// share one queue. It may outlive its Harness; it then only reports what it had received, and its messages
/// carry their encoded `bytes` instead of the in-process body (read them with sdk::body_of).
/// A message or body taken while the Harness runs points into the publishing plugin's module: drop it before
/// the Harness is destroyed (the plugin library is unloaded then).
class DESKFARM_TESTING_API Probe {
 public:
  /// Takes the next message not taken yet (and accepted by `accept`, if given; others are skipped). With the
  /// virtual clock it moves time forward, one batch of timers at a time, until a message is there or
  /// `within` has passed (then the time is now + within); with a real clock it waits up to `within`.
  /// nullopt when none came.
  std::optional<sdk::Message> expect(std::chrono::nanoseconds within,
                                     const std::function<bool(const sdk::Message&)>& accept = {});
  /// expect() for a message whose body is a T (others are skipped); nullptr when none came.
  template <sdk::MessageType T>
  std::shared_ptr<const T> expect_as(std::chrono::nanoseconds within) {
    auto m = expect(within, [](const sdk::Message& msg) { return msg.type == T::type_name || msg.type == sdk::json_type; });
    return m ? sdk::body_of<T>(*m) : nullptr;
  }
  /// Waits up to `real_timeout` of real time without moving a virtual clock (for messages caused by I/O
  /// or by a plugin's own threads).
  std::optional<sdk::Message> await(std::chrono::nanoseconds real_timeout);
  /// Every message received so far, taken or not, in arrival order.
  std::vector<sdk::Message> received() const;
  std::size_t count() const;
  const std::string& pattern() const;

 private:
  friend class Harness;
  Probe(std::shared_ptr<detail::ProbeState> state, std::weak_ptr<detail::HarnessCore> core)
      : state_(std::move(state)), core_(std::move(core)) {}
  std::shared_ptr<detail::ProbeState> state_;
  std::weak_ptr<detail::HarnessCore> core_;
};

/// An in-process deployment built from manifest text. Not thread-safe: drive it from one thread.
class DESKFARM_TESTING_API Harness {
 public:
  /// Parses and validates `manifest_toml` and loads its plugins (what `deskfarm check` does); starts nothing.
  /// A manifest without a [deployment] table gets one (name "harness"); state_dir (and so the default data
  /// store) is filled in when absent. Throws std::runtime_error with the kernel's "file:line:column: ..."
  /// messages.
  explicit Harness(const std::string& manifest_toml, HarnessOptions options = {});
  /// Stops the deployment if it runs and removes the temporary state_dir.
  ~Harness();
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;
  Harness(Harness&&) noexcept;
  Harness& operator=(Harness&&) noexcept;

  /// Creates and starts every instance; throws std::runtime_error naming the instance that failed.
  void start();
  /// Ends the probes' subscriptions, then stops every instance. Idempotent.
  void stop();
  bool running() const;
  /// Instance names in start order.
  std::vector<std::string> instances() const;

  /// True with clock = "virtual".
  bool is_virtual() const;
  /// The deployment's time (virtual or wall).
  sdk::TimePoint now() const;
  /// Virtual clock: fires every timer due within `span`, waiting for what they post to run, then moves the
  /// time to now + span. Throws std::logic_error with a real clock or before start().
  void advance(sdk::Duration span);

  /// Runs `task` on the instance's executor, with its plugin object and context, and waits for it (at most
  /// `timeout`, then throws; a task still running then is not waited for, so capture by shared_ptr what it
  /// writes after a timeout could end the caller's frame). Exceptions from `task` come back as runtime_error.
  void run_on(const std::string& instance, std::function<void(sdk::Plugin&, sdk::Context&)> task,
              std::chrono::milliseconds timeout = std::chrono::seconds(10));
  /// The /status document (deployment, and every instance's state, health and fields).
  sdk::Value status();
  /// One instance's own status fields (its Plugin::status()).
  sdk::Value instance_status(const std::string& instance, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  /// Polls the instance's status (real time, at most `within`) until field `key` is the string `expected`, e.g.
  /// pvs's "catalog" = "loaded" before a client connects; throws naming the instance, the field and what it last saw.
  void await_status(const std::string& instance, const std::string& key, const std::string& expected,
                    std::chrono::milliseconds within = std::chrono::seconds(30));
  /// The Prometheus exposition of /metrics.
  std::string metrics_text();

  /// Every log line captured so far ("TIME LEVEL subject: message").
  std::vector<std::string> logs() const;
  /// True when a captured line contains `needle`.
  bool logged(std::string_view needle) const;

  /// Starts capturing messages on `pattern` now (a subscription of the harness's own bus client).
  Probe probe(const std::string& pattern);
  /// Runs `task` with the harness's bus client on its executor (not waited for): publish, subscribe,
  /// request as a plugin would. A Subscription made there must be reset before stop().
  void with_bus(std::function<void(sdk::Bus&)> task);

  /// Publishes a typed message from the harness's bus client.
  template <sdk::MessageType T>
  void publish(std::string subject, T value) {
    with_bus([m = sdk::make_message(std::move(subject), std::move(value))](sdk::Bus& bus) mutable { bus.publish(std::move(m)); });
  }
  /// A typed request from the harness's bus client; waits for the reply or the error (code "timeout" when
  /// none came within `timeout` of bus time plus a grace period of real time).
  template <sdk::MessageType Req, sdk::MessageType Rep>
  sdk::Reply<Rep> request(std::string subject, Req req, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    // The reply may come after we stopped waiting: it writes only into the promise it shares.
    auto done = std::make_shared<std::promise<sdk::Reply<Rep>>>();
    auto answer = done->get_future();
    with_bus([subject, req = std::move(req), timeout, done](sdk::Bus& bus) mutable {
      sdk::request<Req, Rep>(bus, std::move(subject), std::move(req), timeout,
                             [done](sdk::Reply<Rep> r) { done->set_value(std::move(r)); });
    });
    if (!wait_ready(answer, timeout))
      return sdk::Reply<Rep>(sdk::Error{"timeout", "no reply on " + subject + " within " + std::to_string(timeout.count()) + " ms"});
    return answer.get();
  }
  /// A JSON request (type deskfarm.json), as an operator's `deskfarm request` sends it.
  JsonAnswer json_request(const std::string& subject, const std::string& json,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10));

  const std::filesystem::path& state_dir() const;

  /// Loads plugin `name` from `plugin_path` (empty: as HarnessOptions) and reads its descriptor; throws
  /// std::runtime_error when it is missing or the kernel refuses it (ABI, descriptor, config schema).
  static PluginInfo describe(const std::string& name, const std::vector<std::filesystem::path>& plugin_path = {});

 private:
  template <class T>
  bool wait_ready(std::future<T>& f, std::chrono::milliseconds timeout) {
    return f.wait_for(timeout + reply_grace()) == std::future_status::ready;
  }
  /// Real time allowed beyond a request's timeout (the timeout is measured on the bus's clock).
  static std::chrono::milliseconds reply_grace();
  std::shared_ptr<detail::HarnessCore> core_;
};

}  // namespace deskfarm::testing
