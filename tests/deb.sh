#!/bin/sh
# The .deb as `make deb` makes it (a Release build for /usr, CPack): its
# Depends are the real shared libraries, and extracted into a scratch root
# it runs — --version, a script, and a workflow read from its own share/.
# usage: deb.sh BUILD_DIR   (the package is built in BUILD_DIR/deb)
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
B="$1/deb"
cmake -S "$SRC" -B "$B" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr -DVMSNAP_BUILD_TESTS=OFF >/dev/null
cmake --build "$B" -j 2 >/dev/null
(cd "$B" && rm -f ./*.deb && cpack -G DEB >/dev/null)
DEB=$(ls "$B"/vmsnap_*.deb)
dep=$(dpkg-deb -f "$DEB" Depends)
for lib in libcurl4 libmicrohttpd12 libuv1 libsqlite3-0 libyaml-0-2 liblua5.4-0 lua-cjson; do
	case ", $dep," in
	*", $lib "*|*", $lib,"*) ;;
	*) echo "not ok - Depends lacks $lib: $dep"; exit 1 ;;
	esac
done
T=$(mktemp -d /tmp/vmsnap-deb.XXXXXX)
trap 'rm -rf "$T"' EXIT
dpkg -x "$DEB" "$T/root"
V="$T/root/usr/bin/vmsnap"
"$V" --version | grep -q "^vmsnap 0\." || { echo "not ok - vmsnap --version"; exit 1; }
out=$("$V" -e 'print(require("vmsnap.json").encode({deb = true}))')
[ "$out" = '{"deb":true}' ] || { echo "not ok - a script printed: $out"; exit 1; }
"$V" workflow show disk-snapshot | grep -q "volume-snapshot" || { echo "not ok - the workflow from the package's share/"; exit 1; }
[ -x "$T/root/usr/libexec/vmsnap/vmsnap-launcher" ] || { echo "not ok - no launcher"; exit 1; }
echo "ok - $(basename "$DEB"): Depends $dep; runs from a scratch root"
