// hypervisor-xen: the hypervisor simulation engine (libs/hvsim) with the xen personality.
#include <deskfarm/hvsim/adapter.hpp>

namespace {

constexpr const char* provides[] = {"hypervisor", nullptr};

class Xen final : public deskfarm::hvsim::Adapter {
 public:
  explicit Xen(deskfarm::sdk::Context& ctx) : Adapter(ctx, deskfarm::hvsim::xen()) {}
};

}  // namespace

DESKFARM_PLUGIN(Xen, "hypervisor-xen", "1.0.0", "XenServer: resource pools with a master, Halted/Running/Paused/Suspended, XAPI tasks and errors, pool HA (simulated)", provides, nullptr, deskfarm::hvsim::adapter_schema)
