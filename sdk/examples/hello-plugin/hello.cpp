// hello: the smallest useful deskfarm plugin. It greets on the bus on a timer and answers pings.
#include <deskfarm/sdk/plugin.hpp>

namespace {

using namespace deskfarm::sdk;

constexpr const char* provides[] = {"greeter", nullptr};
constexpr dk_config_key config[] = {
    {"greeting", DK_STRING, "\"hello\"", "what the plugin says"},
    {"interval_s", DK_INTEGER, "30", "seconds between greetings, published on hello.<instance>"},
};

class Hello final : public Plugin {
 public:
  explicit Hello(Context& ctx)
      : ctx_(ctx), greeting_(ctx.config().string("greeting")), interval_s_(ctx.config().integer("interval_s")) {
    if (interval_s_ < 1) throw ConfigError("interval_s", "interval_s must be at least 1 second");
  }

  void start() override {
    ping_ = subscribe<Text>(ctx_.bus(), "hello.ping", [this](const Text& t, const Message& m) {
      ctx_.bus().reply(m, make_message("", Text{greeting_ + ", " + t.value}));
    });
    // Looked up once: a timer handler runs for every tick of every instance, so it does only the tick's work.
    greeted_ = &ctx_.metrics().counter("hello_greetings_total", "Greetings published");
    subject_ = "hello." + ctx_.name();
    ctx_.every(std::chrono::seconds(interval_s_), [this] {
      ++greetings_;
      publish(ctx_.bus(), subject_, Text{greeting_});
      greeted_->inc();
    });
    ctx_.log().info("ready to greet every " + std::to_string(interval_s_) + " s");
  }

  void stop() override { ping_.reset(); }

  void status(Poco::JSON::Object& out) const override {
    out.set("greeting", greeting_);
    out.set("greetings", greetings_);
  }

 private:
  Context& ctx_;
  std::string greeting_;
  std::int64_t interval_s_;
  std::int64_t greetings_ = 0;
  std::string subject_;
  Counter* greeted_ = nullptr;
  Subscription ping_;
};

}  // namespace

DESKFARM_PLUGIN(Hello, "hello", "1.0.0", "Greets on the bus and answers hello.ping (the SDK example)", provides,
                nullptr, config)
