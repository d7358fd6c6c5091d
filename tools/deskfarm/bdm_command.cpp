// `deskfarm bdm build`: the command-line face of libs/bdm. Its own option parser, because its options
// (--server, --ip, …) mean nothing to the deployment commands.
#include "bdm_command.hpp"

#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include <deskfarm/bdm/iso.hpp>

namespace deskfarm::cli {
namespace {

namespace po = boost::program_options;

const char* bdm_usage =
    "usage: deskfarm bdm build --server HOST:PORT [--server …] [OPTIONS] -o IMAGE\n"
    "\n"
    "Writes a bootable ISO (El Torito BIOS, isohybrid for USB sticks) with Debian's iPXE, an iPXE script that\n"
    "tries the login servers in the order given, and the bootstrap record (libs/bootstrap format).\n"
    "--format partition writes a raw disk image instead: syslinux's MBR and one bootable FAT partition\n"
    "(mtools, SYSLINUX) with the same iPXE, script and record.\n"
    "Static addressing when --ip is given (then --mask and --gateway are required).\n"
    "Timestamps come from --source-date-epoch, else SOURCE_DATE_EPOCH, else now: same inputs, same bytes.\n";

bool parse_bool(const std::string& name, const std::string& v) {
  if (v == "true") return true;
  if (v == "false") return false;
  throw po::error("--" + name + " '" + v + "' is not true or false");
}

}  // namespace

int cmd_bdm(int argc, char** argv) {
  std::vector<std::string> servers;
  std::string ip, mask, gateway, dns, recovery = "restore_network", output, verbose = "false",
                                      interrupt_safe = "false", advanced_memory = "true";
  std::uint32_t version = 1, polling = 5000, general = 30000, recovery_time = 50;
  std::optional<std::int64_t> epoch;
  bdm::IsoOptions o;
  std::string ipxe_iso = o.ipxe_iso.string();
  bool no_hybrid = false;
  std::string format = "iso", syslinux_mbr = o.syslinux_mbr.string();
  po::options_description opts("bdm build options");
  opts.add_options()
      ("help,h", "print this help")
      ("server", po::value(&servers)->composing(), "login server HOST:PORT (IPv4 or DNS name); 1..4, failover order")
      ("bootstrap-version", po::value(&version)->default_value(1), "configuration serial stamped in the record")
      ("ip", po::value(&ip), "static device address (default: DHCP)")
      ("mask", po::value(&mask), "static: subnet mask")
      ("gateway", po::value(&gateway), "static: default gateway")
      ("dns", po::value(&dns), "static: DNS server (optional)")
      ("login-polling-timeout-ms", po::value(&polling)->default_value(5000), "wait per server before the next")
      ("login-general-timeout-ms", po::value(&general)->default_value(30000), "give up on the whole list after this")
      ("recovery", po::value(&recovery)->default_value("restore_network"), "reboot_to_hd or restore_network")
      ("recovery-time-s", po::value(&recovery_time)->default_value(50), "restore_network: wait, then retry")
      ("verbose", po::value(&verbose)->default_value("false"), "true: the script prints each server it tries")
      ("interrupt-safe", po::value(&interrupt_safe)->default_value("false"), "firmware switch, true or false")
      ("advanced-memory", po::value(&advanced_memory)->default_value("true"), "firmware switch, true or false")
      ("tftp-port", po::value(&o.tftp_port)->default_value(o.tftp_port), "login servers' TFTP port (boot script)")
      ("ipxe-iso", po::value(&ipxe_iso)->default_value(ipxe_iso), "Debian's iPXE ISO (boot loader files)")
      ("volume-id", po::value(&o.volume_id)->default_value(o.volume_id), "ISO volume id (A-Z 0-9 _)")
      ("no-hybrid", po::bool_switch(&no_hybrid), "no isohybrid MBR (CD-ROM only)")
      ("format", po::value(&format)->default_value(format), "iso, or partition: a raw disk image (MBR + FAT)")
      ("syslinux-mbr", po::value(&syslinux_mbr)->default_value(syslinux_mbr), "partition: MBR boot code (440 bytes)")
      ("source-date-epoch", po::value<std::int64_t>(), "every timestamp in the image (seconds since 1970)")
      ("output,o", po::value(&output), "the image to write (replaced atomically)");
  po::options_description hidden;
  std::string action;
  hidden.add_options()("action", po::value(&action));
  po::options_description all;
  all.add(opts).add(hidden);
  po::positional_options_description positional;
  positional.add("action", 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc - 1, argv + 1).options(all).positional(positional).run(), vm);
    po::notify(vm);
    if (vm.count("help")) {
      std::cout << bdm_usage << "\n" << opts;
      return 0;
    }
    if (action != "build") throw po::error(action.empty() ? "no action given (build)" : "unknown action '" + action + "'");
    if (output.empty()) throw po::error("-o IMAGE is required");
    if (servers.empty()) throw po::error("give at least one --server HOST:PORT");
    if (vm.count("source-date-epoch")) epoch = vm["source-date-epoch"].as<std::int64_t>();
    auto& b = o.bootstrap;
    for (const auto& s : servers) b.login_servers.push_back(bootstrap::parse_endpoint(s, "--server"));
    b.version = version;
    if (!ip.empty()) {
      b.addressing = bootstrap::Addressing::static_ip;
      b.static_address = {ip, mask, gateway, dns};
    } else if (!mask.empty() || !gateway.empty() || !dns.empty()) {
      throw po::error("--mask, --gateway and --dns need --ip (static addressing)");
    }
    b.login_polling_timeout_ms = polling;
    b.login_general_timeout_ms = general;
    if (recovery == "reboot_to_hd") b.recovery = bootstrap::Recovery::reboot_to_hd;
    else if (recovery == "restore_network") b.recovery = bootstrap::Recovery::restore_network;
    else throw po::error("--recovery '" + recovery + "' is not reboot_to_hd or restore_network");
    b.recovery_time_s = recovery_time;
    b.verbose = parse_bool("verbose", verbose);
    b.interrupt_safe = parse_bool("interrupt-safe", interrupt_safe);
    b.advanced_memory = parse_bool("advanced-memory", advanced_memory);
    o.ipxe_iso = ipxe_iso;
    o.hybrid = !no_hybrid;
    o.syslinux_mbr = syslinux_mbr;
    if (!bdm::parse_format(format)) throw po::error("--format '" + format + "' is not iso or partition");
    o.source_date_epoch = epoch;
  } catch (const po::error& e) {
    std::cerr << "deskfarm bdm: " << e.what() << "\n\n" << bdm_usage;
    return 2;
  } catch (const bootstrap::BootstrapError& e) {
    std::cerr << "deskfarm bdm: " << e.what() << "\n";
    return 2;
  }
  try {
    const auto r = bdm::build_image(*bdm::parse_format(format), o, output);
    std::cout << output << " " << r.size << " bytes sha256 " << r.sha256 << "\n";
    return 0;
  } catch (const bdm::BdmError& e) {
    std::cerr << "deskfarm bdm: " << e.what() << "\n";
    // Bad options exit 2; what the machine lacks or refuses (a file, a tool, the output) exits 1.
    for (const char* f : {"output", "ipxe_iso", "syslinux_mbr", "mformat", "mcopy", "syslinux"})
      if (e.field() == f) return 1;
    return 2;
  }
}

}  // namespace deskfarm::cli
