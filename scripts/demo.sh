#!/usr/bin/env bash
# The demo: a local hpc-relay over TLS, a daemon profile made by
# `hpc-daemonctl setup`, hpc-daemond connected to it, and an agent running
# commands through it. Everything it starts is stopped when it ends (also on
# Ctrl-C); pass --keep to leave relay and daemon running and get the command
# that stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[[ "${1:-}" == "--keep" ]] && keep=1

scripts/build.sh
bin=build/default
demo=$(mktemp -d /tmp/hpc-demo-XXXXXX)
pids=()
cleanup() {
  "$bin/ctl/hpc-daemonctl" stop >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$demo"
}
if [[ $keep == 0 ]]; then trap cleanup EXIT; fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Waits for the code the relay sent to $1 after line $2 of the code file.
code_for() {
  for _ in $(seq 100); do
    local line
    line=$(tail -n +"$(( $2 + 1 ))" "$demo/codes" 2>/dev/null | grep "^$1 " | tail -1 || true)
    if [[ -n $line ]]; then echo "${line#* }"; return 0; fi
    sleep 0.1
  done
  echo "no code arrived for $1" >&2; return 1
}
lines() { if [[ -f $demo/codes ]]; then wc -l < "$demo/codes"; else echo 0; fi; }

say "Making a TLS certificate for 127.0.0.1"
scripts/make-cert.sh "$demo/tls"

say "Starting hpc-relay (the platform) on 127.0.0.1"
"$bin/relay/hpc-relay" --port 0 --port-file "$demo/port" --cert "$demo/tls/cert.pem" --key "$demo/tls/key.pem" \
  --data-dir "$demo/relay" --otp-file "$demo/codes" --log-file "$demo/relay.log" &
pids+=($!)
for _ in $(seq 100); do [[ -s $demo/port ]] && break; sleep 0.1; done
url="https://127.0.0.1:$(cat "$demo/port")"
echo "relay: $url (log: $demo/relay.log)"

say "hpc-daemonctl setup (the sign-in code is typed from the relay's code file)"
export HPC_DAEMON_HOME=$demo/daemon-home
# The relay is on this machine: never through a proxy the shell may name.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
mkdir -p "$demo/workspace"
n=$(lines)
( code_for researcher@example.org "$n" ) | "$bin/ctl/hpc-daemonctl" setup --no-interview \
  --email researcher@example.org --url "$url" --daemon-id demo-cluster \
  --allowed-dirs "$demo/workspace" --ca-file "$demo/tls/ca.pem"

say "hpc-daemonctl start (systemd user unit where there is one, else detached: nohup mode)"
# Jobs run as local background processes here (no SLURM cluster in the demo).
LOCAL_MODE=1 "$bin/ctl/hpc-daemonctl" start

say "hpc-agent login (an agent signs in as the same user)"
n=$(lines)
HPC_AGENT_TOKEN=$( ( code_for researcher@example.org "$n" ) | "$bin/agent/hpc-agent" login \
  --email researcher@example.org --url "$url" --ca-file "$demo/tls/ca.pem")
export HPC_AGENT_TOKEN HPC_AGENT_URL=$url HPC_AGENT_CA=$demo/tls/ca.pem
for _ in $(seq 100); do
  "$bin/agent/hpc-agent" daemons --json | grep -q '"connected":true' && break; sleep 0.1
done
"$bin/agent/hpc-agent" daemons

say "hpc-daemonctl status"
"$bin/ctl/hpc-daemonctl" status

say "hpc-agent exec demo-cluster -- uname -a"
"$bin/agent/hpc-agent" exec demo-cluster -- uname -a

say "hpc-agent exec demo-cluster -c 'pwd; echo \$((6*7)) > answer.txt; cat answer.txt'"
"$bin/agent/hpc-agent" exec demo-cluster -c 'pwd; echo $((6*7)) > answer.txt; cat answer.txt'

say "A command outside the allowed directory is refused"
"$bin/agent/hpc-agent" exec demo-cluster --cwd /etc -- ls || echo "(exit status $?, as expected)"

say "A failing command: its exit status comes back"
"$bin/agent/hpc-agent" exec demo-cluster -c 'echo to stderr >&2; exit 3' || echo "(exit status $?)"

say "Writing outside the allowed directory fails, whatever does the writing"
"$bin/agent/hpc-agent" exec demo-cluster -c "python3 -c \"open('$demo/escape.txt', 'w')\" 2>&1 | tail -1; ls $demo/escape.txt 2>&1" || true

say "hpc-agent shell demo-cluster (an interactive shell; here its input is piped)"
printf 'echo hello from $(hostname) in $PWD\nexit 7\n' | "$bin/agent/hpc-agent" shell demo-cluster --shell /bin/sh \
  | tr -d '\r' | grep -v '^\$ *$' || echo "(the shell exited with status $?)"

say "hpc-agent submit demo-cluster - (a batch job), then wait for its callback"
job=$(printf 'echo job running in $PWD\nsleep 1\necho done\n' | "$bin/agent/hpc-agent" submit demo-cluster - --name demo-job)
echo "submitted $job"
"$bin/agent/hpc-agent" wait demo-cluster "$job" --timeout 60
"$bin/ctl/hpc-daemonctl" jobs

say "hpc-agent mcp: what an AI agent's MCP client says to it on stdio (tools/call run_command)"
coproc MCP { "$bin/agent/hpc-agent" mcp 2>/dev/null; }
mcp_say() { printf '%s\n' "$1" >&"${MCP[1]}"; }
mcp_say '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"demo","version":"1"}}}'
read -r -t 60 answer <&"${MCP[0]}"
mcp_say '{"jsonrpc":"2.0","method":"notifications/initialized"}'
mcp_say '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"run_command","arguments":{"daemon":"demo-cluster","command":"echo hello through MCP from $(hostname)"}}}'
read -r -t 60 answer <&"${MCP[0]}"
python3 -c 'import json, sys; print(json.loads(sys.argv[1])["result"]["content"][0]["text"], end="")' "$answer"
mcp_pid=$MCP_PID
exec {MCP[1]}>&-  # end of input: the server exits
wait "$mcp_pid" || true

say "hpc-daemonctl audit: what the agent ran"
"$bin/ctl/hpc-daemonctl" audit -n 10

if [[ $keep == 1 ]]; then
  say "Left running. Stop with: HPC_DAEMON_HOME=$HPC_DAEMON_HOME $bin/ctl/hpc-daemonctl stop; kill ${pids[*]}; rm -rf $demo"
else
  say "Done; stopping the relay and the daemon"
fi
