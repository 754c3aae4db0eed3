/*
** loader.h -- the embedded Lua library and the C module openers that
** loader.c registers in package.preload.
*/
#ifndef VMSNAP_LOADER_H
#define VMSNAP_LOADER_H

#include <stddef.h>

#include <lua.h>

typedef struct Vmsnap_embedded_file {
	const char *name; /* module name, "vmsnap.k8s" */
	const char *path; /* relative to lua/, "vmsnap/k8s.lua" */
	const unsigned char *data;
	size_t len;
} Vmsnap_embedded_file;

/* generated: terminated by a NULL name */
extern const Vmsnap_embedded_file Vmsnap_embedded[];

int luaopen_vmsnap_core_errors(lua_State *L);
int luaopen_vmsnap_core_log(lua_State *L);
int luaopen_vmsnap_core_json(lua_State *L);
int luaopen_vmsnap_core_yaml(lua_State *L);
int luaopen_vmsnap_core_http(lua_State *L);
int luaopen_vmsnap_core_httpd(lua_State *L);
int luaopen_vmsnap_core_sqlite(lua_State *L);
int luaopen_vmsnap_core_sock(lua_State *L);
int luaopen_vmsnap_core_qga(lua_State *L);
int luaopen_vmsnap_core_proc(lua_State *L);
int luaopen_vmsnap_core_fs(lua_State *L);
int luaopen_vmsnap_core_runtime(lua_State *L);

#endif
