#!/usr/bin/env bash
# Issue 11, item 7: under systemd each local job runs in a transient scope of
# its own (systemd-run --user --scope, the real one), outside the daemon's
# unit; cancelling the job ends everything in the scope, including children
# that called setsid or double-forked. MemoryMax=/TasksMax= from
# HPC_JOB_MEMORY_MAX/HPC_JOB_TASKS_MAX (kept in the unit's environment file)
# are set on the scope (not enforced in this container: the controllers stay
# on the host's cgroup v1 hierarchies).
source "$(dirname "$0")/lib.sh"
boot
install_build
start_relay
setup_profile cluster
out=$(u 'HPC_JOB_TASKS_MAX=lots LOCAL_MODE=1 hpc-daemonctl start 2>&1; echo "rc=$?"')
expect "$out" 'HPC_JOB_TASKS_MAX=lots is not a limit systemd takes' "start with a bad limit"
expect "$out" 'rc=[1-9]' "start with a bad limit"
u 'HPC_JOB_MEMORY_MAX=512M HPC_JOB_TASKS_MAX=64 LOCAL_MODE=1 hpc-daemonctl start'
wait_for 'hpc-daemonctl status | grep -q "link: *connected"' "the link"

job=$(agent submit cluster - --name escapers <<'JOB'
setsid sleep 4242 </dev/null >/dev/null 2>&1 &
( (sleep 4343 </dev/null >/dev/null 2>&1 &) & )
nohup sh -c 'trap "" TERM HUP; sleep 4444' </dev/null >/dev/null 2>&1 &
echo children started
sleep 4545
JOB
)
log "job $job: waiting for its four sleeps"
wait_for 'test $(pgrep -u hpcuser -fc "^sleep (4242|4343|4444|4545)$") = 4' "the job's processes" 300
for p in $(r 'pgrep -u hpcuser -f "^sleep (4242|4343|4444|4545)$"'); do
  cg=$(r "cat /proc/$p/cgroup")
  expect "$cg" "/hpc-job-$job\\.scope\$" "cgroup of pid $p"
done
expect "$(u "systemctl --user show -p ActiveState --value hpc-job-$job.scope")" '^active$' "the job's scope"
limits=$(u "systemctl --user show -p MemoryMax -p TasksMax hpc-job-$job.scope")
expect "$limits" '^MemoryMax=536870912$' "the scope's limits"
expect "$limits" '^TasksMax=64$' "the scope's limits"

log "cancel"
agent cancel cluster "$job"
wait_for '! pgrep -u hpcuser -f "^sleep (4242|4343|4444|4545)$"' "every process of the job to end" 300
result=$(agent wait cluster "$job" 2>&1 || true)
expect "$result" 'CANCELLED' "agent wait after cancel"
wait_for "test \"\$(systemctl --user show -p ActiveState --value hpc-job-$job.scope)\" = inactive" "the scope to go" 100
# The daemon itself is untouched.
wait_for 'hpc-daemonctl status | grep -q "link: *connected"' "the daemon after the cancel"
log "PASS"
