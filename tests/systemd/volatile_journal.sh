#!/usr/bin/env bash
# Where the journal is volatile (no /var/log/journal, as on some login nodes),
# a user may read none of it: `hpc-daemonctl logs` says so and what to do,
# instead of journalctl's permission hint; the daemon itself runs as usual.
source "$(dirname "$0")/lib.sh"
boot
install_build
start_relay
r 'rm -rf /var/log/journal && systemctl restart systemd-journald'
setup_profile cluster
u 'systemctl --user enable --now hpc-daemon@cluster'
wait_for 'hpc-daemonctl status | grep -q "link: *connected"' "the link"
out=$(u 'hpc-daemonctl logs -n 5 2>&1; echo "rc=$?"')
echo "$out"
expect "$out" 'you cannot read the journal here \(No journal files were opened due to insufficient permissions\)' "logs"
expect "$out" 'HPC_DAEMONCTL_MODE=nohup hpc-daemonctl start' "logs (what to do)"
expect "$out" '^rc=[1-9]' "logs"
log "nohup mode then logs to a file that logs reads"
u 'hpc-daemonctl stop && HPC_DAEMONCTL_MODE=nohup hpc-daemonctl start'
expect "$(u 'hpc-daemonctl logs -n 50')" 'starting: daemon cluster, .*mode nohup' "logs in nohup mode"
log "PASS"
