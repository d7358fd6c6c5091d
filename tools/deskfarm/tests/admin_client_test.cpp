// AdminClient against a real admin endpoint in this process (fixture_service answers `adder.adder.sum`): it keeps
// its connections, and replaces one the endpoint closed while it was idle without the caller seeing an error.
#include <algorithm>
#include <memory>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/metrics_text.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "admin.hpp"
#include "cli_common.hpp"
#include "deployment.hpp"

using namespace std::chrono_literals;
using deskfarm::cli::AdminClient;

TEST_CASE("AdminClient reuses its kept-alive connections, and one the endpoint closed while idle is replaced") {
  deskfarm::testing::TempDir scratch{"deskfarm-admin-client"};
  deskfarm::testing::write_text(scratch.path() / "lab.toml", "[deployment]\nname = \"lab\"\nstate_dir = \"" + (scratch.path() / "var").string() +
                                                                 "\"\n\n[instances.adder]\nplugin = \"fixture_service\"\n");
  deskfarm::kernel::LogSink log{deskfarm::sdk::LogLevel::warning};
  deskfarm::kernel::PluginCatalog catalog{{FIXTURE_PLUGIN_DIR}};
  deskfarm::kernel::Deployment deployment(deskfarm::kernel::load_manifest(scratch.path() / "lab.toml"), catalog, log);
  deployment.start();
  deskfarm::kernel::AdminLimits limits;
  limits.idle_timeout = 300ms;
  auto endpoint = std::make_unique<deskfarm::kernel::AdminServer>(deployment, "127.0.0.1:0", "", limits);

  const AdminClient client({endpoint->address(), ""});
  for (int i = 0; i < 20; ++i) {
    const auto a = client.request("adder.adder.sum", "{\"terms\":[" + std::to_string(i) + ",1]}", 5s);
    CHECK(a.status == 200);
    CHECK(a.body.find("\"total\":" + std::to_string(i + 1)) != std::string::npos);
  }
  CHECK(client.get("/status").status == 200);
  CHECK(client.connections_opened() == 1);

  // The endpoint closes the idle connection after 300 ms; the client still believes in it (its own limit is 2 s).
  std::this_thread::sleep_for(800ms);
  const auto after_idle = client.request("adder.adder.sum", "{\"terms\":[2,3]}", 5s);
  CHECK(after_idle.status == 200);
  CHECK(after_idle.body.find("\"total\":5") != std::string::npos);
  CHECK(client.connections_opened() == 2);

  // Four threads at once: each exchange takes a connection of its own, and they are kept for the next ones.
  std::vector<int> statuses(4 * 25, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        try {
          statuses[static_cast<std::size_t>(t * 25 + i)] = client.request("adder.adder.sum", "{\"terms\":[1]}", 5s).status;
        } catch (const std::exception&) {
          statuses[static_cast<std::size_t>(t * 25 + i)] = -1;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(std::count(statuses.begin(), statuses.end(), 200) == 100);
  CHECK(client.connections_opened() <= 2 + 4);
  CHECK(deskfarm::testing::metric_sample(endpoint->metrics_text(), "deskfarm_admin_reused_total") >= 100 - 4);

  endpoint.reset();
  deployment.stop();
}
