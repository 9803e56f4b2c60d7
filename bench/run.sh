#!/usr/bin/env bash
# Builds and runs the benchmarks (installs openssh-server for the ssh peer and
# slurm-wlm + munge for the job benchmark's cluster, which needs root).
# usage: bench/run.sh [exec RUNS] [idle SECONDS] [pty ECHO-ITERATIONS] [jobs SUBMISSIONS HELD LATENCY-RUNS] [cp MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh --with-bench --with-slurm
build/default/bench/exec_bench "${1:-2000}"
build/default/bench/idle_bench "${2:-60}"
build/default/bench/pty_bench "${3:-10000}"
build/default/bench/proxy_bench
build/default/bench/logs_bench
build/default/bench/cp_bench "${7:-256}"
pg=build/default/postgres-bench
build/default/bench/relay_store_bench "$(scripts/postgres-server.sh start "$pg")" || true
build/default/bench/relay_cluster_bench "$(scripts/postgres-server.sh start "$pg")" || true
build/default/bench/relay_links_bench
scripts/postgres-server.sh stop "$pg"
if [ "$(id -u)" = 0 ]; then
  cluster=build/default/slurm-bench
  trap 'scripts/slurm-cluster.sh stop "$cluster"' EXIT
  eval "$(scripts/slurm-cluster.sh start "$cluster")"
  build/default/bench/job_bench "${4:-100}" "${5:-1000}" "${6:-10}"
else
  echo "job_bench skipped: the SLURM cluster needs root"
fi
