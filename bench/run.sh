#!/usr/bin/env bash
# Builds and runs the benchmarks (installs openssh-server for the ssh peer).
# usage: bench/run.sh [exec RUNS] [idle SECONDS] [pty ECHO-ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh --with-bench
build/default/bench/exec_bench "${1:-2000}"
build/default/bench/idle_bench "${2:-60}"
build/default/bench/pty_bench "${3:-10000}"
