#!/usr/bin/env bash
# A single-node SLURM cluster for tests and benchmarks (Debian's slurm-wlm and
# munge), entirely under one state directory.
#
#   scripts/slurm-cluster.sh start DIR [--min-job-age SECONDS] [--test-user NAME] [--skip-unless-root]
#   scripts/slurm-cluster.sh stop DIR
#   scripts/slurm-cluster.sh stop-controller DIR    (slurmctld only: "controller down")
#   scripts/slurm-cluster.sh start-controller DIR
#   scripts/slurm-cluster.sh env DIR                (prints export SLURM_CONF=...)
#
# Needs root (munged and slurmd run as root) and the packages from
# `scripts/install-deps.sh --with-slurm`. Every daemon it starts is stopped by
# `stop` through its pid file; `start` on a running cluster restarts it.
# --test-user: also create this unprivileged account (no login, no home) if
# it is missing, for tests that run a daemon and its jobs as a normal user.
# --skip-unless-root: when not root, say so and succeed without a cluster
# (the tests that need one then skip).
# Job ids continue across restarts (the state directory is kept).
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
shift 2
min_job_age=300
skip_unless_root=0
test_user=
while [ $# -gt 0 ]; do
    case $1 in
        --min-job-age) min_job_age=$2; shift 2 ;;
        --skip-unless-root) skip_unless_root=1; shift ;;
        --test-user) test_user=$2; shift 2 ;;
        *) usage ;;
    esac
done

conf=$dir/etc/slurm.conf
host=$(hostname -s)

die() { echo "slurm-cluster: $*" >&2; exit 1; }

stop_pid() {  # pidfile
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null || true)
    rm -f "$f"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

wait_for() {  # description, command...
    local what=$1; shift
    for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "timed out waiting for $what (logs in $dir/log)"
}

write_conf() {
    mkdir -p "$dir/etc" "$dir/state" "$dir/spool" "$dir/log" "$dir/run" "$dir/munge/run" "$dir/munge/lib" "$dir/munge/log"
    cat >"$conf" <<EOF
ClusterName=hpctest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/run/munge.socket.2
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SchedulerParameters=sched_interval=1
MinJobAge=$min_job_age
MaxJobCount=20000
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldTimeout=30
MessageTimeout=5
InactiveLimit=0
KillWait=5
NodeName=$host CPUs=$(nproc) RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:64
EOF
    chmod 0755 "$dir" "$dir/etc"
    chmod 0644 "$conf"
}

start_munge() {
    stop_pid "$dir/munge/run/munged.pid"
    # munged (and a test's unprivileged job user) must be able to traverse to
    # the state directory: a clone in a private directory (mktemp -d, 0700)
    # gets the search bit, nothing more, on each ancestor that lacks it.
    local p
    p=$(cd "$dir" && pwd)
    while [ "$p" != / ]; do
        if [ "$(stat -c %A "$p" | cut -c10)" != x ] && [ "$(stat -c %A "$p" | cut -c10)" != t ]; then
            echo "slurm-cluster: chmod o+x $p (munged must reach $dir)" >&2
            chmod o+x "$p"
        fi
        p=$(dirname "$p")
    done
    if [ ! -f "$dir/munge/munge.key" ]; then
        mungekey --create --keyfile="$dir/munge/munge.key" >/dev/null
    fi
    chown -R munge:munge "$dir/munge"
    chmod 0700 "$dir/munge"
    chmod 0400 "$dir/munge/munge.key"
    chmod 0755 "$dir/munge/run"
    # The socket's directory must be reachable by every user that submits.
    chmod 0711 "$dir/munge"
    runuser -u munge -- munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/run/munge.socket.2" \
        --pid-file="$dir/munge/run/munged.pid" --log-file="$dir/munge/log/munged.log" \
        --seed-file="$dir/munge/lib/munged.seed" --force
    wait_for munged test -S "$dir/munge/run/munge.socket.2"
}

start_controller() {
    stop_pid "$dir/run/slurmctld.pid"
    SLURM_CONF=$conf setsid slurmctld -D -i -f "$conf" >>"$dir/log/slurmctld.out" 2>&1 </dev/null &
    echo $! >"$dir/run/slurmctld.pid"
    wait_for slurmctld env SLURM_CONF="$conf" scontrol ping
}

case $cmd in
    start)
        rm -f "$conf"
        if [ "$(id -u)" != 0 ] && [ $skip_unless_root = 1 ]; then
            echo "slurm-cluster: not root: no test cluster; the SLURM tests will be skipped"
            exit 0
        fi
        [ "$(id -u)" = 0 ] || die "must run as root (munged and slurmd)"
        command -v slurmctld >/dev/null || die "slurm-wlm is not installed: scripts/install-deps.sh --with-slurm"
        getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts
        if [ -n "$test_user" ] && ! id -u "$test_user" >/dev/null 2>&1; then
            useradd --system --no-create-home --shell /usr/sbin/nologin "$test_user"
        fi
        "$0" stop "$dir" >/dev/null 2>&1 || true
        write_conf
        start_munge
        start_controller
        SLURM_CONF=$conf setsid slurmd -D -f "$conf" >>"$dir/log/slurmd.out" 2>&1 </dev/null &
        echo $! >"$dir/run/slurmd.pid"
        wait_for "the node to be idle" bash -c "SLURM_CONF='$conf' sinfo -h -o %t | grep -qx idle"
        echo "export SLURM_CONF=$conf"
        ;;
    stop-controller)
        stop_pid "$dir/run/slurmctld.pid"
        ;;
    start-controller)
        start_controller
        ;;
    stop)
        stop_pid "$dir/run/slurmd.pid"
        stop_pid "$dir/run/slurmctld.pid"
        stop_pid "$dir/munge/run/munged.pid"
        ;;
    env)
        echo "export SLURM_CONF=$conf"
        ;;
    *) usage ;;
esac
