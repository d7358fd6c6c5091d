// Interop with real Debian clients (tftp-hpa, curl, atftp) started as child processes on loopback.
#include <catch2/catch.hpp>

#include <functional>
#include <mutex>

#include "deskfarm/tftp/server.hpp"
#include "test_support.hpp"
#include <deskfarm/testing/peers.hpp>

using namespace deskfarm::tftp;
using namespace tftp_test;

namespace {

struct Served {
  explicit Served(ServerOptions options = {}) {
    options.root = dir.path() / "root";
    fs::create_directories(options.root);
    root = options.root;
    options.log = [this](std::string_view line) {
      std::lock_guard lock(log_mutex);
      log.emplace_back(line);
    };
    write_text(root / "empty.bin", "");
    write_file(root / "exact512.bin", pattern(512, 3));
    write_file(root / "one-mib.bin", pattern(1 << 20, 4));
    server = std::make_unique<Server>(options);
    server->start();
    port = std::to_string(server->bound_port());
  }
  /// The server's "tftp: RRQ <file> ..." line for `file`, or "" (read after the client has finished).
  std::string rrq_line(const std::string& file) {
    std::lock_guard lock(log_mutex);
    for (auto line = log.rbegin(); line != log.rend(); ++line) {
      if (line->rfind("tftp: RRQ " + file + " from ", 0) == 0) return *line;
    }
    return {};
  }
  TempDir dir;
  fs::path root;
  std::mutex log_mutex;
  std::vector<std::string> log;
  std::unique_ptr<Server> server;
  std::string port;
};

void check_download(ChildProcess& child, const fs::path& got, const fs::path& expected, const fs::path& log,
                    std::chrono::milliseconds limit = 30'000ms) {
  const auto status = child.wait(limit);
  INFO("client output: " << read_text(log));
  REQUIRE(status.has_value());
  CHECK(*status == 0);
  REQUIRE(fs::exists(got));
  CHECK(fs::file_size(got) == fs::file_size(expected));
  CHECK(read_text(got) == read_text(expected));
}

/// Fetches each of the served files of 0 B, 512 B and 1 MiB with the client `argv(file, out)` and checks
/// every copy; output goes to <tag>-<file>, the client's messages to <tag>.log.
template <typename Argv>
void fetch_each(const Served& served, const std::string& tag, Argv argv) {
  for (const std::string file : {"empty.bin", "exact512.bin", "one-mib.bin"}) {
    INFO(file);
    const auto out = served.dir.path() / (tag + "-" + file);
    const auto log = served.dir.path() / (tag + ".log");
    ChildProcess child(argv(file, out.string()), log);
    check_download(child, out, served.root / file, log);
  }
}

}  // namespace

TEST_CASE("tftp-hpa fetches files of 0 B, 512 B and 1 MiB intact in binary mode") {
  if (!require_program("tftp")) return;  // tftp-hpa
  Served served;
  fetch_each(served, "hpa", [&](const std::string& file, const std::string& out) -> std::vector<std::string> {
    return {"tftp", "-m", "binary", "127.0.0.1", served.port, "-c", "get", file, out};
  });
}

TEST_CASE("curl with --tftp-blksize 1468 fetches files of 0 B, 512 B and 1 MiB intact") {
  if (!require_program("curl")) return;
  Served served;
  fetch_each(served, "curl", [&](const std::string& file, const std::string& out) -> std::vector<std::string> {
    // curl refuses the OACK tsize=0 that RFC 2349 prescribes for an empty file: ask it without options.
    if (file == "empty.bin") {
      return {"curl", "-sS", "--max-time", "30", "--tftp-no-options", "tftp://127.0.0.1:" + served.port + "/" + file, "-o", out};
    }
    return {"curl", "-sS", "--max-time", "30", "--tftp-blksize", "1468", "tftp://127.0.0.1:" + served.port + "/" + file,
            "-o", out};
  });
}

TEST_CASE("atftp with blksize 1468, tsize and windowsize 16 fetches files of 0 B, 512 B and 1 MiB intact") {
  if (!require_program("atftp")) return;
  Served served;
  fetch_each(served, "atftp", [&](const std::string& file, const std::string& out) -> std::vector<std::string> {
    return {"atftp", "--option", "blksize 1468", "--option", "tsize 0", "--option", "windowsize 16",
            "-g", "-r", file, "-l", out, "127.0.0.1", served.port};
  });
}

TEST_CASE("atftp fetches a file of more than 65,535 blocks of 512 B intact (block number rollover)") {
  if (!require_program("atftp")) return;
  Served served;
  // 33 MiB at 512 B = 67,584 blocks + the final empty one: past the 16-bit wrap.
  write_file(served.root / "big.bin", pattern(33u << 20, 5));
  const auto out = served.dir.path() / "atftp-big.bin";
  const auto log = served.dir.path() / "atftp-big.log";
  ChildProcess child({"atftp", "--option", "blksize 512", "--option", "windowsize 16", "-g", "-r", "big.bin", "-l",
                      out.string(), "127.0.0.1", served.port},
                     log);
  check_download(child, out, served.root / "big.bin", log, 120'000ms);
  CHECK(served.server->stats().transfers_done == 1);
}

namespace {

/// One stock client set-up: how it is called, which block size it gets and what the server must have granted.
struct ClientCase {
  std::string name;
  std::size_t blksize = 512;     ///< Block size in effect, for the edge sizes.
  std::size_t window = 1;        ///< Blocks per window in effect; "N blocks" spans several windows.
  std::vector<std::string> granted;  ///< Options the server's RRQ log line must show ({} and no tsize = no OACK).
  bool asks_tsize = false;       ///< The client asks for tsize, so the empty file's OACK carries tsize=0.
  std::function<std::vector<std::string>(const std::string& host, const std::string& port, const std::string& file,
                                         const std::string& out)>
      argv;
  bool bare_when_empty = false;  ///< The empty file is asked without any option (curl refuses tsize=0).
};

/// Edge sizes for one block size: 0 B, exactly one block, exactly N blocks, N blocks + 1 byte.
std::vector<std::size_t> edge_sizes(const ClientCase& client) {
  const std::size_t n = 2 * client.window + 1;  // several windows, the last one partial
  return {0, client.blksize, n * client.blksize, n * client.blksize + 1};
}

/// Fetches every edge size with `client` from `served` on `host`, checks each copy byte for byte and that the
/// server granted exactly `client.granted` (plus tsize=SIZE when asked).
void fetch_edges(Served& served, const ClientCase& client, const std::string& host = "127.0.0.1") {
  for (const std::size_t size : edge_sizes(client)) {
    const std::string file = client.name + "-" + std::to_string(size) + ".bin";
    INFO(client.name << " fetching " << size << " B from " << host);
    write_file(served.root / file, pattern(size, static_cast<unsigned>(size % 251)));
    const auto out = served.dir.path() / ("got-" + file);
    const auto log = served.dir.path() / (client.name + ".log");
    ChildProcess child(client.argv(host, served.port, file, out.string()), log);
    check_download(child, out, served.root / file, log);
    const std::string line = served.rrq_line(file);
    INFO("server: " << line);
    auto granted = client.granted;
    if (client.asks_tsize) granted.push_back("tsize=" + std::to_string(size));
    if (size == 0 && client.bare_when_empty) granted.clear();
    if (granted.empty()) CHECK(line.find(" mode=octet size=") != std::string::npos);
    for (const auto& option : granted) CHECK(line.find(" " + option + " ") != std::string::npos);
  }
}

}  // namespace

TEST_CASE("stock clients with each option fetch 0 B, one block, N blocks and N blocks + 1 B intact, tsize=0 granted") {
  auto atftp = [](std::vector<std::string> options) {
    return [options](const std::string& host, const std::string& port, const std::string& file, const std::string& out) {
      std::vector<std::string> argv{"atftp"};
      for (const auto& option : options) argv.insert(argv.end(), {"--option", option});
      argv.insert(argv.end(), {"-g", "-r", file, "-l", out, host, port});
      return argv;
    };
  };
  std::vector<ClientCase> cases;
  if (require_program("tftp")) {
    cases.push_back({"hpa", 512, 1, {}, false, [](const std::string& host, const std::string& port, const std::string& file, const std::string& out) {
                       return std::vector<std::string>{"tftp", "-m", "binary", host, port, "-c", "get", file, out};
                     }});
  }
  if (require_program("atftp")) {
    cases.push_back({"atftp-tsize", 512, 1, {}, true, atftp({"tsize 0"})});
    cases.push_back({"atftp-blksize", 1468, 1, {"blksize=1468"}, false, atftp({"blksize 1468"})});
    cases.push_back({"atftp-timeout", 512, 1, {"timeout=3"}, false, atftp({"timeout 3"})});
    cases.push_back({"atftp-window", 512, 16, {"windowsize=16"}, false, atftp({"windowsize 16"})});
    cases.push_back({"atftp-all", 1468, 8, {"blksize=1468", "timeout=3", "windowsize=8"}, true,
                     atftp({"blksize 1468", "tsize 0", "timeout 3", "windowsize 8"})});
  }
  if (require_program("curl")) {
    // curl always asks for tsize and timeout; it refuses an OACK with tsize=0, so the empty file is fetched
    // without options here and with options against omit_zero_tsize below.
    auto curl = [](std::vector<std::string> extra) {
      return [extra](const std::string& host, const std::string& port, const std::string& file, const std::string& out) {
        std::vector<std::string> argv{"curl", "-sS", "--max-time", "30"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        if (file.find("-0.bin") != std::string::npos) argv.push_back("--tftp-no-options");
        const std::string bracketed = host.find(':') != std::string::npos ? "[" + host + "]" : host;
        argv.insert(argv.end(), {"tftp://" + bracketed + ":" + port + "/" + file, "-o", out});
        return argv;
      };
    };
    // curl also asks for a timeout, whose value differs between curl versions: not checked.
    cases.push_back({"curl-blksize", 1468, 1, {"blksize=1468"}, true, curl({"--tftp-blksize", "1468"})});
    cases.back().bare_when_empty = true;
  }
  Served served;
  for (const auto& client : cases) fetch_edges(served, client);
}

TEST_CASE("curl with its default options fetches an empty file from a server with omit_zero_tsize") {
  if (!require_program("curl")) return;
  ServerOptions options;
  options.omit_zero_tsize = true;
  Served served(options);
  const auto out = served.dir.path() / "curl-empty.bin";
  const auto log = served.dir.path() / "curl-empty.log";
  ChildProcess child({"curl", "-sS", "--max-time", "30", "tftp://127.0.0.1:" + served.port + "/empty.bin", "-o", out.string()}, log);
  check_download(child, out, served.root / "empty.bin", log);
  CHECK(served.rrq_line("empty.bin").find("tsize") == std::string::npos);
}

TEST_CASE("IPv6: curl and atftp fetch edge sizes from a server on [::1], and one on [::] serves ::1 and 127.0.0.1") {
  const bool have_curl = require_program("curl");
  const bool have_atftp = require_program("atftp");
  for (const std::string listen : {"[::1]", "[::]"}) {
    INFO("listening on " << listen);
    ServerOptions options;
    options.address = listen;
    Served served(options);
    if (have_curl) {
      for (const std::string file : {"empty.bin", "exact512.bin", "one-mib.bin"}) {
        INFO(file);
        const auto out = served.dir.path() / ("curl6-" + file);
        const auto log = served.dir.path() / "curl6.log";
        std::vector<std::string> argv{"curl", "-sS", "--max-time", "30", "--tftp-blksize", "1468"};
        if (file == "empty.bin") argv.push_back("--tftp-no-options");
        argv.insert(argv.end(), {"tftp://[::1]:" + served.port + "/" + file, "-o", out.string()});
        ChildProcess child(argv, log);
        check_download(child, out, served.root / file, log);
        CHECK(served.rrq_line(file).find(" from [::1]:") != std::string::npos);
      }
    }
    if (have_atftp) {
      for (const std::string file : {"empty.bin", "exact512.bin", "one-mib.bin"}) {
        INFO(file);
        const auto out = served.dir.path() / ("atftp6-" + file);
        const auto log = served.dir.path() / "atftp6.log";
        ChildProcess child({"atftp", "--option", "blksize 1468", "--option", "tsize 0", "--option", "windowsize 16",
                            "-g", "-r", file, "-l", out.string(), "::1", served.port},
                           log);
        check_download(child, out, served.root / file, log);
        CHECK(served.rrq_line(file).find(" from [::1]:") != std::string::npos);
      }
    }
    if (listen == "[::]" && have_atftp) {
      // Dual stack: an IPv4 client reaches the IPv6 wildcard listener (as ::ffff:127.0.0.1).
      const auto out = served.dir.path() / "atftp4-exact512.bin";
      const auto log = served.dir.path() / "atftp4.log";
      ChildProcess child({"atftp", "--option", "tsize 0", "-g", "-r", "exact512.bin", "-l", out.string(), "127.0.0.1", served.port},
                         log);
      check_download(child, out, served.root / "exact512.bin", log);
    }
  }
}
