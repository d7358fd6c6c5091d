#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <Poco/JSON/Object.h>

#include "clock.hpp"
#include "deskfarm/sdk/plugin.hpp"
#include "log.hpp"
#include "manifest.hpp"
#include "plugin_loader.hpp"

namespace deskfarm::kernel {

struct BusClient;
struct Instance;
struct Runtime;

/// A failure while creating or starting instances; whatever had started was stopped again.
class StartError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The answer to an operator's bus request: `ok` with the reply's type and JSON body, or not with an error
/// code ("timeout", "no_responders", "bad_request", "error" with the plugin's Error envelope as `body`).
struct BusAnswer {
  bool ok = false;
  std::string type;  ///< reply type, or the error code
  std::string body;  ///< JSON reply, or the error text / envelope
};

/// A manifest brought to life: plugins loaded and checked, instances created and started in
/// dependency order, stopped in reverse. Constructing one validates everything and starts nothing.
class Deployment {
 public:
  /// Loads every plugin the manifest names and validates configs, roles and order. Throws ValidationError.
  Deployment(Manifest manifest, PluginCatalog& catalog, LogSink& log);
  ~Deployment();
  Deployment(const Deployment&) = delete;
  Deployment& operator=(const Deployment&) = delete;

  /// Creates every instance, then starts them in order; all or nothing. Throws StartError or ValidationError.
  /// Nothing is logged as starting, and no state directory is left behind, unless every instance was created.
  void start();
  /// Creates every instance (their constructors validate their config) and destroys them again; starts
  /// nothing and leaves no directory behind. Throws ValidationError (`deskfarm check`).
  void check();
  /// Stops every started instance in reverse order and destroys them. Idempotent.
  void stop();

  /// Instance names in start order.
  std::vector<std::string> start_order() const;
  /// The deployment and every instance (state, health, its own fields), as served at /status (status.cpp).
  Poco::JSON::Object::Ptr status();
  /// Sends a JSON request (type deskfarm.json) to `subject` and waits for the reply (the admin endpoint's POST /request).
  BusAnswer request(const std::string& subject, const std::string& json, std::chrono::milliseconds timeout);
  /// The same without waiting: `done` gets the answer once, on the bus's thread (the reply, the bus's timeout on the
  /// deployment clock, no_responders), or at once on the caller's thread for a request that cannot be sent
  /// (not running, bad subject, body not JSON). After stop() a pending request's `done` is dropped, never called.
  void request_async(const std::string& subject, const std::string& json, std::chrono::milliseconds timeout,
                     std::function<void(BusAnswer)> done);
  /// Prometheus exposition of the kernel's and every instance's metrics (status.cpp).
  std::string metrics_text();
  /// Runs `task` on the named instance's executor and waits for it (tests and tools).
  void run_on(const std::string& instance, std::function<void(sdk::Plugin&, sdk::Context&)> task,
              std::chrono::milliseconds timeout = std::chrono::seconds(10));

  /// Opens a bus endpoint of its own (a strand named `name` and a bus view) for a caller that is no instance:
  /// the test kit's probes and typed requests. Valid until stop(), which closes it (its queued work is dropped).
  BusClient& open_client(const std::string& name);

  const Manifest& manifest() const { return manifest_; }
  /// `text` with the deployment's secrets (data-store passwords, the admin token) shown as "***".
  std::string redact(std::string text) const;
  sdk::Clock& clock();
  /// The virtual clock, or nullptr with a real one.
  VirtualClock* virtual_clock();
  bool running() const { return running_; }

 private:
  void stop_started(std::size_t count);
  /// Destroys every instance once its strand drained (bounded by stop_timeout), then the runtime;
  /// an instance stuck in a plugin call is leaked with the runtime instead (logged).
  void teardown();
  /// Publishes kernel.instance.up/down and updates the discovery directory.
  void announce(Instance& inst, bool up);
  /// Starts the runtime and constructs every plugin; on failure undoes it all (see start()) and throws.
  void create_all();
  /// Removes the state directories that constructors created (empty ones only), up to what existed before.
  void remove_created_dirs();

  Manifest manifest_;
  LogSink& log_;
  std::vector<std::unique_ptr<Instance>> instances_;  // in start order
  std::unique_ptr<Runtime> runtime_;
  std::vector<std::string> secrets_;
  bool running_ = false;
  std::chrono::steady_clock::time_point started_at_{};
  std::filesystem::path first_missing_dir_;  // the highest missing ancestor of state_dir before create_all()
};


}  // namespace deskfarm::kernel
