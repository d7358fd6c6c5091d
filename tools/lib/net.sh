# Loopback ports for the scripts under tools/ (sourced, not run).
#
# free_port [udp|tcp] [HOST]   prints a port the kernel just handed out on HOST (default 127.0.0.1) for that
#                              protocol (default tcp), released again for the caller's server to bind
# wait_port udp|tcp PORT [HOST] [SECONDS]
#                              returns 0 once a socket listens (tcp) or is bound (udp) on HOST:PORT (default
#                              127.0.0.1), 1 after SECONDS (default 10), checked every 0.05 s with ss

free_port() {
  python3 - "${1:-tcp}" "${2:-127.0.0.1}" <<'PY'
import socket, sys
kind = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}[sys.argv[1]]
family = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
with socket.socket(family, kind) as s:
    s.bind((sys.argv[2], 0))
    print(s.getsockname()[1])
PY
}

wait_port() {
  local proto=$1 port=$2 host=${3:-127.0.0.1} seconds=${4:-10} flag i
  case $proto in tcp) flag=-Hltn ;; udp) flag=-Hlun ;; *) echo "wait_port: udp or tcp, not '$proto'" >&2; return 2 ;; esac
  [[ $host == *:* ]] && host="[$host]"
  for ((i = 0; i < seconds * 20; i++)); do
    ss "$flag" "sport = :$port" | grep -qF " $host:$port " && return 0
    sleep 0.05
  done
  return 1
}
