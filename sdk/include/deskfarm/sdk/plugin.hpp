#pragma once
#include <cstdint>
#include <cstring>
#include <exception>

#include <Poco/Version.h>
#include <boost/dll/alias.hpp>

#include "deskfarm/sdk/api.hpp"
#include "deskfarm/sdk/config.hpp"
#include "deskfarm/sdk/context.hpp"
#include "deskfarm/sdk/version.hpp"

extern "C" {
/// Where a failed create() explains itself; `key` names the config key at fault, if any.
struct dk_error {
  char key[128];
  char message[1024];
};

/// The one thing a plugin exports (as the Boost.DLL alias `deskfarm_plugin`). C layout: the kernel
/// reads struct_size and abi_version before touching any other field.
struct dk_plugin_descriptor {
  std::uint32_t struct_size;
  std::uint32_t abi_version;
  const char* sdk_version;
  const char* name;
  const char* version;
  const char* summary;
  const char* const* provides_roles;  ///< roles this plugin provides, nullptr-terminated (may be nullptr)
  const char* const* requires_roles;  ///< roles it needs from other instances, nullptr-terminated (may be nullptr)
  const dk_config_key* config;
  std::uint32_t config_count;
  /// Constructs the plugin with a deskfarm::sdk::Context*; nullptr and `error` filled on failure.
  void* (*create)(void* context, dk_error* error);
  /// Destroys what create() returned, inside the plugin's own module.
  void (*destroy)(void* plugin);
  /// Checks a deskfarm::sdk::Config* beyond what the schema says (`deskfarm check` runs it without starting
  /// anything); nonzero and `error` filled when refused. nullptr = nothing more to check.
  int (*validate)(const void* config, dk_error* error);
  /// POCO_VERSION the plugin was built with: the data store hands out Poco objects, so it must match the kernel's.
  std::uint32_t poco_version;
};

/// The exported entry point's type.
typedef const dk_plugin_descriptor* (*dk_plugin_entry)();
}

namespace deskfarm::sdk {

enum class Health { ok, degraded, failed };

/// A plugin instance. The constructor receives the Context; start(), stop() and status() run on the
/// instance's executor, so a plugin needs no locks for its own state. Exceptions thrown from any of them
/// are caught by the kernel and reported with the instance's name.
///
/// A plugin class may declare `static void validate(const deskfarm::sdk::Config&)` that throws ConfigError
/// for values the schema cannot judge alone; `deskfarm check` and `deskfarm run` call it before creating
/// any instance.
class DESKFARM_SDK_API Plugin {
 public:
  virtual ~Plugin();
  /// Called once every instance this one requires has started. Must not wait for bus replies.
  /// If it throws, or does not return within start_timeout_s, stop() is never called: the instance is
  /// destroyed (after a late start() returned), so the destructor must release what start() acquired.
  virtual void start() {}
  /// Called in reverse start order, and only when start() returned normally (one whose start() threw or timed
  /// out is destroyed without stop(): its destructor must release what start() took). Join every thread the
  /// plugin started. A stop() still running after stop_timeout_s is logged and the instance is leaked, never
  /// destroyed under it.
  virtual void stop() {}
  /// Fills the instance's fields of `deskfarm status` and the admin JSON (an object).
  virtual void status(Value& out) const { (void)out; }
  virtual Health health() const { return Health::ok; }
};

namespace detail {
inline void copy_text(char* dst, std::size_t size, const char* src) {
  std::strncpy(dst, src, size - 1);
  dst[size - 1] = '\0';
}

/// Copies the exception in flight into `error` (inside the plugin's module: nothing crosses the boundary).
inline void report(dk_error* error) noexcept {
  try {
    throw;
  } catch (const ConfigError& e) {
    copy_text(error->key, sizeof error->key, e.key().c_str());
    copy_text(error->message, sizeof error->message, e.what());
  } catch (const std::exception& e) {
    copy_text(error->message, sizeof error->message, error_text(e).c_str());
  } catch (...) {
    copy_text(error->message, sizeof error->message, "unknown exception (not derived from std::exception)");
  }
}

template <class T>
void* create(void* context, dk_error* error) noexcept {
  try {
    return static_cast<Plugin*>(new T(*static_cast<Context*>(context)));
  } catch (...) {
    report(error);
  }
  return nullptr;
}

template <class T>
void destroy(void* plugin) noexcept {
  delete static_cast<Plugin*>(plugin);
}

template <class T>
int validate(const void* config, dk_error* error) noexcept {
  try {
    T::validate(*static_cast<const Config*>(config));
    return 0;
  } catch (...) {
    report(error);
  }
  return 1;
}

template <class T>
constexpr int (*validator())(const void*, dk_error*) {
  if constexpr (requires(const Config& c) { T::validate(c); }) return &validate<T>;
  else return nullptr;
}

constexpr std::uint32_t count(std::nullptr_t) { return 0; }
constexpr const dk_config_key* first(std::nullptr_t) { return nullptr; }
template <class S>
constexpr std::uint32_t count(const S& schema) { return static_cast<std::uint32_t>(schema.keys.size()); }
template <class S>
constexpr const dk_config_key* first(const S& schema) { return schema.keys.data(); }
}  // namespace detail

}  // namespace deskfarm::sdk

/// Exports plugin class `Class` (constructible from `deskfarm::sdk::Context&`). `Provides` and `Requires`
/// are nullptr-terminated arrays of role names or nullptr; `ConfigSchema` an sdk::schema<...>(...) or nullptr.
#define DESKFARM_PLUGIN(Class, Name, Version, Summary, Provides, Requires, ConfigSchema)                  \
  namespace {                                                                                          \
  const ::dk_plugin_descriptor deskfarm_plugin_descriptor_{                                            \
      sizeof(::dk_plugin_descriptor),                                                                  \
      DESKFARM_PLUGIN_ABI,                                                                             \
      DESKFARM_SDK_VERSION,                                                                            \
      Name,                                                                                            \
      Version,                                                                                         \
      Summary,                                                                                         \
      Provides,                                                                                        \
      Requires,                                                                                        \
      ::deskfarm::sdk::detail::first(ConfigSchema),                                                    \
      ::deskfarm::sdk::detail::count(ConfigSchema),                                                    \
      &::deskfarm::sdk::detail::create<Class>,                                                         \
      &::deskfarm::sdk::detail::destroy<Class>,                                                        \
      ::deskfarm::sdk::detail::validator<Class>(),                                                     \
      POCO_VERSION,                                                                                    \
  };                                                                                                   \
  const ::dk_plugin_descriptor* deskfarm_plugin_entry_() { return &deskfarm_plugin_descriptor_; }     \
  }                                                                                                    \
  BOOST_DLL_ALIAS(deskfarm_plugin_entry_, deskfarm_plugin)
