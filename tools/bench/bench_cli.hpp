#pragma once
// Command-line parsing shared by the benchmark tools (Boost.Program_options).
#include <functional>
#include <string>

#include <boost/program_options.hpp>

namespace deskfarm::bench {

/// Parses argv against `options` and `positional`; a bad, missing or unknown argument goes to `fail`
/// (which prints usage and exits).
inline boost::program_options::variables_map parse_command_line(
    int argc, char** argv, const boost::program_options::options_description& options,
    const boost::program_options::positional_options_description& positional,
    const std::function<void(const std::string&)>& fail) {
  namespace po = boost::program_options;
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(options).positional(positional).run(), vm);
    po::notify(vm);
  } catch (const po::error& error) {
    fail(error.what());
  }
  return vm;
}

/// Integer flag `flag` (declared as long long: Program_options alone would wrap "-1" into an unsigned type),
/// checked to lie in low..high; outside it, `fail` gets "--FLAG must be in LOW..HIGH".
inline long long checked_integer(const boost::program_options::variables_map& vm, const std::string& flag, long long low,
                                 long long high, const std::function<void(const std::string&)>& fail) {
  const auto value = vm[flag].as<long long>();
  if (value < low || value > high)
    fail("--" + flag + " must be in " + std::to_string(low) + ".." + std::to_string(high));
  return value;
}

}  // namespace deskfarm::bench
