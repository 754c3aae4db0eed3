/*
** hello.c -- an example vmsnap plugin: `require "vmsnap.plugins.hello"`.
**
**   hello.greet(name)      -> "hello, NAME"
**   hello.nap(seconds)     -> true after sleeping without blocking the loop
**   hello.wait_readable(fd [, timeout]) -> events | nil, "timeout", "TIMEOUT"
**
** It shows the whole plugin contract: the ABI check, the failure triple and
** the cosocket primitives, using only vmsnap_plugin.h.
*/
#include <lauxlib.h>

#include "vmsnap_plugin.h"

static int hello_greet(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	if (*name == 0)
		return vmsnap_pushfail(L, "EINVAL", "hello: empty name");
	lua_pushfstring(L, "hello, %s", name);
	return 1;
}

static int hello_nap(lua_State *L)
{
	double s = luaL_checknumber(L, 1);
	luaL_argcheck(L, s >= 0, 1, "seconds must not be negative");
	return vmsnap_await_timer(L, s);
}

static int hello_wait_readable(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	double timeout = luaL_optnumber(L, 2, -1);
	return vmsnap_await_fd(L, fd, VMSNAP_IO_READ, timeout);
}

static const luaL_Reg funcs[] = {{"greet", hello_greet},
                                 {"nap", hello_nap},
                                 {"wait_readable", hello_wait_readable},
                                 {NULL, NULL}};

VMSNAP_API const vmsnap_plugin_info_t *vmsnap_plugin_info(void);
VMSNAP_API const vmsnap_plugin_info_t *vmsnap_plugin_info(void)
{
	static const vmsnap_plugin_info_t info = {VMSNAP_PLUGIN_ABI, "hello", "1.0.0"};
	return &info;
}

VMSNAP_API int luaopen_vmsnap_plugins_hello(lua_State *L);
VMSNAP_API int luaopen_vmsnap_plugins_hello(lua_State *L)
{
	vmsnap_plugin_check(L);
	luaL_newlib(L, funcs);
	return 1;
}
