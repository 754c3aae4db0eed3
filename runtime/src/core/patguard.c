/*
** patguard.c -- string patterns a sandboxed task cannot make run for hours.
**
** Lua's pattern matcher backtracks: string.find(("a"):rep(1e5), "(.-)(.-)b")
** takes far longer than any hook deadline, inside one C call that the count
** hook cannot interrupt.  For the tasks marked sandboxed (hooks), find,
** match, gmatch and gsub first estimate the work from the pattern's
** repetition items (* + - ? %b %f) and the subject's size; past LIMIT the call is
** refused with an error that names the sizes.  A single repetition is
** allowed on subjects up to 800 KB, two up to ~14 KB, three up to ~580
** bytes (LIMIT 2e8; the estimate is n^q for q >= 2).  Plain finds (the fourth
** argument true) and patterns without specials are not limited.  Other
** tasks call the original functions at the cost of one check.
**
** The wrappers replace the functions in the string table (so method calls
** on strings get them too) and keep the originals as upvalues.
*/
#include <math.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "runtime.h"
#include "scheduler.h"

#define LIMIT 2e8 /* steps */

static int specials(const char *p, size_t n)
{
	return strpbrk(p, "^$*+?.([%-") != NULL || memchr(p, 0, n) != NULL;
}

/* repetition items of a pattern, outside sets and escapes */
static int repetitions(const char *p, size_t n)
{
	size_t i = 0;
	int q = 0, in_set = 0;
	while (i < n) {
		char c = p[i];
		if (c == '%' && i + 1 < n) {
			if (!in_set && (p[i + 1] == 'b' || p[i + 1] == 'f'))
				q++; /* a balance or frontier item scans too */
			i += 2;
			continue;
		}
		if (in_set) {
			if (c == ']')
				in_set = 0;
		} else if (c == '[') {
			in_set = 1;
			if (i + 1 < n && p[i + 1] == '^')
				i++;
			if (i + 1 < n && p[i + 1] == ']')
				i++; /* a leading ] is a member */
		} else if (c == '*' || c == '+' || c == '-' || c == '?') {
			q++;
		}
		i++;
	}
	return q;
}

static void check(lua_State *L, int plain_arg)
{
	size_t n, pn;
	const char *p;
	if (lua_type(L, 1) != LUA_TSTRING && lua_type(L, 1) != LUA_TNUMBER)
		return; /* the original raises the usual argument error */
	if (lua_type(L, 2) != LUA_TSTRING)
		return;
	lua_tolstring(L, 1, &n);
	p = lua_tolstring(L, 2, &pn);
	if (plain_arg && lua_toboolean(L, plain_arg))
		return;
	if (!specials(p, pn))
		return;
	int q = repetitions(p, pn);
	/* one repetition backtracks only on inputs made for it (a scan that
	** fails at every start); it is limited by the subject's size alone */
	double steps = q <= 1 ? (double)n * (q ? 250.0 : 1.0) : pow((double)n + 1, (double)q);
	if (steps > LIMIT)
		luaL_error(L, "pattern too costly for a hook: %d repetitions over a subject of %d bytes "
		              "(at most about %d steps; use a plain find, a shorter subject or a simpler pattern)",
		           q, (int)n, (int)LIMIT);
}

static int guarded(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	if (rt->current && rt->current->sandboxed)
		check(L, (int)lua_tointeger(L, lua_upvalueindex(2)));
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
	return lua_gettop(L);
}

/* Wrap the pattern functions of the string table on top of L's stack. */
void Vmsnap_guard_patterns(lua_State *L)
{
	static const struct { const char *name; int plain_arg; } fns[] = {
	    {"find", 4}, {"match", 0}, {"gmatch", 0}, {"gsub", 0}};
	size_t i;
	for (i = 0; i < sizeof fns / sizeof fns[0]; i++) {
		lua_getfield(L, -1, fns[i].name);
		lua_pushinteger(L, fns[i].plain_arg);
		lua_pushcclosure(L, guarded, 2);
		lua_setfield(L, -2, fns[i].name);
	}
}
