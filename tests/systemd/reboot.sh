#!/usr/bin/env bash
# Issue 11, item 6 (third part): with lingering on, a reboot brings an enabled
# instance back without anyone logging in; a stopped (disabled) one stays
# stopped.
source "$(dirname "$0")/lib.sh"
boot
install_build
start_relay
setup_profile cluster
u 'systemctl --user enable --now hpc-daemon@cluster'
wait_for 'hpc-daemonctl status | grep -q "link: *connected"' "the link"

log "reboot"
reboot_container
# Nobody has logged in: the user manager runs because of lingering.
expect "$(r 'loginctl list-sessions --no-legend | wc -l')" '^0$' "sessions after the reboot"
wait_for 'systemctl --user is-active -q hpc-daemon@cluster' "the enabled instance after the reboot" 300
expect "$(u 'hpc-daemonctl status')" '^  mode: +systemd' "status after the reboot"
wait_for 'hpc-daemonctl status | grep -q "link: *connected"' "the link after the reboot"
expect "$(agent exec cluster -- echo back)" '^back$' "agent exec after the reboot"

log "hpc-daemonctl stop, reboot: it stays stopped"
u 'hpc-daemonctl stop'
reboot_container
expect "$(u 'systemctl --user is-enabled hpc-daemon@cluster || true')" '^disabled$' "after stop and reboot"
expect "$(u 'systemctl --user is-active hpc-daemon@cluster || true')" '^inactive$' "after stop and reboot"
log "PASS"
