// Catch2's main, in a translation unit of its own: the tests' files then compile without Catch2's implementation.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
