# Sourced by run.sh and devices.sh: one NBD server at a time on a free loopback port, stopped by its PID.
#   start_server LABEL -- COMMAND…   (@PORT@ in COMMAND is the port) sets server_pid and server_port; its output
#                                    goes to $work/LABEL.log; returns once the port accepts (bounded: 10 s)
#   stop_server                      kills it by its PID and reaps it; a no-op when none runs
# The caller sets $work and puts stop_server in its EXIT trap.
server_pid=""
server_port=""
stop_server() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
# shellcheck source=tools/lib/net.sh
source tools/lib/net.sh
start_server() {
  local label=$1
  shift 2
  server_port=$(free_port tcp)
  "${@//@PORT@/$server_port}" >"$work/$label.log" 2>&1 &
  server_pid=$!
  wait_port tcp "$server_port" && return 0
  echo "$(basename "$0"): $label on port $server_port did not come up (log: $work/$label.log)" >&2
  return 1
}
