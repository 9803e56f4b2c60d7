# Shared by round.sh and install_test.sh (POSIX sh, busybox-compatible): a
# relay on 127.0.0.1 with handshake readiness, sign-in through a FIFO.
# Needs: $bin (the programs), $work (holds tls/cert.pem and tls/key.pem).
relay_pid=
fail() { echo "$(basename "$0"): FAIL: $*" >&2; exit 1; }
step() { echo "$(basename "$0"): $*"; }
expect() { # expect WHAT WANTED ACTUAL
  case $3 in *"$2"*) ;; *) fail "$1: wanted '$2' in: $3" ;; esac
}

# Starts the relay; sets $url. The relay writes its port to the `ready` pipe
# once it listens (end-of-file if it fails); codes are written to the `otp` FIFO.
start_relay() {
  rm -f "$work/ready" "$work/otp"
  mkfifo "$work/ready" "$work/otp"
  "$bin/hpc-relay" --port 0 --ready-fd 3 --cert "$work/tls/cert.pem" --key "$work/tls/key.pem" \
    --data-dir "$work/relay" --log-file "$work/relay.log" \
    --otp-command "printf '%s\\n' \"\$HPC_OTP_CODE\" >'$work/otp'" 3>"$work/ready" &
  relay_pid=$!
  port=
  read -r port <"$work/ready" || true
  [ -n "$port" ] || fail "the relay did not start: $(cat "$work/relay.log" 2>/dev/null)"
  url=https://127.0.0.1:$port
}

stop_relay() {
  if [ -n "$relay_pid" ]; then kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; fi
  relay_pid=
}

# The FIFO is opened read-write so the open does not wait for the relay's writer.
with_code() { "$@" <>"$work/otp"; }

# Waits (bounded) until the platform shows daemon $1 connected.
wait_connected() {
  i=0
  until "$bin/hpc-agent" daemons --json | tr '{' '\n' | grep "\"daemon_id\":\"$1\"" | grep -q '"connected":true'; do
    i=$((i + 1))
    [ $i -le 300 ] || fail "daemon $1 did not connect to the relay within 60 s"
    sleep 0.2
  done
}

# The state letter of process $1 ("" when gone).
proc_state() { sed -n 's/^[0-9]* (.*) \([A-Z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null || true; }
