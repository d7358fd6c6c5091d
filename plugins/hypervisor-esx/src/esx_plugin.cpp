// hypervisor-esx: the hypervisor simulation engine (libs/hvsim) with the esx personality.
#include <deskfarm/hvsim/adapter.hpp>

namespace {

constexpr const char* provides[] = {"hypervisor", nullptr};

class Esx final : public deskfarm::hvsim::Adapter {
 public:
  explicit Esx(deskfarm::sdk::Context& ctx) : Adapter(ctx, deskfarm::hvsim::esx()) {}
};

}  // namespace

DESKFARM_PLUGIN(Esx, "hypervisor-esx", "1.0.0", "vSphere ESX: poweredOff/poweredOn/suspended, vSphere tasks and faults, placement, HA restart (simulated)", provides, nullptr, deskfarm::hvsim::adapter_schema)
