#!/usr/bin/env bash
# A private PostgreSQL server for tests and benchmarks (Debian's postgresql):
# a new cluster in a temporary directory, listening on 127.0.0.1 only, on a
# free port, with no Unix socket and trust authentication for loopback.
#
#   scripts/postgres-server.sh start DIR [--or-skip]   starts it; prints the URL, also kept in DIR/url
#   scripts/postgres-server.sh stop DIR                stops the server `start` started (by its pid)
#
# As root, the server runs as the `postgres` account the package made
# (PostgreSQL refuses to run as root); otherwise as the caller. The URL's
# role is hpc_test, a superuser, and its database `postgres`: tests create
# a database of their own in it. When the server cannot start, `start`
# writes why to DIR/skipped and fails, or with --or-skip succeeds (the tests
# that need the server then skip, saying why).
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
or_skip=0
[ $# -eq 3 ] && [ "$3" = --or-skip ] && or_skip=1
[ $# -le 2 ] || [ $or_skip -eq 1 ] || usage

stop() {
    local pid data
    if [ -f "$dir/pid" ]; then
        pid=$(cat "$dir/pid")
        # SIGINT: PostgreSQL's fast shutdown (ends sessions, then a checkpoint).
        if kill -INT "$pid" 2>/dev/null; then
            for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                echo "postgres-server: $pid did not stop in 30 s; killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$dir/pid"
    fi
    if [ -f "$dir/datadir" ]; then
        data=$(cat "$dir/datadir")
        [[ $data == /tmp/hpc-pg.* ]] && rm -rf "$data"
        rm -f "$dir/datadir"
    fi
    rm -f "$dir/url"
}

skip() {
    echo "$1" >"$dir/skipped"
    echo "postgres-server: $1" >&2
    [ $or_skip -eq 1 ] && exit 0
    exit 1
}

start() {
    stop
    rm -f "$dir/skipped"
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    [ -n "$bin" ] && [ -x "$bin/initdb" ] ||
        skip "no PostgreSQL server (/usr/lib/postgresql/*/bin/initdb); scripts/install-deps.sh installs it"
    local as=()
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || skip "running as root, and there is no postgres account to run the server as"
        as=(setpriv --reuid=postgres --regid=postgres --init-groups)
    fi
    # Under /tmp, not DIR: the server's account must reach it, and DIR may
    # sit under a directory only the caller can enter.
    local data
    data=$(mktemp -d /tmp/hpc-pg.XXXXXX)
    echo "$data" >"$dir/datadir"
    [ ${#as[@]} -eq 0 ] || chown postgres: "$data"
    "${as[@]}" "$bin/initdb" -D "$data/db" -U hpc_test --auth=trust -E UTF8 --locale=C.UTF-8 --no-instructions \
        >"$dir/initdb.log" 2>&1 || skip "initdb failed: $(tail -n3 "$dir/initdb.log" | tr '\n' ' ')"
    local port pid
    for attempt in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 20000))
        setsid "${as[@]}" "$bin/postgres" -D "$data/db" -c listen_addresses=127.0.0.1 -p "$port" \
            -c unix_socket_directories= -c max_connections=200 </dev/null >"$dir/server.log" 2>&1 &
        pid=$!
        echo "$pid" >"$dir/pid"
        # Ready when it answers a connection (pg_isready's handshake), for at most 60 s.
        for _ in $(seq 1 600); do
            kill -0 "$pid" 2>/dev/null || break
            if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2; then
                echo "postgresql://hpc_test@127.0.0.1:$port/postgres" >"$dir/url"
                cat "$dir/url"
                return 0
            fi
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid"
            wait "$pid" 2>/dev/null || true
            rm -f "$dir/pid"
            skip "postgres did not accept connections within 60 s: $(tail -n3 "$dir/server.log" | tr '\n' ' ')"
        fi
        wait "$pid" 2>/dev/null || true
        rm -f "$dir/pid"
        echo "postgres-server: attempt $attempt on port $port failed (taken?): $(tail -n1 "$dir/server.log")" >&2
    done
    skip "postgres did not start: $(tail -n3 "$dir/server.log" | tr '\n' ' ')"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
