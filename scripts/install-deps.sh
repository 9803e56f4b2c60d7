#!/usr/bin/env bash
# Installs the Debian 12 packages hpc-daemon builds, tests and demos with.
# Idempotent: installs only what is missing, and does nothing when all is there.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache git
  libboost1.81-dev libboost-json1.81-dev libboost-system1.81-dev
  libssl-dev openssl libsqlite3-dev sqlite3
  # hpc-relay --database postgresql://: libpq's header to build, libpq5 and a
  # server (initdb, postgres; no cluster of its own is used) for the tests.
  libpq-dev libpq5 postgresql
  # The failover test puts two relays behind a real TCP load balancer
  # (haproxy -db, a child of the test; the package's service is not used).
  haproxy
  libcli11-dev libsdbus-c++-dev libsdbus-c++-bin libsystemd-dev
  googletest libgtest-dev libgmock-dev
  dbus procps util-linux
  # The tests use these programs: systemd-analyze (unit check), python3 (the
  # confinement suites run interpreters), dbus-send (the idle benchmark).
  systemd python3 dbus-bin
  # The proxy tests and benchmark run a real HTTP proxy (tinyproxy -d, as a
  # child of the test); -bin is the program without the system service.
  tinyproxy-bin
  # scripts/test.sh runs tiers a second time with both cores busy (stress-ng).
  stress-ng
  # The release (scripts/make-release.sh) is packed with xz; its chroot test
  # runs it beside a static busybox and nothing else.
  xz-utils busybox-static
  # The MCP tests run the official TypeScript SDK (tests/mcp, npm ci).
  nodejs
  # The man pages are made from each program's --help.
  help2man
  # The systemd tier boots a real systemd in a container (scripts/systemd-container.sh):
  # its root file system is made with debootstrap and cached as a zstd tarball.
  debootstrap systemd-container zstd
)
# Debian's nodejs comes without npm; NodeSource's carries its own.
command -v npm >/dev/null 2>&1 || packages+=(npm)
# Optional extras: clang builds the libFuzzer target (--with-fuzz),
# clang-format checks the tree's format in scripts/test.sh, and clang-tidy is
# scripts/lint.sh's;
# openssh-server is the benchmark's peer (--with-bench); slurm-wlm and munge
# make the single-node cluster of the job tests (--with-slurm).
[[ " $* " == *" --with-bench "* ]] && packages+=(openssh-server openssh-client)
[[ " $* " == *" --with-fuzz "* ]] && packages+=(clang clang-format clang-tidy)
[[ " $* " == *" --with-slurm "* ]] && packages+=(slurm-wlm munge)

# promtool (the Prometheus text-format checker the relay's /metrics test runs)
# comes from Debian's prometheus package, which is the whole monitoring
# service: only its promtool binary is taken, to /usr/local/bin, and no
# service is installed or started.
install_promtool() {
  if command -v promtool >/dev/null 2>&1; then return 0; fi
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  if ! (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null); then
    "${SUDO[@]}" apt-get update -qq
    (cd "$tmp" && apt-get download -qq prometheus)
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  "${SUDO[@]}" install -m 0755 "$tmp/root/usr/bin/promtool" /usr/local/bin/promtool
  echo "install-deps: promtool $(promtool --version 2>&1 | head -n1 | awk '{print $3}') installed to /usr/local/bin"
}

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  SUDO=(false)  # reported below, when something is missing
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#packages[@]} packages present"
  install_promtool
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if [[ ${SUDO[*]} == false ]]; then
  echo "install-deps: these packages are missing and I am not root and there is no sudo:" >&2
  echo "  ${missing[*]}" >&2
  echo "Ask an administrator to run: apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
# systemd-container may bring libnss-mymachines, which adds itself to this
# machine's /etc/nsswitch.conf (and asks a machined that is not there).
if dpkg-query -W -f='${Status}' libnss-mymachines 2>/dev/null | grep -q '^install ok installed$'; then
  "${SUDO[@]}" apt-get purge -y -qq libnss-mymachines
fi
install_promtool
echo "install-deps: done"
