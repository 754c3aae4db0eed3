/*
** log.c -- log records: formatting (text for people, JSON lines for
** machines) and delivery to the configured sink; `vmsnap.core.log`.
**
** A record is a level, a subsystem, a message and optional fields.  Text:
**   2026-11-24T04:55:00.123Z INFO  task: message key=value other="a b"
** JSON:
**   {"ts":"2026-11-24T04:55:00.123Z","level":"info","subsystem":"task",
**    "msg":"message","key":"value"}
*/
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "loader.h"
#include "runtime.h"
#include "vmsnap_plugin.h"

typedef struct Sb {
	char *p;
	size_t n, cap;
	char small[512];
} Sb;

static void sb_init(Sb *b)
{
	b->p = b->small;
	b->n = 0;
	b->cap = sizeof b->small;
	b->p[0] = 0;
}

static void sb_add(Sb *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap * 2;
		while (cap < b->n + n + 1)
			cap *= 2;
		char *np = (char *)malloc(cap);
		if (!np)
			return; /* drop the rest of the record */
		memcpy(np, b->p, b->n);
		if (b->p != b->small)
			free(b->p);
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

static void sb_adds(Sb *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static void sb_free(Sb *b)
{
	if (b->p != b->small)
		free(b->p);
}

static void sb_json_str(Sb *b, const char *s, size_t n)
{
	size_t i;
	char esc[8];
	sb_add(b, "\"", 1);
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			sb_add(b, esc, 2);
		} else if (c == '\n') {
			sb_add(b, "\\n", 2);
		} else if (c == '\t') {
			sb_add(b, "\\t", 2);
		} else if (c == '\r') {
			sb_add(b, "\\r", 2);
		} else if (c < 0x20) {
			snprintf(esc, sizeof esc, "\\u%04x", c);
			sb_add(b, esc, 6);
		} else {
			sb_add(b, (const char *)&s[i], 1);
		}
	}
	sb_add(b, "\"", 1);
}

static const char *level_name(int level, int upper)
{
	if (level >= VMSNAP_LOG_ERROR)
		return upper ? "ERROR" : "error";
	if (level >= VMSNAP_LOG_WARN)
		return upper ? "WARN " : "warn";
	if (level >= VMSNAP_LOG_INFO)
		return upper ? "INFO " : "info";
	return upper ? "DEBUG" : "debug";
}

static void timestamp(char *buf, size_t n)
{
	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	snprintf(buf, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
	         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
}

static void deliver(vmsnap_runtime *rt, int level, const char *subsystem, const char *rec)
{
	if (rt->cfg.log)
		rt->cfg.log(rt->cfg.log_ud, level, subsystem, rec);
	else {
		fputs(rec, stderr);
		fputc('\n', stderr);
		fflush(stderr);
	}
}

/* Format one record.  fields: index of a table on L's stack, or 0. */
static void format_record(vmsnap_runtime *rt, Sb *b, int level, const char *subsystem,
                          const char *msg, size_t msglen, lua_State *L, int fields)
{
	char ts[64];
	timestamp(ts, sizeof ts);
	if (rt->cfg.log_json) {
		sb_adds(b, "{\"ts\":\"");
		sb_adds(b, ts);
		sb_adds(b, "\",\"level\":\"");
		sb_adds(b, level_name(level, 0));
		sb_adds(b, "\",\"subsystem\":");
		sb_json_str(b, subsystem, strlen(subsystem));
		sb_adds(b, ",\"msg\":");
		sb_json_str(b, msg, msglen);
	} else {
		sb_adds(b, ts);
		sb_adds(b, " ");
		sb_adds(b, level_name(level, 1));
		sb_adds(b, " ");
		sb_adds(b, subsystem);
		sb_adds(b, ": ");
		sb_add(b, msg, msglen);
	}
	if (L && fields) {
		/* never raises: values are rendered without allocating Lua strings */
		lua_pushnil(L);
		while (lua_next(L, fields)) {
			size_t kl, vl = 0;
			const char *k, *v = NULL;
			char num[64];
			int t = lua_type(L, -1), bare = 0;
			if (lua_type(L, -2) != LUA_TSTRING) {
				lua_pop(L, 1);
				continue;
			}
			k = lua_tolstring(L, -2, &kl);
			if (t == LUA_TSTRING) {
				v = lua_tolstring(L, -1, &vl);
			} else if (t == LUA_TNUMBER) {
				if (lua_isinteger(L, -1))
					snprintf(num, sizeof num, LUA_INTEGER_FMT, lua_tointeger(L, -1));
				else
					snprintf(num, sizeof num, "%.14g", (double)lua_tonumber(L, -1));
				bare = 1;
			} else if (t == LUA_TBOOLEAN) {
				snprintf(num, sizeof num, "%s", lua_toboolean(L, -1) ? "true" : "false");
				bare = 1;
			} else {
				snprintf(num, sizeof num, "%s: %p", luaL_typename(L, -1), lua_topointer(L, -1));
			}
			if (!v) {
				v = num;
				vl = strlen(num);
			}
			if (rt->cfg.log_json) {
				sb_adds(b, ",");
				sb_json_str(b, k, kl);
				sb_adds(b, ":");
				if (bare)
					sb_add(b, v, vl);
				else
					sb_json_str(b, v, vl);
			} else {
				sb_adds(b, " ");
				sb_add(b, k, kl);
				sb_adds(b, "=");
				if (vl == 0 || strpbrk(v, " \t\n\"=") != NULL)
					sb_json_str(b, v, vl);
				else
					sb_add(b, v, vl);
			}
			lua_pop(L, 1);
		}
	}
	if (rt->cfg.log_json)
		sb_adds(b, "}");
}

void Vmsnap_logv(vmsnap_runtime *rt, int level, const char *subsystem, const char *fmt,
                 va_list ap)
{
	char msg[2048];
	Sb b;
	if (level < rt->cfg.log_level)
		return;
	vsnprintf(msg, sizeof msg, fmt, ap);
	sb_init(&b);
	format_record(rt, &b, level, subsystem, msg, strlen(msg), NULL, 0);
	deliver(rt, level, subsystem, b.p);
	sb_free(&b);
}

void Vmsnap_log(vmsnap_runtime *rt, int level, const char *subsystem, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	Vmsnap_logv(rt, level, subsystem, fmt, ap);
	va_end(ap);
}

VMSNAP_API void vmsnap_log(lua_State *L, int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	Vmsnap_logv(Vmsnap_rt(L), level, "plugin", fmt, ap);
	va_end(ap);
}

/* log.write(level, subsystem, message [, fields]) -> boolean (delivered) */
static int log_write(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	int level = (int)luaL_checkinteger(L, 1);
	const char *sub = luaL_checkstring(L, 2);
	size_t ml;
	const char *msg = luaL_checklstring(L, 3, &ml);
	Sb b;
	if (!lua_isnoneornil(L, 4))
		luaL_checktype(L, 4, LUA_TTABLE);
	if (level < rt->cfg.log_level) {
		lua_pushboolean(L, 0);
		return 1;
	}
	lua_settop(L, 4);
	sb_init(&b);
	format_record(rt, &b, level, sub, msg, ml, L, lua_istable(L, 4) ? 4 : 0);
	deliver(rt, level, sub, b.p);
	sb_free(&b);
	lua_pushboolean(L, 1);
	return 1;
}

/* log.level([n]) -> the current least level; sets it when n is given */
static int log_level(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	int old = rt->cfg.log_level;
	if (!lua_isnoneornil(L, 1))
		rt->cfg.log_level = (int)luaL_checkinteger(L, 1);
	lua_pushinteger(L, old);
	return 1;
}

/* log.json([on]) -> whether records are JSON; sets it when given */
static int log_json(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	int old = rt->cfg.log_json;
	if (!lua_isnoneornil(L, 1))
		rt->cfg.log_json = lua_toboolean(L, 1);
	lua_pushboolean(L, old);
	return 1;
}

static const luaL_Reg log_funcs[] = {
    {"write", log_write}, {"level", log_level}, {"json", log_json}, {NULL, NULL}};

int luaopen_vmsnap_core_log(lua_State *L)
{
	luaL_newlib(L, log_funcs);
	return 1;
}
