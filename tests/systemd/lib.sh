# Shared by the systemd tests (sourced): each test boots its own Debian 12
# with systemd (scripts/systemd-container.sh), installs the build into the
# lingering user's ~/.local as that user would (cmake --install --prefix
# ~/.local), runs a relay on the host's 127.0.0.1 (the container shares the
# host's network), and drives everything inside as the user, in a real login
# session. Everything started is stopped on exit, pass or fail.
#
# Usage in a test: source lib.sh; boot; install_build; start_relay; setup_profile ID
# Environment: HPC_BUILD_DIR (the build tree; ctest sets it), HPC_SOURCE_DIR.
set -euo pipefail

SRC=${HPC_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BUILD=${HPC_BUILD_DIR:-$SRC/build/default}
CONTAINER=$SRC/scripts/systemd-container.sh
TEST_NAME=$(basename "$0" .sh)
UHOME=/home/hpcuser

if [[ $(id -u) -ne 0 ]]; then
  echo "SKIP: $TEST_NAME needs root to boot a systemd container (systemd-nspawn); not root here"
  exit 77
fi
for tool in systemd-nspawn debootstrap zstd; do
  command -v "$tool" >/dev/null || { echo "SKIP: $TEST_NAME: $tool is missing (scripts/install-deps.sh installs it)"; exit 77; }
done

W=$(mktemp -d "/tmp/hpc-systemd-$TEST_NAME.XXXXXX")
RELAY_PID=""
BOOTED=0

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 && $BOOTED == 1 ]]; then
    echo "---- $TEST_NAME failed (rc $rc); the user's journal, last lines:" >&2
    "$CONTAINER" root "$W/c" "journalctl --no-pager -n 60 _UID=1000 2>&1; journalctl --no-pager -n 40 -u user@1000.service 2>&1 | tail -20" >&2 || true
  fi
  [[ $BOOTED == 1 ]] && { "$CONTAINER" stop "$W/c" || true; }
  if [[ -n $RELAY_PID ]]; then kill "$RELAY_PID" 2>/dev/null || true; wait "$RELAY_PID" 2>/dev/null || true; fi
  rm -rf "$W"
  exit "$rc"
}
trap cleanup EXIT
# A test stopped from outside (ctest's timeout, Ctrl-C) still powers its
# container off and stops its relay.
trap 'exit 143' TERM
trap 'exit 130' INT

log() { echo "[$TEST_NAME $(date +%T)] $*"; }
fail() { echo "FAIL: $TEST_NAME: $*" >&2; exit 1; }

# As the user, in a login session (XDG_RUNTIME_DIR, the session bus).
u() { "$CONTAINER" user "$W/c" "$1"; }
# As the user with no session at all (no PAM, no XDG_RUNTIME_DIR, no bus).
u_bare() { "$CONTAINER" bare "$W/c" "$1"; }
# As root inside.
r() { "$CONTAINER" root "$W/c" "$1"; }

boot() {
  local binds=(--bind-ro "$SRC")
  [[ $BUILD == "$SRC"/* ]] || binds+=(--bind-ro "$BUILD")
  BOOTED=1  # before: a test stopped while it boots still stops what started
  "$CONTAINER" start "$W/c" "${binds[@]}"
}

reboot_container() { "$CONTAINER" reboot "$W/c"; }

# The build installed as the user would: cmake --install --prefix ~/.local
# (DESTDIR puts it in the container's tree; the paths inside it are the
# user's own).
install_build() {
  DESTDIR="$W/c/root" cmake --install "$BUILD" --prefix "$UHOME/.local" >"$W/install.log"
  chown -R 1000:1000 "$W/c/root$UHOME/.local"
}

# Only the four programs in ~/bin: no unit, no man pages (a copied binary).
install_binaries_only() {
  mkdir -p "$W/c/root$UHOME/bin"
  cp "$BUILD"/daemon/hpc-daemond "$BUILD"/ctl/hpc-daemonctl "$BUILD"/agent/hpc-agent "$W/c/root$UHOME/bin/"
  chown -R 1000:1000 "$W/c/root$UHOME/bin"
}

start_relay() {
  "$SRC/scripts/make-cert.sh" "$W/tls"
  install -m 0644 -o 1000 -g 1000 "$W/tls/ca.pem" "$W/c/root$UHOME/ca.pem"
  "$BUILD/relay/hpc-relay" --port 0 --port-file "$W/port" --cert "$W/tls/cert.pem" --key "$W/tls/key.pem" \
    --data-dir "$W/relay" --otp-file "$W/codes" --log-file "$W/relay.log" &
  RELAY_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do [[ -s $W/port ]] && break; sleep 0.1; done
  [[ -s $W/port ]] || fail "the relay did not start: $(cat "$W/relay.log")"
  URL="https://127.0.0.1:$(cat "$W/port")"
  export HPC_AGENT_URL=$URL HPC_AGENT_CA=$W/tls/ca.pem
}

code_lines() { if [[ -f $W/codes ]]; then wc -l <"$W/codes"; else echo 0; fi; }
# The code the relay sent to $1 after line $2 of its code file.
code_for() {
  local i line
  for ((i = 0; i < 200; i++)); do
    line=$(tail -n +"$(($2 + 1))" "$W/codes" 2>/dev/null | grep "^$1 " | tail -1 || true)
    [[ -n $line ]] && { echo "${line#* }"; return 0; }
    sleep 0.1
  done
  echo "no code arrived for $1" >&2
  return 1
}

# hpc-daemonctl setup for daemon $1 as the user (extra env assignments in $2),
# then an agent token on the host (HPC_AGENT_TOKEN).
setup_profile() {
  local id=$1 env=${2:-} n
  n=$(code_lines)
  code_for user@example.org "$n" | u "$env hpc-daemonctl setup --no-interview --email user@example.org --url $URL \
      --daemon-id $id --allowed-dirs ~/work --ca-file ~/ca.pem" >"$W/setup.out"
  n=$(code_lines)
  HPC_AGENT_TOKEN=$(code_for user@example.org "$n" | "$BUILD/agent/hpc-agent" login --email user@example.org)
  export HPC_AGENT_TOKEN
}

agent() { "$BUILD/agent/hpc-agent" "$@"; }

# Waits (bounded) until `u "$1"` succeeds; $2: what, for the failure message; $3: tenths of a second.
wait_for() {
  local i
  for ((i = 0; i < ${3:-300}; i++)); do
    if u "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail "timed out waiting for: $2"
}

# The daemon's main pid as systemd knows it.
main_pid() { u "systemctl --user show -p MainPID --value hpc-daemon@$1.service"; }

# Asserts that $1 (text) contains $2 (a grep -E pattern); $3: what.
expect() { grep -qE -- "$2" <<<"$1" || fail "${3:-output}: expected /$2/ in:
$1"; }
expect_not() { ! grep -qE -- "$2" <<<"$1" || fail "${3:-output}: did not expect /$2/ in:
$1"; }
