# deskfarm_fuzz_target(NAME SOURCES f.cpp... LIBS lib...)
# Every fuzz target defines LLVMFuzzerTestOneInput and keeps its corpus in fuzz/corpus/NAME/.
# With -DDESKFARM_FUZZ=ON (clang) it builds a libFuzzer binary fuzz-NAME; otherwise it builds a replay
# binary that feeds every corpus file through the target once, registered as the CTest test fuzz-replay-NAME,
# so the corpus doubles as a regression suite in every normal build.
function(deskfarm_fuzz_target name)
  cmake_parse_arguments(F "" "" "SOURCES;LIBS" ${ARGN})
  set(corpus ${PROJECT_SOURCE_DIR}/fuzz/corpus/${name})
  if(DESKFARM_FUZZ)
    add_executable(fuzz-${name} ${F_SOURCES})
    target_link_libraries(fuzz-${name} PRIVATE ${F_LIBS})
    target_compile_options(fuzz-${name} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_options(fuzz-${name} PRIVATE -fsanitize=fuzzer,address,undefined)
  else()
    add_executable(fuzz-replay-${name} ${F_SOURCES} ${PROJECT_SOURCE_DIR}/fuzz/replay_main.cpp)
    target_link_libraries(fuzz-replay-${name} PRIVATE ${F_LIBS})
    add_test(NAME fuzz-replay-${name} COMMAND fuzz-replay-${name} ${corpus})
  endif()
endfunction()
