// deskfarm: run, check and inspect deployments composed from plugins by TOML manifests.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/StreamCopier.h>
#include <boost/program_options.hpp>

#include "admin.hpp"
#include "bdm_command.hpp"
#include "cli_common.hpp"
#include "config_check.hpp"
#include "deployment.hpp"
#include "dsmaint_command.hpp"
#include "ima_command.hpp"
#include "log.hpp"
#include "manifest.hpp"
#include "plugin_loader.hpp"
#include "storm_command.hpp"

namespace po = boost::program_options;
using namespace deskfarm::kernel;
using namespace deskfarm::cli;

namespace {

const char* usage_text =
    "usage: deskfarm [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  run MANIFEST       start the deployment; runs until SIGINT/SIGTERM (or --for), then stops it in reverse order\n"
    "  check MANIFEST     validate the manifest and every plugin it names; starts nothing\n"
    "  status [MANIFEST]  print the JSON status of a running deployment (address from --admin, or MANIFEST's\n"
    "                     state directory where `run` wrote it)\n"
    "  plugins            list the plugins on the plugin path with versions, roles and load errors\n"
    "  describe PLUGIN    print a plugin's manifest keys: type, default, limits, description (--markdown: the\n"
    "                     README table)\n"
    "  request SUBJECT [JSON] [MANIFEST]\n"
    "                     send a bus request to a running deployment (JSON object, default {}) and print the\n"
    "                     reply's JSON; exit 1 with the error envelope on stderr when it fails\n"
    "  querydc [-e] [MANIFEST]\n"
    "                     the zone data collectors of a running farm (ima); -e elects first\n"
    "  queryds [MANIFEST] the dynamic data (sessions, load) the zone data collectors hold\n"
    "  dsmaint refreshlhc|recreatelhc [MANIFEST] [--instance NAME]\n"
    "                     refresh each ima server's local host cache from the data store now, or delete and\n"
    "                     rebuild it (a corrupt cache); every ima instance unless --instance names one\n"
    "  storm [MANIFEST] --users N --rate R/s --session 30s …\n"
    "                     drive a logon storm of simulated users against a running deployment's controllers and\n"
    "                     agents; print brokering latency, decisions/s, refusals (`deskfarm storm --help`)\n"
    "  bdm build --server HOST:PORT … -o IMAGE\n"
    "                     write a Boot Device Manager ISO (`deskfarm bdm --help` lists its options)\n"
    "\n"
    "exit codes: 0 ok, 1 failure while running or stopping, 2 usage error, 3 invalid manifest or plugin,\n"
    "            4 an instance failed to start (the others were stopped), 5 deployment not reachable\n";

struct Options {
  std::string command;
  std::vector<std::string> args;
  std::vector<std::string> plugin_path;
  std::string admin;
  std::string log_level = "info";
  std::string run_for;
  bool markdown = false;
  bool elect = false;  // querydc -e
  std::string instance;  // dsmaint --instance
  std::string timeout = "10s";
};

std::vector<std::filesystem::path> plugin_dirs(const Options& o, const Manifest* m) {
  std::vector<std::filesystem::path> dirs;
  for (const auto& p : o.plugin_path) {
    auto parts = split_path_list(p);
    dirs.insert(dirs.end(), parts.begin(), parts.end());
  }
  if (const char* env = std::getenv("DESKFARM_PLUGIN_PATH")) {
    auto parts = split_path_list(env);
    dirs.insert(dirs.end(), parts.begin(), parts.end());
  }
  if (m) {
    for (const auto& p : m->plugin_path) dirs.push_back(m->file.parent_path() / p);
  }
  auto defaults = default_plugin_dirs();
  dirs.insert(dirs.end(), defaults.begin(), defaults.end());
  return dirs;
}

// A non-loopback admin address without a token is refused before anything starts (exit 3).
void check_admin_address(Manifest& m) {
  m.admin_token = admin_token(&m);  // from the environment too, so the deployment masks it in its output
  if (auto error = admin_address_error(m.admin, m.admin_token); !error.empty())
    throw ValidationError({Diagnostic{Location{m.file.string()}, error, ""}});
}

void print_errors(const ValidationError& e) {
  for (const auto& d : e.diagnostics()) std::cerr << "error: " << d.str() << "\n";
  std::cerr << e.diagnostics().size() << (e.diagnostics().size() == 1 ? " error\n" : " errors\n");
}

int cmd_check(const Options& o) {
  if (o.args.size() != 1) {
    std::cerr << "deskfarm check: give exactly one MANIFEST\n";
    return usage;
  }
  auto manifest = load_manifest(o.args[0]);
  if (!o.admin.empty()) manifest.admin = o.admin;  // checked as `run --admin` would use it
  check_admin_address(manifest);
  PluginCatalog catalog(plugin_dirs(o, &manifest));
  LogSink log;
  Deployment deployment(manifest, catalog, log);
  deployment.check();  // the plugins' constructors see their config too, as `run` would
  std::cout << o.args[0] << ": ok — deployment " << manifest.name << ", " << manifest.instances.size()
            << " instances; start order: " << join(deployment.start_order()) << "\n";
  return ok;
}

int cmd_plugins(const Options& o) {
  PluginCatalog catalog(plugin_dirs(o, nullptr));
  auto entries = catalog.scan();
  if (entries.empty()) {
    std::vector<std::string> dirs;
    for (auto& d : catalog.directories()) dirs.push_back(d.string());
    std::cout << "no plugins found in " << join(dirs, ":") << "\n";
    return ok;
  }
  int bad = 0;
  for (const auto& e : entries) {
    if (!e.plugin) {
      std::cout << e.file.stem().string() << "  (cannot load: " << e.error << ")  " << e.file.string() << "\n";
      ++bad;
      continue;
    }
    const auto& d = e.plugin->descriptor();
    std::cout << d.name << " " << d.version << "  sdk " << d.sdk_version << "  provides: " << join(e.plugin->provides())
              << "  requires: " << join(e.plugin->requires_roles()) << "\n    " << d.summary << "\n    " << e.file.string()
              << "\n";
  }
  return bad ? invalid : ok;
}

/// What `describe` prints for a row's default: secrets are never shown, not even a default.
std::string default_text(const dk_config_key& k) {
  if (!k.default_toml) return "required";
  if (k.type == DK_SECRET && std::string_view(k.default_toml) != "\"\"") return "(secret)";
  return k.default_toml;
}

std::string limits_text(const dk_config_key& k) {
  std::string out;
  if (k.flags & DK_HAS_RANGE) {
    out = deskfarm::kernel::number_text(k.min) + ".." + deskfarm::kernel::number_text(k.max);
  }
  if (k.one_of) {
    std::string choices(k.one_of);
    for (auto& c : choices) if (c == '|') c = ',';
    out += (out.empty() ? "" : "; ") + std::string("one of ") + choices;
  }
  return out;
}

void describe_rows(const dk_config_key* keys, std::uint32_t count, const std::string& prefix, bool markdown) {
  for (std::uint32_t i = 0; i < count; ++i) {
    const auto& k = keys[i];
    const std::string name = prefix + k.key;
    const std::string limits = limits_text(k);
    if (markdown) {
      std::string desc = k.description ? k.description : "";
      for (auto& c : desc) if (c == '|') c = '/';
      std::cout << "| `" << name << "` | " << deskfarm::sdk::type_name(k.type) << " | `" << default_text(k) << "` | "
                << limits << " | " << desc << " |\n";
    } else {
      std::cout << "  " << name << " (" << deskfarm::sdk::type_name(k.type) << ")"
                << (k.default_toml ? " = " + default_text(k) : std::string("  required"))
                << (limits.empty() ? "" : "  [" + limits + "]") << "\n      " << (k.description ? k.description : "") << "\n";
    }
    if (k.fields) describe_rows(k.fields, k.field_count, name + (k.type == DK_TABLE_ARRAY ? "[]." : "."), markdown);
  }
}

int cmd_describe(const Options& o) {
  if (o.args.size() != 1) {
    std::cerr << "deskfarm describe: give exactly one PLUGIN name\n";
    return usage;
  }
  PluginCatalog catalog(plugin_dirs(o, nullptr));
  auto lib = catalog.find(o.args[0], Location{"command line"});
  const auto& d = lib->descriptor();
  if (o.markdown) {
    // The key table of the plugin's README is this output, so the two cannot drift apart.
    std::cout << "| key | type | default | limits | description |\n|---|---|---|---|---|\n";
    describe_rows(d.config, d.config_count, "", true);
    return ok;
  }
  std::cout << d.name << " " << d.version << " — " << d.summary << "\n"
            << "provides roles: " << join(lib->provides()) << "\nrequires roles: " << join(lib->requires_roles())
            << "\n\nmanifest keys:\n";
  describe_rows(d.config, d.config_count, "", false);
  if (d.config_count == 0) std::cout << "  (none)\n";
  return ok;
}

int cmd_status(const Options& o) {
  if (o.args.size() > 1) {
    std::cerr << "deskfarm status: give at most one MANIFEST\n";
    return usage;
  }
  int code = ok;
  const auto target = admin_target(o.admin, "status", o.args.empty() ? "" : o.args[0], code);
  if (!target) return code;
  auto [host, port] = parse_host_port(target->address, "--admin");
  try {
    Poco::Net::HTTPClientSession session(host, port);
    session.setTimeout(Poco::Timespan(5, 0));
    Poco::Net::HTTPRequest request(Poco::Net::HTTPRequest::HTTP_GET, "/status");
    if (!target->token.empty()) request.set("Authorization", "Bearer " + target->token);
    session.sendRequest(request);
    Poco::Net::HTTPResponse response;
    std::istream& body = session.receiveResponse(response);
    Poco::StreamCopier::copyStream(body, std::cout);
    return response.getStatus() == Poco::Net::HTTPResponse::HTTP_OK ? ok : runtime_failure;
  } catch (const Poco::Exception& e) {
    std::cerr << "deskfarm status: cannot reach the admin endpoint at " << target->address << ": " << e.displayText() << "\n";
    return unreachable;
  }
}

int cmd_request(const Options& o) {
  // request SUBJECT [JSON] [MANIFEST]: a JSON argument starts with '{'.
  if (o.args.empty() || o.args.size() > 3) {
    std::cerr << "deskfarm request: give SUBJECT, then optionally a JSON object and the MANIFEST of the deployment\n";
    return usage;
  }
  std::string json = "{}";
  std::string manifest;
  for (std::size_t i = 1; i < o.args.size(); ++i) {
    if (!o.args[i].empty() && o.args[i].front() == '{') json = o.args[i];
    else manifest = o.args[i];
  }
  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(parse_duration(o.timeout, "--timeout"));
  int code = ok;
  const auto target = admin_target(o.admin, "request", manifest, code);
  if (!target) return code;
  auto [host, port] = parse_host_port(target->address, "--admin");
  try {
    Poco::Net::HTTPClientSession session(host, port);
    session.setTimeout(Poco::Timespan(static_cast<long>(timeout.count() / 1000) + 5, 0));
    Poco::Net::HTTPRequest request(Poco::Net::HTTPRequest::HTTP_POST, "/request/" + o.args[0]);
    request.setContentType("application/json");
    request.setContentLength(static_cast<std::streamsize>(json.size()));
    request.set("X-Timeout-Ms", std::to_string(timeout.count()));
    if (!target->token.empty()) request.set("Authorization", "Bearer " + target->token);
    session.sendRequest(request) << json;
    Poco::Net::HTTPResponse response;
    std::istream& body = session.receiveResponse(response);
    const bool good = response.getStatus() == Poco::Net::HTTPResponse::HTTP_OK;
    Poco::StreamCopier::copyStream(body, good ? std::cout : std::cerr);
    return good ? ok : runtime_failure;
  } catch (const Poco::Exception& e) {
    std::cerr << "deskfarm request: cannot reach the admin endpoint at " << target->address << ": " << e.displayText() << "\n";
    return unreachable;
  }
}

int cmd_run(const Options& o) {
  if (o.args.size() != 1) {
    std::cerr << "deskfarm run: give exactly one MANIFEST\n";
    return usage;
  }
  std::optional<std::chrono::nanoseconds> run_for;
  if (!o.run_for.empty()) run_for = parse_duration(o.run_for);

  // Signals are taken synchronously by this thread; every other thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto manifest = load_manifest(o.args[0]);
  if (!o.admin.empty()) manifest.admin = o.admin;
  check_admin_address(manifest);
  PluginCatalog catalog(plugin_dirs(o, &manifest));
  LogSink log(*parse_log_level(o.log_level));
  Deployment deployment(manifest, catalog, log);
  deployment.start();
  std::unique_ptr<AdminServer> admin;
  try {
    AdminLimits limits;
    limits.workers = manifest.admin_workers;
    limits.max_inflight = manifest.admin_inflight;
    admin = std::make_unique<AdminServer>(deployment, manifest.admin, manifest.admin_token, limits);
  } catch (const std::exception& e) {
    log.write(deskfarm::sdk::LogLevel::error, "kernel", std::string("admin endpoint ") + manifest.admin + ": " + e.what());
    deployment.stop();
    return start_failed;
  }
  std::filesystem::create_directories(manifest.state_dir);
  {
    std::ofstream(admin_file(manifest)) << admin->address() << "\n";
  }
  log.write(deskfarm::sdk::LogLevel::info, "kernel",
            "deployment " + manifest.name + " running; admin http://" + admin->address() + "/status");

  const auto started = std::chrono::steady_clock::now();
  int received = 0;
  auto* vclock = deployment.virtual_clock();
  const auto virtual_end = vclock && run_for ? std::optional(vclock->now() + *run_for) : std::nullopt;
  while (true) {
    if (vclock) {
      // Simulated time runs as fast as the handlers allow, in slices so signals stay responsive.
      auto slice = std::chrono::duration_cast<deskfarm::sdk::Duration>(std::chrono::minutes(1));
      if (virtual_end) slice = std::min(slice, *virtual_end - vclock->now());
      if (slice.count() > 0) vclock->advance(slice);
      if (virtual_end && vclock->now() >= *virtual_end) break;
    } else if (run_for && std::chrono::steady_clock::now() - started >= *run_for) {
      break;
    }
    timespec wait{0, vclock ? 0 : 100'000'000};
    received = sigtimedwait(&signals, nullptr, &wait);
    if (received == SIGINT || received == SIGTERM) break;
  }
  log.write(deskfarm::sdk::LogLevel::info, "kernel",
            received > 0 ? std::string("received ") + strsignal(received) + ", stopping" : "run time reached, stopping");
  admin.reset();
  std::filesystem::remove(admin_file(manifest));
  deployment.stop();
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  // `bdm` has options of its own (--server, --ip, …): it parses them itself.
  if (argc >= 2 && std::string(argv[1]) == "bdm") return deskfarm::cli::cmd_bdm(argc, argv);
  // `storm` too (--users, --rate, …).
  if (argc >= 2 && std::string(argv[1]) == "storm") return deskfarm::cli::cmd_storm(argc, argv);
  Options o;
  po::options_description visible("options");
  visible.add_options()
      ("help,h", "print this help")
      ("version", "print the kernel version, SDK version and plugin ABI")
      ("plugin-path,p", po::value(&o.plugin_path)->composing(),
       "a directory (or a:b:c list) to search for plugins, before DESKFARM_PLUGIN_PATH, the manifest's plugin_path "
       "and the built-in ../plugins beside the executable; repeatable")
      ("admin", po::value(&o.admin),
       "run, check: admin endpoint HOST:PORT (overrides the manifest; loopback unless a token is set); status: where to ask")
      ("log-level", po::value(&o.log_level)->default_value("info"), "debug, info, warning or error")
      ("for", po::value(&o.run_for),
       "run: stop after this much deployment time (90s, 5m, 2h, 1d); with clock = \"virtual\" it is simulated time")
      ("timeout", po::value(&o.timeout)->default_value("10s"), "request, querydc, queryds, dsmaint: how long to wait for each reply")
      ("elect,e", po::bool_switch(&o.elect), "querydc: run an election in the zone first, then print the collectors")
      ("instance", po::value(&o.instance), "dsmaint: the ima instance to act on (default: every running ima instance)")
      ("markdown", po::bool_switch(&o.markdown), "describe: print the manifest keys as the README's Markdown table");
  po::options_description hidden;
  hidden.add_options()("command", po::value(&o.command))("args", po::value(&o.args));
  po::options_description all;
  all.add(visible).add(hidden);
  po::positional_options_description positional;
  positional.add("command", 1).add("args", -1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(positional).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "deskfarm: " << e.what() << "\n\n" << usage_text;
    return usage;
  }
  if (vm.count("help")) {
    std::cout << usage_text << "\n" << visible;
    return ok;
  }
  if (vm.count("version")) {
    std::cout << "deskfarm " << DESKFARM_VERSION << " (SDK " << DESKFARM_SDK_VERSION << ", plugin ABI " << DESKFARM_PLUGIN_ABI << ")\n";
    return ok;
  }
  if (!parse_log_level(o.log_level)) {
    std::cerr << "deskfarm: --log-level '" << o.log_level << "' is not one of debug, info, warning, error\n";
    return usage;
  }
  try {
    if (o.command == "run") return cmd_run(o);
    if (o.command == "check") return cmd_check(o);
    if (o.command == "status") return cmd_status(o);
    if (o.command == "plugins") return cmd_plugins(o);
    if (o.command == "describe") return cmd_describe(o);
    if (o.command == "request") return cmd_request(o);
    if (o.command == "querydc" || o.command == "queryds") {
      int code = ok;
      const auto target = o.args.size() > 1 ? std::nullopt : admin_target(o.admin, o.command, o.args.empty() ? "" : o.args[0], code);
      if (o.args.size() > 1) std::cerr << "deskfarm " << o.command << ": give at most one MANIFEST\n";
      if (!target) return o.args.size() > 1 ? usage : code;
      return deskfarm::cli::cmd_ima(o.command, o.elect, *target,
                                    std::chrono::duration_cast<std::chrono::milliseconds>(parse_duration(o.timeout, "--timeout")));
    }
    if (o.command == "dsmaint") {
      int code = ok;
      if (o.args.empty() || o.args.size() > 2) {
        std::cerr << "deskfarm dsmaint: give refreshlhc or recreatelhc, then at most one MANIFEST\n";
        return usage;
      }
      const auto target = admin_target(o.admin, o.command, o.args.size() > 1 ? o.args[1] : "", code);
      if (!target) return code;
      return deskfarm::cli::cmd_dsmaint(o.args[0], o.instance, *target,
                                        std::chrono::duration_cast<std::chrono::milliseconds>(parse_duration(o.timeout, "--timeout")));
    }
    if (o.command.empty()) std::cerr << "deskfarm: no command given\n\n" << usage_text;
    else std::cerr << "deskfarm: unknown command '" << o.command << "'\n\n" << usage_text;
    return usage;
  } catch (const ValidationError& e) {
    print_errors(e);
    return invalid;
  } catch (const StartError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return start_failed;
  } catch (const std::invalid_argument& e) {
    std::cerr << "deskfarm: " << e.what() << "\n";
    return usage;
  } catch (const std::exception& e) {
    std::cerr << "deskfarm: " << e.what() << "\n";
    return runtime_failure;
  }
}
