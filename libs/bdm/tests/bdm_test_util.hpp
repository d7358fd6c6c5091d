#pragma once
// What the ISO and partition image tests share: a sample record, a directory's entry count, and a QEMU boot of an
// image attached as a hard disk.
#include <deskfarm/bdm/iso.hpp>

#include <catch2/catch.hpp>
#include <deskfarm/testing/files.hpp>
#include <deskfarm/testing/process.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

namespace deskfarm::bdm::test {

inline IsoOptions sample() {
  IsoOptions o;
  o.bootstrap.version = 42;
  o.bootstrap.login_servers = {{"10.0.2.2", 6910}, {"10.0.2.3", 6911}, {"pvs.example", 6910}};
  o.bootstrap.verbose = true;
  o.source_date_epoch = 1700000000;
  return o;
}

/// The sample with one login server that never answers and short timeouts, for a QEMU boot: after one try the
/// script sleeps 3600 s ("retrying in 3600 s" ends the run), so the serial log holds the whole first attempt.
inline IsoOptions boot_sample(std::uint32_t version) {
  IsoOptions o = sample();
  o.bootstrap.version = version;
  o.bootstrap.login_servers = {{"10.0.2.2", 6910}};
  o.bootstrap.login_polling_timeout_ms = 1000;
  o.bootstrap.login_general_timeout_ms = 1000;
  o.bootstrap.recovery_time_s = 3600;
  return o;
}

/// Reproducibility of one builder (`build(options, path)` → a result with `sha256`): the same inputs a second apart
/// give the same bytes, another epoch other bytes, and SOURCE_DATE_EPOCH is read when the option is unset.
template <class Build>
void check_reproducible(Build build, const std::filesystem::path& dir, const std::string& suffix) {
  const auto one = build(sample(), dir / ("one" + suffix));
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // a time taken from the clock anywhere would show
  const auto two = build(sample(), dir / ("two" + suffix));
  CHECK(one.sha256 == two.sha256);
  CHECK(testing::sha256_file(dir / ("one" + suffix)) == testing::sha256_file(dir / ("two" + suffix)));
  auto later = sample();
  later.source_date_epoch = 1700000001;
  CHECK(build(later, dir / ("later" + suffix)).sha256 != one.sha256);
  auto from_env = sample();
  from_env.source_date_epoch.reset();
  ::setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
  const auto env = build(from_env, dir / ("env" + suffix));
  ::unsetenv("SOURCE_DATE_EPOCH");
  CHECK(env.sha256 == one.sha256);
}

/// Nothing but the directory's own files: no temporary image left behind.
inline std::size_t entries(const std::filesystem::path& dir) {
  return static_cast<std::size_t>(
      std::distance(std::filesystem::directory_iterator(dir), std::filesystem::directory_iterator()));
}

/// Boots `image` as QEMU's first hard disk (TCG, snapshot: the file stays as built) and returns the serial output
/// once it holds `until` or QEMU exits. A disk image is also "the local disk", so the run may never end by itself:
/// the log is polled (bounded by `timeout`) and ~ChildProcess kills QEMU by its PID.
inline std::string boot_as_disk(const std::filesystem::path& image, const std::filesystem::path& log,
                                const std::string& until, std::chrono::seconds timeout = std::chrono::seconds(60)) {
  std::string out;
  testing::ChildProcess qemu({"qemu-system-x86_64", "-accel", "tcg", "-nographic", "-no-reboot", "-m", "128", "-drive",
                              "file=" + image.string() + ",format=raw,if=ide,snapshot=on", "-serial", "stdio",
                              "-monitor", "none", "-nic", "user,model=e1000"},
                             log);
  testing::eventually(
      [&] {
        out = testing::read_text(log);
        return out.find(until) != std::string::npos || !qemu.running();
      },
      timeout);
  return out;
}

}  // namespace deskfarm::bdm::test
