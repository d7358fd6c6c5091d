// Interop with real Debian clients (tftp-hpa, curl, atftp) started as child processes on loopback.
#include <catch2/catch.hpp>

#include "deskfarm/tftp/server.hpp"
#include "test_support.hpp"
#include <deskfarm/testing/peers.hpp>

using namespace deskfarm::tftp;
using namespace tftp_test;

namespace {

struct Served {
  Served() {
    ServerOptions options;
    options.root = dir.path() / "root";
    fs::create_directories(options.root);
    root = options.root;
    write_text(root / "empty.bin", "");
    write_file(root / "exact512.bin", pattern(512, 3));
    write_file(root / "one-mib.bin", pattern(1 << 20, 4));
    server = std::make_unique<Server>(options);
    server->start();
    port = std::to_string(server->bound_port());
  }
  TempDir dir;
  fs::path root;
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
