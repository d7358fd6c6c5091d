#!/usr/bin/env bash
# BDM ISO bench: `deskfarm bdm build` (libisofs in-process, boot files read out of ipxe.iso) against
# `xorriso -as mkisofs` building an equivalent image (same files, same El Torito record, same isohybrid MBR, Rock
# Ridge + Joliet), same run, interleaved rounds (REPEAT, default 10). Prints min/median wall milliseconds per image
# for each and the ratio, and whether each tool is reproducible (two builds, same SHA-256).
# usage: tools/bench/bdm/run.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/../../.."
build=${1:-build}
repeat=${REPEAT:-10}
deskfarm=$build/bin/deskfarm
[[ -x $deskfarm ]] || { echo "run.sh: build deskfarm into $build first" >&2; exit 2; }
command -v xorriso >/dev/null || { echo "run.sh: xorriso is missing (scripts/setup.sh)" >&2; exit 2; }
[[ -f /usr/lib/ipxe/ipxe.iso ]] || { echo "run.sh: /usr/lib/ipxe/ipxe.iso is missing (scripts/setup.sh)" >&2; exit 2; }

work=$(mktemp -d /tmp/bdm-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1700000000
args=(--server 10.0.0.5:6910 --server 10.0.0.6:6910 --server 10.0.0.7:6910 --server 10.0.0.8:6910)

# The peer's input tree: exactly the files deskfarm puts in its image, extracted from one deskfarm image.
"$deskfarm" bdm build "${args[@]}" -o "$work/ref.iso" >/dev/null
mkdir "$work/tree"
xorriso -osirrox on -indev "$work/ref.iso" -extract / "$work/tree" 2>/dev/null
rm -f "$work/tree/boot.cat"
chmod -R u+w "$work/tree"
head -c 432 /usr/lib/ipxe/ipxe.iso >"$work/isohdpfx.bin"

now_ms() { date +%s%3N; }
ours=() peer=()
for ((i = 0; i < repeat; i++)); do
  t0=$(now_ms)
  "$deskfarm" bdm build "${args[@]}" -o "$work/ours.iso" >/dev/null
  t1=$(now_ms)
  xorriso -as mkisofs -quiet -o "$work/peer.iso" -V DESKFARM_BDM -R -J -isohybrid-mbr "$work/isohdpfx.bin" \
    -b isolinux.bin -c boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table "$work/tree" 2>/dev/null
  t2=$(now_ms)
  ours+=($((t1 - t0)))
  peer+=($((t2 - t1)))
  if ((i == 0)); then
    sha_ours1=$(sha256sum <"$work/ours.iso"); sha_peer1=$(sha256sum <"$work/peer.iso")
    size_ours=$(stat -c %s "$work/ours.iso"); size_peer=$(stat -c %s "$work/peer.iso")
  fi
done
sha_ours2=$(sha256sum <"$work/ours.iso"); sha_peer2=$(sha256sum <"$work/peer.iso")
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "min %d ms, median %d ms", a[1], a[int((NR+1)/2)]}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "rounds: $repeat (interleaved), image: 4 login servers, isohybrid, Rock Ridge + Joliet"
echo "deskfarm bdm build : $(stats "${ours[@]}"), $size_ours bytes, reproducible: $([[ $sha_ours1 == "$sha_ours2" ]] && echo yes || echo no)"
echo "xorriso -as mkisofs: $(stats "${peer[@]}"), $size_peer bytes, reproducible: $([[ $sha_peer1 == "$sha_peer2" ]] && echo yes || echo no)"
mo=$(median "${ours[@]}"); mp=$(median "${peer[@]}")
awk -v o="$mo" -v p="$mp" 'BEGIN {if (p > 0) printf "median ratio deskfarm/xorriso: %.2f\n", o / p}'
xorriso -indev "$work/peer.iso" -report_el_torito plain 2>/dev/null | grep -E "boot img|img opts" | sed 's/^/xorriso image: /'
