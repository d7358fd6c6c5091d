#!/usr/bin/env bash
# Installs every Debian 12 package deskfarm needs to build, test and benchmark. Idempotent; run as root.
set -euo pipefail
packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config ccache clang libclang-rt-14-dev
  # libraries
  libboost-dev libboost-program-options-dev libboost-filesystem-dev
  libpoco-dev libtomlplusplus-dev catch2 libpq-dev
  # PostgreSQL server for the data-store test
  postgresql
  # real peers used by the tests
  tftp-hpa atftp curl libnbd-bin nbdkit qemu-utils
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
