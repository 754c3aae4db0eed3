/*
** alloc.c -- the accounting allocator of a runtime's Lua state.
**
** Counts the bytes the Lua heap holds, refuses growth past the configured
** memory limit (Lua then raises "not enough memory", reported as NOMEM),
** and, for tests, fails the Nth allocation from now (rt->fail_after).
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
			if (rt->cfg.alloc)
				rt->cfg.alloc(rt->cfg.alloc_ud, ptr, osize, 0);
			else
				free(ptr);
		}
		return NULL;
	}
	if (nsize > old) {
		if (rt->cfg.memory_limit && rt->mem_used + (nsize - old) > rt->cfg.memory_limit)
			return NULL;
		if (rt->fail_after > 0 && --rt->fail_after == 0)
			return NULL;
	}
	if (rt->cfg.alloc)
		p = rt->cfg.alloc(rt->cfg.alloc_ud, ptr, osize, nsize);
	else
		p = realloc(ptr, nsize);
	if (p) {
		rt->mem_used = rt->mem_used - old + nsize;
		if (rt->mem_used > rt->mem_peak)
			rt->mem_peak = rt->mem_used;
	}
	return p;
}
