#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <boost/dll/shared_library.hpp>

#include "deskfarm/sdk/plugin.hpp"
#include "diagnostics.hpp"

namespace deskfarm::kernel {

/// A loaded, checked plugin library. Every object made from it holds a shared_ptr to this, so the
/// library stays mapped until the last of them is gone (Boost.DLL's lifetime rule).
class PluginLibrary {
 public:
  /// Loads `file` (RTLD_NOW | RTLD_LOCAL), finds the entry point and checks size and ABI before
  /// reading any other field, then the rest of the descriptor. Throws ValidationError naming the file.
  static std::shared_ptr<PluginLibrary> load(const std::filesystem::path& file);

  const dk_plugin_descriptor& descriptor() const { return *descriptor_; }
  const std::filesystem::path& file() const { return file_; }
  std::string name() const { return descriptor_->name; }
  std::vector<std::string> provides() const;
  std::vector<std::string> requires_roles() const;

 private:
  PluginLibrary() = default;
  std::filesystem::path file_;
  boost::dll::shared_library library_;
  const dk_plugin_descriptor* descriptor_ = nullptr;
};

/// Where plugins are looked for: --plugin-path, then DESKFARM_PLUGIN_PATH, then the manifest's
/// plugin_path, then the defaults beside the executable (../plugins and ../lib/deskfarm/plugins).
class PluginCatalog {
 public:
  explicit PluginCatalog(std::vector<std::filesystem::path> directories);
  /// Loads plugin `name` from NAME.so in the first directory that has one.
  std::shared_ptr<PluginLibrary> find(const std::string& name, const Location& where);
  /// Every NAME.so on the path, loaded, or the error that stopped it.
  struct Entry {
    std::filesystem::path file;
    std::shared_ptr<PluginLibrary> plugin;
    std::string error;
  };
  std::vector<Entry> scan();
  /// Names of the .so files on the path (without loading them).
  std::vector<std::string> names() const;
  const std::vector<std::filesystem::path>& directories() const { return directories_; }

 private:
  std::vector<std::filesystem::path> directories_;
  std::map<std::string, std::shared_ptr<PluginLibrary>> loaded_;
};

/// The default plugin directories for the running executable.
std::vector<std::filesystem::path> default_plugin_dirs();

/// Splits "a:b:c" into paths.
std::vector<std::filesystem::path> split_path_list(const std::string& list);

}  // namespace deskfarm::kernel
