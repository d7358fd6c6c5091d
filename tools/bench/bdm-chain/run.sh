#!/usr/bin/env bash
# BDM boot chain bench: a real QEMU VM (TCG unless /dev/kvm opens and the CPU has vmx or svm) boots a marker vDisk from pvs, same run,
# interleaved rounds (REPEAT, default 5): the whole chain (BDM ISO on the CD-ROM → iPXE → DHCP → TFTP boot script
# from pvs → sanboot of the NBD disk), the same chain with a static address instead of DHCP, and the peer: SeaBIOS
# booting the same NBD disk directly. Prints min/median seconds from QEMU's start to the marker on the serial line
# for each, and the ratios against the peer. Then the same chain from the raw partition image (format =
# "partition": syslinux's MBR + FAT + SYSLINUX) as the first hard disk, the NBD vDisk as the second (its BDM script
# names drive 0x81 for pvs's sanboot), and the ratio partition/ISO.
# usage: tools/bench/bdm-chain/run.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
repeat=${REPEAT:-5}
deskfarm=$build/bin/deskfarm
[[ -x $deskfarm && -f $build/plugins/pvs.so && -f $build/plugins/bdm.so ]] ||
  { echo "run.sh: build deskfarm, pvs and bdm into $build first" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || { echo "run.sh: qemu-system-x86_64 is missing (scripts/setup.sh)" >&2; exit 2; }
[[ -f /usr/lib/ipxe/ipxe.iso ]] || { echo "run.sh: /usr/lib/ipxe/ipxe.iso is missing (scripts/setup.sh)" >&2; exit 2; }

work=$(mktemp -d /tmp/bdm-chain-bench.XXXXXX)
farm_pid=""
qemu_pid=""
cleanup() {
  [[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
  [[ -n $farm_pid ]] && kill "$farm_pid" 2>/dev/null && wait "$farm_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
accel=tcg
# A /dev/kvm without vmx/svm (a paravirtual nested KVM) cannot run SeaBIOS's boot of ISOLINUX: TCG there.
[[ -r /dev/kvm && -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo && accel=kvm
mac=52:54:00:00:0c:01
marker="deskfarm bench marker"

# The vDisk: a boot sector that prints the marker on COM1 and halts (as tests/support/.../boot_sector.hpp), 8 MiB.
mkdir -p "$work/vdisks"
{ printf '\xFA\x31\xC0\x8E\xD8\xBE\x16\x7C\xBA\xF8\x03\xAC\x84\xC0\x74\x03\xEE\xEB\xF8\xF4\xEB\xFD'; printf '%s\r\n\0' "$marker"; } >"$work/vdisks/marker.img"
truncate -s 8M "$work/vdisks/marker.img"
printf '\x55\xAA' | dd of="$work/vdisks/marker.img" bs=1 seek=510 conv=notrunc status=none

# Free loopback ports for pvs's TFTP (UDP) and NBD (TCP).
# shellcheck source=tools/lib/net.sh
source tools/lib/net.sh
tftp=$(free_port udp) stream=$(free_port tcp)
cat >"$work/farm.toml" <<TOML
[deployment]
name = "bdm-chain-bench"
state_dir = "$work/var"
[instances.pvs-1]
plugin = "pvs"
tftp = "127.0.0.1:$tftp"
stream = "127.0.0.1:$stream"
store = "$work/vdisks"
vdisks = [{ name = "marker", file = "marker.img" }]
devices = [{ mac = "$mac", vdisk = "marker" }]
[instances.bdm]
plugin = "bdm"
login_servers = ["10.0.2.2:$stream"]
tftp_port = $tftp
source_date_epoch = 1700000000
[instances.bdm-static]
plugin = "bdm"
login_servers = ["10.0.2.2:$stream"]
tftp_port = $tftp
addressing = "static"
static_ip = "10.0.2.15"
static_mask = "255.255.255.0"
static_gateway = "10.0.2.2"
source_date_epoch = 1700000000
[instances.bdm-part]
plugin = "bdm"
login_servers = ["10.0.2.2:$stream"]
tftp_port = $tftp
format = "partition"
image = "bdm.img"
source_date_epoch = 1700000000
TOML
"$deskfarm" run "$work/farm.toml" --plugin-path "$build/plugins" --for 1h --log-level warning >"$work/farm.log" 2>&1 &
farm_pid=$!
iso=$work/var/bdm/bdm.iso
iso_static=$work/var/bdm-static/bdm.iso
part=$work/var/bdm-part/bdm.img
for _ in $(seq 1 100); do [[ -s $iso && -s $iso_static && -s $part ]] && ss -Hlt "sport = :$stream" | grep -q . && break; sleep 0.1; done
[[ -s $iso ]] || { cat "$work/farm.log" >&2; echo "run.sh: the deployment did not write $iso" >&2; exit 1; }

now_ms() { date +%s%3N; }
# One boot: QEMU with the vDisk as its first disk (and an ISO for a chain), or behind the partition image as its
# second disk; milliseconds to the marker.
boot() {
  local log=$work/serial.log cdrom=() order=c want=$marker
  local disks=(-drive "file=nbd://127.0.0.1:$stream/$mac,format=raw,if=ide,index=0")
  [[ $1 == chain ]] && cdrom=(-cdrom "$iso") && order=d
  [[ $1 == chain-static ]] && cdrom=(-cdrom "$iso_static") && order=d
  [[ $1 == chain-partition ]] && disks=(-drive "file=$part,format=raw,if=ide,index=0,snapshot=on"
                                        -drive "file=nbd://127.0.0.1:$stream/$mac,format=raw,if=ide,index=1")
  rm -f "$log"
  local t0; t0=$(now_ms)
  qemu-system-x86_64 -accel "$accel" -nographic -no-reboot -m 128 -boot order=$order "${cdrom[@]}" \
    "${disks[@]}" -netdev user,id=n0 -device "e1000,netdev=n0,mac=$mac" \
    -serial "file:$log" -monitor none >/dev/null 2>&1 &
  qemu_pid=$!
  local i
  for ((i = 0; i < 1200; i++)); do grep -qa "$want" "$log" 2>/dev/null && break; sleep 0.05; done
  local t1; t1=$(now_ms)
  kill "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=""
  grep -qa "$want" "$log" || { echo "run.sh: $1 boot printed no '$want' within 60 s" >&2; cat "$log" >&2; exit 1; }
  echo $((t1 - t0))
}
chain=() static=() direct=() part_chain=()
for ((r = 0; r < repeat; r++)); do
  chain+=("$(boot chain)")
  static+=("$(boot chain-static)")
  direct+=("$(boot direct)")
  part_chain+=("$(boot chain-partition)")
done
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "min %.2f s, median %.2f s", a[1] / 1000, a[int((NR+1)/2)] / 1000}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "rounds: $repeat (interleaved), accel $accel, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "BDM chain (ISO, iPXE, DHCP, TFTP script, sanboot NBD): $(stats "${chain[@]}")"
echo "the same, static address (no DHCP)                   : $(stats "${static[@]}")"
echo "direct NBD disk boot (SeaBIOS)                      : $(stats "${direct[@]}")"
awk -v c="$(median "${chain[@]}")" -v s="$(median "${static[@]}")" -v d="$(median "${direct[@]}")" \
  'BEGIN {if (d > 0) printf "median ratio chain/direct: %.2f, static chain/direct: %.2f\n", c / d, s / d}'
echo "BDM chain from the partition image (vDisk at 0x81)  : $(stats "${part_chain[@]}")"
awk -v i="$(median "${chain[@]}")" -v p="$(median "${part_chain[@]}")" \
  'BEGIN {if (i > 0) printf "median ratio partition/ISO: %.2f\n", p / i}'
