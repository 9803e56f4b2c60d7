#!/usr/bin/env bash
# Issue 11, items 1-3: the headline path as a lingering user would run it.
# `cmake --install --prefix ~/.local` puts the unit and the man pages in the
# user's own directories; `systemd-analyze --user verify` passes on the unit;
# setup, then `systemctl --user enable --now hpc-daemon@cluster` reaches READY
# (Type=notify); `hpc-daemonctl status` talks to it over the session bus and
# says systemd mode; the journal has its lines with priorities, per instance
# and for every instance (hpc-daemon.slice), and `hpc-daemonctl logs` reads it.
source "$(dirname "$0")/lib.sh"
boot
install_build
start_relay

log "the unit and the man pages are in the user's directories"
files=$(cd "$W/c/root$UHOME/.local" && find . -type f -not -path './bin/*' -not -path './include/*' | sort)
expect "$files" '^\./share/systemd/user/hpc-daemon@\.service$' "installed files"
expect "$files" '^\./share/man/man1/hpc-daemond\.1$' "installed files"
expect "$files" '^\./share/man/man1/hpc-daemonctl\.1$' "installed files"
expect "$files" '^\./share/hpc-daemon/systemd/hpc-daemon@\.service\.in$' "installed files"
expect "$files" '^\./share/hpc-daemon/dbus/org\.tiptree\.HpcDaemon\.service\.in$' "installed files"
expect "$(cat "$W/c/root$UHOME/.local/share/systemd/user/hpc-daemon@.service")" \
  "^ExecStart=$UHOME/.local/bin/hpc-daemond --daemon-id %I$" "installed unit"
expect "$(u 'systemctl --user cat hpc-daemon@cluster.service | head -1')" "^# $UHOME/.local/share/systemd/user/hpc-daemon@.service$"

log "systemd-analyze --user verify passes, man pages included (any output is a finding)"
verify=$(u 'systemd-analyze --user verify hpc-daemon@cluster.service 2>&1; echo "rc=$?"')
[[ $verify == "rc=0" ]] || fail "systemd-analyze --user verify: $verify"
expect "$(u 'man -w hpc-daemond hpc-daemonctl')" "^$UHOME/.local/share/man/man1/hpc-daemond.1$"

log "setup, then systemctl --user enable --now hpc-daemon@cluster"
setup_profile cluster
u 'systemctl --user enable --now hpc-daemon@cluster'
# Type=notify: enable --now returns once the daemon sent READY=1.
expect "$(u 'systemctl --user show -p ActiveState -p SubState -p Type -p NRestarts hpc-daemon@cluster')" '^ActiveState=active$'
wait_for 'hpc-daemonctl status | grep -q "link: *connected"' "the link to come up"
status=$(u 'hpc-daemonctl status')
echo "$status"
expect "$status" '^  mode: +systemd' "status"
expect "$status" '^  bus: +unix:path=/run/user/1000/bus$' "status (the session bus)"
expect "$status" "pid $(main_pid cluster)," "status (the unit's main pid)"
expect "$status" "^  env file: +$UHOME/.config/hpc-daemon/cluster.env$" "status"
expect "$(agent exec cluster -- id -un)" '^hpcuser$' "agent exec through the unit"
# The unit's hardening (NoNewPrivileges, seccomp) leaves the kernel-enforced
# confinement on where the kernel has it.
if grep -qw landlock /sys/kernel/security/lsm 2>/dev/null; then
  expect "$status" '^  guards: .*landlock \(ABI [0-9]+\)' "status (Landlock under the unit)"
fi

log "the journal: per instance, the whole slice, with priorities; hpc-daemonctl logs reads it"
journal=$(u 'journalctl --user -u hpc-daemon@cluster --no-pager')
expect "$journal" 'hpc-daemond\[[0-9]+\]: hpc-daemond .* starting: daemon cluster' "journalctl --user -u hpc-daemon@cluster"
expect "$journal" 'Started hpc-daemon@cluster.service' "journalctl --user -u hpc-daemon@cluster"
expect "$(u 'journalctl --user -u hpc-daemon.slice --no-pager')" 'hpc-daemond\[[0-9]+\]: hpc-daemond .* starting: daemon cluster' "journalctl --user -u hpc-daemon.slice"
# The used-by line, literally: the template's name finds every instance's lines.
expect "$(u 'journalctl --user -u hpc-daemon --no-pager')" 'hpc-daemond\[[0-9]+\]: hpc-daemond .* starting: daemon cluster' "journalctl --user -u hpc-daemon"
priorities=$(u 'journalctl --user -u hpc-daemon@cluster -o json --no-pager _COMM=hpc-daemond' | grep -o '"PRIORITY":"[0-9]"' | sort -u)
expect "$priorities" '"PRIORITY":"5"' "journal priorities (notice)"
expect "$priorities" '"PRIORITY":"6"' "journal priorities (info)"
logs=$(u 'hpc-daemonctl logs -n 200')
expect "$logs" 'hpc-daemond\[[0-9]+\]: ' "hpc-daemonctl logs"
info_line=$(u 'journalctl --user -u hpc-daemon@cluster -p info..info -o cat --no-pager _COMM=hpc-daemond | tail -1')
[[ -n $info_line ]] || fail "no info line in the journal"
expect "$logs" "$(printf '%s' "$info_line" | sed 's/[][\.*^$()+?{}|]/\\&/g')" "hpc-daemonctl logs (info)"
expect_not "$(u 'hpc-daemonctl logs -n 200 -p notice')" "$(printf '%s' "$info_line" | sed 's/[][\.*^$()+?{}|]/\\&/g')" \
  "hpc-daemonctl logs -p notice (no info lines)"
log "PASS"
