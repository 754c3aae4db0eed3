#!/bin/sh
# `make install` delivers a usable library: install into a temporary
# prefix, build a program with pkg-config (shared and static), run both.
# usage: install.sh BUILD_DIR
set -eu
BUILD=$1
T=$(mktemp -d /tmp/vmsnap-install.XXXXXX)
trap 'rm -rf "$T"' EXIT
cmake --install "$BUILD" --prefix "$T/prefix" >/dev/null
PC="$T/prefix/lib/pkgconfig"
[ -d "$PC" ] || PC=$(dirname "$(find "$T/prefix" -name vmsnap.pc | head -1)")
sed -i "s|^prefix=.*|prefix=$T/prefix|" "$PC/vmsnap.pc"
for f in include/vmsnap.h include/vmsnap_plugin.h include/vmsnap_version.h \
	share/vmsnap/lua/vmsnap/task.lua bin/vmsnap; do
	[ -e "$T/prefix/$f" ] || { echo "not ok - missing $f"; exit 1; }
done
ls "$T"/prefix/lib*/cmake/vmsnap/vmsnapConfig.cmake >/dev/null
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
export PKG_CONFIG_PATH="$PC"
LIBDIR=$(pkg-config --variable=libdir vmsnap)
cc "$T/ext.c" $(pkg-config --cflags --libs vmsnap) -Wl,-rpath,"$LIBDIR" -o "$T/ext_shared"
"$T/ext_shared"
cc "$T/ext.c" $(pkg-config --cflags vmsnap) "$LIBDIR/libvmsnap.a" \
	$(pkg-config --static --libs vmsnap | sed 's/-lvmsnap//') -o "$T/ext_static"
"$T/ext_static"
echo "ok - installed headers, libraries, pkg-config and CMake files work"
