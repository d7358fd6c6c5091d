#include "deskfarm/firmware/firmware.hpp"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <vector>

#include "deskfarm/bdm/iso.hpp"
#include "deskfarm/bootstrap/bootstrap.hpp"
#include "deskfarm/nbd/client.hpp"
#include "deskfarm/tftp/client.hpp"

namespace deskfarm::firmware {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* stopped_text = "stopped";
// Pause between two rounds over a login server list that refused at once, so a dead list is not spun on.
constexpr milliseconds login_round_pause{250};
// A bootstrap is at most 4 KiB (bootstrap::max_size); a larger download is refused by parse() with its size.
constexpr std::size_t tftp_max_bytes = std::size_t{1} << 20;

std::string endpoint_text(const std::string& host, std::uint16_t port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

/// Sleeps `d` unless `stop` is requested first; true if it slept the whole time.
bool sleep_for(milliseconds d, const std::stop_token& stop) {
  const auto until = Clock::now() + d;
  std::mutex m;
  std::condition_variable cv;
  bool stopped = false;
  std::stop_callback wake(stop, [&] {
    std::lock_guard lock(m);
    stopped = true;
    cv.notify_all();
  });
  std::unique_lock lock(m);
  cv.wait_until(lock, until, [&] { return stopped; });
  return !stopped;
}

/// Records steps in order, with their start time and duration, and tells the caller about each.
class Recorder {
 public:
  Recorder(BootResult& result, const std::function<void(const Step&)>& on_step) : result_(result), on_step_(on_step) {}

  /// A step in progress; finish it with ok() or failed().
  struct Open {
    std::string name;
    std::chrono::system_clock::time_point at = std::chrono::system_clock::now();
    Clock::time_point started = Clock::now();
  };
  Open begin(std::string name) const { return Open{std::move(name)}; }
  void ok(const Open& open, std::string detail) { finish(open, "ok", std::move(detail)); }
  void failed(const Open& open, std::string detail) {
    // The first failure is the one a boot is known by (the primary device's), unless a stop ends the boot.
    if (result_.failed_step.empty() || detail == stopped_text) {
      result_.failed_step = open.name;
      result_.reason = detail;
    }
    finish(open, "failed", std::move(detail));
  }

 private:
  void finish(const Open& open, const char* state, std::string detail) {
    Step step{open.name, state, open.at,
              std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - open.started), std::move(detail)};
    result_.steps.push_back(step);
    if (on_step_) on_step_(result_.steps.back());
  }
  BootResult& result_;
  const std::function<void(const Step&)>& on_step_;
};

/// How one network boot attempt ended.
struct NetworkOutcome {
  bool ok = false;
  bool stopped = false;
  std::optional<bootstrap::Bootstrap> bootstrap;  ///< set once parsed: its recovery option applies to what follows
};

class NetworkBoot {
 public:
  NetworkBoot(const BootPlan& plan, const std::stop_token& stop, Recorder& rec, BootResult& result)
      : plan_(plan), stop_(stop), rec_(rec), result_(result) {}

  NetworkOutcome run() {
    NetworkOutcome out;
    if (!dhcp() || !tftp()) return finish(out);
    return from_bootstrap(out);
  }

  /// CD-ROM boot (the BDM ISO): the boot record comes from the disc instead of TFTP; the rest is the same.
  NetworkOutcome run_cdrom() {
    NetworkOutcome out;
    auto s = rec_.begin("cdrom");
    if (plan_.mac.empty()) {
      fail(s, "the VM has no MAC address: it is the NBD export name, set one");
      return finish(out);
    }
    source_ = std::string(bdm::bootstrap_path) + " on ISO " + plan_.iso_path;
    try {
      file_ = bdm::read_iso_file(plan_.iso_path, bdm::bootstrap_path);
    } catch (const std::exception& e) {
      fail(s, "cdrom boot: ISO " + plan_.iso_path + " has no readable boot record " + bdm::bootstrap_path +
                  " (is it a BDM ISO?): " + e.what());
      return finish(out);
    }
    rec_.ok(s, "boot record " + source_ + ": " + std::to_string(file_.size()) + " bytes");
    return from_bootstrap(out);
  }

 private:
  /// Bootstrap bytes in file_ → parsed → login → working set → handover.
  NetworkOutcome from_bootstrap(NetworkOutcome& out) {
    out.bootstrap = parse_bootstrap();
    if (!out.bootstrap) return finish(out);
    auto client = login(*out.bootstrap);
    if (!client) return finish(out);
    if (!stream(*client)) return finish(out);
    auto s = rec_.begin("handover");
    rec_.ok(s, "vDisk of " + plan_.mac + " served by " + result_.login_server + ", bootstrap version " +
                   std::to_string(out.bootstrap->version) + "; control passes to the desktop OS");
    out.ok = true;
    return out;
  }

  NetworkOutcome& finish(NetworkOutcome& out) {
    out.stopped = stop_.stop_requested();
    return out;
  }

  /// Fails `s` with "stopped" when a stop was requested (whatever the error said), else with `why`; false.
  bool fail(const Recorder::Open& s, const std::string& why) {
    rec_.failed(s, stop_.stop_requested() ? stopped_text : why);
    return false;
  }

  bool dhcp() {
    auto s = rec_.begin("dhcp");
    if (stop_.stop_requested()) return fail(s, stopped_text);
    try {
      std::tie(host_, port_) = parse_tftp_server(plan_.tftp_server);
    } catch (const std::invalid_argument& e) {
      return fail(s, e.what());
    }
    if (plan_.boot_file.empty()) return fail(s, "DHCP option 67 (boot file) is empty: set the network's boot file");
    if (plan_.mac.empty()) return fail(s, "the VM has no MAC address: it is the NBD export name, set one");
    rec_.ok(s, "option 66 " + endpoint_text(host_, port_) + ", option 67 " + plan_.boot_file + ", MAC " + plan_.mac);
    return true;
  }

  bool tftp() {
    auto s = rec_.begin("tftp");
    tftp::ClientOptions o;
    o.blksize = static_cast<std::uint16_t>(std::clamp<std::uint32_t>(plan_.tftp_blksize, 8, 65464));
    o.tsize = true;
    o.retransmit = std::max(plan_.tftp_timeout, milliseconds(1));
    o.max_retransmits = std::max(plan_.tftp_retries, 0);
    // Every stall already ends after (retries + 1) × timeout; the deadline only bounds a trickle of blocks.
    o.deadline = o.retransmit * (*o.max_retransmits + 1) * 8;
    o.max_bytes = tftp_max_bytes;
    o.stop = stop_;
    o.bind_address = plan_.source_address;
    try {
      auto r = tftp::Client(o).get(host_, port_, plan_.boot_file);
      file_.assign(reinterpret_cast<const char*>(r.data.data()), r.data.size());
      source_ = plan_.boot_file + " from " + endpoint_text(host_, port_);
      rec_.ok(s, plan_.boot_file + " from " + endpoint_text(host_, port_) + ": " + std::to_string(r.data.size()) +
                     " bytes in " + std::to_string(r.blocks) + " blocks, blksize " + std::to_string(r.blksize) +
                     (r.tsize ? ", tsize " + std::to_string(*r.tsize) : ", no tsize in the answer"));
      return true;
    } catch (const std::exception& e) {
      return fail(s, e.what());
    }
  }

  std::optional<bootstrap::Bootstrap> parse_bootstrap() {
    auto s = rec_.begin("bootstrap");
    try {
      auto b = bootstrap::parse(file_);
      result_.bootstrap_version = b.version;
      std::string servers;
      for (const auto& e : b.login_servers) servers += (servers.empty() ? "" : ", ") + endpoint_text(e.host, e.port);
      rec_.ok(s, "version " + std::to_string(b.version) + ", login servers " + servers + ", polling " +
                     std::to_string(b.login_polling_timeout_ms) + " ms, general " +
                     std::to_string(b.login_general_timeout_ms) + " ms, recovery " + bootstrap::to_string(b.recovery));
      return b;
    } catch (const bootstrap::BootstrapError& e) {
      fail(s, source_ + " is not a valid bootstrap: " + e.what());
      return std::nullopt;
    }
  }

  /// Tries the login servers in failover order, round after round, until one serves the MAC's export or
  /// login_general_timeout_ms has passed; each attempt waits at most login_polling_timeout_ms.
  std::optional<nbd::Client> login(const bootstrap::Bootstrap& b) {
    auto s = rec_.begin("login");
    const auto polling = milliseconds(b.login_polling_timeout_ms);
    const auto deadline = Clock::now() + milliseconds(b.login_general_timeout_ms);
    std::vector<std::string> last_error(b.login_servers.size());
    int rounds = 0;
    // Bounded: each round takes at least login_round_pause (or ends the loop), and the deadline ends the rounds.
    for (; rounds < 100000 && Clock::now() < deadline && !stop_.stop_requested(); ++rounds) {
      for (std::size_t i = 0; i < b.login_servers.size(); ++i) {
        const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
        if (left <= milliseconds(0) || stop_.stop_requested()) break;
        const auto& e = b.login_servers[i];
        try {
          nbd::Client client(e.host, e.port, plan_.mac, nbd::ClientOptions{std::min(polling, left), plan_.source_address, stop_});
          result_.login_server = endpoint_text(e.host, e.port);
          std::string detail = result_.login_server + " export " + plan_.mac + ", vDisk " + std::to_string(client.size()) + " bytes";
          std::string skipped;
          for (std::size_t j = 0; j < b.login_servers.size(); ++j)
            if (!last_error[j].empty() && j != i) skipped += (skipped.empty() ? "" : "; ") + last_error[j];
          if (!skipped.empty()) detail += " (failed over from: " + skipped + ")";
          rec_.ok(s, detail);
          return client;
        } catch (const nbd::ClientError& error) {
          last_error[i] = error.what();
        }
      }
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left > milliseconds(0) && !sleep_for(std::min({login_round_pause, polling, left}), stop_)) break;
    }
    std::string why = "all login servers down after " + std::to_string(b.login_general_timeout_ms) + " ms (" +
                      std::to_string(rounds) + " rounds): ";
    for (std::size_t i = 0; i < last_error.size(); ++i)
      why += (i ? "; " : "") + (last_error[i].empty() ? endpoint_text(b.login_servers[i].host, b.login_servers[i].port) + " not tried" : last_error[i]);
    fail(s, why);
    return std::nullopt;
  }

  bool stream(nbd::Client& client) {
    auto s = rec_.begin("stream");
    const std::uint64_t total = std::min<std::uint64_t>(plan_.working_set_bytes, client.size());
    std::vector<std::byte> buffer(std::max<std::uint32_t>(plan_.read_request_bytes, 512));
    std::uint64_t off = 0;
    int requests = 0;
    try {
      // Bounded by the size; every read is bounded by the login polling timeout (the connection's timeout).
      while (off < total) {
        if (stop_.stop_requested()) break;
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), total - off));
        if (const auto err = client.read(off, std::span(buffer.data(), n)); err != 0) {
          result_.bytes_read = off;
          return fail(s, "read of " + std::to_string(n) + " bytes at offset " + std::to_string(off) + " from " +
                             result_.login_server + " failed with NBD error " + std::to_string(err));
        }
        off += n;
        ++requests;
      }
      result_.bytes_read = off;
      if (stop_.stop_requested()) return fail(s, stopped_text);
      client.disconnect();
    } catch (const nbd::ClientError& e) {
      result_.bytes_read = off;
      return fail(s, "vDisk read broke at offset " + std::to_string(off) + " of " + std::to_string(total) + ": " + e.what());
    }
    rec_.ok(s, std::to_string(total) + " bytes in " + std::to_string(requests) + " reads from " + result_.login_server +
                   (total < plan_.working_set_bytes ? " (the whole vDisk; smaller than the working set)" : ""));
    return true;
  }

  const BootPlan& plan_;
  const std::stop_token& stop_;
  Recorder& rec_;
  BootResult& result_;
  std::string host_;
  std::uint16_t port_ = 0;
  std::string file_;
  std::string source_;  ///< where file_ came from, for messages
};

}  // namespace

std::pair<std::string, std::uint16_t> parse_tftp_server(const std::string& option66) {
  auto bad = [&](const std::string& why) {
    return std::invalid_argument("DHCP option 66 (TFTP server) '" + option66 + "' " + why +
                                 ": give \"host\" or \"host:port\" (IPv6 as \"[::1]:69\")");
  };
  if (option66.empty()) throw bad("is empty");
  std::string host = option66;
  std::string port;
  if (host.front() == '[') {
    const auto close = host.find(']');
    if (close == std::string::npos) throw bad("has no closing ']'");
    port = host.substr(close + 1);
    host = host.substr(1, close - 1);
    if (!port.empty() && port.front() != ':') throw bad("has text after ']'");
    if (!port.empty()) port.erase(0, 1);
  } else if (const auto colon = host.find(':'); colon != std::string::npos) {
    if (host.find(':', colon + 1) != std::string::npos) throw bad("has several ':' (IPv6 needs brackets)");
    port = host.substr(colon + 1);
    host.resize(colon);
  }
  if (host.empty()) throw bad("has no host");
  if (port.empty()) return {host, 69};
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) throw bad("has a bad port");
  const auto value = std::stoul(port);
  if (value == 0 || value > 65535) throw bad("has a port outside 1..65535");
  return {host, static_cast<std::uint16_t>(value)};
}

BootResult boot(const BootPlan& plan, std::stop_token stop, const std::function<void(const Step&)>& on_step) {
  BootResult result;
  Recorder rec(result, on_step);
  if (plan.boot_order.empty()) {
    rec.failed(rec.begin("boot"), "the boot order is empty: give network, cdrom and/or disk");
    return result;
  }
  // Bounded: one pass over the boot order; the network device retries at most max_recoveries times.
  for (const auto& device : plan.boot_order) {
    if (stop.stop_requested()) {
      rec.failed(rec.begin(device == "network" ? "dhcp" : device), stopped_text);
      return result;
    }
    if (device == "cdrom" && plan.iso_path.empty()) {
      rec.failed(rec.begin("cdrom"), "cdrom boot: no ISO in the virtual CD-ROM");
      continue;
    }
    if (device == "disk") {
      rec.failed(rec.begin("disk"), "no bootable disk (a diskless desktop boots from the network)");
      continue;
    }
    if (device != "network" && device != "cdrom") {
      rec.failed(rec.begin("boot"), "unknown boot device '" + device + "': use network, cdrom or disk");
      continue;
    }
    for (int attempt = 0; attempt <= std::max(plan.max_recoveries, 0); ++attempt) {
      NetworkBoot machine(plan, stop, rec, result);
      auto out = device == "cdrom" ? machine.run_cdrom() : machine.run();
      if (out.ok) {
        result.ok = true;
        result.failed_step.clear();
        result.reason.clear();
        return result;
      }
      if (out.stopped) return result;
      if (!out.bootstrap) break;  // no bootstrap, no recovery option: like PXE, try the next boot device
      const auto& b = *out.bootstrap;
      auto s = rec.begin("recovery");
      if (b.recovery == bootstrap::Recovery::reboot_to_hd) {
        result.recovery = "reboot_to_hd";
        rec.ok(s, "reboot_to_hd: the bootstrap says to boot from the hard disk");
        return result;
      }
      result.recovery = "restore_network";
      if (attempt >= plan.max_recoveries) {
        rec.failed(s, "restore_network: gave up after " + std::to_string(result.recoveries) + " retries (max_recoveries " +
                          std::to_string(plan.max_recoveries) + ")");
        break;
      }
      if (!sleep_for(std::chrono::seconds(b.recovery_time_s), stop)) {
        rec.failed(s, stopped_text);
        return result;
      }
      ++result.recoveries;
      rec.ok(s, "restore_network: waited " + std::to_string(b.recovery_time_s) + " s, retry " +
                    std::to_string(result.recoveries) + " of " + std::to_string(plan.max_recoveries));
    }
  }
  return result;
}

}  // namespace deskfarm::firmware
