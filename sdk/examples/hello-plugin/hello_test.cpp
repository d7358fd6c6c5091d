// hello's own test, on the SDK's test kit: an in-process deployment on the virtual clock, a bus probe, a typed
// request, and the generic conformance checks. A plain main, so it needs no test framework.
#include <cstdlib>
#include <iostream>

#include <deskfarm/testing/conformance.hpp>
#include <deskfarm/testing/harness.hpp>

#include "hello.hpp"

namespace {

int failures = 0;

void expect(bool ok, const char* what, int line) {
  if (ok) return;
  std::cerr << "hello_test.cpp:" << line << ": failed: " << what << "\n";
  ++failures;
}
#define EXPECT(cond) expect(static_cast<bool>(cond), #cond, __LINE__)

const std::string manifest = "[instances.greeter]\nplugin = \"hello\"\ngreeting = \"hi\"\ninterval_s = 10\n";

void greets_on_its_interval_and_answers_pings() {
  using namespace std::chrono_literals;
  using deskfarm::sdk::Text;
  deskfarm::testing::HarnessOptions options;  // plugins: $DESKFARM_PLUGIN_PATH
  options.clock = "virtual";
  deskfarm::testing::Harness h(manifest, options);
  h.start();
  auto greetings = h.probe("hello.greeter");
  EXPECT(!greetings.expect(9s));  // 9 s of virtual time, in a moment of real time
  {
    const auto greeting = greetings.expect_as<Text>(2s);
    EXPECT(greeting && greeting->value == "hi");
  }
  const auto pong = h.request<Ping, Text>("hello.ping", Ping{"world"});
  EXPECT(pong.ok() && pong->value == "hi, world");
  EXPECT(h.instance_status("greeter").find("greetings")->as_integer() == 1);
  EXPECT(h.metrics_text().find("hello_greetings_total") != std::string::npos);
  h.stop();
  EXPECT(h.logged("ready to greet every 10 s"));
}

void passes_the_conformance_suite() {
  deskfarm::testing::conformance::Subject s;
  s.plugin = "hello";
  s.instance = "greeter";
  s.manifest_toml = manifest;
  for (const auto& f : deskfarm::testing::conformance::run(s)) {
    std::cerr << "conformance: " << f.check << ": " << f.problem << "\n";
    ++failures;
  }
}

}  // namespace

int main() {
  try {
    greets_on_its_interval_and_answers_pings();
    passes_the_conformance_suite();
  } catch (const std::exception& e) {
    std::cerr << "hello_test: " << e.what() << "\n";
    return EXIT_FAILURE;
  }
  std::cout << (failures ? "hello_test: FAILED\n" : "hello_test: ok\n");
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
