#!/usr/bin/env bash
# Packs the relocatable release, hpc-daemon-<version>-linux-x86_64.tar.xz,
# from a normal build: the four programs, every library they load (the C
# library and its dynamic loader included), a dbus-daemon for the private bus,
# the unit and activation templates, the skills, and install.sh. It runs on
# any x86_64 Linux with kernel >= 4.18 whatever the host's C library.
#
#   scripts/make-release.sh [--build-dir build/default] [--out DIR] [--keep-stage DIR]
#
# Builds what it needs in the build tree first. Prints the tarball's path last.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=$src/build/default
out=
keep_stage=
while [[ $# -gt 0 ]]; do
  case $1 in
    --build-dir) build=$(cd "$2" && pwd); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep-stage) keep_stage=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "make-release: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
out=${out:-$build}
mkdir -p "$out"
out=$(cd "$out" && pwd)

for tool in xz strip ldd sha256sum; do
  command -v "$tool" >/dev/null || { echo "make-release: $tool is missing" >&2; exit 1; }
done
dbus_daemon=$(command -v dbus-daemon || true)
[[ -n $dbus_daemon ]] || { echo "make-release: dbus-daemon is missing (apt-get install dbus-daemon)" >&2; exit 1; }

echo "make-release: building in $build" >&2
targets=(hpc-launcher hpc-confine hpc-daemond hpc-daemonctl hpc-relay hpc-agent)
grep -q '^HELP2MAN:FILEPATH=/' "$build/CMakeCache.txt" && targets+=(man_pages)
cmake --build "$build" --target "${targets[@]}" >&2
version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
[[ -n $version ]] || { echo "make-release: no project version in $build/CMakeCache.txt" >&2; exit 1; }
name=hpc-daemon-$version
tarball=$out/$name-linux-x86_64.tar.xz

work=$(mktemp -d "${TMPDIR:-/tmp}/hpc-release-XXXXXX")
trap 'rm -rf "$work"' EXIT
stage=$work/$name
mkdir -p "$stage"/{bin,libexec,lib/bin,share/hpc-daemon/systemd,share/hpc-daemon/dbus}

programs=(daemon/hpc-daemond ctl/hpc-daemonctl relay/hpc-relay agent/hpc-agent)
elfs=()
for p in "${programs[@]}"; do
  strip --strip-unneeded -o "$stage/lib/bin/${p#*/}" "$build/$p"
  elfs+=("$stage/lib/bin/${p#*/}")
done
strip --strip-unneeded -o "$stage/lib/bin/dbus-daemon" "$dbus_daemon"
elfs+=("$stage/lib/bin/dbus-daemon")

# The launcher: one file, hard-linked under every program's name.
strip -o "$stage/lib/launcher" "$build/release/hpc-launcher"
for p in "${programs[@]}"; do ln "$stage/lib/launcher" "$stage/bin/${p#*/}"; done
# hpc-daemon: hpc-daemonctl under the name tasc-hpc-daemon's users type.
ln "$stage/lib/launcher" "$stage/bin/hpc-daemon"
ln -s hpc-daemonctl "$stage/lib/bin/hpc-daemon"
ln "$stage/lib/launcher" "$stage/libexec/dbus-daemon"
# The commands' mount-namespace wrapper is static: it runs as it is.
strip -o "$stage/libexec/hpc-confine" "$build/daemon/hpc-confine"

# Every library the programs load, then all of the C library (its NSS, resolver
# and thread libraries are loaded on demand, never listed by ldd).
copy_lib() {
  local real base
  real=$(readlink -f "$1"); base=$(basename "$1")
  [[ -e $stage/lib/$base ]] || cp "$real" "$stage/lib/$base"
}
for e in "${elfs[@]}"; do
  while read -r lib; do copy_lib "$lib"; done < <(ldd "$e" | awk '/=> \// {print $3} /^\s*\/.*ld-linux/ {print $1}')
done
libc_dir=$(dirname "$(readlink -f "$(ldd "$stage/lib/bin/hpc-daemond" | awk '/libc\.so\.6/ {print $3}')")")
for lib in "$libc_dir"/{libc,libm,libpthread,libdl,librt,libresolv,libnss_files,libnss_dns,libnss_compat,libutil,libanl}.so.*; do
  [[ -e $lib ]] && copy_lib "$lib"
done
copy_lib "$(ldd "$stage/lib/bin/hpc-daemond" | awk '/ld-linux/ {print $1}')"
[[ -e $stage/lib/ld-linux-x86-64.so.2 ]] || { echo "make-release: no ld-linux-x86-64.so.2 found" >&2; exit 1; }
chmod 0755 "$stage/lib/ld-linux-x86-64.so.2"

# Templates the installer fills in, and the skills.
cp "$src/systemd/hpc-daemon@.service.in" "$stage/share/hpc-daemon/systemd/"
cp "$src/dbus/org.tiptree.HpcDaemon.service.in" "$stage/share/hpc-daemon/dbus/"
[[ -d $src/skills ]] && cp -r "$src/skills" "$stage/share/hpc-daemon/skills" && rm -f "$stage/share/hpc-daemon/skills/CMakeLists.txt"
if compgen -G "$build/man/man1/*.1" >/dev/null; then
  mkdir -p "$stage/share/man/man1"; cp "$build"/man/man1/*.1 "$stage/share/man/man1/"
else
  echo "make-release: no man pages in $build/man/man1 (help2man missing?): packing none" >&2
fi
cp "$src/release/install.sh" "$stage/install.sh"
chmod 0755 "$stage/install.sh"
echo "$version" >"$stage/VERSION"

# A checksum of every file, so install.sh refuses a damaged or partial copy.
(cd "$stage" && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)

# Proof the bundle runs on its own loader and libraries before it ships.
"$stage/bin/hpc-daemonctl" --version >/dev/null

echo "make-release: packing $(du -sh "$stage" | cut -f1) into $tarball" >&2
tar -C "$work" --owner=0 --group=0 --numeric-owner -cf - "$name" | xz -9 -T2 >"$tarball.tmp"
mv -f "$tarball.tmp" "$tarball"
[[ -n $keep_stage ]] && { rm -rf "$keep_stage"; cp -a "$stage" "$keep_stage"; }
echo "make-release: $(du -h "$tarball" | cut -f1) compressed" >&2
echo "$tarball"
