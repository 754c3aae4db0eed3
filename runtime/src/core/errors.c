/*
** errors.c -- the failure triple, error objects, the message handler and
** the runtime's last error.
**
** Error objects are tables with the metatable "vmsnap.Error" and the fields
** `message`, `code` and (after the message handler) `traceback`; tostring()
** gives the message.  They are what CANCELLED/TIMEOUT raises and what a
** task's failure carries.
*/
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader.h"
#include "runtime.h"
#include "vmsnap_plugin.h"

#define ERROR_MT "vmsnap.Error"

static int pushvfail(lua_State *L, const char *code, const char *fmt, va_list ap)
{
	luaL_checkstack(L, 3, NULL);
	lua_pushnil(L);
	lua_pushvfstring(L, fmt, ap);
	lua_pushstring(L, code ? code : "ERROR");
	return 3;
}

int Vmsnap_pushfail(lua_State *L, const char *code, const char *fmt, ...)
{
	va_list ap;
	int n;
	va_start(ap, fmt);
	n = pushvfail(L, code, fmt, ap);
	va_end(ap);
	return n;
}

/* the exported form, for plugins */
VMSNAP_API int vmsnap_pushfail(lua_State *L, const char *code, const char *fmt, ...)
{
	va_list ap;
	int n;
	va_start(ap, fmt);
	n = pushvfail(L, code, fmt, ap);
	va_end(ap);
	return n;
}

const char *Vmsnap_errno_name(int err)
{
	switch (err) {
#define E(x) case x: return #x;
	E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(E2BIG) E(ENOEXEC) E(EBADF)
	E(ECHILD) E(EAGAIN) E(ENOMEM) E(EACCES) E(EFAULT) E(EBUSY) E(EEXIST) E(EXDEV)
	E(ENODEV) E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENFILE) E(EMFILE) E(ENOTTY) E(EFBIG)
	E(ENOSPC) E(ESPIPE) E(EROFS) E(EMLINK) E(EPIPE) E(ERANGE) E(ENAMETOOLONG)
	E(ENOSYS) E(ENOTEMPTY) E(ELOOP) E(EOPNOTSUPP) E(EADDRINUSE) E(EADDRNOTAVAIL)
	E(ENETDOWN) E(ENETUNREACH) E(ECONNABORTED) E(ECONNRESET) E(ENOBUFS) E(EISCONN)
	E(ENOTCONN) E(ETIMEDOUT) E(ECONNREFUSED) E(EHOSTUNREACH) E(EALREADY) E(EINPROGRESS)
	E(ECANCELED) E(ENOTSOCK) E(EPROTO) E(EDQUOT)
#undef E
	default:
		return "EIO";
	}
}

int Vmsnap_pusherrno(lua_State *L, int err, const char *what)
{
	if (what)
		return Vmsnap_pushfail(L, Vmsnap_errno_name(err), "%s: %s", what, strerror(err));
	return Vmsnap_pushfail(L, Vmsnap_errno_name(err), "%s", strerror(err));
}

void Vmsnap_newerror(lua_State *L, const char *code, const char *msg)
{
	lua_createtable(L, 0, 3);
	lua_pushstring(L, msg);
	lua_setfield(L, -2, "message");
	lua_pushstring(L, code);
	lua_setfield(L, -2, "code");
	luaL_setmetatable(L, ERROR_MT);
}

int Vmsnap_raise(lua_State *L, const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	lua_pushvfstring(L, fmt, ap);
	va_end(ap);
	Vmsnap_newerror(L, code, lua_tostring(L, -1));
	return lua_error(L);
}

static int is_error_object(lua_State *L, int idx)
{
	int r = 0;
	if (lua_type(L, idx) == LUA_TTABLE && lua_getmetatable(L, idx)) {
		luaL_getmetatable(L, ERROR_MT);
		r = lua_rawequal(L, -1, -2);
		lua_pop(L, 2);
	}
	return r;
}

int Vmsnap_msghandler(lua_State *L)
{
	const char *msg;
	if (is_error_object(L, 1)) {
		if (lua_getfield(L, 1, "traceback") == LUA_TNIL) {
			luaL_traceback(L, L, NULL, 1);
			lua_setfield(L, 1, "traceback");
		}
		lua_pop(L, 1);
		return 1;
	}
	msg = lua_tostring(L, 1);
	if (msg == NULL) {
		if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
			msg = lua_tostring(L, -1);
		else
			msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	}
	Vmsnap_newerror(L, "ERROR", msg);
	luaL_traceback(L, L, NULL, 1);
	lua_setfield(L, -2, "traceback");
	/* keep the original value for scripts that raised a table */
	if (lua_type(L, 1) == LUA_TTABLE) {
		lua_pushvalue(L, 1);
		lua_setfield(L, -2, "value");
		if (lua_getfield(L, 1, "code") == LUA_TSTRING)
			lua_setfield(L, -2, "code");
		else
			lua_pop(L, 1);
	}
	return 1;
}

void Vmsnap_set_error(vmsnap_runtime *rt, const char *code, const char *fmt, ...)
{
	va_list ap;
	char buf[1024];
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	free(rt->errmsg);
	rt->errmsg = strdup(buf);
	snprintf(rt->errcode, sizeof rt->errcode, "%s", code ? code : "");
}

void Vmsnap_set_error_from(vmsnap_runtime *rt, lua_State *L, int idx, const char *defcode)
{
	const char *msg = NULL, *tb = NULL, *code = defcode;
	idx = lua_absindex(L, idx);
	if (lua_type(L, idx) == LUA_TTABLE) {
		lua_getfield(L, idx, "message");
		lua_getfield(L, idx, "traceback");
		lua_getfield(L, idx, "code");
		msg = lua_tostring(L, -3);
		tb = lua_tostring(L, -2);
		if (lua_type(L, -1) == LUA_TSTRING)
			code = lua_tostring(L, -1);
	} else {
		msg = lua_tostring(L, idx);
		lua_pushnil(L);
		lua_pushnil(L);
		lua_pushnil(L);
	}
	if (!msg)
		msg = "(error object is not a string)";
	size_t n = strlen(msg) + (tb ? strlen(tb) + 1 : 0) + 1;
	char *s = (char *)malloc(n);
	if (s) {
		snprintf(s, n, "%s%s%s", msg, tb ? "\n" : "", tb ? tb : "");
		free(rt->errmsg);
		rt->errmsg = s;
	}
	snprintf(rt->errcode, sizeof rt->errcode, "%s", code ? code : "");
	lua_pop(L, 3);
}

vmsnap_status Vmsnap_status_for_code(const char *code)
{
	if (!code || !*code)
		return VMSNAP_ERR_RUNTIME;
	if (strcmp(code, "TIMEOUT") == 0)
		return VMSNAP_ERR_TIMEOUT;
	if (strcmp(code, "CANCELLED") == 0)
		return VMSNAP_ERR_CANCELLED;
	if (strcmp(code, "NOMEM") == 0)
		return VMSNAP_ERR_NOMEM;
	if (strcmp(code, "SYNTAX") == 0)
		return VMSNAP_ERR_SYNTAX;
	return VMSNAP_ERR_RUNTIME;
}

static int error_tostring(lua_State *L)
{
	lua_getfield(L, 1, "message");
	if (!lua_isstring(L, -1))
		lua_pushliteral(L, "error");
	return 1;
}

/* errors.new(code, message) -> error object */
static int errors_new(lua_State *L)
{
	const char *code = luaL_checkstring(L, 1);
	const char *msg = luaL_checkstring(L, 2);
	Vmsnap_newerror(L, code, msg);
	return 1;
}

/* errors.raise(code, message [, level]) -- raise an error object */
static int errors_raise(lua_State *L)
{
	const char *code = luaL_checkstring(L, 1);
	const char *msg = luaL_checkstring(L, 2);
	int level = (int)luaL_optinteger(L, 3, 1);
	if (level > 0) {
		luaL_where(L, level);
		lua_pushstring(L, msg);
		lua_concat(L, 2);
		msg = lua_tostring(L, -1);
	}
	Vmsnap_newerror(L, code, msg);
	return lua_error(L);
}

static int errors_is_error(lua_State *L)
{
	lua_pushboolean(L, is_error_object(L, 1));
	return 1;
}

static const luaL_Reg errors_funcs[] = {
    {"new", errors_new}, {"raise", errors_raise}, {"is_error", errors_is_error}, {NULL, NULL}};

int luaopen_vmsnap_core_errors(lua_State *L)
{
	luaL_newlib(L, errors_funcs);
	luaL_getmetatable(L, ERROR_MT);
	lua_setfield(L, -2, "metatable");
	return 1;
}

void Vmsnap_errors_open(lua_State *L)
{
	if (luaL_newmetatable(L, ERROR_MT)) {
		lua_pushcfunction(L, error_tostring);
		lua_setfield(L, -2, "__tostring");
		lua_pushstring(L, ERROR_MT);
		lua_setfield(L, -2, "__name");
	}
	lua_pop(L, 1);
}
