#!/usr/bin/env bash
# Issue 11, item 9: start, restart and stop in systemd mode go through
# systemctl --user (the unit's main pid is the daemon, restart changes it,
# stop leaves the unit inactive and disabled); `stop` ends a frozen daemon
# (SIGSTOP: it cannot answer on D-Bus) in systemd mode and in nohup mode, and
# says what it did.
source "$(dirname "$0")/lib.sh"
boot
install_build
start_relay
setup_profile cluster

log "systemd mode: start, restart"
u 'hpc-daemonctl start'
first=$(main_pid cluster)
expect "$(u 'hpc-daemonctl status')" "pid $first," "status names the unit's main pid"
expect "$(u 'hpc-daemonctl restart')" 'restarted hpc-daemon@cluster.service' "restart"
second=$(main_pid cluster)
[[ $second != "$first" && $second != 0 ]] || fail "restart did not replace the daemon ($first -> $second)"
expect "$(u 'systemctl --user show -p NRestarts --value hpc-daemon@cluster')" '^0$' "a restart asked for is no failure"

log "systemd mode: stop a frozen daemon"
r "kill -STOP $second"
t0=$EPOCHREALTIME
out=$(u 'hpc-daemonctl stop' 2>&1)
echo "$out ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b-a }'))"
expect "$out" '^stopped daemon cluster \(systemctl --user disable --now hpc-daemon@cluster.service\)$' "stop"
r "test ! -e /proc/$second" || fail "the frozen daemon $second is still there"
expect "$(u 'systemctl --user is-active hpc-daemon@cluster || true')" '^inactive$' "after stop"
expect "$(u 'systemctl --user is-enabled hpc-daemon@cluster || true')" '^disabled$' "after stop"

log "nohup mode: stop a frozen daemon"
out=$(u 'HPC_DAEMONCTL_MODE=nohup hpc-daemonctl start')
expect "$out" 'in nohup mode: nohup mode forced by HPC_DAEMONCTL_MODE=nohup' "start in nohup mode"
pid=$(u 'cat ~/.hpc_daemon/cluster.pid')
r "kill -STOP $pid"
out=$(u 'hpc-daemonctl stop' 2>&1)
echo "$out"
expect "$out" "did not answer on D-Bus .*; sending SIGTERM to pid $pid" "stop of a frozen nohup daemon"
expect "$out" "^stopped daemon cluster \\(pid $pid, by SIGTERM\\)$" "stop of a frozen nohup daemon"
r "test ! -e /proc/$pid" || fail "the frozen nohup daemon $pid is still there"
expect "$(u 'hpc-daemonctl status; echo rc=$?')" 'rc=3$' "status after stop (not running)"
log "PASS"
