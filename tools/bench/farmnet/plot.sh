#!/usr/bin/env bash
# Draws docs/zone-design.svg from the medians `zones.sh --tsv FILE` writes: WAN bytes per change and per logon,
# logon latency p50/p99 and convergence time, one bar per design. Needs gnuplot (gnuplot-nox; `scripts/setup.sh
# --bench` installs it). Not part of the test suite. Usage: tools/bench/farmnet/plot.sh TSV [SVG]
set -euo pipefail
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: tools/bench/farmnet/plot.sh TSV [SVG]   (SVG default: docs/zone-design.svg)" >&2; exit 2; }
tsv=$1
svg=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/docs/zone-design.svg}
[ -f "$tsv" ] || { echo "plot.sh: no table at $tsv: write one with tools/bench/farmnet/zones.sh --tsv $tsv" >&2; exit 1; }
command -v gnuplot >/dev/null || { echo "plot.sh: gnuplot is not installed (scripts/setup.sh --bench installs gnuplot-nox)" >&2; exit 1; }
title=${PLOT_TITLE:-"3 sites, 20 ms one way between sites (tools/bench/farmnet/zones.sh, medians)"}
gnuplot <<EOF
set terminal svg size 1350,420 font "sans,11" background rgb "white"
set output "$svg"
set datafile separator "\t"
set datafile missing "-"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key below horizontal
set yrange [0:*]
set grid ytics
set xtics scale 0
set multiplot layout 1,3 title "$title"
set title "WAN bytes, at site b"
plot "$tsv" using 2:xtic(1) title "per change" lc rgb "#4e79a7", "" using 3 title "per logon (and its logoff)" lc rgb "#f28e2b"
set title "logon latency, ms"
plot "$tsv" using 4:xtic(1) title "p50" lc rgb "#59a14f", "" using 5 title "p99" lc rgb "#e15759"
set title "convergence after a change at site b, ms\n(other sites' collectors; farm per site: none)"
plot "$tsv" using 6:xtic(1) notitle lc rgb "#76b7b2"
unset multiplot
EOF
echo "plot.sh: wrote $svg" >&2
