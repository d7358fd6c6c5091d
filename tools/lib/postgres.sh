# A private PostgreSQL for tests, drills and benchmarks: source this file from bash, then
#
#   pg_installed                            # true when the server is installed
#   pg_require                              # finds the server; not installed: exit 77 (skip), or exit 1 under CI=true
#   pg_start_primary db "$work/db" [ADDR[:PORT]]    # initdb + start; sets db_pid db_host db_port db_url db_conninfo
#   pg_initdb db "$work/db" [ADDR[:PORT]]   # initdb in the background; a later pg_start_primary db waits for it
#   pg_start_replica rep db "$work/rep" [ADDR[:PORT]]   # pg_basebackup -R of db, started, waits until streaming
#   pg_seed_replica rep db "$work/rep" [ADDR[:PORT]]    # before db's first start: rep's data a copy of db's
#   pg_launch_replica rep db "$work/rep" [ADDR[:PORT]]; pg_wait_streaming rep   # the same in two halves
#   pg_psql db -c "SELECT 1"                # psql on that server as the superuser deskfarm
#   pg_stop db [fast|immediate|kill]        # stops it by its PID (bounded); pg_start db starts it again, same port
#   pg_stop_all                             # every server started here: put it in the caller's EXIT trap
#   pg_attach db "$work/db"                 # another command's server: its facts from the directory's state file
#   pg_running db                           # true while its postmaster runs
#
# The first argument names the server: its facts are shell variables with that prefix (call these functions
# directly, not inside $(...), or the variables stay in the subshell). A server's directory also keeps them, in
# DIR/pg.state (written at every start), so a script made of separate commands (tools/farmnet) finds its servers
# again: pg_attach, or give the directory (anything with a '/') instead of the name to pg_stop, pg_start,
# pg_running and pg_psql. Without a port a free one is picked (PostgreSQL cannot listen on port 0 and report it);
# the address defaults to 127.0.0.1. Works under `ip netns exec NS` with the namespace's address given; or set
# PG_NETNS=NS when a server is created and it (and every command that talks to it) runs in namespace NS;
# PG_NO_FSYNC=1 and a primary runs with fsync off (drills on test data; benchmarks keep the default). The
# server runs as nobody when the caller is root, so its directory's parents must be traversable by nobody (mktemp
# -d makes 0700 directories: chmod 755 them).
# Authentication is trust for every client and for replication: these servers hold test data only and listen on
# the one address given.

PG_BINDIR=${PG_BINDIR:-}
PG_USER=nobody               # who runs the server when the caller is root (initdb and postgres refuse root)
PG_WAIT_TENTHS=${PG_WAIT_TENTHS:-150}   # every wait below: at most this many tenths of a second
PG_INITDB_WAIT_TENTHS=${PG_INITDB_WAIT_TENTHS:-1200}   # initdb: at most this long (it takes 10-30 s on a loaded machine)
PG_NETNS=${PG_NETNS:-}       # a network namespace for the servers created next ("": the caller's)
PG_NO_FSYNC=${PG_NO_FSYNC:-0}   # 1: primaries created next run with fsync off (drills; benchmarks keep the default)
_pg_started=()
# shellcheck source=net.sh
source "$(dirname "${BASH_SOURCE[0]}")/net.sh"

# pg_installed: true when the server is installed (sets PG_BINDIR, the newest version's bin directory).
pg_installed() {
  [ -n "$PG_BINDIR" ] || PG_BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  [ -n "$PG_BINDIR" ] && [ -x "$PG_BINDIR/postgres" ]
}

pg_require() {
  pg_installed && return 0
  # Same rule as tests/support/deskfarm/testing/peers.hpp: fail under CI, skip (exit 77) elsewhere.
  echo "DESKFARM-TEST-SKIPPED: the PostgreSQL server is not installed (scripts/setup.sh installs it)"
  [ "${CI:-}" = true ] && { echo "postgres.sh: PostgreSQL is required under CI=true" >&2; exit 1; }
  exit 77
}

# The prefix that runs a command as the server's user. setpriv execs in place and the prefix is expanded inline
# (not a function, which a background `&` would fork into a subshell), so `$!` is the server's own PID.
_pg_as_user_prefix() {
  _pg_run=()
  [ "$(id -u)" = 0 ] && _pg_run=(setpriv --reuid="$PG_USER" --regid="$(id -g "$PG_USER")" --clear-groups --)
  return 0
}
_pg_as_user() { _pg_as_user_prefix; "${_pg_run[@]}" "$@"; }

_pg_get() { local v="${1}_$2"; printf '%s' "${!v:-}"; }
_pg_set() { printf -v "${1}_$2" '%s' "$3"; }

# _pg_in NAME CMD…: CMD in the server's network namespace (if it has one).
_pg_in() {
  local netns
  netns=$(_pg_get "$1" netns)
  shift
  if [ -n "$netns" ]; then ip netns exec "$netns" "$@"; else "$@"; fi
}

# The state file: what pg_attach reads back in another command. Written at every start and stop.
_pg_save() {
  local name=$1 dir k
  dir=$(_pg_get "$name" dir)
  for k in pid host port fixed_port netns; do printf '%s=%q\n' "$k" "$(_pg_get "$name" "$k")"; done >"$dir/pg.state.tmp"
  mv "$dir/pg.state.tmp" "$dir/pg.state"
}

# pg_attach NAME DIR: NAME's facts from DIR/pg.state (a server another command started); the PID only while that
# process is alive. Fails when DIR holds no server.
pg_attach() {
  local name=$1 dir=$2 pid="" host="" port="" fixed_port="" netns=""
  [ -f "$dir/pg.state" ] || { echo "postgres.sh: $dir holds no server started by postgres.sh (no pg.state)" >&2; return 1; }
  [ -n "$PG_BINDIR" ] || pg_installed || { echo "postgres.sh: the PostgreSQL server is not installed" >&2; return 1; }
  # shellcheck disable=SC1091
  . "$dir/pg.state"
  [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && pid=""
  _pg_set "$name" dir "$dir"
  _pg_set "$name" pid "$pid"
  _pg_set "$name" host "$host"
  _pg_set "$name" port "$port"
  _pg_set "$name" fixed_port "$fixed_port"
  _pg_set "$name" netns "$netns"
  _pg_set "$name" url "postgresql://deskfarm@$host:$port/postgres"
  _pg_set "$name" conninfo "host=$host port=$port user=deskfarm dbname=postgres"
}

# _pg_resolve NAME|DIR: sets _pg_n to the server's name; a directory is attached under a name derived from it.
_pg_resolve() {
  _pg_n=$1
  [[ $1 == */* ]] || return 0
  _pg_n=_pgdir_$(printf '%s' "$1" | cksum | cut -d' ' -f1)
  pg_attach "$_pg_n" "$1"
}

# pg_running NAME|DIR: true while the server's postmaster runs.
pg_running() {
  local name pid
  _pg_resolve "$1" 2>/dev/null || return 1
  name=$_pg_n
  pid=$(_pg_get "$name" pid)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# _pg_prepare NAME DIR ADDR: the directory owned by the server's user, the address split into host and port.
_pg_prepare() {
  local name=$1 dir=$2 addr=${3:-127.0.0.1}
  [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { echo "postgres.sh: server name '$name' must be a shell identifier" >&2; return 1; }
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown "$PG_USER" "$dir"
  if ! _pg_as_user test -w "$dir"; then
    echo "postgres.sh: $PG_USER cannot write $dir; make its parent directories traversable (chmod 755)" >&2
    return 1
  fi
  local host=$addr port=""
  if [[ $addr == *:* ]]; then host=${addr%:*}; port=${addr##*:}; fi
  _pg_set "$name" dir "$dir"
  _pg_set "$name" host "$host"
  _pg_set "$name" fixed_port "$port"
  _pg_set "$name" netns "$PG_NETNS"
}

# _pg_launch NAME: starts the server on its data directory; a port picked here that another process took
# meanwhile (ctest -j) is replaced, at most 5 times. Returns once pg_isready answers.
_pg_launch() {
  local name=$1 dir port attempt picked
  dir=$(_pg_get "$name" dir)
  for attempt in 1 2 3 4 5; do
    picked=0
    port=$(_pg_get "$name" port)
    [ -n "$port" ] || port=$(_pg_get "$name" fixed_port)
    [ -n "$port" ] || { port=$(free_port tcp "$(_pg_get "$name" host)"); picked=1; }
    _pg_spawn "$name" "$port"
    _pg_await "$name" && return 0
    # Only a port picked here may be replaced; a given one (or the one a restart must keep) is an error.
    if [ "$picked" = 1 ] && tail -n 20 "$dir/server.log" | grep -q "could not bind\|Address already in use"; then
      echo "postgres.sh: port $port was taken meanwhile; trying another ($name)" >&2
      _pg_set "$name" port ""
      continue
    fi
    break
  done
  _pg_launch_failed "$name"
}
_pg_launch_failed() {
  local dir
  dir=$(_pg_get "$1" dir)
  echo "postgres.sh: PostgreSQL '$1' did not start on $(_pg_get "$1" host):$(_pg_get "$1" port); its log ($dir/server.log) ends:" >&2
  tail -n 20 "$dir/server.log" >&2
  return 1
}

# _pg_pm_ready FILE PID: postmaster.pid names PID (not a killed predecessor's file) and says it accepts connections
# (line 8: "ready", or "standby" for a hot standby that does).
_pg_pm_ready() {
  local lines=()
  [ -f "$1" ] && mapfile -t -n 8 lines <"$1" 2>/dev/null || return 1
  [ "${lines[0]:-}" = "$2" ] && [[ ${lines[7]:-} == ready* || ${lines[7]:-} == standby* ]]
}

# _pg_spawn NAME PORT: the postmaster started in the background, its PID and port recorded at once (so that a
# failure before it answers still stops it by its PID); _pg_await NAME then waits for it to answer.
_pg_spawn() {
  local name=$1 port=$2 dir host
  dir=$(_pg_get "$name" dir)
  host=$(_pg_get "$name" host)
  _pg_as_user_prefix
  # `ip netns exec` execs in place too: $! stays the server's own PID.
  local netns=()
  [ -n "$(_pg_get "$name" netns)" ] && netns=(ip netns exec "$(_pg_get "$name" netns)")
  "${netns[@]}" "${_pg_run[@]}" "$PG_BINDIR/postgres" -D "$dir/data" -h "$host" -p "$port" -k "$dir" >>"$dir/server.log" 2>&1 &
  _pg_set "$name" pid $!
  [[ " ${_pg_started[*]} " == *" $name "* ]] || _pg_started+=("$name")  # pg_stop_all stops it even before it answers
  _pg_set "$name" port "$port"
  _pg_set "$name" url "postgresql://deskfarm@$host:$port/postgres"
  _pg_set "$name" conninfo "host=$host port=$port user=deskfarm dbname=postgres"  # libpq keywords: Poco and psql
  _pg_save "$name"
}

# _pg_await NAME: true once the spawned server answers pg_isready, at most PG_WAIT_TENTHS; otherwise it is killed.
# Until then it reads the status the postmaster writes into postmaster.pid every 0.05 s (a server starts in a few
# tenths of a second and every step of a start-up waits for it): a file read, where a pg_isready in a namespace
# costs two processes, and on a loaded machine that polling competes with the server it waits for.
_pg_await() {
  local name=$1 pid host port i
  pid=$(_pg_get "$name" pid)
  host=$(_pg_get "$name" host)
  port=$(_pg_get "$name" port)
  for ((i = 0; i < 2 * PG_WAIT_TENTHS; i++)); do
    if _pg_pm_ready "$(_pg_get "$name" dir)/data/postmaster.pid" "$pid" || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  _pg_set "$name" spawned ""
  if kill -0 "$pid" 2>/dev/null && _pg_in "$name" "$PG_BINDIR/pg_isready" -q -h "$host" -p "$port" -U deskfarm; then
    return 0
  fi
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  _pg_set "$name" pid ""
  _pg_save "$name"
  return 1
}

# pg_initdb NAME DIR [ADDR[:PORT]]: starts initdb in the background (the slowest step) and returns at once; the
# caller does other work meanwhile, and pg_start_primary NAME DIR waits for it (at most PG_INITDB_WAIT_TENTHS).
pg_initdb() {
  local name=$1 dir=$2
  [ -n "$PG_BINDIR" ] || pg_require
  _pg_prepare "$name" "$dir" "${3:-}" || return 1
  _pg_as_user_prefix
  "${_pg_run[@]}" "$PG_BINDIR/initdb" -D "$dir/data" -A trust -U deskfarm --no-sync >"$dir/initdb.log" 2>&1 &
  _pg_set "$name" initdb_pid $!
}

# _pg_initdb_done NAME: waits for NAME's background initdb (bounded: killed after PG_INITDB_WAIT_TENTHS).
_pg_initdb_done() {
  local name=$1 pid i code=0
  pid=$(_pg_get "$name" initdb_pid)
  _pg_set "$name" initdb_pid ""
  for ((i = 0; i < PG_INITDB_WAIT_TENTHS; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "postgres.sh: initdb of $(_pg_get "$name" dir)/data still running after $((PG_INITDB_WAIT_TENTHS / 10)) s: killed" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" || code=$?
  return $code
}

# pg_start_primary NAME DIR [ADDR[:PORT]]: initdb (or waits for pg_initdb's), then starts the server.
pg_start_primary() {
  local name=$1 dir=$2
  [ -n "$PG_BINDIR" ] || pg_require
  [ "$(_pg_get "$name" configured)" = 1 ] || _pg_configure_primary "$name" "$dir" "${3:-}" || return 1
  _pg_launch "$name"
}

# _pg_configure_primary NAME DIR [ADDR[:PORT]]: NAME's data directory initialised and configured, not started.
_pg_configure_primary() {
  local name=$1 dir=$2
  if [ -n "$(_pg_get "$name" initdb_pid)" ]; then
    _pg_initdb_done "$name" || { echo "postgres.sh: initdb of $dir/data failed:" >&2; cat "$dir/initdb.log" >&2; return 1; }
  else
    _pg_prepare "$name" "$dir" "${3:-}" || return 1
    _pg_as_user "$PG_BINDIR/initdb" -D "$dir/data" -A trust -U deskfarm --no-sync >"$dir/initdb.log" 2>&1 ||
      { echo "postgres.sh: initdb of $dir/data failed:" >&2; cat "$dir/initdb.log" >&2; return 1; }
  fi
  # Any client and any replica may connect (see the top of this file): netns callers come from other addresses.
  printf 'local all all trust\nhost all all all trust\nhost replication all all trust\n' >"$dir/data/pg_hba.conf"
  # Test data only, and asked for: no waiting for the disk (a crash of the server, not of the machine, loses nothing).
  if [ "$PG_NO_FSYNC" = 1 ]; then printf 'fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n' >>"$dir/data/postgresql.conf"; fi
  # A standby made from this directory retries a failed connection to its primary after 0.1 s, not the default 5 s
  # (a replica may start before its primary; the setting means nothing to a primary).
  printf "wal_retrieve_retry_interval = '100ms'\n" >>"$dir/data/postgresql.conf"
  _pg_set "$name" configured 1
}

# pg_start_replica NAME PRIMARY DIR [ADDR[:PORT]]: a hot standby streaming from PRIMARY (already started here):
# pg_basebackup -R of it (unless pg_seed_replica made the directory), started; returns once it streams.
pg_start_replica() {
  pg_launch_replica "$@" && pg_wait_streaming "$1"
}

# pg_seed_replica NAME PRIMARY DIR [ADDR[:PORT]]: NAME's data directory a copy of PRIMARY's, made after PRIMARY's
# initdb (pg_initdb) and before its first start, as an operator seeds a standby from a snapshot: a cleanly shut down
# cluster is a valid base backup, and copying it on this machine takes a tenth of what pg_basebackup through a slow
# link does. Only what the standby streams afterwards crosses the network. PRIMARY needs a fixed port (ADDR:PORT,
# written into NAME's primary_conninfo now). Then pg_launch_replica NAME PRIMARY (before or after PRIMARY's start).
pg_seed_replica() {
  local name=$1 primary=$2 dir=$3 pdir
  [ -n "$PG_BINDIR" ] || pg_require
  [ -z "$(_pg_get "$primary" pid)" ] || { echo "postgres.sh: primary '$primary' has started: seed '$name' before, or use pg_start_replica" >&2; return 1; }
  [ -n "$(_pg_get "$primary" fixed_port)" ] || { echo "postgres.sh: primary '$primary' has no fixed port (give ADDR:PORT to pg_initdb) for '$name' to stream from" >&2; return 1; }
  [ "$(_pg_get "$primary" configured)" = 1 ] || _pg_configure_primary "$primary" "$(_pg_get "$primary" dir)" || return 1
  _pg_prepare "$name" "$dir" "${4:-}" || return 1
  local port
  port=$(_pg_get "$name" fixed_port)
  [ -n "$port" ] || port=$(free_port tcp "$(_pg_get "$name" host)")
  _pg_set "$name" port "$port"  # pg_launch_replica spawns it on this port without waiting
  pdir=$(_pg_get "$primary" dir)
  # cp -a keeps the owner (the server's user) and the 0700 mode PostgreSQL insists on.
  cp -a "$pdir/data" "$dir/data" || { echo "postgres.sh: copying $pdir/data to $dir/data failed" >&2; return 1; }
  touch "$dir/data/standby.signal"
  printf "primary_conninfo = 'host=%s port=%s user=deskfarm application_name=%s'\n" \
    "$(_pg_get "$primary" host)" "$(_pg_get "$primary" fixed_port)" "$name" >>"$dir/data/postgresql.auto.conf"
  [ "$(id -u)" = 0 ] && chown "$PG_USER" "$dir/data/standby.signal"
  _pg_set "$name" seeded 1
}

# pg_launch_replica NAME PRIMARY DIR [ADDR[:PORT]]: the first half of pg_start_replica. A seeded NAME is only
# spawned (it starts beside its primary, whose start it need not wait for); otherwise PRIMARY (running) is copied
# with pg_basebackup -R and NAME started. pg_wait_streaming NAME is the second half.
pg_launch_replica() {
  local name=$1 primary=$2 dir=$3
  [ -n "$PG_BINDIR" ] || pg_require
  _pg_set "$name" primary "$primary"
  if [ "$(_pg_get "$name" seeded)" = 1 ]; then
    _pg_spawn "$name" "$(_pg_get "$name" port)"
    _pg_set "$name" spawned 1
    return 0
  fi
  [ -n "$(_pg_get "$primary" pid)" ] || { echo "postgres.sh: primary '$primary' is not running here" >&2; return 1; }
  _pg_prepare "$name" "$dir" "${4:-}" || return 1
  _pg_as_user_prefix
  # -R writes primary_conninfo and standby.signal; -X stream copies the WAL written during the copy too.
  _pg_in "$name" "${_pg_run[@]}" "$PG_BINDIR/pg_basebackup" -h "$(_pg_get "$primary" host)" -p "$(_pg_get "$primary" port)" \
    -U deskfarm -D "$dir/data" -R -X stream -c fast --no-sync >"$dir/basebackup.log" 2>&1 ||
    { echo "postgres.sh: pg_basebackup of '$primary' into $dir/data failed:" >&2; cat "$dir/basebackup.log" >&2; return 1; }
  _pg_launch "$name"
}

# pg_wait_streaming NAME: the second half: returns once NAME answers, is in recovery and its WAL receiver streams
# (checked every 0.05 s, at most PG_WAIT_TENTHS each).
pg_wait_streaming() {
  local name=$1 i state=""
  if [ "$(_pg_get "$name" spawned)" = 1 ]; then _pg_await "$name" || { _pg_launch_failed "$name"; return 1; }; fi
  for ((i = 0; i < 2 * PG_WAIT_TENTHS; i++)); do
    # Asked only once its log says it streams (a grep, where psql in a namespace is two processes a poll).
    if ! grep -q "started streaming WAL" "$(_pg_get "$name" dir)/server.log" 2>/dev/null; then sleep 0.05; continue; fi
    state=$(pg_psql "$name" -tAc "SELECT pg_is_in_recovery()::text || ' ' || coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')" 2>/dev/null || true)
    [ "$state" = "true streaming" ] && return 0
    sleep 0.05
  done
  echo "postgres.sh: replica '$name' is not streaming from '$(_pg_get "$name" primary)' (recovery, receiver: ${state:-no answer}); see $(_pg_get "$name" dir)/server.log" >&2
  return 1
}

# pg_start NAME|DIR: starts a stopped server again on its data directory and port.
pg_start() {
  local name
  _pg_resolve "$1" || return 1
  name=$_pg_n
  [ -z "$(_pg_get "$name" pid)" ] || { echo "postgres.sh: '$name' is running already" >&2; return 1; }
  [ -n "$(_pg_get "$name" port)" ] || { echo "postgres.sh: '$name' was never started here" >&2; return 1; }
  _pg_launch "$name"
}

# pg_stop NAME|DIR [fast|immediate|kill]: fast (SIGINT) ends sessions and checkpoints; immediate (SIGQUIT) is
# PostgreSQL's own crash; kill (SIGKILL) a killed process. After the bounded wait the server is killed.
pg_stop() {
  local name mode=${2:-fast} pid sig=INT i
  _pg_resolve "$1" 2>/dev/null || return 0  # a directory without a server: nothing to stop
  name=$_pg_n
  pid=$(_pg_get "$name" pid)
  [ -n "$pid" ] || return 0
  case "$mode" in
    fast) ;;
    immediate) sig=QUIT ;;
    kill) sig=KILL ;;
    *) echo "postgres.sh: pg_stop mode '$mode': fast, immediate or kill" >&2; return 1 ;;
  esac
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < PG_WAIT_TENTHS; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "postgres.sh: '$name' (pid $pid) did not stop within $((PG_WAIT_TENTHS / 10))s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  _pg_set "$name" pid ""
  _pg_save "$name"
}

# Replicas first: a primary's fast shutdown waits for its WAL senders.
pg_stop_all() {
  local i
  for ((i = ${#_pg_started[@]} - 1; i >= 0; i--)); do pg_stop "${_pg_started[i]}"; done
}

pg_psql() {
  local name
  _pg_resolve "$1" || return 1
  name=$_pg_n
  shift
  _pg_in "$name" "$PG_BINDIR/psql" -X -q -h "$(_pg_get "$name" host)" -p "$(_pg_get "$name" port)" -U deskfarm -d postgres "$@"
}
