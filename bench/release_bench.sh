#!/usr/bin/env bash
# Start-up time of each program from the release (its launcher, the bundled
# loader and libraries, reached through a ~/.local/bin-style symlink) side by
# side with the same program from the build tree (the host's loader and
# libraries), interleaved in one run; and the tarball's size.
#
#   bench/release_bench.sh [RUNS]        (default 200 per program and side)
#
# Each run is `PROGRAM --version`: process start, dynamic loading, static
# initialisers, argument parsing, exit. Medians and p90 in milliseconds.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
build=build/default
tarball=$(scripts/make-release.sh --build-dir "$build" --out "$build" 2>/dev/null | tail -1)
work=$(mktemp -d /tmp/hpc-release-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xJf "$tarball"
bundle=$(echo "$work"/hpc-daemon-*)
mkdir -p "$work/bin"

stats() { # stats FILE -> "median p90" in ms
  sort -n "$1" | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; p=a[int(NR*0.9)]; printf "%.2f %.2f", m/1e3, p/1e3}'
}

echo "tarball: $(basename "$tarball"): $(stat -c %s "$tarball" | awk '{printf "%.1f MiB", $1/1048576}') compressed, $(du -sm "$bundle" | cut -f1) MiB unpacked"
echo "start-up, $runs runs each (PROGRAM --version), interleaved:"
printf '%-15s %22s %22s %8s\n' program "release median/p90 ms" "build tree median/p90" ratio
for p in daemon/hpc-daemond ctl/hpc-daemonctl relay/hpc-relay agent/hpc-agent; do
  name=${p#*/}
  ln -sf "$bundle/bin/$name" "$work/bin/$name"
  : >"$work/rel" && : >"$work/tree"
  for ((i = 0; i < runs; i++)); do
    t0=${EPOCHREALTIME/./}; "$work/bin/$name" --version >/dev/null; t1=${EPOCHREALTIME/./}
    "$build/$p" --version >/dev/null; t2=${EPOCHREALTIME/./}
    echo $((t1 - t0)) >>"$work/rel"; echo $((t2 - t1)) >>"$work/tree"
  done
  read -r rm rp <<<"$(stats "$work/rel")"
  read -r tm tp <<<"$(stats "$work/tree")"
  printf '%-15s %15s / %-6s %15s / %-6s %7.2fx\n' "$name" "$rm" "$rp" "$tm" "$tp" "$(awk -v a="$rm" -v b="$tm" 'BEGIN {print a/b}')"
done
echo "(wall time of fork + exec + run + wait, from bash's \$EPOCHREALTIME)"
