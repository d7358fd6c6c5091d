#pragma once
#include <filesystem>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <type_traits>
#include <vector>

#include "deskfarm/sdk/api.hpp"
#include "deskfarm/sdk/bus.hpp"
#include "deskfarm/sdk/clock.hpp"
#include "deskfarm/sdk/config.hpp"
#include "deskfarm/sdk/discovery.hpp"
#include "deskfarm/sdk/executor.hpp"
#include "deskfarm/sdk/lifeline.hpp"
#include "deskfarm/sdk/log.hpp"
#include "deskfarm/sdk/metrics.hpp"
#include "deskfarm/sdk/service.hpp"

namespace deskfarm::sdk {

class Store;

/// Everything the kernel gives one plugin instance. Valid from the plugin's constructor until its
/// destructor returns. Bus handlers, timers and the Plugin lifecycle calls all run on executor().
class DESKFARM_SDK_API Context {
 public:
  virtual ~Context();
  /// The instance name from the manifest ("pvs-1").
  virtual const std::string& name() const = 0;
  /// The deployment name.
  virtual const std::string& deployment() const = 0;
  virtual const Config& config() const = 0;
  virtual Bus& bus() = 0;
  virtual Clock& clock() = 0;
  virtual Executor& executor() = 0;
  virtual Logger& log() = 0;
  virtual Metrics& metrics() = 0;
  /// The data store (include deskfarm/sdk/store.hpp to use it).
  virtual Store& store() = 0;
  /// A directory this instance owns for its files (created on first call).
  virtual std::filesystem::path state_dir() = 0;
  /// Hands work back to this instance's executor from the plugin's own threads; see Lifeline.
  virtual std::shared_ptr<Lifeline> lifeline() = 0;

  /// Advertises an endpoint of this instance ("tftp" → "127.0.0.1:6969") to discovery; call in start().
  virtual void advertise(const std::string& name, const std::string& endpoint) = 0;
  /// The running instances that provide `role` (every running instance for ""), with their endpoints.
  virtual std::vector<InstanceInfo> instances(const std::string& role) = 0;

  /// Queues `work` on the deployment's blocking pool (threads apart from those that run executors). At stop,
  /// work not yet begun is dropped, running work sees its stop_token requested, and stop waits for it.
  virtual void submit_blocking(std::function<void(std::stop_token)> work) = 0;

  /// Runs `work(stop_token)` on the blocking pool (file copies, merges, slow queries), then `done` on this
  /// instance's executor with its result as a Reply (a RequestError keeps its code, any other exception becomes
  /// Error{"failed", error_text(e)}). `done`
  /// never runs after the instance stopped.
  template <class Work, class Done>
  void run_blocking(Work work, Done done) {
    using R = std::invoke_result_t<Work&, std::stop_token>;
    using T = std::conditional_t<std::is_void_v<R>, Empty, R>;
    submit_blocking([w = std::move(work), d = std::move(done), line = lifeline()](std::stop_token stop) mutable {
      auto result = std::make_shared<std::optional<Reply<T>>>();
      try {
        if constexpr (std::is_void_v<R>) {
          w(stop);
          result->emplace(Empty{});
        } else {
          result->emplace(w(stop));
        }
      } catch (const RequestError& e) {
        result->emplace(Error{e.code(), e.what()});
      } catch (const std::exception& e) {
        result->emplace(Error{"failed", error_text(e)});
      } catch (...) {
        result->emplace(Error{"failed", "unknown exception"});
      }
      line->post([d = std::move(d), result]() mutable { d(std::move(**result)); });
    });
  }

  /// Runs `task` on this instance's executor after `delay` (deployment time); cancelled at stop.
  TimerId after(Duration delay, std::function<void()> task) { return clock().after(delay, executor(), std::move(task)); }
  /// Runs `task` on this instance's executor every `period`; cancelled at stop.
  TimerId every(Duration period, std::function<void()> task) { return clock().every(period, executor(), std::move(task)); }
};

}  // namespace deskfarm::sdk
