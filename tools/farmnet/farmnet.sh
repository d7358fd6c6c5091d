#!/usr/bin/env bash
# farmnet: several sites of one farm on one machine. Each site is a network namespace with a nats-server (the
# servers form one cluster) and a `deskfarm run` of an ima server; site 1 also runs the PostgreSQL primary, site 2
# its streaming replica. The sites hang off a hub namespace by veth pairs shaped with tbf; in the hub, linkemu
# switches frames between them with a per-link delay and can cut a link. Everything started is stopped by its PID
# (at `down`, and by `up` itself when a step fails), and the namespaces are deleted. Run as root. `--help` for usage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PG_WAIT_TENTHS=${PG_WAIT_TENTHS:-300}  # a PostgreSQL start on a loaded machine: at most 30 s
PG_NO_FSYNC=1  # test data only: no waiting for the disk
# shellcheck source=../lib/postgres.sh
source "$here/../lib/postgres.sh"

usage() {
  cat <<'EOF'
usage: farmnet.sh COMMAND DIR [ARGS…]       (as root; DIR holds the run: its state, logs and PID files)

  up DIR [--sites a,b,c] [--zones one|site|both|farm] [--desktops N] [--delay-ms N] [--rate RATE] [--keepalive-s N]
         [--gateway-s N] [--bin BUILD_BIN_DIR] [--name RUN] [--replica-copy local|basebackup]
        Creates namespaces df-RUN-hub and df-RUN-SITE (RUN: --name, default random), links each site to the hub
        (veth, tbf at RATE both ways, default 100mbit; linkemu delays each link N ms one way, default 10, so a
        frame between two sites takes 2N), starts a nats-server per site (one cluster), PostgreSQL primary in the
        first site and a streaming replica in the second (that site's data_store_replica), seeded from a copy of
        the primary's initdb made on this machine (--replica-copy local, default) or cloned through the link by
        pg_basebackup -R once the primary runs (basebackup: slower), then one `deskfarm run` per site
        with ima instance ima-SITE of farm "farmnet": one zone "farm" (--zones one, default) or zone SITE
        (--zones site); --zones both runs both shapes side by side: ima-SITE in farm "farmnet", zone "farm", and
        zone-SITE in farm "zones", zone SITE (querydc/queryds show the first; ask zone-SITE with
        `df DIR SITE request ima.zone-SITE.admin.querydc`). --zones farm makes each site a farm of its own:
        ima-SITE in farm site-SITE, zone SITE, its data store SQLite in the site, its nats-server alone (no
        cluster routes) and no PostgreSQL: nothing of the farms crosses the WAN.
        --desktops N (default 0) adds to each site a simulated XenServer pool hv-SITE of N desktops desk-SITE-*,
        their agents agents-SITE and a controller ddc-SITE beside ima-SITE keeping all N started (group pool-SITE;
        with one zone the last site's controller, beside the ZDC, lists and tends every site's group), and a
        licence server: lic in the first site (beside the data store) for a farm spanning the sites, lic-SITE in
        each site for --zones farm. keepalive_s (default 4), gateway_validation_s
        (default 2), dcn_poll_s 2, election_window_ms 300. DIR must not exist or be
        empty. Waits until every site has a zone data collector and the replica streams; prints the time it
        took, with each step's seconds. On any failure
        everything already started is stopped and the namespaces deleted.
  down DIR              Stops every process of the run by its PID (SIGTERM; PostgreSQL SIGINT, its fast shutdown;
                        SIGKILL to what is left after 10 s), deletes its namespaces. DIR (logs) stays: remove it.
  cut DIR SITE          linkemu drops every frame to and from SITE (a partition); returns once applied.
  heal DIR SITE         Undoes cut.
  delay DIR SITE MS     Sets SITE's one-way link delay.
  kill DIR SITE [deskfarm|nats|pg]
                        SIGKILL the site's process (default deskfarm) and wait for it to end.
  start DIR SITE [deskfarm|nats|pg]
                        Start a killed one again (the same command line).
  exec DIR SITE CMD…    Runs CMD in SITE's namespace.
  df DIR SITE ARGS…     Runs `deskfarm ARGS… MANIFEST` in SITE's namespace with that site's manifest, e.g.
                        `farmnet.sh df DIR a querydc`, `farmnet.sh df DIR b request ima.ima-b.admin.report '{"sessions":2,"load":10}'`.
  stats DIR             linkemu's counters per link (frames, bytes in each direction, drops).
  info DIR              Sites, namespaces, addresses, PIDs.

Addresses: site number i (1-based, in --sites order) is 10.77.i.1, on-link 10.77.0.0/16 through linkemu;
nats-server on :4222 (cluster :6222, monitoring :8222), PostgreSQL on :5432, deskfarm's admin on 127.0.0.1 of
its namespace. Logs in DIR/log/, PIDs in DIR/pid/ (PostgreSQL's log and PID in DIR/sites/SITE/pg/).
EOF
}

die() { echo "farmnet: $*" >&2; exit 1; }
[ $# -ge 1 ] || { usage >&2; exit 2; }
cmd=$1
shift
case "$cmd" in -h|--help|help) usage; exit 0 ;; esac
[ $# -ge 1 ] || { echo "farmnet: $cmd needs DIR" >&2; usage >&2; exit 2; }
dir=$1
shift

# ---- state of a run -----------------------------------------------------------------------------------------

load() {
  [ -f "$dir/farmnet.env" ] || die "$dir holds no farmnet run (no farmnet.env): start one with farmnet.sh up $dir"
  # shellcheck disable=SC1091
  . "$dir/farmnet.env"
  read -r -a sites <<<"$sites_list"
}
ns() { echo "df-$run-$1"; }
hub() { echo "df-$run-hub"; }
site_index() {
  local i=1 s
  for s in "${sites[@]}"; do [ "$s" = "$1" ] && { echo "$i"; return; }; i=$((i + 1)); done
  die "no site '$1' in this run (sites: ${sites[*]})"
}
addr() { echo "10.77.$(site_index "$1").1"; }
pidfile() { echo "$dir/pid/$1.pid"; }
alive() {  # NAME: its process runs (PostgreSQL's PID is in its directory's state file, tools/lib/postgres.sh)
  case "$1" in
    pg-*) pg_running "$(pg_dir "${1#pg-}")" ;;
    *) [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null ;;
  esac
}
pid_of() { case "$1" in pg-*) pg_attach farmnet_pg "$(pg_dir "${1#pg-}")" && _pg_get farmnet_pg pid ;; *) cat "$(pidfile "$1")" ;; esac; }

# Stops processes by their PID files: SIG (TERM, INT, KILL) to all at once, then waits at most 10 s for all of
# them, then SIGKILL to those left. Usage: stop_procs SIG NAME…
stop_procs() {
  local sig=$1 name f pid pids=()
  shift
  for name in "$@"; do
    f=$(pidfile "$name")
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    rm -f "$f"
    kill -0 "$pid" 2>/dev/null || continue
    kill "-$sig" "$pid" 2>/dev/null || true
    pids+=("$pid:$name")
  done
  local end=$((SECONDS + 10)) left
  while :; do
    left=()
    for p in "${pids[@]}"; do kill -0 "${p%%:*}" 2>/dev/null && left+=("$p"); done
    [ ${#left[@]} -gt 0 ] && [ $SECONDS -lt $end ] || break
    sleep 0.05
  done
  for p in "${left[@]}"; do
    echo "farmnet: ${p#*:} (PID ${p%%:*}) still running 10 s after SIG$sig: SIGKILL" >&2
    kill -KILL "${p%%:*}" 2>/dev/null || true
  done
  for p in "${left[@]}"; do for _ in $(seq 50); do kill -0 "${p%%:*}" 2>/dev/null || break; sleep 0.1; done; done
}

# Starts CMD… in namespace NS in the background as NAME (log DIR/log/NAME.log, PID DIR/pid/NAME.pid). `ip netns
# exec` execs the command, so the PID is the server's own.
spawn() {
  local name=$1 netns=$2
  shift 2
  ip netns exec "$netns" "$@" </dev/null >>"$dir/log/$name.log" 2>&1 &
  echo $! >"$(pidfile "$name")"
}

# Waits (at most SECONDS, in 0.05 s steps) until CMD… succeeds; fails naming WHAT and the log to read.
wait_for() {
  local seconds=$1 what=$2 log=$3
  shift 3
  local end=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "$what not ready within $seconds s (see $log)"
    sleep 0.05
  done
}

# ---- the pieces -------------------------------------------------------------------------------------------

as_postgres() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }

start_nats() {
  local s=$1
  spawn "nats-$s" "$(ns "$s")" nats-server -c "$dir/sites/$s/nats.conf"
}
routes_ready() { local n; n=$(nats_routes "$1") && [ "$n" -ge "$2" ]; }
nats_routes() {  # the cluster routes nats-server of site $1 reports, from its monitoring port
  local s=$1
  ip netns exec "$(ns "$s")" curl -fsS "http://$(addr "$s"):8222/routez" | sed -n 's/.*"num_routes": *\([0-9]*\).*/\1/p'
}

# PostgreSQL is tools/lib/postgres.sh's: site SITE's server lives in DIR/sites/SITE/pg (its state file there, so
# `kill`, `start` and `down`, separate commands, find it again), in the site's namespace, on the site's address.
pg_dir() { echo "$dir/sites/$1/pg"; }
pg_has() { [ -f "$(pg_dir "$1")/pg.state" ]; }

start_deskfarm() {
  local s=$1
  rm -f "$dir/sites/$s/var/admin.address"
  spawn "deskfarm-$s" "$(ns "$s")" "$bin/deskfarm" run "$dir/sites/$s/site.toml"
}
deskfarm_ready() {  # site $1's deskfarm answers querydc with a collector of its zone
  local s=$1
  ip netns exec "$(ns "$s")" "$bin/deskfarm" querydc "$dir/sites/$s/site.toml" 2>/dev/null | awk 'NR > 1 && $2 != "" { ok = 1 } END { exit !ok }'
}

write_control() {  # linkemu's control file from DIR/links (one line per site: SITE DELAY CUT); then SIGHUP, wait
  local gen s d c
  gen=$(($(cat "$dir/generation" 2>/dev/null || echo 0) + 1))
  echo "$gen" >"$dir/generation"
  {
    echo "generation $gen"
    while read -r s d c; do echo "p-$s delay_ms=$d cut=$c"; done <"$dir/links"
  } >"$dir/linkemu.control.tmp"
  mv "$dir/linkemu.control.tmp" "$dir/linkemu.control"
  if alive linkemu; then
    kill -HUP "$(cat "$(pidfile linkemu)")"
    wait_for 5 "linkemu (control generation $gen)" "$dir/log/linkemu.log" grep -qx "generation $gen" "$dir/linkemu.stats"
  fi
}
set_link() {  # SITE FIELD(2=delay, 3=cut) VALUE
  local s=$1 field=$2 value=$3
  site_index "$s" >/dev/null
  awk -v s="$s" -v f="$field" -v v="$value" '$1 == s { $f = v } { print }' "$dir/links" >"$dir/links.tmp"
  mv "$dir/links.tmp" "$dir/links"
  write_control
}

down_all() {
  local s i
  set +e
  stop_procs TERM "${sites[@]/#/deskfarm-}"
  for ((i = ${#sites[@]} - 1; i >= 0; i--)); do pg_has "${sites[i]}" && pg_stop "$(pg_dir "${sites[i]}")"; done  # replica first
  [ -n "$(_pg_get farmnet_db initdb_pid)" ] && kill "$(_pg_get farmnet_db initdb_pid)" 2>/dev/null  # `up` failed during initdb
  stop_procs TERM "${sites[@]/#/nats-}" linkemu
  for s in "${sites[@]}"; do ip netns del "$(ns "$s")" 2>/dev/null; done
  ip netns del "$(hub)" 2>/dev/null
  set -e
}

# ---- commands ---------------------------------------------------------------------------------------------

ima_instance() {  # NAME FARM ZONE HOST_ID: one [instances.…] table of a site's manifest
  cat <<EOF

[instances.$1]
plugin = "ima"
farm = "$2"
zone = "$3"
host_id = $4
keepalive_s = $keepalive
gateway_validation_s = $gateway
election_window_ms = 300
dcn_poll_s = 2
EOF
}

# A site's desktops (--desktops): the simulated pool, its agents, the controller beside the site's ima server and,
# where the farm has it, the licence server. A farm has one licence server, in the first site beside the data
# store's primary (every checkout is a write to it), so a logon in another site checks its licence out across the WAN.
desktop_instances() {
  local s=$1 g groups="" farm=farmnet lic=lic lic_site=${sites[0]}
  [ "$zones" != farm ] || { farm=site-$s; lic=lic-$s; lic_site=$s; }
  for g in "${sites[@]}"; do
    # One zone's pool master is the controller beside its ZDC, the last site's (highest host ID): it lists and
    # keeps started every site's desktops. Otherwise each controller is its zone's master and lists its own.
    [ "$g" = "$s" ] || { [ "$s" = "${sites[${#sites[@]}-1]}" ] && [ "$zones" != site ] && [ "$zones" != farm ]; } || continue
    groups+="${groups:+, }{ name = \"pool-$g\", kind = \"pooled-random\", desktops = [\"desk-$g-*\"], hypervisor = \"hv-$g\", idle_peak = $desktops, idle_business = $desktops, idle_off_hours = $desktops }"
  done
  cat <<EOF

[instances.hv-$s]
plugin = "hypervisor-xen"
max_vms = $desktops
hosts = [{ id = "host-$s", memory_mb = 1048576, vcpus = 1024 }]
vms = [{ template = "desktop", count = $desktops, prefix = "desk-$s-" }]
latencies = [{ action = "start", distribution = "constant", ms = 50 }]

[instances.agents-$s]
plugin = "vda"
hypervisors = ["hv-$s"]
controllers = ["ddc-$s"]
farm_key = "farmnet-key"

[instances.ddc-$s]
plugin = "ddc"
ima = "ima-$s"
farm_key = "farmnet-key"
pool_interval_s = 5
max_starts_per_tick = $desktops
groups = [$groups]
license = "$lic"
license_farm = "$farm"
EOF
  [ "$s" != "$lic_site" ] || printf '\n[instances.%s]\nplugin = "license"\nfarms = [{ name = "%s", licenses = %s }]\n' "$lic" "$farm" $((desktops * ${#sites[@]}))
}
desktops_ready() {  # ddc-$1 has its site's desktops registered and idle
  local s=$1
  ip netns exec "$(ns "$s")" "$bin/deskfarm" request "ddc.ddc-$s.admin.groups" '{}' "$dir/sites/$s/site.toml" 2>/dev/null |
    grep -q "\"idle\":$desktops[,}]"
}

phase() {  # one line per step of `up`, with the seconds since it began; the step's own seconds kept for the last line
  local now
  now=$EPOCHREALTIME
  echo "farmnet: $(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%6.2f s", b - a }') $1" >&2
  steps+="${steps:+, }$2 $(awk -v a="$t_step" -v b="$now" 'BEGIN { printf "%.2f", b - a }')"
  t_step=$now
}

cmd_up() {
  local sites_arg=a,b,c zones=one desktops=0 delay=10 rate=100mbit keepalive=4 gateway=2 name="" replica_copy=local
  bin=$(cd "$here/../.." && pwd)/build/bin
  while [ $# -gt 0 ]; do
    case "$1" in
      --sites) sites_arg=$2; shift 2 ;;
      --zones) zones=$2; shift 2 ;;
      --desktops) desktops=$2; shift 2 ;;
      --delay-ms) delay=$2; shift 2 ;;
      --rate) rate=$2; shift 2 ;;
      --keepalive-s) keepalive=$2; shift 2 ;;
      --gateway-s) gateway=$2; shift 2 ;;
      --bin) bin=$(cd "$2" && pwd); shift 2 ;;
      --name) name=$2; shift 2 ;;
      --replica-copy) replica_copy=$2; shift 2 ;;
      *) echo "farmnet: up: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
  done
  case "$zones" in one|site|both|farm) ;; *) echo "farmnet: --zones is one, site, both or farm, not '$zones'" >&2; exit 2 ;; esac
  case "$replica_copy" in local|basebackup) ;; *) echo "farmnet: --replica-copy is local or basebackup, not '$replica_copy'" >&2; exit 2 ;; esac
  [[ "$desktops" =~ ^[0-9]+$ ]] && [ "$desktops" -le 10000 ] || { echo "farmnet: --desktops takes 0 to 10000 desktops per site, not '$desktops'" >&2; exit 2; }
  [[ "$delay" =~ ^[0-9]+$ ]] || { echo "farmnet: --delay-ms takes milliseconds, not '$delay'" >&2; exit 2; }
  [ "$(id -u)" = 0 ] || die "up needs root (network namespaces, veth, tc)"
  local tool
  for tool in ip tc nats-server curl setpriv python3; do command -v "$tool" >/dev/null || die "$tool is not installed (scripts/setup.sh installs it)"; done
  [ -x "$bin/deskfarm" ] && [ -x "$bin/linkemu" ] || die "no deskfarm and linkemu in $bin: build first (cmake --build build), or give --bin"
  [ "$zones" = farm ] || pg_installed || die "the PostgreSQL server is not installed (scripts/setup.sh installs it)"
  IFS=, read -r -a sites <<<"$sites_arg"
  [ ${#sites[@]} -ge 2 ] && [ ${#sites[@]} -le 200 ] || die "--sites needs 2 to 200 sites, got '$sites_arg'"
  local s
  for s in "${sites[@]}"; do [[ "$s" =~ ^[a-z0-9]{1,8}$ ]] || die "site '$s': use 1 to 8 lowercase letters or digits"; done
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then die "$dir is not empty: give a new directory (or farmnet.sh down it and remove it)"; fi
  [ -n "$name" ] || name=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
  [[ "$name" =~ ^[a-z0-9]{1,8}$ ]] || die "--name '$name': use 1 to 8 lowercase letters or digits"
  run=$name
  mkdir -p "$dir/log" "$dir/pid" "$dir/sites"
  dir=$(cd "$dir" && pwd)
  chmod 755 "$dir" "$dir/sites"  # PostgreSQL runs as nobody and needs to reach its data directory
  as_postgres test -x "$dir/sites" || die "user nobody cannot enter $dir (PostgreSQL runs as nobody): make its parent directories world-searchable (chmod o+x)"
  sites_list="${sites[*]}"
  cat >"$dir/farmnet.env" <<EOF
run=$run
sites_list="$sites_list"
bin=$bin
zones=$zones
desktops=$desktops
EOF
  trap 'echo "farmnet: up failed: stopping what was started" >&2; down_all' EXIT
  local t0 t_step steps="" i=0 ports=()
  t0=$EPOCHREALTIME
  t_step=$t0
  # Meanwhile: the network. A farm per site keeps its data store in the site (SQLite).
  [ "$zones" = farm ] || PG_NETNS=$(ns "${sites[0]}") pg_initdb farmnet_db "$(pg_dir "${sites[0]}")" "$(addr "${sites[0]}"):5432"

  # Network: the hub and one namespace per site; a veth pair each, tbf on both ends. One `ip -batch` (or `tc
  # -batch`) per namespace instead of a process per command: on a loaded machine each process costs 50 ms.
  local hub_ns site_ns root_cmds="" hub_cmds="link set lo up" hub_tc=""
  hub_ns=$(hub)
  root_cmds="netns add $hub_ns"
  : >"$dir/links"
  for s in "${sites[@]}"; do
    site_ns=df-$run-$s
    root_cmds+=$'\n'"netns add $site_ns"$'\n'"link add wan0 netns $site_ns type veth peer name p-$s netns $hub_ns"
    hub_cmds+=$'\n'"link set p-$s up"
    hub_tc+="qdisc add dev p-$s root tbf rate $rate burst 64kb latency 100ms"$'\n'
    ports+=(--port "p-$s")
    echo "$s $delay 0" >>"$dir/links"
    mkdir -p "$dir/sites/$s/var"
  done
  ip -batch - <<<"$root_cmds"
  for s in "${sites[@]}"; do
    i=$((i + 1))
    site_ns=df-$run-$s
    printf 'link set lo up\naddr add 10.77.%s.1/16 dev wan0\nlink set wan0 up\n' "$i" | ip -n "$site_ns" -batch -
    tc -n "$site_ns" qdisc add dev wan0 root tbf rate "$rate" burst 64kb latency 100ms
  done
  ip -n "$hub_ns" -batch - <<<"$hub_cmds"
  tc -n "$hub_ns" -batch - <<<"$hub_tc"
  # The hub's own stack stays silent (no IPv6 neighbour discovery of its own on the ports).
  ip netns exec "$hub_ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  write_control
  spawn linkemu "$hub_ns" "$bin/linkemu" "${ports[@]}" --control "$dir/linkemu.control" --stats "$dir/linkemu.stats"

  # NATS: one server per site, routes to every other site.
  for s in "${sites[@]}"; do
    local a r others=()
    a=$(addr "$s")
    for r in "${sites[@]}"; do [ "$r" = "$s" ] || others+=("\"nats-route://$(addr "$r"):6222\""); done
    {
    cat <<EOF
server_name: farmnet-$s
listen: $a:4222
http: $a:8222
# A cut link is noticed within ~2 s (the defaults, 2 minutes, would hold a dead route far past any drill).
ping_interval: "1s"
ping_max: 2
EOF
    # A farm per site shares no bus: its nats-server has no routes to the others.
    [ "$zones" = farm ] || cat <<EOF
cluster {
  name: farmnet
  listen: $a:6222
  routes: [$(IFS=,; echo "${others[*]}")]
}
EOF
    } >"$dir/sites/$s/nats.conf"
    start_nats "$s"
  done
  # deskfarm's manifests (started once the primary answers): one per site, its ima server on its own site's
  # nats-server, the data store on the primary. Written now, while initdb runs.
  i=0
  for s in "${sites[@]}"; do
    i=$((i + 1))
    {
      cat <<EOF
# farmnet site $s (namespace $(ns "$s"), address $(addr "$s"))
[deployment]
name = "site-$s"
state_dir = "$dir/sites/$s/var"
admin = "127.0.0.1:0"
bus = "nats://$(addr "$s"):4222"
data_store = "$([ "$zones" = farm ] && echo "sqlite:$dir/sites/$s/var/datastore.db" || echo "postgresql://deskfarm@$(addr "${sites[0]}"):5432/postgres?connect_timeout=2")"
EOF
      if [ "$zones" != farm ] && [ "$s" = "${sites[1]}" ]; then
        echo "data_store_replica = \"postgresql://deskfarm@$(addr "$s"):5432/postgres?connect_timeout=2\""
      fi
      case "$zones" in
        one|both) ima_instance "ima-$s" farmnet farm $((i * 10)) ;;
        site) ima_instance "ima-$s" farmnet "$s" $((i * 10)) ;;
        farm) ima_instance "ima-$s" "site-$s" "$s" $((i * 10)) ;;
      esac
      [ "$zones" != both ] || ima_instance "zone-$s" zones "$s" $((i * 10))
      [ "$desktops" = 0 ] || desktop_instances "$s"
    } >"$dir/sites/$s/site.toml"
  done
  wait_for 5 linkemu "$dir/log/linkemu.log" test -f "$dir/linkemu.stats"
  phase "network, linkemu, nats-servers started, manifests written" network
  local want_routes=$((${#sites[@]} - 1))
  if [ "$zones" = farm ]; then
    want_routes=0
  else
    # The replica is seeded from a copy of the primary's directory made here, between its initdb and its first
    # start (as an operator seeds a standby from a snapshot), not by a pg_basebackup through the WAN link: only
    # the streaming crosses the link. Both servers start at once; the standby retries its primary every 0.1 s.
    # (--replica-copy basebackup: the replica cloned through the link once the primary runs, as before; the peer
    # tools/bench/farmnet/up.sh measures against.)
    if [ "$replica_copy" = local ]; then
      PG_NETNS=$(ns "${sites[1]}") pg_seed_replica farmnet_replica farmnet_db "$(pg_dir "${sites[1]}")" "$(addr "${sites[1]}"):5432" ||
        die "PostgreSQL replica of site ${sites[1]} could not be seeded from the primary's initdb (see $(pg_dir "${sites[0]}")/initdb.log)"
      phase "PostgreSQL initdb done, replica seeded" initdb
      pg_launch_replica farmnet_replica farmnet_db "$(pg_dir "${sites[1]}")" ||
        die "PostgreSQL replica of site ${sites[1]} did not start (see $(pg_dir "${sites[1]}")/server.log)"
    fi
    pg_start_primary farmnet_db "$(pg_dir "${sites[0]}")" || die "PostgreSQL primary of site ${sites[0]} did not start (see $(pg_dir "${sites[0]}")/server.log)"
    if [ "$replica_copy" = basebackup ]; then
      phase "PostgreSQL primary" primary
      PG_NETNS=$(ns "${sites[1]}") pg_launch_replica farmnet_replica farmnet_db "$(pg_dir "${sites[1]}")" "$(addr "${sites[1]}"):5432" ||
        die "PostgreSQL replica of site ${sites[1]} did not start (see $(pg_dir "${sites[1]}")/server.log)"
      phase "PostgreSQL replica cloned through the link (pg_basebackup) and started" basebackup
    else
      phase "PostgreSQL primary (the replica starting beside it)" primary
    fi
  fi
  for s in "${sites[@]}"; do
    wait_for 20 "nats-server of site $s with routes to every other site" "$dir/log/nats-$s.log" routes_ready "$s" "$want_routes"
  done
  phase "nats-servers with their routes" routes

  for s in "${sites[@]}"; do start_deskfarm "$s"; done
  phase "deskfarms started" deskfarm-start
  if [ "$zones" != farm ]; then
    # While the deskfarms start (the replica's site falls back to the primary until the replica answers).
    pg_wait_streaming farmnet_replica || die "PostgreSQL replica of site ${sites[1]} is not streaming (see $(pg_dir "${sites[1]}")/server.log)"
    phase "PostgreSQL replica streaming" streaming
  fi
  for s in "${sites[@]}"; do wait_for 60 "deskfarm of site $s (a ZDC in its zone)" "$dir/log/deskfarm-$s.log" deskfarm_ready "$s"; done
  phase "every site with a zone data collector" zdc
  if [ "$desktops" != 0 ]; then
    for s in "${sites[@]}"; do wait_for 90 "ddc-$s with its $desktops desktops idle" "$dir/log/deskfarm-$s.log" desktops_ready "$s"; done
    phase "every site's desktops started and registered" desktops
  fi
  trap - EXIT
  printf 'farmnet: up in %.2f s: %d sites (%s), zones %s, %s ms one way per link, %s; run %s in %s; steps (s): %s\n' \
    "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')" "${#sites[@]}" "$sites_list" "$zones" "$delay" "$rate" "$run" "$dir" "$steps"
}

service_name() {  # SITE [deskfarm|nats|pg] → the process name
  case "${2:-deskfarm}" in
    deskfarm|nats|pg) echo "${2:-deskfarm}-$1" ;;
    *) echo "farmnet: service '$2': one of deskfarm, nats, pg" >&2; exit 2 ;;
  esac
}

case "$cmd" in
  up) cmd_up "$@" ;;
  down) load; down_all; echo "farmnet: run $run stopped, namespaces deleted" ;;
  cut|heal)
    [ $# -eq 1 ] || { echo "farmnet: $cmd DIR SITE" >&2; exit 2; }
    load; set_link "$1" 3 "$([ "$cmd" = cut ] && echo 1 || echo 0)" ;;
  delay)
    [ $# -eq 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || { echo "farmnet: delay DIR SITE MS" >&2; exit 2; }
    load; set_link "$1" 2 "$2" ;;
  kill)
    [ $# -ge 1 ] || { echo "farmnet: kill DIR SITE [deskfarm|nats|pg]" >&2; exit 2; }
    load; site_index "$1" >/dev/null; p=$(service_name "$1" "${2:-}")
    alive "$p" || die "$p is not running"
    case "$p" in
      pg-*) pg_stop "$(pg_dir "$1")" kill ;;
      *) stop_procs KILL "$p" ;;
    esac ;;
  start)
    [ $# -ge 1 ] || { echo "farmnet: start DIR SITE [deskfarm|nats|pg]" >&2; exit 2; }
    load; site_index "$1" >/dev/null; p=$(service_name "$1" "${2:-}")
    alive "$p" && die "$p is running already"
    case "$p" in
      deskfarm-*) start_deskfarm "$1" ;;
      nats-*) start_nats "$1" ;;
      pg-*) pg_has "$1" || die "site $1 runs no PostgreSQL"; pg_start "$(pg_dir "$1")" || die "PostgreSQL of site $1 did not start" ;;
    esac ;;
  exec)
    [ $# -ge 2 ] || { echo "farmnet: exec DIR SITE CMD…" >&2; exit 2; }
    load; s=$1; shift; site_index "$s" >/dev/null
    exec ip netns exec "$(ns "$s")" "$@" ;;
  df)
    [ $# -ge 2 ] || { echo "farmnet: df DIR SITE ARGS…" >&2; exit 2; }
    load; s=$1; shift; site_index "$s" >/dev/null
    exec ip netns exec "$(ns "$s")" "$bin/deskfarm" "$@" "$dir/sites/$s/site.toml" ;;
  stats) load; cat "$dir/linkemu.stats" ;;
  info)
    load
    echo "run $run: hub $(hub), zones $zones"
    for s in "${sites[@]}"; do
      printf '%-8s %-16s %-12s' "$s" "$(ns "$s")" "$(addr "$s")"
      for p in deskfarm nats pg; do alive "$p-$s" && printf ' %s=%s' "$p" "$(pid_of "$p-$s")"; done
      echo
    done ;;
  *) echo "farmnet: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac
