/*
** qgaframe_fuzz.c -- libFuzzer target for the guest-agent reply framer
** (runtime/src/core/qgaframe.c).  The input is fed whole and in chunks whose
** sizes come from the input itself; both must give the same events, and
** every frame must be a '{'-opened, bracket-closed object within the limit.
** Run by tests/fuzz/run.sh (briefly, in make check) when clang is there.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qgaframe.h"

#define MAX_FRAME 4096
#define MAX_EVENTS 65536

typedef struct Log {
	int n;
	int ev[MAX_EVENTS];
	size_t len[MAX_EVENTS];
	unsigned long hash[MAX_EVENTS];
} Log;

static Log whole, chunked;

static int record(void *ud, int event, const char *text, size_t len)
{
	Log *l = (Log *)ud;
	unsigned long h = 5381;
	size_t i;
	if (event == QGAF_FRAME) {
		if (len == 0 || text[0] != '{' || (text[len - 1] != '}' && text[len - 1] != ']') || len > MAX_FRAME)
			abort();
		for (i = 0; i < len; i++) {
			if ((unsigned char)text[i] == 0xFF)
				abort(); /* a delimiter never ends up inside a frame */
			h = h * 33 + (unsigned char)text[i];
		}
	} else if (text != NULL || len != 0) {
		abort();
	}
	if (l->n < MAX_EVENTS) {
		l->ev[l->n] = event;
		l->len[l->n] = len;
		l->hash[l->n] = h;
		l->n++;
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Vmsnap_qgaframe f;
	size_t off = 0;
	whole.n = chunked.n = 0;

	Vmsnap_qgaframe_init(&f, MAX_FRAME);
	if (Vmsnap_qgaframe_feed(&f, (const char *)data, size, record, &whole) != (long)size)
		abort();
	Vmsnap_qgaframe_free(&f);

	Vmsnap_qgaframe_init(&f, MAX_FRAME);
	while (off < size) {
		size_t n = (size_t)(data[off] % 7) + 1;
		if (n > size - off)
			n = size - off;
		if (Vmsnap_qgaframe_feed(&f, (const char *)data + off, n, record, &chunked) != (long)n)
			abort();
		off += n;
	}
	Vmsnap_qgaframe_free(&f);

	if (whole.n != chunked.n)
		abort();
	for (int i = 0; i < whole.n; i++)
		if (whole.ev[i] != chunked.ev[i] || whole.len[i] != chunked.len[i] || whole.hash[i] != chunked.hash[i])
			abort();
	return 0;
}
