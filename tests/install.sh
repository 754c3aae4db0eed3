#!/bin/sh
# `make install PREFIX=...` delivers a usable, relocatable install, and
# nothing outside PREFIX: install through the Makefile into a temporary
# prefix (comparing a listing of /usr/local before and after), build a
# program with pkg-config (shared and static) and one with CMake's
# find_package, run them, and run the installed vmsnap (it finds its
# scripts and launcher beside itself).
# usage: install.sh BUILD_DIR
set -eu
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d /tmp/vmsnap-install.XXXXXX)
trap 'rm -rf "$T"' EXIT
P="$T/prefix"
listing() { find /usr/local -xdev 2>/dev/null | sort; }
listing > "$T/before"
make -s -C "$SRC" install BUILD="$BUILD" PREFIX="$P" >/dev/null
listing > "$T/after"
if ! cmp -s "$T/before" "$T/after"; then
	echo "not ok - make install PREFIX=$P wrote outside it:"; diff "$T/before" "$T/after" | head; exit 1
fi
PC=$(dirname "$(find "$P" -name vmsnap.pc | head -1)")
for f in include/vmsnap.h include/vmsnap_plugin.h include/vmsnap_version.h \
	share/vmsnap/lua/vmsnap/task.lua share/vmsnap/scripts/workflows/disk-snapshot.lua \
	libexec/vmsnap/vmsnap-launcher bin/vmsnap; do
	[ -e "$P/$f" ] || { echo "not ok - missing $f"; exit 1; }
done
cat > "$T/ext.c" <<'C'
#include <stdio.h>
#include <string.h>
#include <vmsnap.h>
int main(void)
{
	vmsnap_runtime *rt;
	const char *code = "return require('vmsnap.json').encode({ok = true})";
	char *res = NULL;
	if (vmsnap_open(NULL, &rt) != VMSNAP_OK)
		return 1;
	if (vmsnap_run_buffer(rt, code, strlen(code), "=ext") != VMSNAP_OK)
		return 2;
	if (vmsnap_call(rt, "string.upper", "[\"ok\"]", &res) != VMSNAP_OK || strcmp(res, "[\"OK\"]"))
		return 3;
	vmsnap_free(res);
	vmsnap_close(rt);
	puts(VMSNAP_VERSION);
	return 0;
}
C
# pkg-config: the .pc finds its prefix from where it is (no edit)
export PKG_CONFIG_PATH="$PC"
LIBDIR=$(pkg-config --variable=libdir vmsnap)
[ "$(cd "$LIBDIR" && pwd)" = "$(cd "$PC/.." && pwd)" ] || { echo "not ok - libdir $LIBDIR is not the install's"; exit 1; }
cc "$T/ext.c" $(pkg-config --cflags --libs vmsnap) -Wl,-rpath,"$LIBDIR" -o "$T/ext_shared"
"$T/ext_shared" >/dev/null
cc "$T/ext.c" $(pkg-config --cflags vmsnap) "$LIBDIR/libvmsnap.a" \
	$(pkg-config --static --libs vmsnap | sed 's/-lvmsnap//') -o "$T/ext_static"
"$T/ext_static" >/dev/null
# CMake: find_package(vmsnap) from the install
mkdir "$T/cm"
cp "$T/ext.c" "$T/cm/ext.c"
cat > "$T/cm/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.18)
project(ext C)
find_package(vmsnap REQUIRED)
add_executable(ext_cmake ext.c)
target_link_libraries(ext_cmake PRIVATE vmsnap::vmsnap)
CM
cmake -S "$T/cm" -B "$T/cm/build" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_BUILD_RPATH="$LIBDIR" >/dev/null
cmake --build "$T/cm/build" >/dev/null
"$T/cm/build/ext_cmake" >/dev/null
# the man pages, the completions and kubectl's plugin are installed
for f in share/man/man1/vmsnap.1 share/man/man1/vmsnap-snapshot.1 share/bash-completion/completions/vmsnap \
	share/zsh/vendor-completions/_vmsnap share/fish/vendor_completions.d/vmsnap.fish bin/kubectl-vmsnap; do
	[ -e "$P/$f" ] || { echo "not ok - missing $f"; exit 1; }
done
if command -v kubectl >/dev/null 2>&1; then
	PATH="$P/bin:$PATH" kubectl plugin list 2>/dev/null | grep -q "$P/bin/kubectl-vmsnap" || { echo "not ok - kubectl plugin list does not find kubectl-vmsnap"; exit 1; }
	PATH="$P/bin:$PATH" kubectl vmsnap version | grep -q "^vmsnap " || { echo "not ok - kubectl vmsnap version"; exit 1; }
fi
# the installed program, moved: its scripts and launcher are found beside it
mv "$P" "$T/moved"
out=$("$T/moved/bin/vmsnap" -e 'local r = require("vmsnap.core.runtime") print(r.scripts_dirs()[1])')
case "$out" in
"$T/moved/bin/../share/vmsnap/scripts"*) ;;
*) echo "not ok - the moved install looks for its scripts in: $out"; exit 1 ;;
esac
"$T/moved/bin/vmsnap" workflow show disk-snapshot >/dev/null
echo "ok - make install PREFIX writes only there; pkg-config (shared, static) and CMake consumers build; the install runs where it is moved"
