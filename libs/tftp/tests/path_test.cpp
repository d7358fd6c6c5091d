#include <catch2/catch.hpp>

#include "deskfarm/tftp/path.hpp"

using namespace deskfarm::tftp;

namespace {

std::string ok(std::string_view name, bool map_backslash = true) {
  const auto result = sanitize_request_path(name, map_backslash);
  REQUIRE(std::holds_alternative<std::filesystem::path>(result));
  return std::get<std::filesystem::path>(result).generic_string();
}

std::string refused(std::string_view name) {
  const auto result = sanitize_request_path(name, true);
  REQUIRE(std::holds_alternative<PathError>(result));
  return std::get<PathError>(result).message;
}

}  // namespace

TEST_CASE("request paths are relative to the root: leading slashes and dot components go") {
  CHECK(ok("pxelinux.0") == "pxelinux.0");
  CHECK(ok("/pxelinux.0") == "pxelinux.0");
  CHECK(ok("//boot/./x86//ARDBP32.BIN") == "boot/x86/ARDBP32.BIN");
}

TEST_CASE("backslashes are mapped to slashes unless disabled") {
  CHECK(ok("boot\\x64\\wdsnbp.com") == "boot/x64/wdsnbp.com");
  CHECK(ok("a\\b", false) == "a\\b");
}

TEST_CASE("path traversal, control characters and empty names are refused") {
  CHECK(refused("../etc/passwd") == "'..' component in filename");
  CHECK(refused("boot/../../etc/passwd") == "'..' component in filename");
  CHECK(refused("..\\..\\windows") == "'..' component in filename");
  CHECK(refused("/") == "filename names the root directory");
  CHECK(refused("./.") == "filename names the root directory");
  CHECK(refused("") == "empty filename");
  CHECK(refused(std::string_view("a\0b", 3)).find("control character 0x00 at offset 1") != std::string::npos);
  CHECK(refused("a\nb").find("control character 0x0a") != std::string::npos);
  CHECK(refused(std::string(300, 'a')) == "filename longer than 255 bytes");
}

TEST_CASE("names containing dots that are not '..' components are fine") {
  CHECK(ok("..hidden/file..txt") == "..hidden/file..txt");
}
