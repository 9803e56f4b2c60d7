#!/usr/bin/env bash
# Where a PTY stream's time goes on the path hpc-agent -> hpc-relay ->
# hpc-daemond: CPU, system calls and context switches per MB for each process,
# counted by `perf stat` over a window in the middle of pty_bench's (c) stream
# of `head -c 200M /dev/zero | base64`. Run it on an otherwise idle machine.
#
# usage: bench/pty_profile.sh [SECONDS]   (default 4; needs perf and a build
#        with benchmarks: scripts/build.sh --with-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
window=${1:-4}
bench=build/default/bench/pty_bench
command -v perf >/dev/null || { echo "pty_profile: perf is missing (apt-get install linux-perf)" >&2; exit 1; }
[ -x "$bench" ] || { echo "pty_profile: $bench is missing: run scripts/build.sh --with-bench" >&2; exit 1; }

out=$(mktemp -d)
"$bench" 0 c 1 0 >"$out/bench.txt" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$out"' EXIT

rchar() { awk '/^rchar:/ {print $2}' "/proc/$1/io"; }

# The daemon and the relay are the benchmark's children; the stream has
# begun once the daemon reads fast (bounded: 60 s).
daemon="" relay=""
for _ in $(seq 300); do
  daemon=$(pgrep -P "$pid" -x hpc-daemond || true)
  relay=$(pgrep -P "$pid" -x hpc-relay || true)
  if [ -n "$daemon" ] && [ -n "$relay" ]; then
    before=$(rchar "$daemon")
    sleep 0.2
    [ $(($(rchar "$daemon") - before)) -gt 2000000 ] && break
  else
    sleep 0.2
  fi
done
[ -n "$daemon" ] && [ -n "$relay" ] || { echo "pty_profile: the benchmark did not start" >&2; cat "$out/bench.txt" >&2; exit 1; }

start=$(rchar "$daemon")
for p in "$daemon" "$relay" "$pid"; do
  perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "$p" -o "$out/$p.csv" -- sleep "$window" &
done
wait $(jobs -p | grep -v "^$pid\$") 2>/dev/null || true
mb=$(awk -v a="$start" -v b="$(rchar "$daemon")" 'BEGIN {printf "%.1f", (b - a) / 1e6}')

echo "window: ${window} s of the (c) base64 stream, ${mb} MB read from the PTY by hpc-daemond"
printf '%-22s %14s %18s %18s\n' process "CPU ms per MB" "syscalls per MB" "switches per MB"
for entry in "hpc-daemond:$daemon" "hpc-relay:$relay" "agent (pty_bench):$pid"; do
  name=${entry%%:*} p=${entry##*:}
  awk -F, -v name="$name" -v mb="$mb" '
    $3 == "task-clock" {cpu = $1}
    $3 == "context-switches" {cs = $1}
    $3 == "raw_syscalls:sys_enter" {sc = $1}
    END {printf "%-22s %14.2f %18.0f %18.0f\n", name, cpu / mb, sc / mb, cs / mb}' "$out/$p.csv"
done
