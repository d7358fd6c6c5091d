# deskfarm_discover_tests(TARGET [TEST_PREFIX p] [PROPERTIES k v ...])
# The one way a Catch2 test binary is registered with CTest: every TEST_CASE becomes its own CTest test.
# `-w NoTests` makes a test whose name filter matches nothing fail instead of printing "No tests ran" and
# passing, so a name Catch cannot round-trip through CTest (one with `;`, or `[...]` read as a tag) is red,
# not silently skipped. Keep `;` and `[ ]` out of TEST_CASE names (commas are escaped and do run).
# A test that lacks a peer program outside CI prints DESKFARM-TEST-SKIPPED (tests/support/deskfarm/testing/
# peers.hpp) and CTest reports it as skipped rather than passed.
function(deskfarm_discover_tests target)
  cmake_parse_arguments(T "" "TEST_PREFIX" "PROPERTIES" ${ARGN})
  set(extra)
  if(DEFINED T_TEST_PREFIX)
    list(APPEND extra TEST_PREFIX "${T_TEST_PREFIX}")
  endif()
  catch_discover_tests(${target} EXTRA_ARGS -w NoTests ${extra}
    PROPERTIES SKIP_REGULAR_EXPRESSION "DESKFARM-TEST-SKIPPED" ${T_PROPERTIES})
endfunction()
