#!/bin/sh
# hpc-daemon installer: no root needed. Run it from the unpacked release:
#
#   ./install.sh [--prefix DIR] [--no-restart] [--quiet]
#   ./install.sh --uninstall [--prefix DIR] [--purge]
#
# Install (and upgrade: unpack a newer release, run the same command):
#   - copies this release to PREFIX/lib/hpc-daemon/VERSION and points
#     PREFIX/lib/hpc-daemon/current at it (the previous version is kept, older
#     ones removed);
#   - points the D-Bus activation files of existing profiles at this install;
#   - links hpc-daemond, hpc-daemonctl (also as hpc-daemon), hpc-agent and
#     hpc-relay into PREFIX/bin;
#   - installs the systemd user unit hpc-daemon@.service into
#     ${XDG_CONFIG_HOME:-~/.config}/systemd/user (and reloads the user manager
#     when one runs), the activation template and skills under
#     PREFIX/share/hpc-daemon, and the man pages under PREFIX/share/man;
#   - restarts daemons that run, on the new version (jobs and callbacks are
#     kept: they live in the state directory, and jobs outlive the daemon).
# Nothing is changed before the release is checked (every file's checksum) and
# shown to run on this machine. PREFIX defaults to ~/.local.
#
# Uninstall removes what install added and stops the daemons first; the
# profiles, jobs and keys in ~/.hpc_daemon ($HPC_DAEMON_HOME) are kept unless
# --purge is given.
set -eu

prefix=${HOME:?HOME is not set}/.local
mode=install
restart=1
quiet=0
purge=0
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --uninstall) mode=uninstall; shift ;;
    --purge) purge=1; shift ;;
    --no-restart) restart=0; shift ;;
    --quiet|-q) quiet=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case $prefix in /*) ;; *) prefix=$(pwd)/$prefix ;; esac
prefix=${prefix%/}

say() { [ "$quiet" = 1 ] || echo "$@"; }
die() { echo "install.sh: $*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd -P)
libroot=$prefix/lib/hpc-daemon
unitdir=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user
programs="hpc-daemond hpc-daemonctl hpc-daemon hpc-agent hpc-relay"
has_user_manager() { command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1; }

# The profiles whose daemon runs, from hpc-daemonctl list --json.
running_profiles() {
  [ -x "$1" ] || return 0
  "$1" list --json 2>/dev/null | tr '{' '\n' | grep '"running":true' |
    sed -n 's/.*"daemon_id":"\([^"]*\)".*/\1/p' || true
}

if [ "$mode" = uninstall ]; then
  [ -d "$libroot" ] || [ -e "$unitdir/hpc-daemon@.service" ] || [ "$purge" = 1 ] || die "nothing to uninstall under $prefix"
  for id in $(running_profiles "$prefix/bin/hpc-daemonctl"); do
    say "stopping daemon $id"
    "$prefix/bin/hpc-daemonctl" stop --daemon-id "$id" || die "could not stop daemon $id; stop it, then run this again"
  done
  if has_user_manager; then
    for unit in $(systemctl --user list-unit-files 'hpc-daemon@*' --no-legend 2>/dev/null | awk '{print $1}'); do
      systemctl --user disable "$unit" >/dev/null 2>&1 || true
    done
  fi
  for p in $programs; do
    link=$prefix/bin/$p
    if [ -L "$link" ]; then
      case $(readlink "$link") in "$libroot"/*) rm -f "$link"; say "removed $link" ;; esac
    fi
  done
  if [ -f "$unitdir/hpc-daemon@.service" ] && grep -q "$prefix/bin/hpc-daemond" "$unitdir/hpc-daemon@.service"; then
    rm -f "$unitdir/hpc-daemon@.service"; say "removed $unitdir/hpc-daemon@.service"
    has_user_manager && systemctl --user daemon-reload || true
  fi
  for m in $programs; do rm -f "$prefix/share/man/man1/$m.1" "$prefix/share/man/man1/$m"-*.1; done
  rm -rf "$prefix/share/hpc-daemon" "$libroot"
  say "removed $libroot and $prefix/share/hpc-daemon"
  home=${HPC_DAEMON_HOME:-$HOME/.hpc_daemon}
  if [ "$purge" = 1 ]; then
    rm -rf "$home"; say "removed the state directory $home (profiles, keys, jobs)"
    for f in "${XDG_DATA_HOME:-$HOME/.local/share}"/dbus-1/services/org.tiptree.HpcDaemon.*.service; do
      [ -e "$f" ] && rm -f "$f" && say "removed $f"
    done
  elif [ -d "$home" ]; then
    say "kept the state directory $home (profiles, keys, jobs); --purge removes it"
  fi
  exit 0
fi

# 1. Check the release before touching anything.
[ -f "$here/VERSION" ] && [ -f "$here/SHA256SUMS" ] ||
  die "$here is not an unpacked hpc-daemon release (no VERSION or SHA256SUMS); unpack the tarball and run its install.sh"
version=$(cat "$here/VERSION")
case $version in ''|*/*|.*) die "bad VERSION file in $here" ;; esac
if command -v sha256sum >/dev/null 2>&1; then
  bad=$(cd "$here" && sha256sum -c SHA256SUMS 2>/dev/null | grep -v ': OK$' || true)
  [ -z "$bad" ] || die "this release is damaged or incomplete (unpack the tarball again):
$bad"
else
  while read -r _ f; do [ -e "$here/$f" ] || die "this release is incomplete: $f is missing (unpack the tarball again)"; done <"$here/SHA256SUMS"
fi
out=$("$here/bin/hpc-daemonctl" --version 2>&1) ||
  die "the release does not run on this machine: $out"

# 2. Check the destination: writable, and no foreign files where links go.
for p in $programs; do
  link=$prefix/bin/$p
  if [ -e "$link" ] || [ -L "$link" ]; then
    case $(readlink "$link" 2>/dev/null || true) in
      "$libroot"/*) ;;
      *) die "$link exists and is not from this installer; move it away or choose another --prefix" ;;
    esac
  fi
done
mkdir -p "$libroot" "$prefix/bin" 2>/dev/null || die "cannot create $libroot and $prefix/bin (read-only or no space?); try --prefix DIR"
[ -w "$libroot" ] && [ -w "$prefix/bin" ] || die "$libroot or $prefix/bin is not writable; try --prefix DIR"
previous=$(readlink "$libroot/current" 2>/dev/null || true)

# 3. Copy to a staging directory, then move it into place (unless this is an
#    installed version run again, e.g. to roll back).
stage=$libroot/.install-$$
trap 'rm -rf "$stage"' EXIT INT TERM
if [ "$here" = "$(cd "$libroot" && pwd -P)/$version" ]; then
  say "hpc-daemon $version is already in $libroot; making it the current version"
else
  rm -rf "$stage"
  cp -a "$here/." "$stage" 2>/dev/null || die "could not copy the release to $libroot (no space or read-only?); nothing was installed"
  if [ -e "$libroot/$version" ]; then
    mv "$libroot/$version" "$libroot/.old-$$" || die "cannot replace $libroot/$version"
    mv "$stage" "$libroot/$version" || { mv "$libroot/.old-$$" "$libroot/$version"; die "cannot move the release into $libroot"; }
    rm -rf "$libroot/.old-$$"
  else
    mv "$stage" "$libroot/$version" || die "cannot move the release into $libroot"
  fi
fi
# Atomically where mv has -T (GNU), else by replacing the link.
rm -f "$libroot/current.new"
{ ln -s "$version" "$libroot/current.new" && mv -fT "$libroot/current.new" "$libroot/current"; } 2>/dev/null ||
  { rm -f "$libroot/current.new"; ln -sfn "$version" "$libroot/current"; }
[ "$(readlink "$libroot/current")" = "$version" ] || die "could not point $libroot/current at $version"
say "installed hpc-daemon $version in $libroot/$version"

for p in $programs; do ln -sfn "$libroot/current/bin/$p" "$prefix/bin/$p"; done
say "linked $programs into $prefix/bin"

# 4. The unit, the templates, the man pages.
share=$prefix/share/hpc-daemon
mkdir -p "$share" && rm -rf "$share/skills" "$share/dbus" && cp -a "$libroot/current/share/hpc-daemon/." "$share/"
if mkdir -p "$unitdir" 2>/dev/null; then
  sed "s|@HPC_DAEMOND_PATH@|$prefix/bin/hpc-daemond|g" "$libroot/current/share/hpc-daemon/systemd/hpc-daemon@.service.in" \
    >"$unitdir/hpc-daemon@.service.new" && mv -f "$unitdir/hpc-daemon@.service.new" "$unitdir/hpc-daemon@.service"
  say "installed the systemd user unit $unitdir/hpc-daemon@.service"
  if has_user_manager; then systemctl --user daemon-reload || true; fi
else
  say "note: could not write $unitdir; hpc-daemonctl start will run the daemon detached (nohup mode)"
fi
# Profiles set up before (by another install, or another prefix): their D-Bus
# activation files start this install's daemon from now on.
for f in "${XDG_DATA_HOME:-$HOME/.local/share}"/dbus-1/services/org.tiptree.HpcDaemon.*.service; do
  [ -f "$f" ] || continue
  sed "s|^\(Exec=.* \)[^ ]*/hpc-daemond |\1$libroot/current/bin/hpc-daemond |" "$f" >"$f.new" && mv -f "$f.new" "$f" &&
    say "pointed the D-Bus activation file $f at this install"
done
if [ -d "$libroot/current/share/man/man1" ]; then
  mkdir -p "$prefix/share/man/man1" && cp "$libroot/current/share/man/man1/"*.1 "$prefix/share/man/man1/" &&
    say "installed man pages in $prefix/share/man/man1"
fi

# 5. Restart running daemons on the new version; drop versions older than the previous one.
if [ "$restart" = 1 ]; then
  for id in $(running_profiles "$prefix/bin/hpc-daemonctl"); do
    say "restarting daemon $id on $version"
    "$prefix/bin/hpc-daemonctl" restart --daemon-id "$id" || echo "install.sh: warning: could not restart daemon $id; run: hpc-daemonctl restart --daemon-id $id" >&2
  done
fi
for d in "$libroot"/*; do
  v=${d##*/}
  [ -d "$d" ] && [ ! -L "$d" ] || continue
  [ "$v" = "$version" ] || [ "$v" = "$previous" ] || { rm -rf "$d"; say "removed old version $v"; }
done

case ":${PATH:-}:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on your PATH. Add it, e.g.:"
     echo "  echo 'export PATH=\"$prefix/bin:\$PATH\"' >> ~/.bashrc && export PATH=\"$prefix/bin:\$PATH\"" ;;
esac
say "next: hpc-daemonctl setup   (then: hpc-daemonctl start)"
