# shellcheck shell=bash
# The storm farm the ddc benchmarks and drills run (sourced, not run): one simulated XenServer pool of DESKTOPS
# desktops on a network with a subnet (each desktop's agent registers its lease, so brokering hands out addresses),
# a licence server, two controllers sharing one desktop group that keeps every desktop started, and the agents.
#
#   source tools/bench/ddc/storm_farm.sh
#   storm_farm FILE NAME STATE_DIR DESKTOPS KIND FARM_KEY START_MS LICENCES [DATA_STORE]
#
# KIND is the group's kind (pooled-random, pooled-static, assigned); START_MS the hypervisor's constant start
# latency; DATA_STORE a data_store URL ("" or absent: the deployment's own SQLite file). The admin endpoint binds
# a free loopback port (STATE_DIR/admin.address says which).
storm_farm() {
  if [ $# -lt 8 ]; then
    echo "storm_farm: usage: storm_farm FILE NAME STATE_DIR DESKTOPS KIND FARM_KEY START_MS LICENCES [DATA_STORE]" >&2
    return 2
  fi
  local file=$1 name=$2 state=$3 desktops=$4 kind=$5 key=$6 start_ms=$7 licences=$8 store=${9:-}
  local group="groups = [{ name = \"pool\", kind = \"$kind\", desktops = [\"desktop-*\"], hypervisor = \"hv\", idle_peak = $desktops, idle_business = $desktops, idle_off_hours = $desktops }]
pool_interval_s = 1
max_starts_per_tick = $desktops
farm_key = \"$key\"
license = \"lic\"
request_timeout_ms = 2000"
  {
    printf '[deployment]\nname = "%s"\nstate_dir = "%s"\nadmin = "127.0.0.1:0"\n' "$name" "$state"
    if [ -n "$store" ]; then printf 'data_store = "%s"\n' "$store"; fi
    cat <<TOML

[instances.hv]
plugin = "hypervisor-xen"
max_in_progress = 0
max_vms = $desktops
hosts = [{ id = "host-1", memory_mb = 16777216, vcpus = 65535 }]
networks = [{ name = "lan", subnet = "10.0.0.0/14" }]
vms = [{ template = "desktop", count = $desktops, prefix = "desktop-" }]
latencies = [{ action = "start", distribution = "constant", ms = $start_ms }]

[instances.lic]
plugin = "license"
farms = [{ name = "farm", licenses = $licences }]

[instances.ddc-1]
plugin = "ddc"
$group

[instances.ddc-2]
plugin = "ddc"
$group

[instances.agents]
plugin = "vda"
controllers = ["ddc-1", "ddc-2"]
farm_key = "$key"
TOML
  } >"$file"
}
