#!/usr/bin/env bash
# Issue 11, item 5: D-Bus activation on the session bus. With the unit
# installed and stopped, a method call to org.tiptree.HpcDaemon.<id> starts
# it, through systemd (SystemdService= in the activation file setup wrote),
# not as a child of dbus-daemon.
source "$(dirname "$0")/lib.sh"
boot
install_build
start_relay
setup_profile cluster

expect "$(u 'cat ~/.local/share/dbus-1/services/org.tiptree.HpcDaemon.cluster.service')" \
  '^SystemdService=hpc-daemon@cluster.service$' "the activation file"
expect "$(u 'systemctl --user show -p ActiveState --value hpc-daemon@cluster')" '^inactive$' "before the call"
log "busctl --user call org.tiptree.HpcDaemon.cluster ... GetStatus"
reply=$(u 'busctl --user --timeout=30 call org.tiptree.HpcDaemon.cluster /org/tiptree/HpcDaemon org.tiptree.HpcDaemon GetStatus')
expect "$reply" '"mode" s "systemd"' "the activated daemon's GetStatus"
expect "$(u 'systemctl --user show -p ActiveState --value hpc-daemon@cluster')" '^active$' "after the call"
pid=$(main_pid cluster)
expect "$reply" "\"pid\" u $pid( |\$)" "GetStatus answered by the unit's main pid"
expect "$(u 'hpc-daemonctl status')" '^  mode: +systemd' "status after activation"
log "PASS"
