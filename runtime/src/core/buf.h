/*
** buf.h -- a growable byte buffer owned by a Lua userdata, so that code
** which may raise (lua_* calls during encoding) never leaks it.
**
** Vmsnap_buf_new(L) pushes the userdata and returns the buffer; the
** memory is released by its __gc or by Vmsnap_buf_free.  Appending may
** raise "not enough memory".
*/
#ifndef VMSNAP_BUF_H
#define VMSNAP_BUF_H

#include <stddef.h>

#include <lua.h>

typedef struct Vmsnap_buf {
	char *p;
	size_t n, cap;
	lua_State *L;
} Vmsnap_buf;

/* may raise */
Vmsnap_buf *Vmsnap_buf_new(lua_State *L);
/* may raise */
void Vmsnap_buf_add(Vmsnap_buf *b, const char *s, size_t n);
/* may raise */
void Vmsnap_buf_addc(Vmsnap_buf *b, char c);
/* may raise */
void Vmsnap_buf_adds(Vmsnap_buf *b, const char *s);
void Vmsnap_buf_free(Vmsnap_buf *b);

#endif
