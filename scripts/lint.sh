#!/usr/bin/env bash
# Runs clang-tidy with the checks in .clang-tidy over the tree's C++, as the
# default preset compiles it (build/default/compile_commands.json; build
# first, the D-Bus adaptor and proxy headers are generated). Any finding is an
# error (WarningsAsErrors), and the script fails if there is one.
#
# The files: every tracked .cpp except the benchmarks (bench/), the fuzzers
# (tests/fuzz/, built only by the fuzz preset) and the Beast translation units
# (those that include boost/beast: half a minute of CPU or more each, mostly
# inside Boost's headers).
#
#   -j N      clang-tidy processes at once (default 2)
#   FILE...   only these files
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=2
files=()
while (($#)); do
  case "$1" in
    -j) jobs=$2; shift 2 ;;
    -j*) jobs=${1#-j}; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "usage: $0 [-j N] [FILE...]" >&2; exit 2 ;;
    *) files+=("$1"); shift ;;
  esac
done

command -v clang-tidy >/dev/null || { echo "lint.sh: clang-tidy is missing (scripts/install-deps.sh --with-fuzz)" >&2; exit 1; }
[[ -f build/default/compile_commands.json ]] ||
  { echo "lint.sh: build/default/compile_commands.json is missing: build first (scripts/build.sh)" >&2; exit 1; }
if ((${#files[@]} == 0)); then
  mapfile -t files < <(git ls-files -z -- '*.cpp' ':!:bench/*' ':!:tests/fuzz/*' | xargs -0 grep -L 'boost/beast')
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
start=$(date +%s)
# One log per file (named by its index), and a .failed mark next to it.
# shellcheck disable=SC2016  # $0..$2 are the inner sh's arguments
for i in "${!files[@]}"; do printf '%s\0%s\0' "$i" "${files[$i]}"; done |
  xargs -0 -n 2 -P "$jobs" sh -c \
    'clang-tidy -p build/default --quiet "$2" >"$0/$1.log" 2>&1 || : >"$0/$1.failed"' "$logs" || true

failed=0
for i in "${!files[@]}"; do
  [[ -e $logs/$i.failed ]] || continue
  failed=$((failed + 1))
  grep -v ' warnings\? generated\.$' "$logs/$i.log" >&2 || true
done
seconds=$(($(date +%s) - start))
if ((failed)); then
  echo "lint.sh: clang-tidy found problems in $failed of ${#files[@]} files ($seconds s)" >&2
  exit 1
fi
echo "lint.sh: ${#files[@]} files clean ($seconds s, $jobs jobs)"
