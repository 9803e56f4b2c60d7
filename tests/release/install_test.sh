#!/bin/sh
# install.sh as a user runs it (unprivileged, HOME of its own):
#   a damaged, a partial release, a read-only prefix and a foreign file in
#   the way are refused with a clear message and change nothing; a fresh
#   install links the programs and installs the unit; an upgrade restarts the
#   running daemon on the new version while a job runs, and the job's callback
#   still arrives; uninstall removes what install added and keeps the state
#   unless --purge.
#
#   install_test.sh UNPACKED_RELEASE WORKDIR     (WORKDIR holds tls/)
set -eu
rel=$1
work=$2
. "$(dirname "$0")/lib.sh"
export HOME="$work/home"
mkdir -p "$HOME" "$work/ws"
prefix=$HOME/.local
bin=$prefix/bin
daemon_started=0
cleanup() {
  rc=$?
  [ "$daemon_started" = 1 ] && "$bin/hpc-daemonctl" stop --daemon-id it >/dev/null 2>&1 || true
  stop_relay
  [ "$rc" = 0 ] || { echo "--- daemon log"; tail -n 30 "$HOME"/.hpc_daemon/*.log 2>/dev/null || true; }
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
refused() { # refused WHAT WANTED-MESSAGE COMMAND...
  what=$1 wanted=$2
  shift 2
  if out=$("$@" 2>&1); then fail "$what: install.sh succeeded: $out"; fi
  expect "$what" "$wanted" "$out"
}

step "a damaged release is refused"
cp -a "$rel" "$work/damaged"
chmod u+w "$work/damaged/lib/libc.so.6" && echo garbage >>"$work/damaged/lib/libc.so.6"
refused damaged "damaged or incomplete" "$work/damaged/install.sh"
step "a partial release is refused"
cp -a "$rel" "$work/partial" && rm "$work/partial/lib/libssl.so.3"
refused partial "damaged or incomplete" "$work/partial/install.sh"
[ ! -e "$prefix" ] || fail "a refused install changed $prefix"
step "a read-only prefix is refused"
mkdir "$work/ro" && chmod 0555 "$work/ro"
refused read-only "cannot create" "$rel/install.sh" --prefix "$work/ro/p"
[ ! -e "$work/ro/p" ] || fail "a refused install changed $work/ro"
step "a foreign file where a link goes is refused"
mkdir -p "$work/foreign/bin" && echo 'not ours' >"$work/foreign/bin/hpc-agent"
refused foreign "not from this installer" "$rel/install.sh" --prefix "$work/foreign"
[ ! -e "$work/foreign/lib" ] && [ "$(cat "$work/foreign/bin/hpc-agent")" = 'not ours' ] || fail "a refused install changed $work/foreign"

step "install"
version=$(cat "$rel/VERSION")
out=$("$rel/install.sh" 2>&1) || fail "install: $out"
echo "$out"
expect install "installed hpc-daemon $version" "$out"
expect install "is not on your PATH" "$out"
expect install "next: hpc-daemonctl setup" "$out"
for p in hpc-daemond hpc-daemonctl hpc-daemon hpc-agent hpc-relay; do
  [ -L "$bin/$p" ] || fail "no link $bin/$p"
  expect "$p --version" "$p $version" "$("$bin/$p" --version)"
done
unit=$HOME/.config/systemd/user/hpc-daemon@.service
grep -q "^ExecStart=$bin/hpc-daemond " "$unit" || fail "the unit does not run $bin/hpc-daemond: $(grep ExecStart "$unit")"

step "a daemon of the install runs a job"
start_relay
with_code "$bin/hpc-daemonctl" setup --no-interview --email i@example.org --url "$url" --daemon-id it \
  --allowed-dirs "$work/ws" --ca-file "$work/tls/ca.pem" >"$work/setup.out" 2>&1 || { cat "$work/setup.out"; fail setup; }
daemon_started=1
LOCAL_MODE=1 "$bin/hpc-daemonctl" start --daemon-id it >/dev/null || fail start
token=$(with_code "$bin/hpc-agent" login --email i@example.org --url "$url" --ca-file "$work/tls/ca.pem") || fail login
export HPC_AGENT_URL="$url" HPC_AGENT_TOKEN="$token" HPC_AGENT_CA="$work/tls/ca.pem"
wait_connected it
mkfifo "$work/ws/gate"
# The job waits at the gate until the upgrade is done.
job=$(printf 'read word <"%s"\necho after-upgrade-$word\n' "$work/ws/gate" | "$bin/hpc-agent" submit it - --name upgrade-job) ||
  fail submit
old_pid=$("$bin/hpc-daemonctl" status --daemon-id it --json | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
[ -n "$old_pid" ] || fail "no daemon pid"

step "upgrade while the job runs"
new=0.99.0-test
cp -a "$rel" "$work/rel2"
echo "$new" >"$work/rel2/VERSION"
(cd "$work/rel2" && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)
out=$("$work/rel2/install.sh" 2>&1) || fail "upgrade: $out"
echo "$out"
expect upgrade "restarting daemon it on $new" "$out"
[ "$(readlink "$prefix/lib/hpc-daemon/current")" = "$new" ] || fail "current does not point at $new"
[ -d "$prefix/lib/hpc-daemon/$version" ] || fail "the previous version was not kept"
new_pid=$("$bin/hpc-daemonctl" status --daemon-id it --json | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
[ -n "$new_pid" ] && [ "$new_pid" != "$old_pid" ] || fail "the daemon was not restarted (pid $old_pid -> $new_pid)"
tr '\0' ' ' <"/proc/$new_pid/cmdline" | grep -q "/lib/hpc-daemon/$new/" ||
  fail "the restarted daemon does not run $new: $(tr '\0' ' ' <"/proc/$new_pid/cmdline")"
wait_connected it
echo go >"$work/ws/gate"
out=$("$bin/hpc-agent" wait it "$job" --timeout 120) || fail "the job's callback after the upgrade: $out"
expect "job after upgrade" COMPLETED "$out"
expect "job after upgrade" after-upgrade-go "$out"

step "the activation file survives upgrades"
activation=$(echo "$HOME"/.local/share/dbus-1/services/org.tiptree.HpcDaemon.*.service)
grep -q "^Exec=.* $prefix/lib/hpc-daemon/current/bin/hpc-daemond " "$activation" ||
  fail "the activation file does not run the current version: $(grep Exec= "$activation" 2>&1)"

step "roll back to the previous version"
out=$("$prefix/lib/hpc-daemon/$version/install.sh" 2>&1) || fail "rollback: $out"
expect rollback "restarting daemon it on $version" "$out"
[ "$(readlink "$prefix/lib/hpc-daemon/current")" = "$version" ] || fail "current does not point at $version after the rollback"
new_pid=$("$bin/hpc-daemonctl" status --daemon-id it --json | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
tr '\0' ' ' <"/proc/$new_pid/cmdline" | grep -q "/lib/hpc-daemon/$version/" || fail "the daemon does not run $version after the rollback"

step "uninstall"
out=$("$prefix/lib/hpc-daemon/current/install.sh" --uninstall 2>&1) || fail "uninstall: $out"
echo "$out"
daemon_started=0
expect uninstall "stopping daemon it" "$out"
expect uninstall "kept the state directory" "$out"
for p in hpc-daemond hpc-daemonctl hpc-agent hpc-relay; do [ ! -e "$bin/$p" ] && [ ! -L "$bin/$p" ] || fail "$bin/$p is left"; done
[ ! -e "$unit" ] || fail "the unit is left"
[ ! -e "$prefix/lib/hpc-daemon" ] || fail "$prefix/lib/hpc-daemon is left"
[ -d "$HOME/.hpc_daemon" ] || fail "uninstall removed the state directory"
state=$(proc_state "$new_pid")
[ -z "$state" ] || [ "$state" = Z ] || fail "the daemon still runs after uninstall"
out=$("$rel/install.sh" --uninstall --purge 2>&1) || fail "purge: $out"
[ ! -e "$HOME/.hpc_daemon" ] || fail "--purge kept the state directory"
step "ok"
