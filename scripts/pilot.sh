#!/usr/bin/env bash
# README command 1: install, build, run the pilot deployment (Ctrl-C stops it cleanly).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
exec ./build/bin/deskfarm run configs/pilot.toml "$@"
