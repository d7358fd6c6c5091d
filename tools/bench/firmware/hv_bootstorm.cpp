// Boot storm through the hypervisor's start path: N desktops of a simulated XenServer pool (hypervisor-xen,
// firmware = true) are started with the typed hypervisor requests, all at once as a broker would send them; the
// adapter's queue lets --concurrency run at a time (max_in_progress), and each started VM boots through real
// firmware against one pvs on loopback (options 66/67 → TFTP bootstrap → NBD login → working set → handover).
// The peer, in the same run and against the same pvs: the same number of firmwares booted directly, C at a time
// (what firmware_bootstorm does), on MACs of their own.
//   hv_bootstorm [--devices 500] [--concurrency 64] [--ws-mib 4] [--request-kib 256] [--base-mib 16]
//                [--blocking-workers C] [--start-ms 0] [--timeout-s 600]   (--help lists them)
// A live progress line goes to stderr; the results and the ratios (hypervisor / direct) to stdout.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/program_options.hpp>

#include <deskfarm/firmware/firmware.hpp>
#include <deskfarm/interfaces/hypervisor/hypervisor.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/harness.hpp>
#include <deskfarm/testing/process.hpp>
#include <deskfarm/testing/temp_dir.hpp>

#include "../storm.hpp"
#include "firmware_storm.hpp"

using namespace deskfarm;
using Clock = std::chrono::steady_clock;
namespace po = boost::program_options;
namespace hv = deskfarm::interfaces::hypervisor;

namespace {

struct Args : bench::StormArgs {
  Args() {
    ws_mib = 4;  // what a BootPlan reads by default
    base_mib = 16;
  }
  int blocking_workers = 0;  ///< 0: --concurrency
  int start_ms = 0;
  int timeout_s = 600;
};

const char* synopsis = "usage: hv_bootstorm [OPTIONS]\n";

[[noreturn]] void usage(const std::string& why, const po::options_description& options) {
  std::cerr << "hv_bootstorm: " << why << "\n" << synopsis << options;
  std::exit(2);
}

double ms_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

/// The result of one storm: boot times (ms) of the devices that booted, how long the whole storm took.
struct Result {
  std::vector<double> boot_ms;     ///< from the boot's start (the task started / the firmware called) to handover
  std::vector<double> request_ms;  ///< hypervisor only: from the start request to the task's completion (queue included)
  int failures = 0;
  std::string first_failure;
  double total_s = 0;
};

/// The loopback address the hypervisor adapter gives a VM (127.X.Y.Z from its MAC's last three octets), so the
/// direct peer's devices look to pvs as the VMs do: one machine per address.
std::string address_of(int vm_number) {
  return "127." + std::to_string((vm_number >> 16) & 0xff) + "." + std::to_string((vm_number >> 8) & 0xff) + "." +
         std::to_string(vm_number & 0xff);
}

Result direct_storm(const Args& a, const firmware::BootPlan& base, int first_number, Clock::time_point give_up) {
  Result r;
  const auto plan_of = [&](int i) {
    auto plan = base;
    plan.mac = bench::mac_of(first_number + i);
    plan.source_address = address_of(first_number + i);
    return plan;
  };
  const auto record = [&](const firmware::BootPlan& plan, const firmware::BootResult& b, double ms) {
    if (b.ok) r.boot_ms.push_back(ms);
    else if (r.failures++ == 0) r.first_failure = plan.mac + ": " + b.failed_step + ": " + b.reason;
  };
  const auto storm = bench::direct_firmware_storm("direct", a.devices, a.concurrency, give_up, plan_of, record);
  r.total_s = storm.total_s;
  r.failures += storm.not_started;
  return r;
}

/// What the harness's bus client saw of one VM's start: when it asked, when its task started and ended.
struct Seen {
  Clock::time_point asked{}, started{}, ended{};
  std::string state, error;
};

Result hypervisor_storm(testing::Harness& h, Clock::time_point give_up) {
  const auto inv = h.request<sdk::Empty, hv::Inventory>(hv::request_subject("farm-hv", "inventory"), {});
  if (!inv) throw std::runtime_error("inventory of farm-hv: " + inv.error().message);
  std::vector<std::string> vms;
  for (const auto& vm : inv->vms) vms.push_back(vm.id);
  auto seen = std::make_shared<std::map<std::string, Seen>>();  // by VM id; written on the client's executor
  auto m = std::make_shared<std::mutex>();
  auto ended = std::make_shared<std::atomic<int>>(0), ok = std::make_shared<std::atomic<int>>(0);
  auto subscription = std::make_shared<sdk::Subscription>();
  const auto t0 = Clock::now();
  // Every start at once from the bus client, each recorded as its task's events arrive.
  h.with_bus([vms, seen, m, ended, ok, subscription](sdk::Bus& bus) {
    *subscription = sdk::subscribe<hv::Task>(bus, "hypervisor.farm-hv.task.*", [seen, m, ended, ok](const hv::Task& t, const sdk::Message&) {
      if (t.action != "start") return;
      const auto now = Clock::now();
      std::lock_guard lock(*m);
      auto& s = (*seen)[t.vm];
      if (t.state == "started") s.started = now;
      if (t.state == "completed" || t.state == "failed" || t.state == "cancelled") {
        if (!s.state.empty()) return;
        s.ended = now;
        s.state = t.state;
        s.error = t.error_code + " " + t.error;
        ++*ended;
        if (t.state == "completed") ++*ok;
      }
    });
    for (const auto& id : vms) {
      {
        std::lock_guard lock(*m);
        (*seen)[id].asked = Clock::now();
      }
      hv::VmAction start;
      start.action = "start";
      start.vm = id;
      sdk::request<hv::VmAction, hv::Task>(bus, hv::request_subject("farm-hv", "vm.action"), start, std::chrono::seconds(60),
                                           [seen, m, ended, id](sdk::Reply<hv::Task> r) {
                                             if (r) return;
                                             std::lock_guard lock(*m);
                                             auto& s = (*seen)[id];
                                             if (!s.state.empty()) return;
                                             s.state = "refused";
                                             s.error = r.error().code + " " + r.error().message;
                                             ++*ended;
                                           });
    }
  });
  const int n = static_cast<int>(vms.size());
  const bool in_time = bench::progress("hypervisor", n, t0, give_up, [&] { return ended->load() >= n; },
                                [&] { return std::pair{ok->load(), ended->load() - ok->load()}; });
  if (!in_time) std::fprintf(stderr, "\nhv_bootstorm: --timeout-s passed with %d of %d starts ended\n", ended->load(), n);
  h.with_bus([subscription](sdk::Bus&) { subscription->reset(); });
  Result r;
  std::lock_guard lock(*m);
  Clock::time_point last = t0;
  for (const auto& [id, s] : *seen) {
    if (s.state == "completed") {
      r.boot_ms.push_back(ms_between(s.started, s.ended));
      r.request_ms.push_back(ms_between(s.asked, s.ended));
      last = std::max(last, s.ended);
    } else if (r.failures++ == 0) {
      r.first_failure = id + ": " + (s.state.empty() ? "did not end in time" : s.state + " " + s.error);
    }
  }
  r.total_s = std::chrono::duration<double>((in_time ? last : Clock::now()) - t0).count();
  return r;
}

void report(const char* what, const Result& r, int devices) {
  const auto boot = bench::percentiles(r.boot_ms);
  std::printf("%-10s devices %d ok %zu  total %.2f s  %.1f boots/s  boot p50 %.1f ms  p99 %.1f ms  max %.1f ms", what, devices,
              r.boot_ms.size(), r.total_s, static_cast<double>(r.boot_ms.size()) / r.total_s, boot.p50, boot.p99, boot.max);
  if (!r.request_ms.empty()) {
    const auto asked = bench::percentiles(r.request_ms);
    std::printf("  request→running p50 %.1f ms  p99 %.1f ms", asked.p50, asked.p99);
  }
  std::printf("\n");
  if (r.failures) std::printf("  %d failures, first: %s\n", r.failures, r.first_failure.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  po::options_description flags("options");
  flags.add_options()
      ("help,h", "print this help and exit")
      ("blocking-workers", po::value<long long>()->value_name("N")->default_value(0),
       "the deployment's blocking_workers (the firmware boots run there); 0 = --concurrency, at most 256")
      ("start-ms", po::value<long long>()->value_name("MS")->default_value(a.start_ms),
       "the simulated power-on before the firmware runs (constant), 0..60000")
      ("timeout-s", po::value<long long>()->value_name("S")->default_value(a.timeout_s),
       "give up on each storm after this many seconds, 1..86400");
  a.add_options(flags);
  const po::positional_options_description no_operands;
  const auto vm = bench::parse_command_line(argc, argv, flags, no_operands, [&](const std::string& why) { usage(why, flags); });
  if (vm.count("help")) {
    std::cout << "hv_bootstorm: N desktops started through hypervisor-xen boot with real firmware against one pvs.\n"
              << synopsis << flags;
    return 0;
  }
  const auto fail = [&](const std::string& why) { usage(why, flags); };
  a.read(vm, fail);
  a.base_mib = std::max<std::uint64_t>(a.base_mib, 1);
  a.blocking_workers = static_cast<int>(bench::checked_integer(vm, "blocking-workers", 0, 256, fail));
  if (a.blocking_workers == 0) a.blocking_workers = std::min(a.concurrency, 256);
  a.start_ms = static_cast<int>(bench::checked_integer(vm, "start-ms", 0, 60000, fail));
  a.timeout_s = static_cast<int>(bench::checked_integer(vm, "timeout-s", 1, 86400, fail));
  if (a.devices > 30000) fail("--devices: at most 30000 (VMs and peers share 52:54:00:00:00:01 .. 52:54:00:00:ff:ff)");

  std::printf("hypervisor boot storm: %d desktops via hypervisor-xen (max_in_progress %d, blocking_workers %d, power-on %d ms) "
              "vs %d direct firmwares %d at a time; %llu MiB working set in %llu KiB reads, base %llu MiB, %u hardware threads\n",
              a.devices, a.concurrency, a.blocking_workers, a.start_ms, a.devices, a.concurrency,
              static_cast<unsigned long long>(a.ws_mib), static_cast<unsigned long long>(a.request_kib),
              static_cast<unsigned long long>(a.base_mib), std::thread::hardware_concurrency());
  std::fflush(stdout);

  // One deployment: pvs with a device per VM and per direct peer, and the pool whose VMs are 52:54:00:00:00:01...
  testing::TempDir dir("hv-bootstorm");
  std::filesystem::create_directories(dir.path() / "vdisks");
  testing::write_file(dir.path() / "vdisks" / "gold.img", testing::pattern(a.base_mib << 20, 3));
  const auto tftp = "127.0.0.1:" + std::to_string(testing::free_port(SOCK_DGRAM));
  std::string devices;
  for (int k = 1; k <= 2 * a.devices; ++k) devices += "  { mac = \"" + bench::mac_of(k) + "\", vdisk = \"gold\" },\n";
  const int hosts = a.devices / 1000 + 2;  // 64 MB, 1-vCPU VMs: 1,000 to a host (65536 MB, 1024 vCPUs)
  std::string host_list;
  for (int i = 1; i <= hosts; ++i) host_list += std::string(i > 1 ? ", " : "") + "{ id = \"host-" + std::to_string(i) + "\", vcpus = 1024 }";
  const std::string manifest =
      "[deployment]\nname = \"hv-bootstorm\"\nstate_dir = \"" + (dir.path() / "var").string() + "\"\ndata_store = \"sqlite:" +
      (dir.path() / "ds.db").string() + "\"\nblocking_workers = " + std::to_string(a.blocking_workers) +
      "\nblocking_queue = " + std::to_string(std::max(1024, 2 * a.devices)) +
      "\n\n[instances.pvs-1]\nplugin = \"pvs\"\ntftp = \"" + tftp + "\"\nstream = \"127.0.0.1:0\"\nmax_connections = 4096\nstore = \"" +
      (dir.path() / "vdisks").string() + "\"\nvdisks = [{ name = \"gold\" }]\ndevices = [\n" + devices + "]\n\n"
      "[instances.farm-hv]\nplugin = \"hypervisor-xen\"\nfirmware = true\nmac_prefix = \"52:54:00\"\nmax_in_progress = " +
      std::to_string(a.concurrency) + "\nhosts = [" + host_list + "]\n"
      "networks = [{ name = \"desktops\", tftp_server = \"" + tftp + "\", boot_file = \"ARDBP32.BIN\" }]\n"
      "templates = [{ name = \"win10\", memory_mb = 64, vcpus = 1 }]\n"
      "vms = [{ template = \"win10\", count = " + std::to_string(a.devices) + " }]\n"
      "latencies = [{ action = \"start\", distribution = \"constant\", ms = " + std::to_string(a.start_ms) + " }]\n";
  testing::HarnessOptions o;
  o.plugin_path = {PLUGIN_DIR};
  o.source_name = "hv-bootstorm.toml";
  o.log_level = sdk::LogLevel::error;  // one line per boot step would be the storm's own bottleneck
  testing::Harness h(manifest, o);
  h.start();
  const bool loaded = testing::eventually([&] {
    const auto status = h.instance_status("pvs-1");
    const auto* c = status.find("catalog");
    return c && c->is_string() && c->as_string() == "loaded";
  }, std::chrono::seconds(60));
  if (!loaded) {
    std::fprintf(stderr, "hv_bootstorm: pvs-1 did not load its catalog within 60 s\n");
    return 1;
  }

  firmware::BootPlan plan;  // the plan the adapter makes from the network's options 66/67
  plan.boot_order = {"network"};
  plan.tftp_server = tftp;
  plan.boot_file = "ARDBP32.BIN";
  plan.working_set_bytes = a.ws_mib << 20;
  plan.read_request_bytes = static_cast<std::uint32_t>(a.request_kib << 10);

  const auto direct = direct_storm(a, plan, a.devices + 1, Clock::now() + std::chrono::seconds(a.timeout_s));
  const auto via_hv = hypervisor_storm(h, Clock::now() + std::chrono::seconds(a.timeout_s));
  h.stop();

  report("direct", direct, a.devices);
  report("hypervisor", via_hv, a.devices);
  const auto d = bench::percentiles(direct.boot_ms), v = bench::percentiles(via_hv.boot_ms);
  const double direct_rate = static_cast<double>(direct.boot_ms.size()) / direct.total_s;
  const double hv_rate = static_cast<double>(via_hv.boot_ms.size()) / via_hv.total_s;
  std::printf("hypervisor / direct: boots/s %.2fx  boot p50 %.2fx  p99 %.2fx\n", hv_rate / std::max(direct_rate, 1e-9),
              v.p50 / std::max(d.p50, 1e-9), v.p99 / std::max(d.p99, 1e-9));
  return direct.failures || via_hv.failures ? 1 : 0;
}
