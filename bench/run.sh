#!/usr/bin/env bash
# Builds and runs the benchmarks (installs openssh-server for the ssh peer).
# usage: bench/run.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh --with-bench
build/default/bench/exec_bench "${1:-2000}"
