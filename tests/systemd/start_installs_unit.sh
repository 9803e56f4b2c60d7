#!/usr/bin/env bash
# Issue 11, item 8 (second part): the programs without their unit (copied to
# ~/bin, no cmake --install): `hpc-daemonctl start` with a user manager and
# lingering installs the unit to ~/.config/systemd/user, running the
# hpc-daemond beside it, and starts it in systemd mode instead of failing with
# "Unit ... does not exist". The installed unit passes systemd-analyze verify
# (--man=no: there are no man pages without an install).
source "$(dirname "$0")/lib.sh"
boot
install_binaries_only
start_relay
CTL="$UHOME/bin/hpc-daemonctl"
n=$(code_lines)
code_for user@example.org "$n" | u "$CTL setup --no-interview --email user@example.org --url $URL \
   --daemon-id cluster --allowed-dirs ~/work --ca-file ~/ca.pem" >/dev/null
expect "$(u 'systemctl --user show -p LoadState --value hpc-daemon@cluster')" '^not-found$' "before start"
out=$(u "$CTL start")
echo "$out"
expect "$out" "^installed the unit $UHOME/.config/systemd/user/hpc-daemon@.service \\(it runs $UHOME/bin/hpc-daemond\\)$" "start"
expect "$out" 'in systemd mode' "start"
expect "$(u 'systemctl --user show -p FragmentPath --value hpc-daemon@cluster')" "^$UHOME/.config/systemd/user/hpc-daemon@.service$" "the unit in use"
expect "$(u 'systemctl --user is-enabled hpc-daemon@cluster')" '^enabled$' "after start"
verify=$(u 'systemd-analyze --user verify --man=no hpc-daemon@cluster.service 2>&1; echo "rc=$?"')
[[ $verify == "rc=0" ]] || fail "systemd-analyze --user verify: $verify"
expect "$(u "$CTL status")" '^  mode: +systemd' "status"
log "PASS"
