// hello: the smallest useful deskfarm plugin. It greets on the bus on a timer and answers pings.
#include <deskfarm/sdk/plugin.hpp>

#include "hello.hpp"

namespace {

using namespace deskfarm::sdk;

constexpr const char* provides[] = {"greeter", nullptr};

/// The manifest keys, bound into this struct by the schema below.
struct HelloConfig {
  std::string greeting;
  std::int64_t interval_s = 30;
};

constexpr auto config = schema<HelloConfig>(
    option("greeting", &HelloConfig::greeting, "\"hello\"", "what the plugin says"),
    option("interval_s", &HelloConfig::interval_s, "30", "seconds between greetings, published on hello.<instance>")
        .range(1, 86400));

}  // namespace

namespace {

class Hello final : public Plugin {
 public:
  explicit Hello(Context& ctx) : ctx_(ctx), config_(config.bind(ctx.config())) {}

  void start() override {
    ping_ = serve<Ping, Text>(ctx_.bus(), "hello.ping", [this](const Ping& p) { return Text{config_.greeting + ", " + p.name}; });
    // Looked up once: a timer handler runs for every tick of every instance, so it does only the tick's work.
    greeted_ = &ctx_.metrics().counter("deskfarm_hello_greetings_total", "Greetings published");
    subject_ = "hello." + ctx_.name();
    ctx_.every(std::chrono::seconds(config_.interval_s), [this] {
      ++greetings_;
      publish(ctx_.bus(), subject_, Text{config_.greeting});
      greeted_->inc();
    });
    ctx_.log().info("ready to greet every " + std::to_string(config_.interval_s) + " s");
  }

  void stop() override { ping_.reset(); }

  void status(Value& out) const override {
    out.set("greeting", config_.greeting);
    out.set("greetings", greetings_);
  }

 private:
  Context& ctx_;
  HelloConfig config_;
  std::int64_t greetings_ = 0;
  std::string subject_;
  Counter* greeted_ = nullptr;
  Subscription ping_;
};

}  // namespace

DESKFARM_PLUGIN(Hello, "hello", "1.1.0", "Greets on the bus and answers hello.ping (the SDK example)", provides,
                nullptr, config)
