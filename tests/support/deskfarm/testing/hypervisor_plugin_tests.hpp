#pragma once
// The tests every simulated hypervisor plugin runs (plugins/hypervisor-*/tests): the conformance suite on a
// small two-host pool, manifest errors, masked credentials, a corrupt inventory file, run-time faults over the
// bus. Include <catch2/catch.hpp> first; then DESKFARM_HYPERVISOR_PLUGIN_TESTS("hypervisor-xen", "xen").
#include <fstream>
#include <string>

#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/testing/conformance_catch.hpp>
#include <deskfarm/testing/harness.hpp>

namespace deskfarm::testing::hypervisor_plugin {

/// A two-host pool where eight desktops fit, two actions run at once.
inline std::string manifest(const std::string& plugin, const std::string& extra = "") {
  return "[instances.hv-1]\nplugin = \"" + plugin + "\"\n" +
         "max_in_progress = 2\n"
         "hosts = [{ id = \"host-a\", memory_mb = 8192, vcpus = 16 }, { id = \"host-b\", memory_mb = 8192, vcpus = 16 }]\n"
         "templates = [{ name = \"desktop\", memory_mb = 2048, vcpus = 2 }]\n"
         "isos = [\"bdm.iso\"]\n" +
         extra;
}

inline HarnessOptions options() {
  HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR};
  o.clock = "virtual";
  return o;
}

/// The sum of a metric's samples in Prometheus text (every label set), 0 when absent.
inline double metric(const std::string& text, const std::string& name) {
  double sum = 0;
  std::size_t at = 0;
  while ((at = text.find(name, at)) != std::string::npos) {
    const bool line_start = at == 0 || text[at - 1] == '\n';
    const auto end = text.find('\n', at);
    const auto line = text.substr(at, end == std::string::npos ? std::string::npos : end - at);
    at += name.size();
    if (!line_start || (line.size() > name.size() && line[name.size()] != ' ' && line[name.size()] != '{')) continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

inline conformance::Subject subject(const std::string& plugin) {
  conformance::Subject s;
  s.plugin = plugin;
  s.instance = "hv-1";
  s.manifest_toml = manifest(plugin);
  s.options = options();
  return s;
}

}  // namespace deskfarm::testing::hypervisor_plugin

#define DESKFARM_HV_CAT2(a, b) a##b
#define DESKFARM_HV_CAT(a, b) DESKFARM_HV_CAT2(a, b)

/// The shared test cases for `plugin` ("hypervisor-xen") whose Inventory names `vendor` ("xen").
#define DESKFARM_HYPERVISOR_PLUGIN_TESTS(plugin, vendor)                                                                  \
  static ::deskfarm::testing::conformance::Subject DESKFARM_HV_CAT(hv_subject_, __LINE__)() {                             \
    return ::deskfarm::testing::hypervisor_plugin::subject(plugin);                                                        \
  }                                                                                                                        \
  DESKFARM_CONFORMANCE_SUITE(plugin, DESKFARM_HV_CAT(hv_subject_, __LINE__))                                                \
                                                                                                                           \
  TEST_CASE(plugin ": bad manifest values are refused at their key, before anything starts") {                            \
    namespace hp = ::deskfarm::testing::hypervisor_plugin;                                                                 \
    using ::deskfarm::testing::Harness;                                                                                    \
    CHECK_THROWS_WITH(Harness(hp::manifest(plugin, "vms = [{ template = \"nope\" }]\n"), hp::options()),                  \
                      Catch::Contains("template 'nope' is not in templates"));                                             \
    CHECK_THROWS_WITH(Harness("[instances.hv-1]\nplugin = \"" plugin "\"\ntemplates = [{ name = \"big\", memory_mb = 999999 }]\n", \
                              hp::options()),                                                                              \
                      Catch::Contains("more than any host has"));                                                          \
    CHECK_THROWS_WITH(Harness(hp::manifest(plugin, "faults = [{ kind = \"host_crash\", host = \"host-z\" }]\n"), hp::options()), \
                      Catch::Contains("host 'host-z'"));                                                                   \
    CHECK_THROWS_WITH(Harness(hp::manifest(plugin, "max_in_progress = -1\n"), hp::options()), Catch::Contains("max_in_progress")); \
    CHECK_THROWS_WITH(Harness(hp::manifest(plugin, "latencies = [{ action = \"start\", distribution = \"uniform\", ms = 5, max_ms = 1 }]\n"), \
                              hp::options()),                                                                              \
                      Catch::Contains("max_ms"));                                                                          \
  }                                                                                                                        \
                                                                                                                           \
  TEST_CASE(plugin ": the password never shows, while seeded VMs, the vendor and the queue do") {                                \
    namespace hp = ::deskfarm::testing::hypervisor_plugin;                                                                 \
    ::deskfarm::testing::Harness h(hp::manifest(plugin, "password = \"pa55-word-xyz\"\nusername = \"root\"\n"                \
                                                        "vms = [{ template = \"desktop\", count = 3 }]\n"),                  \
                                   hp::options());                                                                         \
    h.start();                                                                                                             \
    const auto st = h.instance_status("hv-1");                                                                             \
    CHECK(st.to_json().find("pa55-word-xyz") == std::string::npos);                                                        \
    CHECK(h.status().to_json().find("pa55-word-xyz") == std::string::npos);                                                \
    CHECK(st.find("password")->as_string() == "********");                                                                 \
    CHECK(st.find("vendor")->as_string() == vendor);                                                                       \
    CHECK(st.find("vms")->as_integer() == 3);                                                                              \
    CHECK(st.find("queue")->find("max_in_progress")->as_integer() == 2);                                                   \
    for (const auto& line : h.logs()) CHECK(line.find("pa55-word-xyz") == std::string::npos);                             \
  }                                                                                                                        \
                                                                                                                           \
  TEST_CASE(plugin ": a corrupt inventory file stops the start with the file and line, not a crash") {                     \
    namespace hp = ::deskfarm::testing::hypervisor_plugin;                                                                 \
    auto o = hp::options();                                                                                                \
    {                                                                                                                      \
      ::deskfarm::testing::Harness first(hp::manifest(plugin, "vms = [{ template = \"desktop\", count = 2 }]\n"), o);     \
      o.state_dir = first.state_dir();                                                                                     \
      first.start();                                                                                                       \
      first.stop();                                                                                                        \
      std::filesystem::path file;                                                                                          \
      for (const auto& e : std::filesystem::recursive_directory_iterator(first.state_dir()))                               \
        if (e.path().filename() == "hv-1.inventory") file = e.path();                                                     \
      REQUIRE(!file.empty());                                                                                              \
      std::ofstream(file, std::ios::app) << "garbage line\n";                                                              \
      ::deskfarm::testing::Harness second(hp::manifest(plugin), o);                                                        \
      CHECK_THROWS_WITH(second.start(), Catch::Contains("hv-1.inventory:4:") && Catch::Contains("restore it from a backup or remove it")); \
    }                                                                                                                      \
  }                                                                                                                        \
                                                                                                                           \
  TEST_CASE(plugin ": faults from the manifest and over the bus: slow storage, failure rate, bad values refused") {        \
    namespace hp = ::deskfarm::testing::hypervisor_plugin;                                                                 \
    namespace hv = ::deskfarm::interfaces::hypervisor;                                                                     \
    ::deskfarm::testing::Harness h(hp::manifest(plugin, "vms = [{ template = \"desktop\", count = 1 }]\n"                    \
                                                        "faults = [{ kind = \"task_failure_rate\", value = 1.0 }]\n"),     \
                                   hp::options());                                                                         \
    h.start();                                                                                                             \
    auto inv = h.request<::deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {});                         \
    REQUIRE(inv);                                                                                                          \
    const auto vm = inv->vms.at(0).id;                                                                                     \
    auto tasks = h.probe("hypervisor.hv-1.task.*");                                                                        \
    auto t = h.request<hv::VmAction, hv::Task>("hypervisor.hv-1.vm.action", hv::VmAction{"start", vm, "", "", "", {}});     \
    REQUIRE(t);                                                                                                            \
    std::string last;                                                                                                      \
    for (int i = 0; i < 10 && last != "failed"; ++i)                                                                       \
      if (auto m = tasks.expect_as<hv::Task>(std::chrono::minutes(5))) last = m->state;                                    \
    CHECK(last == "failed");                                                                                               \
    auto ok = h.request<hv::Fault, hv::Hosts>("hypervisor.hv-1.fault", hv::Fault{"task_failure_rate", "", 0});              \
    REQUIRE(ok);                                                                                                           \
    CHECK(ok->hosts.size() == 2);                                                                                          \
    auto bad = h.request<hv::Fault, hv::Hosts>("hypervisor.hv-1.fault", hv::Fault{"slow_storage", "", 0.5});                \
    REQUIRE(!bad);                                                                                                         \
    CHECK(bad.error().message.find("slow_storage") != std::string::npos);                                                  \
    auto odd = h.request<hv::Fault, hv::Hosts>("hypervisor.hv-1.fault", hv::Fault{"meteor", "", 0});                        \
    REQUIRE(!odd);                                                                                                         \
    CHECK(odd.error().message.find("meteor") != std::string::npos);                                                        \
    REQUIRE(h.request<hv::Fault, hv::Hosts>("hypervisor.hv-1.fault", hv::Fault{"slow_storage", "", 1000}));                 \
    auto slow = h.request<hv::VmAction, hv::Task>("hypervisor.hv-1.vm.action", hv::VmAction{"start", vm, "", "", "", {}});  \
    REQUIRE(slow);                                                                                                         \
    h.advance(std::chrono::minutes(10));                                                                                   \
    auto still = h.request<::deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {});                        \
    CHECK(still->vms.at(0).power_state == hv::kStarting); /* 4 s median x 1000 */                                          \
  } \
                                                                                                                           \
  TEST_CASE(plugin ": a manifest fault at at_s crashes its host then, and the metrics count tasks and events") {           \
    namespace hp = ::deskfarm::testing::hypervisor_plugin;                                                                 \
    namespace hv = ::deskfarm::interfaces::hypervisor;                                                                     \
    ::deskfarm::testing::Harness h(hp::manifest(plugin, "vms = [{ template = \"desktop\", count = 1 }]\n"                  \
                                                        "faults = [{ kind = \"host_crash\", host = \"host-b\", at_s = 30 }]\n"), \
                                   hp::options());                                                                         \
    h.start();                                                                                                             \
    auto up = [&] {                                                                                                        \
      std::size_t n = 0;                                                                                                   \
      const auto inv = h.request<::deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {});                 \
      for (const auto& host : inv->hosts) n += host.up;                                                                    \
      return n;                                                                                                            \
    };                                                                                                                     \
    h.advance(std::chrono::seconds(29));                                                                                   \
    CHECK(up() == 2);                                                                                                      \
    h.advance(std::chrono::seconds(2));                                                                                    \
    CHECK(up() == 1);                                                                                                      \
    CHECK(h.logged("host host-b failed"));                                                                                 \
    const auto inv = h.request<::deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {});                   \
    REQUIRE(h.request<hv::VmAction, hv::Task>("hypervisor.hv-1.vm.action", hv::VmAction{"start", inv->vms.at(0).id, "", "", "", {}})); \
    h.advance(std::chrono::minutes(2)); /* starting, running: two power events */                                      \
    const auto metrics = h.metrics_text();                                                                                 \
    CHECK(::deskfarm::testing::hypervisor_plugin::metric(metrics, "deskfarm_hypervisor_tasks_completed_total") == 1);     \
    CHECK(::deskfarm::testing::hypervisor_plugin::metric(metrics, "deskfarm_hypervisor_power_events_total") == 2);       \
    const auto after = h.request<::deskfarm::sdk::Empty, hv::Inventory>("hypervisor.hv-1.inventory", {});                 \
    CHECK(after->vms.at(0).host == "host-a"); /* the only host up */                                                       \
  }
