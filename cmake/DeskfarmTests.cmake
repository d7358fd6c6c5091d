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

# deskfarm_unoptimized_test_sources()
# Called once, after every folder is added. Test code (a source under a `tests/` folder, or `*_test.cpp`)
# compiles at -O0 in every build type: Catch2's assertions make large functions that take the optimiser about
# 40 % of their compile time, and test code runs too little for it to matter. The code under test (libraries,
# plugins, sources of a library compiled into a test) keeps the build type's flags; the sanitizer build (Debug)
# is -O0 throughout anyway.
function(deskfarm_unoptimized_test_sources)
  set(dirs ${CMAKE_SOURCE_DIR})
  while(dirs)
    list(POP_FRONT dirs dir)
    get_property(subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
    list(APPEND dirs ${subdirs})
    get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
    foreach(target ${targets})
      get_target_property(type ${target} TYPE)
      if(type STREQUAL "INTERFACE_LIBRARY" OR type STREQUAL "UTILITY")
        continue()
      endif()
      get_target_property(sources ${target} SOURCES)
      foreach(source ${sources})
        cmake_path(ABSOLUTE_PATH source BASE_DIRECTORY ${dir} OUTPUT_VARIABLE path)
        cmake_path(RELATIVE_PATH path BASE_DIRECTORY ${CMAKE_SOURCE_DIR} OUTPUT_VARIABLE relative)
        if(relative MATCHES "(^|/)tests/.*\\.cpp$" OR relative MATCHES "_test\\.cpp$")
          set_property(SOURCE ${path} TARGET_DIRECTORY ${target} APPEND PROPERTY COMPILE_OPTIONS -O0)
        endif()
      endforeach()
    endforeach()
  endwhile()
endfunction()
