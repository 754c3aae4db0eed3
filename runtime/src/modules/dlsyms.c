/*
** dlsyms.c -- see dlsyms.h.
*/
#include <dlfcn.h>

#include "dlsyms.h"

void *Vmsnap_dlsyms(const char *const *sonames, size_t nsonames, const char *const *names, void **slots,
                    size_t n, const char *missing, const char **why)
{
	void *lib = NULL;
	size_t i;
	for (i = 0; i < nsonames && !lib; i++)
		lib = dlopen(sonames[i], RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		const char *e = dlerror();
		*why = e ? e : missing;
		return NULL;
	}
	for (i = 0; i < n; i++) {
		slots[i] = dlsym(lib, names[i]);
		if (!slots[i]) {
			*why = "the library lacks a function vmsnap needs (too old?)";
			dlclose(lib);
			return NULL;
		}
	}
	return lib;
}

void Vmsnap_fill_linked(void *const *linked, void **slots, size_t n)
{
	size_t i;
	for (i = 0; i < n; i++)
		slots[i] = linked[i];
}
