/*
** qgaframe.h -- splitting the byte stream of a QEMU guest agent into replies.
**
** The agent writes JSON objects (normally one per line) and, in answer to
** guest-sync-delimited, a 0xFF byte before the reply.  0xFF can never occur
** in JSON text, so it resets the parser: whatever partial reply came before
** it (a reply cut short by a hung or restarted agent) is dropped.  Bytes
** outside an object (blank lines, garbage) are skipped.  A frame is a
** balanced top-level JSON object; strings and escapes are honoured while
** counting braces.  A raw newline inside a string cannot be JSON (the agent
** writes one reply per line), so it drops the frame as garbage rather than
** let an unterminated quote swallow the replies after it.  A frame longer
** than the limit is dropped and reported.
**
** Pure C, no Lua: the fuzz target (tests/fuzz/qgaframe_fuzz.c) drives it.
*/
#ifndef VMSNAP_QGAFRAME_H
#define VMSNAP_QGAFRAME_H

#include <stddef.h>

enum { QGAF_FRAME = 1, QGAF_DELIM = 2, QGAF_OVERSIZE = 3, QGAF_BAD = 4 };

typedef struct Vmsnap_qgaframe {
	char *buf;
	size_t len, cap, max;
	int depth;     /* nesting of { and [ inside the current frame; 0 = between frames */
	int in_string;
	int escape;
	size_t skipped; /* bytes outside frames, for diagnostics */
} Vmsnap_qgaframe;

/* Called for each event: QGAF_FRAME with the frame's text (not NUL
** terminated), QGAF_DELIM, QGAF_OVERSIZE and QGAF_BAD with NULL, 0.  Returns 0 to go
** on, non-zero to stop (the rest of the input is kept for the next feed). */
typedef int (*Vmsnap_qgaframe_cb)(void *ud, int event, const char *text, size_t len);

void Vmsnap_qgaframe_init(Vmsnap_qgaframe *f, size_t max_frame);
void Vmsnap_qgaframe_free(Vmsnap_qgaframe *f);
/* Reset to "between frames", dropping a partial frame. */
void Vmsnap_qgaframe_reset(Vmsnap_qgaframe *f);
/* Feed bytes; returns how many were consumed (all, unless cb stopped, or
** -1 when memory ran out). */
long Vmsnap_qgaframe_feed(Vmsnap_qgaframe *f, const char *p, size_t n, Vmsnap_qgaframe_cb cb, void *ud);

#endif
