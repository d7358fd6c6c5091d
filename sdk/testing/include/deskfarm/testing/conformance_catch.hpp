#pragma once
// The conformance suite as a Catch2 (2.x) test case: one CHECK per finding, so a failing plugin lists every
// problem at once. Include <catch2/catch.hpp> yourself (this header does not choose the Catch2 flavour).
//
//   #include <catch2/catch.hpp>
//   #include <deskfarm/testing/conformance_catch.hpp>
//   deskfarm::testing::conformance::Subject my_plugin() { ... }
//   DESKFARM_CONFORMANCE_SUITE("myhv", my_plugin)
#include <deskfarm/testing/conformance.hpp>

/// A TEST_CASE "conformance: TITLE" running conformance::run(make_subject()) on the main thread.
#define DESKFARM_CONFORMANCE_SUITE(title, make_subject)                                   \
  TEST_CASE("conformance: " title, "[conformance]") {                                     \
    const auto deskfarm_findings = ::deskfarm::testing::conformance::run(make_subject()); \
    for (const auto& finding : deskfarm_findings) {                                       \
      INFO(finding.check);                                                                \
      FAIL_CHECK(finding.problem);                                                        \
    }                                                                                     \
    CHECK(deskfarm_findings.empty());                                                     \
  }
