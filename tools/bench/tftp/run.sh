#!/usr/bin/env bash
# TFTP throughput bench: our server (tftp_serve) against tftpd-hpa, atftpd and dnsmasq on loopback, same run.
# usage: tools/bench/tftp/run.sh [BUILD_DIR]     (env: REPEAT=N rounds, default 3; ROWS="64x1MiB 256x64KiB" subset)
# Rows: 1 x 32 MiB, 64 x 1 MiB, 256 x 64 KiB at blksize 1468, and 1 x 32 MiB at windowsize 16 (peers that support it).
# All servers run at once on their own ports; each round runs every row against every server in turn, so noise
# from other work on the machine falls on all of them alike. Prints per server and row the min and median MiB/s
# over the rounds, the median p50/p99 time per transfer, ratios ours/peer (of the medians), server CPU seconds
# per GiB served (median) and the server's and the load generator's share of one core (median). Server CPU is
# read from a cpuacct cgroup per server when the cgroup v1 cpuacct controller is writable (this counts tftpd-hpa's
# forked children too), else from /proc (utime+stime+cutime+cstime, where tftpd-hpa's children do not show: n/a).
# Peers that are missing are skipped; scripts/setup.sh --bench installs them (atftpd unpacked into /tmp/atftpd).
# dnsmasq can only serve TFTP on port 69: it runs only as root and only if port 69 is free.
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
repeat=${REPEAT:-3}
bin=$build/bin
[[ -x $bin/tftp_serve && -x $bin/tftp_load ]] || { echo "run.sh: build tftp_serve and tftp_load into $build first" >&2; exit 2; }

work=$(mktemp -d /tmp/tftp-bench.XXXXXX)
chmod 755 "$work"
root=$work/root
mkdir -p "$root"
pids=()
cgroups=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  for group in "${cgroups[@]}"; do rmdir "$group" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

head -c $((32 << 20)) /dev/urandom > "$root/f32m"
head -c $((1 << 20)) /dev/urandom > "$root/f1m"
head -c $((64 << 10)) /dev/urandom > "$root/f64k"
chmod 755 "$root"; chmod 644 "$root"/*
declare -A sha
for f in f32m f1m f64k; do sha[$f]=$(sha256sum "$root/$f" | cut -c1-64); done

# shellcheck source=tools/lib/net.sh
source tools/lib/net.sh
ticks_per_second=$(getconf CLK_TCK)
cpuacct=/sys/fs/cgroup/cpuacct

declare -A port_of cpu_source
servers=()
# Puts a freshly started server into its own cpuacct cgroup (children it forks later are counted there too).
track() {  # name pid
  local name=$1 pid=$2 group=$cpuacct/tftp-bench-$1-$$
  if [[ -w $cpuacct ]] && mkdir "$group" 2>/dev/null && echo "$pid" > "$group/cgroup.procs" 2>/dev/null; then
    cgroups+=("$group")
    cpu_source[$name]=$group
  else
    cpu_source[$name]=/proc/$pid
  fi
}
cpu_seconds() {  # name
  local source=${cpu_source[$1]}
  if [[ $source == "$cpuacct"/* ]]; then
    awk '{ printf "%.6f", $1 / 1e9 }' "$source/cpuacct.usage"
  else
    awk -v hz="$ticks_per_second" '{ printf "%.6f", ($14 + $15 + $16 + $17) / hz }' "$source/stat"
  fi
}
start() {  # name port pid
  port_of[$1]=$2
  pids+=("$3")
  track "$1" "$3"
  servers+=("$1")
}

"$bin/tftp_serve" --root "$root" --max-transfers 2048 > "$work/ours.port" 2> "$work/ours.log" &
ours_pid=$!
for _ in $(seq 50); do [[ -s $work/ours.port ]] && break; sleep 0.1; done
start ours "$(awk '{print $2}' "$work/ours.port")" "$ours_pid"

if [[ -x /usr/sbin/in.tftpd ]]; then
  port=$(free_port udp)
  /usr/sbin/in.tftpd -L -s "$root" -a "127.0.0.1:$port" 2> "$work/hpa.log" &
  pid=$!
  if wait_port udp "$port" 127.0.0.1 5; then start hpa "$port" "$pid"; else kill "$pid"; fi
fi

if [[ -x /tmp/atftpd/usr/sbin/atftpd ]]; then
  port=$(free_port udp)
  /tmp/atftpd/usr/sbin/atftpd --daemon --no-fork --user root --group root -m 2048 --logfile /dev/null \
    --port "$port" --bind-address 127.0.0.1 "$root" &
  pid=$!
  if wait_port udp "$port" 127.0.0.1 5; then start atftpd "$port" "$pid"; else kill "$pid"; fi
fi

if [[ -x /usr/sbin/dnsmasq && $(id -u) == 0 ]] && ! ss -lun | grep -q ':69 '; then
  /usr/sbin/dnsmasq --no-daemon --conf-file=/dev/null --pid-file= --port=0 --enable-tftp --tftp-root="$root" \
    --tftp-max=2048 --listen-address=127.0.0.1 --bind-interfaces --user=root 2> "$work/dnsmasq.log" &
  pid=$!
  if wait_port udp 69 127.0.0.1 5; then start dnsmasq 69 "$pid"; else kill "$pid"; fi
fi

# row name|clients|file|extra args|servers that support it (empty = all)
all_rows=("1x32MiB|1|f32m||" "64x1MiB|64|f1m||" "256x64KiB|256|f64k||" "1x32MiB-w16|1|f32m|--windowsize 16|ours atftpd")
rows=()
for row in "${all_rows[@]}"; do
  label=${row%%|*}
  if [[ -z ${ROWS:-} || " $ROWS " == *" $label "* ]]; then rows+=("$row"); fi
done

declare -A samples  # "name,label" -> lines "MiB/s p50 p99 cpu/GiB load-cpu server-cores load-cores"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $repeat rounds"
for ((r = 1; r <= repeat; r++)); do
  for row in "${rows[@]}"; do
    IFS='|' read -r label clients file extra only <<<"$row"
    for name in "${servers[@]}"; do
      if [[ -n $only && " $only " != *" $name "* ]]; then continue; fi
      port=${port_of[$name]}
      before=$(cpu_seconds "$name")
      # shellcheck disable=SC2086
      if ! out=$("$bin/tftp_load" --server "127.0.0.1:$port" --file "$file" --clients "$clients" --blksize 1468 \
            --expect-sha256 "${sha[$file]}" --deadline-s 120 $extra); then
        echo "run.sh: round $r $name $label failed: $out" >&2
        continue
      fi
      # tftpd-hpa reaps its per-transfer children only when a datagram wakes it: nudge it (a stray ACK is ignored).
      [[ $name == hpa ]] && { printf '\0\4\0\0' > "/dev/udp/127.0.0.1/$port" || true; sleep 0.2; }
      after=$(cpu_seconds "$name")
      line=$(awk -v out="$out" -v a="$before" -v b="$after" -v c="$clients" -v f="$file" 'BEGIN {
        match(out, /: [0-9.]+ MiB\/s/); rate = substr(out, RSTART + 2, RLENGTH - 8) + 0
        match(out, /p50 [0-9.]+ ms/); p50 = substr(out, RSTART + 4, RLENGTH - 7) + 0
        match(out, /p99 [0-9.]+ ms/); p99 = substr(out, RSTART + 4, RLENGTH - 7) + 0
        match(out, /load CPU [0-9.]+ s/); load = substr(out, RSTART + 9, RLENGTH - 11) + 0
        size = (f == "f32m") ? 32 : (f == "f1m") ? 1 : 0.0625
        wall = (rate > 0) ? c * size / rate : 0
        # Share of one core over the transfer time, for the server and for the load generator: a single-threaded
        # server near 1.00 is at the limit of the machine, whatever the generator could still take.
        printf "%.1f %.1f %.1f %.2f %.2f %.2f %.2f", rate, p50, p99, (b - a) / (c * size / 1024), load,
          (wall > 0) ? (b - a) / wall : 0, (wall > 0) ? load / wall : 0 }')
      samples[$name,$label]+="$line"$'\n'
      printf '  round %d %-8s %-12s %s\n' "$r" "$name" "$label" "$line" | awk '{ printf "  round %s %-8s %-12s %8s MiB/s  p50 %7s ms  p99 %7s ms  %6s CPU s/GiB  load CPU %s s  cores: server %s, load %s\n", $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }'
    done
  done
done

# column k of the samples: min / median
stat() {  # name label column min|median
  local values
  values=$(printf '%s' "${samples[$1,$2]:-}" | awk -v k="$3" 'NF { print $k }' | sort -g)
  [[ -z $values ]] && { echo -; return; }
  if [[ $4 == min ]]; then head -1 <<<"$values"; else awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }' <<<"$values"; fi
}

echo
echo "MiB/s min/median over $repeat rounds; p50/p99 ms per transfer (median); server CPU s per GiB (median);"
echo "cores: the server's / the load generator's share of one core while the row ran (median)"
printf '%-12s' row; for s in "${servers[@]}"; do printf ' %16s %15s %9s %9s' "$s MiB/s" "p50/p99 ms" "cpu/GiB" "cores"; done
for s in "${servers[@]:1}"; do printf ' %12s' "ours/$s"; done
echo
for row in "${rows[@]}"; do
  IFS='|' read -r label _ <<<"$row"
  printf '%-12s' "$label"
  for s in "${servers[@]}"; do
    printf ' %16s %15s %9s %9s' "$(stat "$s" "$label" 1 min)/$(stat "$s" "$label" 1 median)" \
      "$(stat "$s" "$label" 2 median)/$(stat "$s" "$label" 3 median)" "$(stat "$s" "$label" 4 median)" \
      "$(stat "$s" "$label" 6 median)/$(stat "$s" "$label" 7 median)"
  done
  for s in "${servers[@]:1}"; do
    printf ' %12s' "$(awk -v a="$(stat ours "$label" 1 median)" -v b="$(stat "$s" "$label" 1 median)" 'BEGIN { if (b + 0 > 0 && a + 0 > 0) printf "%.2fx", a / b; else print "-" }')"
  done
  echo
done
