#!/usr/bin/env bash
# Installs what is missing, then configures and builds the default preset.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh "$@"
cmake --preset default >/dev/null
# HPC_BUILD_LOCK=FILE: hold this flock(1) lock while building (a shared machine).
if [[ -n ${HPC_BUILD_LOCK:-} ]]; then
  flock "$HPC_BUILD_LOCK" cmake --build --preset default
else
  cmake --build --preset default
fi
