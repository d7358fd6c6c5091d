#pragma once
// Child processes for tests: every one is bounded in time and stopped by its PID.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace deskfarm::testing {

struct ChildResult {
  int exit_code = -1;  ///< -1 when killed at the deadline
  std::string out;
  std::string err;
};

namespace detail {
inline std::vector<char*> argv_of(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  return args;
}
struct Fd {
  int fd = -1;
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};
}  // namespace detail

/// Runs argv (PATH lookup) to completion with a deadline, capturing stdout and stderr; on timeout the
/// child is killed by its PID and reaped.
inline ChildResult run_child(const std::vector<std::string>& argv, std::chrono::seconds timeout = std::chrono::seconds(60)) {
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    throw std::runtime_error("pipe failed");
  }
  detail::Fd out_r{out_pipe[0]}, out_w{out_pipe[1]}, err_r{err_pipe[0]}, err_w{err_pipe[1]};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_w.fd, 1);
  posix_spawn_file_actions_adddup2(&fa, err_w.fd, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  auto args = detail::argv_of(argv);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(rc));
  out_w.reset();
  err_w.reset();
  ChildResult result;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool out_open = true, err_open = true, timed_out = false;
  while (out_open || err_open) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd fds[2] = {{out_open ? out_r.fd : -1, POLLIN, 0}, {err_open ? err_r.fd : -1, POLLIN, 0}};
    if (::poll(fds, 2, static_cast<int>(left.count())) < 0) continue;
    char buf[4096];
    for (int i = 0; i < 2; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) (i == 0 ? out_open : err_open) = false;
      else (i == 0 ? result.out : result.err).append(buf, static_cast<std::size_t>(n));
    }
  }
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!timed_out && WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

/// True when `name` is on PATH.
inline bool have_program(const std::string& name) {
  return run_child({"sh", "-c", "command -v " + name + " >/dev/null"}, std::chrono::seconds(10)).exit_code == 0;
}

/// A background child (PATH lookup) with stdout and stderr in `output`; killed (SIGKILL) and reaped by
/// its PID on destruction unless it already exited.
class ChildProcess {
 public:
  explicit ChildProcess(const std::vector<std::string>& argv, const std::filesystem::path& output = "/dev/null") {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, output.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    auto args = detail::argv_of(argv);
    const int rc = ::posix_spawnp(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(rc));
  }
  ~ChildProcess() {
    if (pid_ > 0 && !status_) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  void signal(int sig) const {
    if (!status_) ::kill(pid_, sig);
  }
  /// True while the child has not exited.
  bool running() {
    if (status_) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return false;
    }
    return true;
  }
  /// The exit code (128+signal if killed by one) within `limit`; on timeout the child is killed and
  /// nullopt returned.
  std::optional<int> wait(std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (running()) {
      if (std::chrono::steady_clock::now() >= until) {
        ::kill(pid_, SIGKILL);
        int status = 0;
        ::waitpid(pid_, &status, 0);
        status_ = -1;
        return std::nullopt;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return status_ == -1 ? std::nullopt : status_;
  }
  /// Stops the child the way an operator stops `deskfarm run` (SIGTERM) and waits for it: its exit code
  /// within `limit` (0: it stopped cleanly), or nullopt when it had to be killed.
  std::optional<int> terminate(std::chrono::milliseconds limit) {
    signal(SIGTERM);
    return wait(limit);
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

/// Resident memory of process `pid` ("self" = this one) in bytes, from /proc/PID/statm; throws if unreadable.
inline std::size_t resident_bytes(const std::string& pid = "self") {
  std::ifstream statm("/proc/" + pid + "/statm");
  std::size_t total = 0, resident = 0;
  if (!(statm >> total >> resident)) throw std::runtime_error("cannot read /proc/" + pid + "/statm");
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// Threads of process `pid` ("self" = this one), from the "Threads:" line of /proc/PID/status; throws if unreadable.
inline std::size_t thread_count(const std::string& pid = "self") {
  std::ifstream status("/proc/" + pid + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("Threads:", 0) == 0) return static_cast<std::size_t>(std::stoul(line.substr(8)));
  }
  throw std::runtime_error("cannot read the thread count from /proc/" + pid + "/status");
}

/// Polls `done` every few milliseconds until it holds or `limit` passes.
template <class F>
bool eventually(F done, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace deskfarm::testing
