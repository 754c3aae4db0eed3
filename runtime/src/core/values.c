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

int Vmsnap_key_cmp(const void *a, const void *b)
{
	const Vmsnap_key *x = (const Vmsnap_key *)a, *y = (const Vmsnap_key *)b;
	int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
	return c ? c : (x->n > y->n) - (x->n < y->n);
}

Vmsnap_key *Vmsnap_sorted_keys(lua_State *L, int idx, int allow_bool, size_t *count, char *err,
                               size_t errlen)
{
	size_t nk = 0, j = 0;
	idx = lua_absindex(L, idx);
	luaL_checkstack(L, 6, NULL);
	lua_newtable(L); /* text -> original key */
	int keys = lua_gettop(L);
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		int kt = lua_type(L, -1);
		if (kt != LUA_TSTRING && kt != LUA_TNUMBER && !(allow_bool && kt == LUA_TBOOLEAN)) {
			snprintf(err, errlen, "cannot encode a table key of type %s", luaL_typename(L, -1));
			lua_pop(L, 1);
			lua_pushnil(L);
			return NULL;
		}
		lua_pushvalue(L, -1);
		luaL_tolstring(L, -1, NULL);
		lua_remove(L, -2);
		lua_pushvalue(L, -1);
		if (lua_rawget(L, keys) != LUA_TNIL) {
			/* 1 and "1": one name for two keys */
			snprintf(err, errlen, "a table has two keys written \"%.64s\"", lua_tostring(L, -2));
			lua_pop(L, 3);
			lua_pushnil(L);
			return NULL;
		}
		lua_pop(L, 1);
		lua_pushvalue(L, -2);
		lua_rawset(L, keys);
		nk++;
	}
	Vmsnap_key *ks = (Vmsnap_key *)lua_newuserdatauv(L, sizeof(Vmsnap_key) * (nk ? nk : 1), 0);
	lua_pushnil(L);
	while (lua_next(L, keys)) {
		lua_pop(L, 1);
		ks[j].s = lua_tolstring(L, -1, &ks[j].n); /* anchored in `keys` */
		j++;
	}
	qsort(ks, nk, sizeof *ks, Vmsnap_key_cmp);
	*count = nk;
	return ks;
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

/* the length of the well-formed sequence at s (at most n bytes), 0 if none */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xBF;
	size_t len, i;
	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		len = 2;
	else if (c >= 0xE0 && c <= 0xEF) {
		len = 3;
		if (c == 0xE0)
			lo = 0xA0; /* no overlong forms */
		else if (c == 0xED)
			hi = 0x9F; /* no surrogates */
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F; /* nothing past U+10FFFF */
	} else
		return 0;
	if (n < len)
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	return len;
}

int Vmsnap_utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, k;
	while (i < n) {
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		k = utf8_seq(p + i, n - i);
		if (!k)
			return 0;
		i += k;
	}
	return 1;
}

/* how many bytes of an ill-formed sequence at s form one maximal subpart */
static size_t utf8_bad_len(const unsigned char *s, size_t n)
{
	size_t len, i;
	unsigned char c = s[0], lo = 0x80, hi = 0xBF;
	if (c >= 0xC2 && c <= 0xDF)
		len = 2;
	else if (c >= 0xE0 && c <= 0xEF) {
		len = 3;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	} else
		return 1;
	for (i = 1; i < len && i < n; i++) {
		unsigned char b = s[i];
		if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
			return i;
	}
	return i;
}

void Vmsnap_utf8_push_fixed(lua_State *L, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	luaL_Buffer b;
	size_t i = 0, k;
	luaL_buffinit(L, &b);
	while (i < n) {
		k = p[i] < 0x80 ? 1 : utf8_seq(p + i, n - i);
		if (k) {
			luaL_addlstring(&b, s + i, k);
			i += k;
		} else {
			luaL_addstring(&b, "\xEF\xBF\xBD");
			i += utf8_bad_len(p + i, n - i);
		}
	}
	luaL_pushresult(&b);
}

/* ------------------------------------------------------------ deep copy */

#define DEEP_MAX 1000

static void deep_copy(lua_State *L, int idx, int depth)
{
	int t;
	if (lua_type(L, idx) != LUA_TTABLE) {
		lua_pushvalue(L, idx);
		return;
	}
	if (depth > DEEP_MAX)
		luaL_error(L, "deep copy: nested more than %d levels (a cycle?)", DEEP_MAX);
	luaL_checkstack(L, 6, "deep copy");
	lua_createtable(L, (int)lua_rawlen(L, idx), 0);
	t = lua_gettop(L);
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		int v = lua_gettop(L);
		lua_pushvalue(L, v - 1); /* the key */
		deep_copy(L, v, depth + 1);
		lua_rawset(L, t);
		lua_pop(L, 1); /* the value; the key stays for lua_next */
	}
	if (lua_getmetatable(L, idx))
		lua_setmetatable(L, t);
}

void Vmsnap_deep_copy(lua_State *L, int idx)
{
	deep_copy(L, lua_absindex(L, idx), 0);
}

static int deep_equal(lua_State *L, int a, int b, int depth)
{
	int same = 1;
	if (lua_rawequal(L, a, b))
		return 1;
	if (lua_type(L, a) != LUA_TTABLE || lua_type(L, b) != LUA_TTABLE)
		return 0;
	if (depth > DEEP_MAX)
		luaL_error(L, "deep equal: nested more than %d levels (a cycle?)", DEEP_MAX);
	luaL_checkstack(L, 6, "deep equal");
	lua_pushnil(L);
	while (same && lua_next(L, a)) {
		int v = lua_gettop(L);
		lua_pushvalue(L, v - 1);
		lua_rawget(L, b);
		same = deep_equal(L, v, v + 1, depth + 1);
		lua_pop(L, 2);
	}
	if (!same) {
		lua_pop(L, 1); /* the key lua_next left */
		return 0;
	}
	lua_pushnil(L);
	while (lua_next(L, b)) {
		lua_pop(L, 1);
		lua_pushvalue(L, -1);
		lua_rawget(L, a);
		if (lua_isnil(L, -1)) {
			lua_pop(L, 2);
			return 0;
		}
		lua_pop(L, 1);
	}
	return 1;
}

int Vmsnap_deep_equal(lua_State *L, int a, int b)
{
	return deep_equal(L, lua_absindex(L, a), lua_absindex(L, b), 0);
}
