#pragma once
// What the benchmarks that drive libnats directly share: ending on an error with the program's name, checking a
// libnats status, and the median of a few rounds.
#include <errno.h>  // program_invocation_short_name (GNU)
#include <nats/nats.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace deskfarm::bench {

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", program_invocation_short_name, what.c_str());
  std::exit(1);
}

inline void check(natsStatus s, const char* what) {
  if (s != NATS_OK) fail(std::string(what) + ": " + natsStatus_GetText(s));
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace deskfarm::bench
