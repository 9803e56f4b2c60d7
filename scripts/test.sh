#!/usr/bin/env bash
# Builds everything and runs every test: unit, end-to-end (real relay, daemon
# and TLS on 127.0.0.1), job tests on a single-node SLURM cluster that ctest
# starts and stops, the systemd and release tiers, and short libFuzzer runs;
# the format of the C++ is checked too (scripts/format.sh --check).
# Then two more passes, because login nodes are shared and often saturated:
#   - sanitizers: the asan preset (AddressSanitizer + UBSan, warnings are
#     errors) over the unit, D-Bus and end-to-end tiers; any report fails.
#   - load: the D-Bus, end-to-end and job tiers again with both cores kept
#     busy by `stress-ng --cpu 2` (bounded in time, stopped by its pid).
# Each phase's wall time is printed at the end (the figures in bench/README.md).
#
#   --no-asan / --no-load    skip that pass
#   --load-only              only the load pass, on the existing default build
# HPC_BUILD_LOCK=FILE        take this flock(1) lock around every build (a
#                            machine shared by several checkouts)
set -euo pipefail
cd "$(dirname "$0")/.."

asan=1 load=1 normal=1
for arg in "$@"; do
  case "$arg" in
    --no-asan) asan=0 ;;
    --no-load) load=0 ;;
    --load-only) normal=0 asan=0 ;;
    *) echo "usage: $0 [--no-asan] [--no-load] [--load-only]" >&2; exit 2 ;;
  esac
done

build() { if [[ -n ${HPC_BUILD_LOCK:-} ]]; then flock "$HPC_BUILD_LOCK" "$@"; else "$@"; fi; }


timings=()
phase_start=0
begin() { phase_start=$(date +%s); echo "=== test.sh: $1 ($(date +%T))"; }
end() { timings+=("$(printf '%-34s %5d s' "$1" $(( $(date +%s) - phase_start )))"); }
report() {
  echo "=== test.sh: wall times"
  printf '  %s\n' "${timings[@]}"
}
trap report EXIT

if (( normal )); then
  begin "build (default, fuzz)"
  HPC_BUILD_LOCK=${HPC_BUILD_LOCK:-} scripts/build.sh --with-fuzz --with-slurm
  scripts/format.sh --check
  # The MCP tests' client: the official SDK, at the lockfile's versions.
  npm ci --prefix tests/mcp --no-audit --no-fund --loglevel=error
  # The fuzz targets need clang's libFuzzer: their own small build tree.
  cmake --preset fuzz >/dev/null
  build cmake --build --preset fuzz
  end "build (default, fuzz)"

  begin "fuzz"
  ctest --preset fuzz
  end "fuzz"

  begin "all tiers, idle"
  ctest --preset default -j2
  end "all tiers, idle"
fi

if (( asan )); then
  begin "asan build"
  cmake --preset asan >/dev/null
  build cmake --build --preset asan
  end "asan build"

  # Reports go to files as well as failing the process: a daemon's report
  # would otherwise be only in its log, and a test might not notice it die.
  reports="$PWD/build/asan/sanitizer-reports"
  rm -rf "$reports" && mkdir -p "$reports"
  begin "asan: unit, dbus, e2e"
  ASAN_OPTIONS="log_path=$reports/asan:detect_leaks=0:abort_on_error=1" \
  UBSAN_OPTIONS="log_path=$reports/ubsan:print_stacktrace=1:halt_on_error=1" \
    ctest --preset asan -j2
  end "asan: unit, dbus, e2e"
  if compgen -G "$reports/*" >/dev/null; then
    echo "test.sh: sanitizer reports:" >&2
    head -n 60 "$reports"/* >&2
    exit 1
  fi
fi

if (( load )); then
  command -v stress-ng >/dev/null || { echo "test.sh: stress-ng is missing (scripts/install-deps.sh)" >&2; exit 1; }
  begin "dbus, e2e, jobs under load"
  # Bounded in time whatever happens to this script; stopped by its pid when done.
  stress-ng --cpu 2 --timeout 2400s --quiet &
  hog=$!
  trap 'kill "$hog" 2>/dev/null; wait "$hog" 2>/dev/null; report' EXIT
  rc=0
  ctest --preset default -j2 -L 'dbus|e2e|jobs' || rc=$?
  kill "$hog" 2>/dev/null || true
  wait "$hog" 2>/dev/null || true
  trap report EXIT
  end "dbus, e2e, jobs under load"
  (( rc == 0 )) || exit "$rc"
fi
