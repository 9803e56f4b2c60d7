#!/usr/bin/env bash
# Issue 11, item 4: the environment that matters reaches the unit. sbatch is
# only on the login shell's PATH (/opt/slurm/bin, as after `module load
# slurm`), SLURM_CONF is set there, the profile lives in a non-default
# HPC_DAEMON_HOME: setup registers slurm, `hpc-daemonctl start` starts the
# unit with all of it (from the per-instance environment file), and status
# says which scheduler and why. Then LOCAL_MODE=1 with restart switches the
# unit to local jobs, and a job really runs locally.
source "$(dirname "$0")/lib.sh"
boot
install_build
start_relay

# A stand-in SLURM on a path only the login shell knows: enough for the
# daemon's choice (it runs sbatch only when a job is submitted).
r 'mkdir -p /opt/slurm/bin /etc/slurm-site && for p in sbatch squeue scancel sacct scontrol; do
     printf "#!/bin/sh\necho \"$p is a stand-in\" >&2; exit 1\n" >/opt/slurm/bin/$p; chmod 755 /opt/slurm/bin/$p; done
   echo "ClusterName=test" >/etc/slurm-site/slurm.conf'
SITE_ENV='export PATH=/opt/slurm/bin:$PATH SLURM_CONF=/etc/slurm-site/slurm.conf HPC_DAEMON_HOME=$HOME/alt-home;'
# The site's proxy (issue 14 item 1) reaches the unit too; NO_PROXY exempts
# the relay on 127.0.0.1, so the route says the unit saw both.
SITE_ENV+=' export HTTPS_PROXY=http://site:pw@proxy.invalid:3128 NO_PROXY=127.0.0.1,localhost;'

log "setup and start from a shell with sbatch on PATH, SLURM_CONF and HPC_DAEMON_HOME"
setup_profile cluster "$SITE_ENV"
expect "$(sqlite3 "$W/relay/relay.db" "select info from daemons where daemon_id='cluster'")" \
  '"scheduler":"slurm"' "what setup registered with the platform"
start_out=$(u "$SITE_ENV hpc-daemonctl start")
echo "$start_out"
expect "$start_out" 'in systemd mode' "hpc-daemonctl start"
envfile=$(u 'cat ~/.config/hpc-daemon/cluster.env')
expect "$envfile" "^HPC_DAEMON_HOME=\"$UHOME/alt-home\"$" "environment file"
expect "$envfile" '^SLURM_CONF="/etc/slurm-site/slurm.conf"$' "environment file"
expect "$envfile" '^PATH="/opt/slurm/bin:' "environment file"
expect "$envfile" '^HTTPS_PROXY="http://site:pw@proxy.invalid:3128"$' "environment file"
expect "$envfile" '^NO_PROXY="127.0.0.1,localhost"$' "environment file"
[[ $(u 'stat -c %a ~/.config/hpc-daemon/cluster.env') == 600 ]] || fail "the environment file is not 0600"
status=$(u "$SITE_ENV hpc-daemonctl status")
echo "$status"
expect "$status" '^  scheduler: +slurm — sbatch at /opt/slurm/bin/sbatch, SLURM_CONF=/etc/slurm-site/slurm.conf$' "status"
expect "$status" "^  env file: +$UHOME/.config/hpc-daemon/cluster.env$" "status"
expect "$status" '^  route: +direct \(NO_PROXY\)$' "status"
# What the daemon process itself has, from /proc.
environ=$(r "tr '\\0' '\\n' </proc/$(main_pid cluster)/environ")
expect "$environ" "^HPC_DAEMON_HOME=$UHOME/alt-home$" "the daemon's environment"
expect "$environ" '^SLURM_CONF=/etc/slurm-site/slurm.conf$' "the daemon's environment"
expect "$environ" '^HTTPS_PROXY=http://site:pw@proxy.invalid:3128$' "the daemon's environment"
[[ -e $W/c/root$UHOME/alt-home/state.db && ! -e $W/c/root$UHOME/.hpc_daemon/state.db ]] ||
  fail "the profile is not (only) in HPC_DAEMON_HOME"

log "LOCAL_MODE=1 hpc-daemonctl restart: the unit now runs local jobs (and gets an awkward SLURM_CONF verbatim)"
# A value with a space, quotes, a backslash and a dollar reaches the daemon unchanged.
AWKWARD='/etc/slurm site/"a" \b $c ${d}.conf'
u "$SITE_ENV export SLURM_CONF='$AWKWARD'; LOCAL_MODE=1 hpc-daemonctl restart"
environ=$(r "tr '\\0' '\\n' </proc/$(main_pid cluster)/environ")
grep -qxF "SLURM_CONF=$AWKWARD" <<<"$environ" || fail "SLURM_CONF in the daemon's environment: $(grep SLURM_CONF <<<"$environ")"
wait_for "$SITE_ENV hpc-daemonctl status | grep -q 'link: *connected'" "the restarted daemon's link"
status=$(u "$SITE_ENV hpc-daemonctl status")
expect "$status" '^  scheduler: +local — LOCAL_MODE=1$' "status after LOCAL_MODE=1 restart"
expect "$(u 'cat ~/.config/hpc-daemon/cluster.env')" '^LOCAL_MODE="1"$' "environment file"
job=$(agent submit cluster - --name envcheck <<<'echo "SLURM_CONF=$SLURM_CONF"; echo ran-locally')
state=$(agent wait cluster "$job" 2>&1 || true)
expect "$state" 'COMPLETED' "the local job"
expect "$state" 'ran-locally' "the local job's output"
log "PASS"
