#!/usr/bin/env bash
# Issue 11, item 6 (first part): kill -9 of the daemon under systemd. The unit
# restarts it (Restart=on-failure); a local job that was running goes on (it
# is in its own scope, KillMode=process), is followed by the new daemon, and
# its callback reaches the platform exactly once.
source "$(dirname "$0")/lib.sh"
boot
install_build
start_relay
setup_profile cluster "export LOCAL_MODE=1;"
u 'LOCAL_MODE=1 hpc-daemonctl start'
wait_for 'hpc-daemonctl status | grep -q "link: *connected"' "the link"

log "a job that runs until a file appears, then kill -9 of the daemon"
job=$(agent submit cluster - --name survivor --context '{"n":1}' <<'JOB'
echo started; i=0
while [ ! -e "$HOME/work/release" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo released
JOB
)
wait_for "test -s ~/work/.hpc-daemon/jobs/$job/stdout" "the job to start"
old=$(main_pid cluster)
r "kill -KILL $old"
wait_for "test \"\$(systemctl --user show -p MainPID --value hpc-daemon@cluster)\" != $old && test \"\$(systemctl --user show -p MainPID --value hpc-daemon@cluster)\" != 0 && systemctl --user is-active -q hpc-daemon@cluster" \
  "systemd to restart the daemon" 300
expect "$(u 'systemctl --user show -p NRestarts --value hpc-daemon@cluster')" '^1$' "NRestarts"
wait_for 'hpc-daemonctl status | grep -q "link: *connected"' "the restarted daemon's link"
expect "$(agent status cluster "$job")" 'RUNNING' "the job after the restart"

u 'touch ~/work/release'
result=$(agent wait cluster "$job" 2>&1 || true)
expect "$result" 'COMPLETED' "agent wait"
expect "$result" 'released' "agent wait (output)"
# Exactly one callback for the job reached the platform, and nothing more comes.
[[ $(sqlite3 "$W/relay/relay.db" "select count(*) from callbacks where job_id='$job'") == 1 ]] ||
  fail "callbacks stored by the platform for $job: $(sqlite3 "$W/relay/relay.db" "select callback_id from callbacks where job_id='$job'")"
wait_for 'hpc-daemonctl status | grep -q " 0 job callbacks waiting"' "the daemon's outbox to empty"
more=$(agent events --timeout 3 || true)
expect_not "$more" "$job" "callbacks after the first was acknowledged"
log "PASS"
