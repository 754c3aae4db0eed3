/*
** vmsnap_plugin.h -- the ABI for C plugins loaded by vmsnap.
**
** A plugin is a shared object on the plugin search path that exports
** `luaopen_vmsnap_plugins_<name>` (required as `vmsnap.plugins.<name>`) and
** may export `vmsnap_plugin_info`.  Its opener calls vmsnap_plugin_check(L)
** first.  Plugins use only this header, lua.h and lauxlib.h.
**
** Waiting: a plugin function that must wait for an fd or a timer ends with
**     return vmsnap_await_fd(L, fd, VMSNAP_IO_READ, 5.0);
** which suspends the calling task (not the process) and, when it resumes,
** returns to the script the events that became ready, or nil, "timeout",
** "TIMEOUT".  These may only be called from a running task; they raise
** "cannot wait here" otherwise.
*/
#ifndef VMSNAP_PLUGIN_H
#define VMSNAP_PLUGIN_H

#include <lua.h>

#include "vmsnap.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever the functions below change in an incompatible way. */
#define VMSNAP_PLUGIN_ABI 1

typedef struct vmsnap_plugin_info_t {
	int abi;             /* VMSNAP_PLUGIN_ABI the plugin was built with */
	const char *name;    /* e.g. "hello" */
	const char *version; /* the plugin's own version */
} vmsnap_plugin_info_t;

/* Raises when the plugin was built for another ABI or Lua version.
** May raise. */
#define vmsnap_plugin_check(L) vmsnap_plugin_check_abi((L), VMSNAP_PLUGIN_ABI, LUA_VERSION_NUM)
VMSNAP_API void vmsnap_plugin_check_abi(lua_State *L, int abi, int lua_version_num);

/* Push nil, message, code and return 3 (the failure triple). */
VMSNAP_API int vmsnap_pushfail(lua_State *L, const char *code, const char *fmt, ...);

/* Log through the runtime's sink under the subsystem "plugin". */
VMSNAP_API void vmsnap_log(lua_State *L, int level, const char *fmt, ...);

/* The cosocket primitives; see the header comment.  timeout in seconds,
** < 0 for none.  May raise (misuse). */
VMSNAP_API int vmsnap_await_fd(lua_State *L, int fd, int events, double timeout);
VMSNAP_API int vmsnap_await_timer(lua_State *L, double seconds);

#ifdef __cplusplus
}
#endif

#endif
