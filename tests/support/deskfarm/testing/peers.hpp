#pragma once
// What interop tests need from outside the process: real peer programs (tftp, curl, atftp, nbdinfo,
// nbdcopy, qemu-img, qemu-io) and live servers. Under CI (CI=true) a missing one fails the test; elsewhere
// the test is skipped with the reason, and CTest reports it as skipped, never as passed
// (SKIP_REGULAR_EXPRESSION on skip_marker, set by deskfarm_discover_tests in cmake/DeskfarmTests.cmake).
#include <cstdlib>
#include <string>
#include <string_view>

#include <catch2/catch.hpp>

#include <deskfarm/testing/process.hpp>

namespace deskfarm::testing {

/// Printed by a skipped test; cmake/DeskfarmTests.cmake tells CTest to count such a run as skipped.
inline constexpr std::string_view skip_marker = "DESKFARM-TEST-SKIPPED";

/// True under CI (CI=true in the environment), where everything a test needs must be present.
inline bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string_view(ci) == "true";
}

/// Reports that `what` (a program, a server, a setting: say how to get it) is missing. Under CI this fails
/// the test (throws); elsewhere it prints the skip marker and the reason, and the caller returns.
inline void missing(const std::string& what) {
  if (in_ci()) FAIL(what << " — required under CI=true");
  WARN(skip_marker << ": " << what);
}

/// True when `program` is on PATH; otherwise missing() and false: `if (!require_program("nbdinfo")) return;`.
inline bool require_program(const std::string& program) {
  if (have_program(program)) return true;
  missing(program + " is not installed (scripts/setup.sh installs it)");
  return false;
}

}  // namespace deskfarm::testing
