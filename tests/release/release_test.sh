#!/usr/bin/env bash
# The release's tests (ctest label `release`):
#
#   release_test.sh pack    BUILD OUTDIR          make the tarball (<= 10 MiB)
#   release_test.sh host    BUILD TARBALL ENOSYS  full round from a random directory,
#                                                 unprivileged, env -i, loader traced
#   release_test.sh chroot  BUILD TARBALL ENOSYS  full round in a chroot with no
#                                                 loader or library, laid out like RHEL
#   release_test.sh enosys  BUILD TARBALL ENOSYS  full round with every system call
#                                                 newer than Linux 4.18 failing (ENOSYS)
#   release_test.sh install BUILD TARBALL ENOSYS  install.sh: refusals, install, upgrade
#                                                 with a running job, uninstall
#
# Exit 77 (skipped) where the test cannot run here (chroot needs root).
set -euo pipefail
mode=$1
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)

if [[ $mode == pack ]]; then
  build=$2 outdir=$3
  tarball=$("$src/scripts/make-release.sh" --build-dir "$build" --out "$outdir" | tail -1)
  size=$(stat -c %s "$tarball")
  echo "release: $tarball, $size bytes"
  [[ $tarball == */hpc-daemon-*-linux-x86_64.tar.xz ]] || { echo "FAIL: unexpected name $tarball"; exit 1; }
  (( size <= 10 * 1024 * 1024 )) || { echo "FAIL: $size bytes is over the 10 MiB target"; exit 1; }
  exit 0
fi

build=$2 tarball=$3 enosys=$4
[[ -f $tarball ]] || { echo "FAIL: no tarball at $tarball (the release_pack test makes it)"; exit 1; }
work=$(mktemp -d /tmp/hpc-release-test-XXXXXX)
cleanup() {
  # Whatever the round left (it stops its own; this is the backstop), by pid.
  for p in $(grep -l -s "$work" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do kill -9 "$p" 2>/dev/null || true; done
  [[ -n ${KEEP_WORK:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

# An unprivileged user to run as (when root), like a user on a login node.
run_as=()
if [[ $(id -u) == 0 ]]; then
  (
    flock 9
    id hpc-release >/dev/null 2>&1 ||
      useradd --system --user-group --no-create-home --shell /usr/sbin/nologin hpc-release
  ) 9>/tmp/hpc-release-user.lock
  run_as=(setpriv --reuid=hpc-release --regid=hpc-release --clear-groups)
fi

# Unpack into a random directory, as a user would anywhere.
unpacked=$work/unpack-$RANDOM$RANDOM
mkdir -p "$unpacked"
tar -C "$unpacked" -xJf "$tarball"
bundle=$(echo "$unpacked"/hpc-daemon-*)
"$src/scripts/make-cert.sh" "$work/tls" >/dev/null 2>&1
chmod 0755 "$work"

case $mode in
host|enosys)
  round=$work/round
  mkdir -p "$round/ws/ld" && cp -r "$work/tls" "$round/" && cp "$here/round.sh" "$here/lib.sh" "$work/"
  # A symlink in the user's bin directory, as install.sh makes.
  mkdir -p "$work/bin"
  for p in hpc-daemond hpc-daemonctl hpc-agent hpc-relay; do ln -s "$bundle/bin/$p" "$work/bin/$p"; done
  [[ ${#run_as[@]} -gt 0 ]] && chown -R hpc-release:hpc-release "$work"
  env_args=(PATH=/usr/bin:/bin HOME="$round")
  round_args=()
  prefix=()
  if [[ $mode == host ]]; then
    env_args+=(SSL_CERT_FILE="$round/tls/ca.pem" LD_DEBUG=libs LD_DEBUG_OUTPUT="$round/ws/ld/trace")
  else
    # A copy the unprivileged user can reach (the build tree may be private).
    cp "$enosys" "$work/enosys" && chmod 0755 "$work/enosys"
    "$work/enosys" --check || { echo "FAIL: the ENOSYS filter does not work here"; exit 1; }
    prefix=("$work/enosys")
    round_args=(--ca-file "$round/tls/ca.pem")
  fi
  "${run_as[@]}" env -i "${env_args[@]}" "${prefix[@]}" /bin/sh "$work/round.sh" "$work/bin" "$round" "${round_args[@]}"
  status=$(cat "$round/status.json")
  if [[ $mode == enosys ]]; then
    grep -q '"process_watch":"SIGCHLD"' <<<"$status" || { echo "FAIL: status does not say exits are followed by SIGCHLD: $status"; exit 1; }
    grep -q 'landlock' <<<"$status" && { echo "FAIL: status claims Landlock under ENOSYS: $status"; exit 1; }
    echo "enosys: ok (process exits by SIGCHLD, no Landlock layer claimed)"
  else
    grep -q '"process_watch":"pidfd"' <<<"$status" || { echo "FAIL: status does not say exits are followed by pidfd: $status"; exit 1; }
    # The release's static hpc-confine: commands ran in the mount namespace
    # wherever this user may make one.
    if "${run_as[@]}" unshare --user --map-root-user --mount true 2>/dev/null; then
      grep -q 'mount-namespace' <<<"$status" || { echo "FAIL: no mount-namespace layer from the release: $status"; exit 1; }
    fi
    # (Traces go to the allowed directory: commands may write only there.)
    # Every process the bundle started loaded only the bundle's libraries.
    traced=0 programs=""
    for f in "$round"/ws/ld/trace.*; do
      grep -q "calling init: $bundle/" "$f" || continue
      traced=$((traced + 1))
      programs+=" $(sed -n 's|.*initialize program: .*/||p; s|.*initialize program: ||p' "$f" | head -1)"
      if outside=$(grep -E 'calling init: |trying file=' "$f" | grep -v "$bundle/"); then
        echo "FAIL: a bundle process loaded from the host ($f):"; echo "$outside"; exit 1
      fi
    done
    # (The host's dbus-daemon is used where there is one; the chroot round runs the bundle's.)
    for p in hpc-relay hpc-daemonctl hpc-daemond hpc-agent; do
      [[ " $programs " == *" $p "* ]] || { echo "FAIL: no loader trace of $p among:$programs"; exit 1; }
    done
    echo "host: ok ($traced bundle processes traced, every library from $bundle:$(tr ' ' '\n' <<<"$programs" | sort | uniq -c | tr -s ' \n' ' '))"
  fi
  ;;
install)
  cp "$here/install_test.sh" "$here/lib.sh" "$work/"
  [[ ${#run_as[@]} -gt 0 ]] && chown -R hpc-release:hpc-release "$work"
  "${run_as[@]}" env -i PATH=/usr/bin:/bin /bin/sh "$work/install_test.sh" "$bundle" "$work"
  ;;
chroot)
  [[ $(id -u) == 0 ]] || { echo "SKIP: the chroot round needs root"; exit 77; }
  busybox=/bin/busybox  # Debian's busybox-static
  [[ -x $busybox ]] && ! ldd "$busybox" >/dev/null 2>&1 ||
    { echo "SKIP: no static busybox (apt-get install busybox-static)"; exit 77; }
  root=$work/root
  mkdir -p "$root"/{bin,etc/pki/tls/certs,proc,dev,tmp,opt,home/researcher}
  cp "$busybox" "$root/bin/busybox"
  chroot "$root" /bin/busybox --install -s /bin
  printf 'root:x:0:0:root:/root:/bin/sh\nresearcher:x:4242:4242:researcher:/home/researcher:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\nresearcher:x:4242:\n' >"$root/etc/group"
  printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
  cp "$work/tls/ca.pem" "$root/etc/pki/tls/certs/ca-bundle.crt"  # RHEL's system CA store
  chmod 1777 "$root/tmp"
  cp -a "$bundle" "$root/opt/hpc-daemon"
  cp "$here/round.sh" "$here/lib.sh" "$root/opt/"
  mkdir -p "$root/home/researcher/w" && cp -r "$work/tls" "$root/home/researcher/w/"
  chown -R 4242:4242 "$root/home/researcher"
  for d in lib lib64 usr/lib; do [[ ! -e $root/$d ]] || { echo "FAIL: the chroot has $d"; exit 1; }; done
  # A private mount namespace: proc and dev vanish with it.
  unshare --mount --propagation private /bin/sh -c '
    set -e
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"
    exec chroot --userspec=4242:4242 "$1" /bin/env -i PATH=/bin HOME=/home/researcher \
      /bin/sh /opt/round.sh /opt/hpc-daemon/bin /home/researcher/w' chroot-round "$root"
  echo "chroot: ok (no loader or library but the bundle's; CA from /etc/pki/tls/certs/ca-bundle.crt)"
  ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
