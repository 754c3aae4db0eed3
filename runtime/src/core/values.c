/*
** values.c -- see values.h.
*/
#include "values.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

int Vmsnap_is_array_mt(lua_State *L, int idx)
{
	int r = 0;
	if (lua_getmetatable(L, idx)) {
		luaL_getmetatable(L, VMSNAP_ARRAY_MT);
		r = lua_rawequal(L, -1, -2);
		lua_pop(L, 2);
	}
	return r;
}

lua_Integer Vmsnap_seq_len(lua_State *L, int idx)
{
	lua_Integer n = 0, max = 0;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
			lua_pop(L, 1);
			return 0;
		}
		if (lua_tointeger(L, -1) > max)
			max = lua_tointeger(L, -1);
		n++;
	}
	return n == max ? n : 0;
}

int Vmsnap_strcmp_p(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void Vmsnap_fmt_double(char *buf, size_t n, double d)
{
	int prec;
	for (prec = 15; prec <= 17; prec++) {
		snprintf(buf, n, "%.*g", prec, d);
		if (strtod(buf, NULL) == d)
			break;
	}
}
