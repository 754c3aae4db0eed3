#!/bin/sh
# Install the Debian packages that vmsnap's build, tests and demo need.
# Only missing packages are installed; running it again does nothing.
set -eu

PKGS="build-essential cmake pkg-config
liblua5.4-dev lua5.4 lua-cjson-dev libyaml-dev libcurl4-openssl-dev libuv1-dev
libmicrohttpd-dev libsqlite3-dev sqlite3 openssl curl
qemu-guest-agent e2fsprogs util-linux valgrind
python3-kubernetes time clang libclang-rt-dev socat
mariadb-server-core mariadb-client prometheus"

# `tools/deps.sh image`: what `make image` and `make check-image` need too
# (runc: the runtime podman is run with; crun refuses this kind of host's
# hybrid cgroups)
if [ "${1:-}" = image ]; then PKGS="$PKGS mmdebstrap podman runc"; fi

# kubectl: the machine image usually ships one; Debian's package otherwise.
command -v kubectl >/dev/null 2>&1 || PKGS="$PKGS kubernetes-client"
# Node.js and npm for tests/clients/node (@kubernetes/client-node): the
# machine's own when it has them, Debian's otherwise.
command -v npm >/dev/null 2>&1 || PKGS="$PKGS nodejs npm"

# the npm packages of tests/clients/node, exactly as its lockfile pins them
node_clients() {
	dir="$(dirname "$0")/../tests/clients/node"
	if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules/@kubernetes/client-node" ]; then
		echo "deps: npm ci in tests/clients/node"
		(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
	fi
}

missing=""
for p in $PKGS; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$st" in
	*"install ok installed"*) ;;
	*) missing="$missing $p" ;;
	esac
done

if [ -z "$missing" ]; then
	echo "deps: all packages present"
	node_clients
	exit 0
fi

echo "deps: missing:$missing"
if [ "$(id -u)" -ne 0 ]; then
	SUDO=""
	if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
	if [ -z "$SUDO" ]; then
		echo "deps: not root and no sudo; install as root: apt-get install$missing" >&2
		exit 1
	fi
else
	SUDO=""
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
echo "deps: installed:$missing"
node_clients
