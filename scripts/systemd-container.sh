#!/usr/bin/env bash
# A real systemd for the systemd tests: a Debian 12 root file system booted
# with systemd-nspawn, with an ordinary user whose systemd user manager runs
# because lingering is on.
#
#   systemd-container.sh rootfs [--skip-unless-root] builds (or finds) the cached rootfs; prints its tarball
#   systemd-container.sh start DIR [--bind-ro PATH]... [--skip-unless-root]
#                                                    unpacks it into DIR, boots it, waits until the system
#                                                    and the user's manager run
#   systemd-container.sh user DIR CMD                runs CMD (a bash -c string) as the user, in a real
#                                                    logind session (XDG_RUNTIME_DIR, session bus set)
#   systemd-container.sh bare DIR CMD                as the user, with no session at all (no PAM, no bus)
#   systemd-container.sh root DIR CMD                as root inside
#   systemd-container.sh reboot DIR                  powers it off cleanly and boots the same rootfs again
#   systemd-container.sh stop DIR                    powers it off, removes its cgroups and DIR
#
# The rootfs tarball is cached in ${HPC_CONTAINER_CACHE:-${XDG_CACHE_HOME:-~/.cache}/hpc-daemon}, keyed by a
# hash of the package list (~3-4 min to build the first time, 2-6 s to unpack).
# Everything waits on state (systemctl is-system-running --wait, the user
# manager answering), polled every 0.1 s in bounded loops; no fixed sleeps.
# Needs root (debootstrap, nspawn, cgroups); with --skip-unless-root, exits 77
# (ctest's skip code) with a message when not root or nspawn is missing.
set -euo pipefail

USER_NAME=hpcuser
USER_UID=1000
MIRROR=${HPC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The runtime libraries of our four binaries (ldd build/default/*/hpc-*), and
# what the tests use inside: man-db (systemd-analyze verify opens the
# Documentation= man pages), psmisc (for clarity in failures), polkitd (a
# user's own `loginctl enable-linger`).
PACKAGES=(
  systemd systemd-sysv dbus dbus-user-session libpam-systemd polkitd sudo procps iproute2 psmisc man-db
  libboost-json1.81.0 libsdbus-c++1 libsqlite3-0 libssl3 libstdc++6 libsystemd0 libcap2 libzstd1 liblz4-1
  ca-certificates
)

die() { echo "systemd-container: $*" >&2; exit 1; }
say() { echo "systemd-container: $*" >&2; }

cache_dir() { echo "${HPC_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hpc-daemon}"; }
tarball() {
  local key
  key=$(printf '%s\n' bookworm "$MIRROR" "${PACKAGES[@]}" | sha256sum | cut -c1-16)
  echo "$(cache_dir)/rootfs-$key.tar.zst"
}

need_root() {
  local skip=$1 why=""
  if [[ $(id -u) -ne 0 ]]; then why="not root (systemd-nspawn --boot needs root)"
  elif ! command -v systemd-nspawn >/dev/null; then why="systemd-nspawn is missing (apt-get install systemd-container)"
  elif ! command -v debootstrap >/dev/null; then why="debootstrap is missing (apt-get install debootstrap)"
  elif ! command -v zstd >/dev/null; then why="zstd is missing (apt-get install zstd)"
  fi
  [[ -z $why ]] && return 0
  if [[ $skip == 1 ]]; then echo "SKIP: no booted systemd for these tests: $why"; exit 77; fi
  die "$why"
}

build_rootfs() {
  local out; out=$(tarball)
  [[ -s $out ]] && { echo "$out"; return; }
  mkdir -p "$(dirname "$out")"
  local work; work=$(mktemp -d "$(cache_dir)/build.XXXXXX")
  # The lock keeps two test runs from building the same rootfs at once.
  exec {lock}>"$(cache_dir)/build.lock"
  flock "$lock"
  if [[ -s $out ]]; then rm -rf "$work"; echo "$out"; return; fi
  say "building the Debian 12 rootfs (once per package list; takes a few minutes) in $work"
  local inc; inc=$(IFS=,; echo "${PACKAGES[*]}")
  debootstrap --variant=minbase --include="$inc" bookworm "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; rm -rf "$work"; die "debootstrap failed"; }
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
  tar -C "$work/root" -cf - . | zstd -q -T0 -3 -o "$out.tmp"
  mv "$out.tmp" "$out"
  rm -rf "$work"
  flock -u "$lock"
  echo "$out"
}

# Per-boot configuration of the unpacked rootfs: the lingering user, a
# persistent journal (journalctl --user needs it), no getty on the console.
prepare_rootfs() {
  local root=$1
  echo hpc-systemd-test >"$root/etc/hostname"
  chroot "$root" useradd --create-home --uid "$USER_UID" --shell /bin/bash "$USER_NAME"
  mkdir -p "$root/var/lib/systemd/linger" "$root/var/log/journal"
  touch "$root/var/lib/systemd/linger/$USER_NAME"
  chroot "$root" systemctl mask console-getty.service getty@tty1.service systemd-networkd-wait-online.service >/dev/null 2>&1 || true
  : >"$root/etc/machine-id"
}

init_pid() {  # the container's PID 1, seen from the host: the child of nspawn
  local dir=$1 npid
  npid=$(cat "$dir/nspawn.pid" 2>/dev/null) || return 1
  pgrep -P "$npid" | head -1
}

cgroup_name() { echo "hpc-nspawn-$(echo "$1" | sha256sum | cut -c1-12)"; }

boot() {
  local dir=$1
  local cg; cg=$(cgroup_name "$dir")
  local binds=(); local b
  while read -r b; do [[ -n $b ]] && binds+=("--bind-ro=$b"); done <"$dir/binds"
  local hier
  for hier in systemd unified; do
    [[ -d /sys/fs/cgroup/$hier ]] && mkdir -p "/sys/fs/cgroup/$hier/$cg"
  done
  # In a cgroup of its own, so nspawn does not make supervisor/ and payload/
  # at the root of the host's hierarchies. A pure cgroup v2 tree inside, as on
  # Debian 12 and RHEL 9.
  (
    for hier in systemd unified; do
      [[ -d /sys/fs/cgroup/$hier/$cg ]] && echo $BASHPID >"/sys/fs/cgroup/$hier/$cg/cgroup.procs"
    done
    export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
    # nspawn's own seccomp filter refuses Landlock (EPERM); a real host
    # has it, and the daemon confines commands with it where it can.
    exec systemd-nspawn -D "$dir/root" --boot --register=no --keep-unit --link-journal=no \
      --console=passive --machine="$cg" "${binds[@]}" \
      --system-call-filter='landlock_create_ruleset landlock_add_rule landlock_restrict_self' \
      </dev/null >"$dir/console.log" 2>&1
  ) &
  echo $! >"$dir/nspawn.pid"
  wait_ready "$dir"
}

# Ready: PID 1 says running (or degraded), and the lingering user's manager
# answers on its bus.
wait_ready() {
  local dir=$1 i pid state=""
  for ((i = 0; i < 300; i++)); do  # 30 s for the init process to appear
    pid=$(init_pid "$dir" || true)
    [[ -n $pid ]] && [[ -e /proc/$pid/root/run/systemd/system ]] && break
    kill -0 "$(cat "$dir/nspawn.pid")" 2>/dev/null || { tail -30 "$dir/console.log" >&2; die "nspawn exited while booting"; }
    sleep 0.1
  done
  [[ -n ${pid:-} ]] || die "no init process after 30 s"
  # is-system-running fails at once while PID 1's bus socket is not there
  # yet; once connected, --wait blocks until the boot has finished.
  for ((i = 0; i < 300; i++)); do
    state=$(timeout 60 nsenter -t "$pid" -a -- systemctl is-system-running --wait 2>/dev/null || true)
    case $state in running|degraded|maintenance|stopping) break ;; esac
    sleep 0.1
  done
  case $state in
    running|degraded) ;;
    *) tail -30 "$dir/console.log" >&2; die "the container's systemd did not reach running (state: ${state:-none})" ;;
  esac
  [[ $state == degraded ]] && say "system is degraded: $(nsenter -t "$pid" -a -- systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
  for ((i = 0; i < 300; i++)); do
    if nsenter -t "$pid" -a -- runuser -u "$USER_NAME" -- env XDG_RUNTIME_DIR=/run/user/$USER_UID \
         systemctl --user is-system-running >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  die "the user manager of $USER_NAME did not come up"
}

poweroff() {
  local dir=$1 npid i
  npid=$(cat "$dir/nspawn.pid" 2>/dev/null) || return 0
  if kill -0 "$npid" 2>/dev/null; then
    kill -TERM "$npid"  # nspawn turns it into a clean poweroff of the container
    for ((i = 0; i < 300; i++)); do kill -0 "$npid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$npid" 2>/dev/null; then
      say "nspawn $npid did not stop within 30 s; killing it and everything in its cgroup"
      kill -KILL "$npid" 2>/dev/null || true
    fi
  fi
  rm -f "$dir/nspawn.pid"
  local cg hier; cg=$(cgroup_name "$dir")
  # Whatever is left in the container's cgroups (its init, once nspawn was
  # killed, is re-parented to the host's init and would run on).
  for hier in systemd unified; do
    [[ -d /sys/fs/cgroup/$hier/$cg ]] || continue
    find "/sys/fs/cgroup/$hier/$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  for hier in systemd unified; do
    local top=/sys/fs/cgroup/$hier/$cg
    [[ -d $top ]] || continue
    for ((i = 0; i < 100; i++)); do
      # Remove the tree bottom-up; a process still in it keeps it busy.
      find "$top" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d $top ]] || break
      sleep 0.1
    done
    [[ -d $top ]] && say "cgroup $top still exists (processes: $(cat "$top"/cgroup.procs 2>/dev/null | tr '\n' ' '))"
  done
  return 0
}

as_user() {  # $1: dir, $2: command; with a logind session (pam_systemd via runuser -l)
  local pid; pid=$(init_pid "$1") || die "container in $1 is not running"
  nsenter -t "$pid" -a -- runuser -l "$USER_NAME" -c "$2"
}

cmd=${1:-}; shift || true
case $cmd in
  rootfs)
    need_root "$([[ ${1:-} == --skip-unless-root ]] && echo 1 || echo 0)"
    build_rootfs
    ;;
  start)
    dir=${1:?usage: start DIR [--bind-ro PATH]... [--skip-unless-root]}; shift
    skip=0; binds=()
    while [[ $# -gt 0 ]]; do
      case $1 in
        --skip-unless-root) skip=1 ;;
        --bind-ro) binds+=("$2"); shift ;;
        *) die "unknown option $1" ;;
      esac
      shift
    done
    need_root "$skip"
    t0=$EPOCHREALTIME
    tar=$(build_rootfs)
    t1=$EPOCHREALTIME
    [[ -e $dir/root ]] && die "$dir/root exists: stop the old container first"
    mkdir -p "$dir/root"
    zstd -q -d -c "$tar" | tar -C "$dir/root" -xf -
    prepare_rootfs "$dir/root"
    printf '%s\n' "${binds[@]}" >"$dir/binds"
    t2=$EPOCHREALTIME
    boot "$dir"
    t3=$EPOCHREALTIME
    say "$(awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" \
      'BEGIN { printf "ready: rootfs %.1f s, unpack %.1f s, boot to the user manager %.1f s", b-a, c-b, d-c }')"
    ;;
  user)
    as_user "${1:?dir}" "${2:?command}"
    ;;
  bare)
    pid=$(init_pid "${1:?dir}") || die "not running"
    nsenter -t "$pid" -a -- setpriv --reuid="$USER_UID" --regid="$USER_UID" --init-groups \
      env -i HOME=/home/$USER_NAME USER=$USER_NAME LOGNAME=$USER_NAME PATH=/usr/local/bin:/usr/bin:/bin \
      bash -c "cd ~ && ${2:?command}"
    ;;
  root)
    pid=$(init_pid "${1:?dir}") || die "not running"
    nsenter -t "$pid" -a -- bash -c "${2:?command}"
    ;;
  reboot)
    dir=${1:?dir}
    poweroff "$dir"
    boot "$dir"
    ;;
  stop)
    dir=${1:?dir}
    poweroff "$dir"
    rm -rf "${dir:?}/root"
    ;;
  *)
    sed -n '2,22p' "$0" >&2
    exit 2
    ;;
esac
