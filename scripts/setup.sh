#!/usr/bin/env bash
# Installs every Debian 12 package deskfarm needs to build and test; with --bench also the peers the
# benchmarks under tools/bench/ compare against. Idempotent; run as root.
set -euo pipefail
bench=false
case "${1:-}" in
  "") ;;
  --bench) bench=true ;;
  *) echo "usage: scripts/setup.sh [--bench]" >&2; exit 2 ;;
esac
packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config ccache clang libclang-rt-14-dev
  # libraries
  libboost-dev libboost-program-options-dev libboost-filesystem-dev
  libpoco-dev libtomlplusplus-dev catch2 libpq-dev libssl-dev
  # PostgreSQL server for the data-store test
  postgresql
  # the sqlite3 client, the peer of tools/bench/ima/lhc.sh
  sqlite3
  # real peers used by the tests
  tftp-hpa atftp curl libnbd-bin nbdkit qemu-utils python3
  # certificates for the NBD TLS tests
  openssl
  # a foreign TFTP backend behind the tftp-lb tests' virtual server (in.tftpd, started by the tests themselves)
  tftpd-hpa
  # Boot Device Manager ISO: libisofs to write it, Debian's iPXE inside it, xorriso and QEMU to check and boot it
  libisofs-dev ipxe xorriso qemu-system-x86
  # BDM partition image: mtools makes and fills its FAT partition, SYSLINUX (and its mbr.bin) makes it bootable
  mtools syslinux syslinux-common
  # the bus across processes: the NATS C client and a real nats-server for the tests and benchmark
  libnats-dev nats-server
  # tools/farmnet: network namespaces, veth and tbf (ip, tc)
  iproute2
  # the TFTP load balancer's io_uring relay
  liburing-dev
  # its tc-bpf relay: libbpf (clang, above, compiles the BPF program; bpftool inspects its map)
  libbpf-dev bpftool
)
# Benchmark peers: dnsmasq as a package; atftpd conflicts with tftpd-hpa, so it is unpacked
# privately into /tmp/atftpd, where tools/bench/tftp/run.sh looks for it.
# gnuplot-nox draws docs/zone-design.svg (tools/bench/farmnet/plot.sh).
if $bench; then packages+=(dnsmasq-base linux-perf gnuplot-nox); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# nginx with its UDP stream module, unpacked privately into /tmp/nginx (an installed nginx package would start a
# web server): the tftp-lb test shows its UDP proxy failing on TFTP where tftp-lb succeeds.
if [ ! -f /tmp/nginx/usr/lib/nginx/modules/ngx_stream_module.so ]; then
  (cd /tmp && rm -f nginx_*.deb libnginx-mod-stream_*.deb && apt-get download nginx libnginx-mod-stream >/dev/null &&
   dpkg -x nginx_*.deb /tmp/nginx && dpkg -x libnginx-mod-stream_*.deb /tmp/nginx && rm -f nginx_*.deb libnginx-mod-stream_*.deb)
fi

if $bench && [ ! -x /tmp/atftpd/usr/sbin/atftpd ]; then
  (cd /tmp && rm -f atftpd_*.deb && apt-get download atftpd >/dev/null && dpkg -x atftpd_*.deb /tmp/atftpd && rm -f atftpd_*.deb)
fi
