// hypervisor-hyperv: the hypervisor simulation engine (libs/hvsim) with the hyperv personality.
#include <deskfarm/hvsim/adapter.hpp>

namespace {

constexpr const char* provides[] = {"hypervisor", nullptr};

class HyperV final : public deskfarm::hvsim::Adapter {
 public:
  explicit HyperV(deskfarm::sdk::Context& ctx) : Adapter(ctx, deskfarm::hvsim::hyperv()) {}
};

}  // namespace

DESKFARM_PLUGIN(HyperV, "hypervisor-hyperv", "1.0.0", "Hyper-V: Off/Starting/Running/Saved/Paused/Stopping, WMI jobs and return codes (simulated)", provides, nullptr, deskfarm::hvsim::adapter_schema)
