/*
** loader.c -- how `require` finds vmsnap's modules.
**
** The C modules and the Lua library are registered in package.preload.
** The Lua library is compiled into the binary (embedded_lua.c, generated
** by tools/embed.c from lua/); each preloader loads its chunk under a real
** looking name ("@vmsnap/k8s.lua") so tracebacks read well.  For
** development, when the runtime is not embedded-only and the environment
** variable VMSNAP_LUA_DIR names a directory (or the build was configured
** with VMSNAP_EMBED_LUA=OFF), the preloader reads the module from that
** directory instead, so edits take effect without a rebuild.
*/
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lua-cjson.h>
#include <lualib.h>

#include "loader.h"
#include "runtime.h"
#include "scheduler.h"

static const struct {
	const char *name;
	lua_CFunction open;
} cmodules[] = {
    {"vmsnap.core.errors", luaopen_vmsnap_core_errors},
    {"vmsnap.core.task", luaopen_vmsnap_core_task},
    {"vmsnap.core.log", luaopen_vmsnap_core_log},
    {"vmsnap.core.json", luaopen_vmsnap_core_json},
    {"vmsnap.core.yaml", luaopen_vmsnap_core_yaml},
    {"vmsnap.core.http", luaopen_vmsnap_core_http},
    {"vmsnap.core.httpd", luaopen_vmsnap_core_httpd},
    {"vmsnap.core.sqlite", luaopen_vmsnap_core_sqlite},
    {"vmsnap.core.sock", luaopen_vmsnap_core_sock},
    {"vmsnap.core.qga", luaopen_vmsnap_core_qga},
    {"vmsnap.core.proc", luaopen_vmsnap_core_proc},
    {"vmsnap.core.fs", luaopen_vmsnap_core_fs},
    {"vmsnap.core.runtime", luaopen_vmsnap_core_runtime},
    {"cjson", luaopen_cjson},
    {NULL, NULL}};

static const char *dev_dir(vmsnap_runtime *rt)
{
	const char *d;
	if (rt->cfg.embedded_only)
		return NULL;
	d = getenv("VMSNAP_LUA_DIR");
	if (d && *d)
		return d;
#ifdef VMSNAP_LUA_SOURCE_DIR
	return VMSNAP_LUA_SOURCE_DIR;
#else
	return NULL;
#endif
}

/* preloader(name): upvalue 1 = index into Vmsnap_embedded */
static int embedded_loader(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	int i = (int)lua_tointeger(L, lua_upvalueindex(1));
	const Vmsnap_embedded_file *f = &Vmsnap_embedded[i];
	const char *dir = dev_dir(rt);
	int st;
	if (dir) {
		lua_pushfstring(L, "%s/%s", dir, f->path);
		st = luaL_loadfilex(L, lua_tostring(L, -1), "t");
		lua_remove(L, -2);
	} else {
		lua_pushfstring(L, "@%s", f->path);
		st = luaL_loadbufferx(L, (const char *)f->data, f->len, lua_tostring(L, -1), "t");
		lua_remove(L, -2);
	}
	if (st != LUA_OK)
		return lua_error(L);
	lua_pushstring(L, f->name);
	lua_call(L, 1, 1);
	return 1;
}

void Vmsnap_loader_open(vmsnap_runtime *rt)
{
	lua_State *L = rt->L;
	int i;
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
	for (i = 0; cmodules[i].name; i++) {
		lua_pushcfunction(L, cmodules[i].open);
		lua_setfield(L, -2, cmodules[i].name);
	}
	for (i = 0; Vmsnap_embedded[i].name; i++) {
		lua_pushinteger(L, i);
		lua_pushcclosure(L, embedded_loader, 1);
		lua_setfield(L, -2, Vmsnap_embedded[i].name);
	}
	lua_pop(L, 1);

	/* search paths: the configured ones first */
	lua_getglobal(L, LUA_LOADLIBNAME);
	if (rt->cfg.lua_path && *rt->cfg.lua_path) {
		lua_getfield(L, -1, "path");
		lua_pushfstring(L, "%s;%s", rt->cfg.lua_path, lua_tostring(L, -1));
		lua_setfield(L, -3, "path");
		lua_pop(L, 1);
	}
	if (rt->cfg.plugin_path && *rt->cfg.plugin_path) {
		lua_getfield(L, -1, "cpath");
		lua_pushfstring(L, "%s;%s", rt->cfg.plugin_path, lua_tostring(L, -1));
		lua_setfield(L, -3, "cpath");
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
}
