#!/usr/bin/env bash
# Issue 11, item 6 (second part): a daemon frozen past WatchdogSec (SIGSTOP)
# is restarted by systemd's watchdog. The period is shortened with a drop-in,
# as an administrator would (the unit's own is 60 s).
source "$(dirname "$0")/lib.sh"
boot
install_build
start_relay
setup_profile cluster
u 'mkdir -p ~/.config/systemd/user/hpc-daemon@cluster.service.d &&
   printf "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=5s\n" >~/.config/systemd/user/hpc-daemon@cluster.service.d/watchdog.conf &&
   systemctl --user daemon-reload && systemctl --user enable --now hpc-daemon@cluster'
expect "$(u 'systemctl --user show -p WatchdogUSec --value hpc-daemon@cluster')" '^2s$' "WatchdogUSec"
expect "$(u 'journalctl --user -u hpc-daemon@cluster -o cat --no-pager')" 'watchdog enabled: every 2000 ms' "the daemon's watchdog"
# A daemon that kicks the watchdog is not restarted while it runs normally.
old=$(main_pid cluster)
log "SIGSTOP to the daemon (pid $old)"
r "kill -STOP $old"
wait_for "test \"\$(systemctl --user show -p MainPID --value hpc-daemon@cluster)\" != $old && systemctl --user is-active -q hpc-daemon@cluster" \
  "the watchdog to restart the daemon" 400
journal=$(u 'journalctl --user -u hpc-daemon@cluster -o cat --no-pager')
expect "$journal" 'Watchdog timeout' "systemd's journal lines for the unit"
expect "$(u 'systemctl --user show -p NRestarts --value hpc-daemon@cluster')" '^1$' "NRestarts"
r "test ! -e /proc/$old" || fail "the frozen daemon $old is still there"
wait_for 'hpc-daemonctl status | grep -q "link: *connected"' "the new daemon's link"
log "PASS"
