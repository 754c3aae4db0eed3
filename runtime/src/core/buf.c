/*
** buf.c -- see buf.h.
*/
#include "buf.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#define BUF_MT "vmsnap.core.Buffer"

static int buf_gc(lua_State *L)
{
	Vmsnap_buf_free((Vmsnap_buf *)lua_touserdata(L, 1));
	return 0;
}

Vmsnap_buf *Vmsnap_buf_new(lua_State *L)
{
	Vmsnap_buf *b = (Vmsnap_buf *)lua_newuserdatauv(L, sizeof(Vmsnap_buf), 0);
	b->p = NULL;
	b->n = b->cap = 0;
	b->L = L;
	if (luaL_newmetatable(L, BUF_MT)) {
		lua_pushcfunction(L, buf_gc);
		lua_setfield(L, -2, "__gc");
		lua_pushcfunction(L, buf_gc);
		lua_setfield(L, -2, "__close");
	}
	lua_setmetatable(L, -2);
	return b;
}

static void grow(Vmsnap_buf *b, size_t need)
{
	size_t cap = b->cap ? b->cap : 256;
	while (cap < need)
		cap *= 2;
	char *p = (char *)realloc(b->p, cap);
	if (!p)
		luaL_error(b->L, "not enough memory");
	b->p = p;
	b->cap = cap;
}

void Vmsnap_buf_add(Vmsnap_buf *b, const char *s, size_t n)
{
	if (b->n + n > b->cap)
		grow(b, b->n + n);
	if (n)
		memcpy(b->p + b->n, s, n);
	b->n += n;
}

void Vmsnap_buf_addc(Vmsnap_buf *b, char c)
{
	if (b->n + 1 > b->cap)
		grow(b, b->n + 1);
	b->p[b->n++] = c;
}

void Vmsnap_buf_adds(Vmsnap_buf *b, const char *s)
{
	Vmsnap_buf_add(b, s, strlen(s));
}

void Vmsnap_buf_free(Vmsnap_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->n = b->cap = 0;
}
