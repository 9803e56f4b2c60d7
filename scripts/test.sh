#!/usr/bin/env bash
# Builds everything and runs every test: unit, end-to-end (real relay, daemon
# and TLS on 127.0.0.1), job tests on a single-node SLURM cluster that ctest
# starts and stops, and a short libFuzzer run of the envelope parser.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh --with-fuzz --with-slurm

# The fuzz target needs clang's libFuzzer: its own small build tree.
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
ctest --preset fuzz

ctest --preset default -j2
