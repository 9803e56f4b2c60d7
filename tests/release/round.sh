#!/bin/sh
# The full round of a release, as a user would run it, in plain POSIX sh (it
# also runs under busybox in a chroot with nothing else):
#   relay, `hpc-daemonctl setup`, `start`, `hpc-agent login`, exec, shell,
#   submit + wait, status (with the daemon's process name), stop.
#
#   round.sh BINDIR WORKDIR [--ca-file FILE]
#
# BINDIR holds the four programs (the release's bin/, or links to it).
# WORKDIR must hold tls/cert.pem and tls/key.pem; everything else is made
# there. Without --ca-file the programs find the CA the way a user's would
# (SSL_CERT_FILE, or the system store). Leaves status.json in WORKDIR.
set -eu
bin=$1
work=$2
shift 2
ca=
[ "${1:-}" = --ca-file ] && ca=$2
. "$(dirname "$0")/lib.sh"

cd "$work"
export HPC_DAEMON_HOME="$work/home"
daemon_started=0
cleanup() {
  rc=$?
  [ "$daemon_started" = 1 ] && "$bin/hpc-daemonctl" stop >/dev/null 2>&1 || true
  stop_relay
  if [ "$rc" != 0 ]; then
    echo "--- relay.log"; tail -n 30 relay.log 2>/dev/null || true
    echo "--- daemon log"; tail -n 30 "$HPC_DAEMON_HOME"/*.log 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p ws
step "relay"
start_relay
set --
[ -n "$ca" ] && set -- --ca-file "$ca"

step "setup"
with_code "$bin/hpc-daemonctl" setup --no-interview --email r@example.org --url "$url" --daemon-id rt \
  --allowed-dirs "$work/ws" "$@" >setup.out 2>&1 || { cat setup.out; fail "setup"; }

step "start"
daemon_started=1
LOCAL_MODE=1 "$bin/hpc-daemonctl" start --daemon-id rt || fail "start"

step "login"
token=$(with_code "$bin/hpc-agent" login --email r@example.org --url "$url" "$@") || fail "login"
export HPC_AGENT_URL="$url" HPC_AGENT_TOKEN="$token"
[ -n "$ca" ] && export HPC_AGENT_CA="$ca"
wait_connected rt

step "exec"
out=$("$bin/hpc-agent" exec rt -- echo hello-exec) || fail "exec"
[ "$out" = hello-exec ] || fail "exec printed '$out'"
out=$("$bin/hpc-agent" exec rt --cwd "$work/ws" -c 'echo $((6*7)) >answer; cat answer') || fail "exec -c"
[ "$out" = 42 ] || fail "exec -c printed '$out'"
rc=0
"$bin/hpc-agent" exec rt -c 'exit 3' || rc=$?
[ "$rc" = 3 ] || fail "exec exit status $rc, wanted 3"

step "shell"
rc=0
out=$(printf 'echo shell-$((2+3))\nexit 7\n' | "$bin/hpc-agent" shell rt --shell /bin/sh) || rc=$?
expect shell shell-5 "$out"
[ "$rc" = 7 ] || fail "shell exit status $rc, wanted 7"

step "submit + wait"
job=$(printf 'echo job-output-$((40+2))\n' | "$bin/hpc-agent" submit rt - --name rt-job) || fail "submit"
out=$("$bin/hpc-agent" wait rt "$job" --timeout 120) || fail "wait: $out"
expect wait COMPLETED "$out"
expect wait job-output-42 "$out"

step "status"
out=$("$bin/hpc-daemonctl" status --daemon-id rt --json) || fail "status"
echo "$out" >status.json
expect status '"running":true' "$out"
pid=$(echo "$out" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
[ -n "$pid" ] || fail "no pid in status: $out"
comm=$(cat "/proc/$pid/comm")
[ "$comm" = hpc-daemond ] || fail "/proc/$pid/comm is '$comm', wanted hpc-daemond"

step "stop"
"$bin/hpc-daemonctl" stop --daemon-id rt || fail "stop"
daemon_started=0
# Gone, or a zombie its new parent has not reaped yet.
state=$(proc_state "$pid")
[ -z "$state" ] || [ "$state" = Z ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != hpc-daemond ] ||
  fail "daemon $pid still runs after stop (state $state)"
step "ok"
