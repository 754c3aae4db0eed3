/*
** qgaframe.c -- see qgaframe.h.
*/
#include <stdlib.h>
#include <string.h>

#include "qgaframe.h"

void Vmsnap_qgaframe_init(Vmsnap_qgaframe *f, size_t max_frame)
{
	memset(f, 0, sizeof *f);
	f->max = max_frame ? max_frame : (16u << 20);
}

void Vmsnap_qgaframe_free(Vmsnap_qgaframe *f)
{
	free(f->buf);
	f->buf = NULL;
	f->len = f->cap = 0;
}

void Vmsnap_qgaframe_reset(Vmsnap_qgaframe *f)
{
	f->len = 0;
	f->depth = 0;
	f->in_string = 0;
	f->escape = 0;
}

static int push(Vmsnap_qgaframe *f, char c)
{
	if (f->len == f->cap) {
		size_t cap = f->cap ? f->cap * 2 : 256;
		char *p = (char *)realloc(f->buf, cap);
		if (!p)
			return -1;
		f->buf = p;
		f->cap = cap;
	}
	f->buf[f->len++] = c;
	return 0;
}

long Vmsnap_qgaframe_feed(Vmsnap_qgaframe *f, const char *p, size_t n, Vmsnap_qgaframe_cb cb, void *ud)
{
	size_t i;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == 0xFF) {
			Vmsnap_qgaframe_reset(f);
			if (cb(ud, QGAF_DELIM, NULL, 0))
				return (long)i + 1;
			continue;
		}
		if (f->depth == 0) {
			if (c != '{') {
				f->skipped++;
				continue;
			}
			f->len = 0;
			f->in_string = f->escape = 0;
		}
		if (f->len >= f->max) {
			/* too long: drop it and look for the next frame */
			Vmsnap_qgaframe_reset(f);
			if (cb(ud, QGAF_OVERSIZE, NULL, 0))
				return (long)i + 1;
			continue;
		}
		if (f->in_string && (c == '\n' || c == '\r')) {
			Vmsnap_qgaframe_reset(f);
			if (cb(ud, QGAF_BAD, NULL, 0))
				return (long)i + 1;
			continue;
		}
		if (push(f, (char)c))
			return -1;
		if (f->in_string) {
			if (f->escape)
				f->escape = 0;
			else if (c == '\\')
				f->escape = 1;
			else if (c == '"')
				f->in_string = 0;
			continue;
		}
		if (c == '"') {
			f->in_string = 1;
		} else if (c == '{' || c == '[') {
			f->depth++;
		} else if (c == '}' || c == ']') {
			if (--f->depth == 0) {
				size_t len = f->len;
				f->len = 0;
				if (cb(ud, QGAF_FRAME, f->buf, len))
					return (long)i + 1;
			}
		}
	}
	return (long)n;
}
