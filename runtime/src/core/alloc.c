/*
** alloc.c -- the accounting allocator of a runtime's Lua state.
**
** Counts the bytes the Lua heap holds, refuses growth past the configured
** memory limit (Lua then raises "not enough memory", reported as NOMEM),
** and, for tests, fails the Nth growing allocation from now and every one
** after it until the switch is reset (rt->fail_after; failing only one would
** be hidden by Lua's retry after an emergency collection).
** The scheduler's own bookkeeping (recording a finished task's outcome)
** runs with alloc_exempt set: a half-recorded outcome would strand the
** tasks waiting for it, and it is small and bounded.
** A task may carry a memory account (a hook's handler): while it runs,
** what the heap grows by is charged to it, and growth past its limit is
** refused the same way (Lua raises "not enough memory" in the task).
** Delegates to the configured allocator or to realloc/free.
*/
#include <stdlib.h>

#include "runtime.h"

void *Vmsnap_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	vmsnap_runtime *rt = (vmsnap_runtime *)ud;
	size_t old = ptr ? osize : 0;
	void *p;

	if (nsize == 0) {
		if (ptr) {
			rt->mem_used -= old;
			if (rt->acct)
				rt->acct->used -= (long long)old;
			if (rt->cfg.alloc)
				rt->cfg.alloc(rt->cfg.alloc_ud, ptr, osize, 0);
			else
				free(ptr);
		}
		return NULL;
	}
	if (nsize > old && !rt->alloc_exempt) {
		if (rt->cfg.memory_limit && rt->mem_used + (nsize - old) > rt->cfg.memory_limit)
			return NULL;
		/* a task's own bound (a hook's memory limit): the heap growth
		** while it runs, whatever C function asks for it */
		if (rt->acct && rt->acct->used + (long long)(nsize - old) > rt->acct->limit) {
			rt->acct->exceeded = 1;
			return NULL;
		}
		if (rt->fail_after > 0 && --rt->fail_after == 0) {
			rt->fail_after = 1; /* and every later one: Lua retries after a GC */
			return NULL;
		}
	}
	if (rt->cfg.alloc)
		p = rt->cfg.alloc(rt->cfg.alloc_ud, ptr, osize, nsize);
	else
		p = realloc(ptr, nsize);
	if (p) {
		rt->mem_used = rt->mem_used - old + nsize;
		if (rt->acct)
			rt->acct->used += (long long)nsize - (long long)old;
		if (rt->mem_used > rt->mem_peak)
			rt->mem_peak = rt->mem_used;
	}
	return p;
}
