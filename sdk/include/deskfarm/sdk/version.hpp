#pragma once
#include <cstdint>

/// The plugin ABI: a plugin loads only into a kernel with exactly this number. Bump on any change to the
/// descriptor, Context, Plugin, Bus, Clock, Executor, Logger, Metrics, Store or Config layout.
#define DESKFARM_PLUGIN_ABI 4
/// The SDK's semantic version; features are added in minor versions within one ABI.
#define DESKFARM_SDK_VERSION "0.2.0"

namespace deskfarm::sdk {
/// The ABI integer compiled into this SDK.
inline constexpr std::uint32_t abi_version = DESKFARM_PLUGIN_ABI;
/// The SDK version compiled into this SDK.
inline constexpr const char* sdk_version = DESKFARM_SDK_VERSION;
}  // namespace deskfarm::sdk
