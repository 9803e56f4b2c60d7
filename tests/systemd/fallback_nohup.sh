#!/usr/bin/env bash
# Issue 11, item 8 (first part): with lingering off and no login session (no
# user manager, no XDG_RUNTIME_DIR, no session bus), `hpc-daemonctl start`
# chooses nohup mode, and status says why; the daemon serves D-Bus on its
# private socket and stop ends it. From a login session instead, start turns
# lingering on by itself and uses systemd.
source "$(dirname "$0")/lib.sh"
boot
install_build
start_relay
setup_profile cluster
log "lingering off; the user manager goes"
r 'loginctl disable-linger hpcuser'
for ((i = 0; i < 300; i++)); do
  r 'systemctl is-active -q user@1000.service' || break
  sleep 0.1
done
r '! systemctl is-active -q user@1000.service' || fail "user@1000.service still runs with lingering off"
expect "$(r 'ls /var/lib/systemd/linger/ | wc -l')" '^0$' "linger files"

CTL='~/.local/bin/hpc-daemonctl'
log "start without any session"
out=$(u_bare "$CTL start")
echo "$out"
expect "$out" 'in nohup mode: no systemd user manager is reachable' "hpc-daemonctl start"
status=$(u_bare "$CTL status")
echo "$status"
expect "$status" '^  mode: +nohup — no systemd user manager is reachable' "status"
expect "$status" "^  bus: +unix:path=$UHOME/.hpc_daemon/cluster.bus" "status (the private bus)"
wait_for "$CTL status | grep -q 'link: *connected'" "the link in nohup mode"
expect "$(agent exec cluster -- echo nohup-ok)" '^nohup-ok$' "agent exec through the nohup daemon"
expect "$(u_bare "$CTL logs -n 50")" 'starting: daemon cluster' "hpc-daemonctl logs (the log file)"
pid=$(u_bare 'cat ~/.hpc_daemon/cluster.pid')
u_bare "$CTL stop"
r "test ! -e /proc/$pid" || fail "the nohup daemon $pid is still running after stop"

log "from a login session, lingering off: start turns it on (polkit lets users linger themselves) and uses systemd"
out=$(u 'hpc-daemonctl start')
echo "$out"
expect "$out" 'in systemd mode: systemd user manager; lingering was off and has been turned on' "start in a login session"
expect "$(r 'loginctl show-user hpcuser -p Linger')" '^Linger=yes$' "lingering after start"
expect "$(u 'hpc-daemonctl status')" '^  mode: +systemd' "status"
log "PASS"
