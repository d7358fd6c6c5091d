#include "plugin_loader.hpp"

#include <algorithm>
#include <cstddef>
#include <set>

#include <dlfcn.h>

#include <boost/dll/runtime_symbol_info.hpp>
#include <Poco/Version.h>
#include <toml++/toml.h>

#include "config_check.hpp"
#include "manifest.hpp"

namespace deskfarm::kernel {

namespace {
constexpr const char* entry_symbol = "deskfarm_plugin";

std::vector<std::string> role_list(const char* const* roles) {
  std::vector<std::string> out;
  for (std::size_t i = 0; roles && roles[i] && i < 64; ++i) out.emplace_back(roles[i]);
  return out;
}

bool valid_text(const char* s, std::size_t max = 4096) { return s && std::strlen(s) > 0 && std::strlen(s) < max; }

}  // namespace

std::shared_ptr<PluginLibrary> PluginLibrary::load(const std::filesystem::path& file) {
  const Location at{file.string()};
  auto lib = std::shared_ptr<PluginLibrary>(new PluginLibrary);
  lib->file_ = file;
  std::error_code ec;
  lib->library_.load(file, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local, ec);
  if (ec) {
    // Boost reports only an errno; dlopen itself says which symbol or dependency is missing.
    std::string why = ec.message();
    if (void* h = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL)) dlclose(h);
    else if (const char* e = dlerror()) why = e;
    throw ValidationError({{at, "cannot load plugin library: " + why,
                            "a plugin must be built with the SDK's deskfarm_add_plugin(), which links every symbol it needs"}});
  }
  if (!lib->library_.has(entry_symbol)) {
    throw ValidationError({{at, "not a deskfarm plugin: the library exports no '" + std::string(entry_symbol) + "' entry point",
                            "declare the plugin with DESKFARM_PLUGIN(Class, \"name\", \"version\", …) from <deskfarm/sdk/plugin.hpp>"}});
  }
  // BOOST_DLL_ALIAS exports a pointer to the function under the alias name.
  const auto entry = *lib->library_.get<dk_plugin_entry>(entry_symbol);
  const dk_plugin_descriptor* d = entry ? entry() : nullptr;
  if (!d) throw ValidationError({{at, "the plugin's entry point returned no descriptor"}});
  // Size and ABI come first: any other field may be laid out differently in another ABI.
  if (d->abi_version != DESKFARM_PLUGIN_ABI) {
    const bool sane = d->struct_size >= offsetof(dk_plugin_descriptor, name) && valid_text(d->sdk_version, 32);
    throw ValidationError({{at, "plugin ABI mismatch: the library was built for plugin ABI " + std::to_string(d->abi_version) +
                                    (sane ? " (SDK " + std::string(d->sdk_version) + ")" : std::string{}) +
                                    ", this kernel requires ABI " + std::to_string(DESKFARM_PLUGIN_ABI),
                            "rebuild the plugin against SDK " DESKFARM_SDK_VERSION}});
  }
  if (d->struct_size != sizeof(dk_plugin_descriptor)) {
    throw ValidationError({{at, "plugin descriptor size is " + std::to_string(d->struct_size) + " bytes, ABI " +
                                    std::to_string(DESKFARM_PLUGIN_ABI) + " requires " + std::to_string(sizeof(dk_plugin_descriptor)),
                            "rebuild the plugin against SDK " DESKFARM_SDK_VERSION}});
  }
  Diagnostics diags;
  if (!valid_text(d->name, 128)) diags.add(at, "the descriptor has no plugin name");
  if (!valid_text(d->version, 64)) diags.add(at, "the descriptor has no plugin version");
  if (!d->create || !d->destroy) diags.add(at, "the descriptor has no create/destroy functions");
  if (d->config_count > 0 && !d->config) diags.add(at, "the descriptor counts config keys but has none");
  if (d->poco_version != POCO_VERSION) {
    // The data store hands plugins Poco objects; another Poco build has another layout.
    auto text = [](std::uint32_t v) {
      return std::to_string(v >> 24) + "." + std::to_string((v >> 16) & 0xff) + "." + std::to_string((v >> 8) & 0xff);
    };
    diags.add(at, "the plugin was built against Poco " + text(d->poco_version) + ", this kernel uses Poco " + text(POCO_VERSION),
              "rebuild the plugin against the SDK installed with this kernel (and its Poco)");
  }
  check_schema(d->config, d->config_count, at, diags);
  diags.throw_if_any();
  lib->descriptor_ = d;
  return lib;
}

std::vector<std::string> PluginLibrary::provides() const { return role_list(descriptor_->provides_roles); }
std::vector<std::string> PluginLibrary::requires_roles() const { return role_list(descriptor_->requires_roles); }

std::vector<std::filesystem::path> split_path_list(const std::string& list) {
  std::vector<std::filesystem::path> out;
  std::size_t start = 0;
  while (start <= list.size()) {
    const auto end = list.find(':', start);
    const auto part = list.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!part.empty()) out.emplace_back(part);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

std::vector<std::filesystem::path> default_plugin_dirs() {
  const auto exe_dir = boost::dll::program_location().parent_path();
  return {exe_dir.parent_path() / "plugins", exe_dir.parent_path() / "lib" / "deskfarm" / "plugins"};
}

PluginCatalog::PluginCatalog(std::vector<std::filesystem::path> directories) : directories_(std::move(directories)) {}

std::vector<std::string> PluginCatalog::names() const {
  std::set<std::string> out;
  for (const auto& dir : directories_) {
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator(dir, ec); !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      if (it->path().extension() == ".so") out.insert(it->path().stem().string());
    }
  }
  return {out.begin(), out.end()};
}

std::shared_ptr<PluginLibrary> PluginCatalog::find(const std::string& name, const Location& where) {
  if (auto it = loaded_.find(name); it != loaded_.end()) return it->second;
  for (const auto& dir : directories_) {
    const auto file = dir / (name + ".so");
    std::error_code ec;
    if (!std::filesystem::is_regular_file(file, ec)) continue;
    auto lib = PluginLibrary::load(file);
    if (lib->name() != name) {
      throw ValidationError({{where, "plugin file " + file.string() + " declares the name '" + lib->name() + "', not '" + name + "'",
                              "a plugin's file must be called NAME.so after the name in its DESKFARM_PLUGIN declaration"}});
    }
    loaded_.emplace(name, lib);
    return lib;
  }
  std::vector<std::string> dirs;
  for (const auto& d : directories_) dirs.push_back(d.string());
  throw ValidationError({{where, "unknown plugin '" + name + "'." + did_you_mean(name, names()),
                          "plugins found: " + join(names()) + "; searched: " + join(dirs, ":") +
                              " (add directories with --plugin-path or DESKFARM_PLUGIN_PATH)"}});
}

std::vector<PluginCatalog::Entry> PluginCatalog::scan() {
  std::vector<Entry> out;
  std::set<std::string> seen;
  for (const auto& dir : directories_) {
    std::error_code ec;
    std::vector<std::filesystem::path> files;
    for (auto it = std::filesystem::directory_iterator(dir, ec); !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      if (it->path().extension() == ".so") files.push_back(it->path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      if (!seen.insert(file.stem().string()).second) continue;  // shadowed by an earlier directory
      Entry e{file, nullptr, {}};
      try {
        e.plugin = PluginLibrary::load(file);
      } catch (const ValidationError& err) {
        e.error = err.diagnostics().front().message;
      }
      out.push_back(std::move(e));
    }
  }
  return out;
}

}  // namespace deskfarm::kernel
