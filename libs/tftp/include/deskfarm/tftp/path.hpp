#pragma once
// Request-path validation, shared by the server and anything that wants to pre-check a name.
#include <filesystem>
#include <string>
#include <string_view>
#include <variant>

namespace deskfarm::tftp {

/// Why a requested filename was refused (sent to the client as ERROR 2).
struct PathError {
  std::string message;
};

/// Turns a requested filename into a relative path under the root: optional `\`→`/`, leading `/` dropped;
/// refuses empty names, `..` components, control characters (incl. NUL) and names over 255 bytes.
std::variant<std::filesystem::path, PathError> sanitize_request_path(std::string_view requested, bool map_backslash);

}  // namespace deskfarm::tftp
