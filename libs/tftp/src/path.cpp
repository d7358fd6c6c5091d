#include "deskfarm/tftp/path.hpp"

namespace deskfarm::tftp {

std::variant<std::filesystem::path, PathError> sanitize_request_path(std::string_view requested, bool map_backslash) {
  if (requested.empty()) return PathError{"empty filename"};
  // PXE names are short; a long name is either a mistake or an attack on someone's buffer.
  if (requested.size() > 255) return PathError{"filename longer than 255 bytes"};
  std::string name(requested);
  for (std::size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (c < 0x20 || c == 0x7f) return PathError{"control character 0x" + std::string(1, "0123456789abcdef"[c >> 4]) +
                                                std::string(1, "0123456789abcdef"[c & 15]) + " at offset " +
                                                std::to_string(i) + " in filename"};
    if (name[i] == '\\' && map_backslash) name[i] = '/';
  }
  // The root is the only root: "/pxelinux.0" means root/pxelinux.0, as with tftp-hpa -s.
  const auto first = name.find_first_not_of('/');
  if (first == std::string::npos) return PathError{"filename names the root directory"};
  std::filesystem::path result;
  std::size_t pos = first;
  while (pos <= name.size()) {
    const auto slash = name.find('/', pos);
    const auto end = slash == std::string::npos ? name.size() : slash;
    const std::string_view component(name.data() + pos, end - pos);
    if (component == "..") return PathError{"'..' component in filename"};
    if (!component.empty() && component != ".") result /= std::string(component);
    if (slash == std::string::npos) break;
    pos = slash + 1;
  }
  if (result.empty()) return PathError{"filename names the root directory"};
  return result;
}

}  // namespace deskfarm::tftp
