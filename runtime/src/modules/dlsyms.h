/*
** dlsyms.h -- filling a table of a library's functions: from the linked
** library, or (-DVMSNAP_LAZY_LIBS=ON) by loading it on first use (libcurl,
** libmicrohttpd: see curlsym.h and mhdsym.h).
*/
#ifndef VMSNAP_DLSYMS_H
#define VMSNAP_DLSYMS_H

#include <stddef.h>

/* dlopen the first of sonames that loads (RTLD_NOW | RTLD_LOCAL) and look up
** names[i] into slots[i].  Returns the handle, or NULL with *why set to a
** static message (the library is closed again when a function is missing). */
void *Vmsnap_dlsyms(const char *const *sonames, size_t nsonames, const char *const *names, void **slots,
                    size_t n, const char *missing, const char **why);

/* The linked build's table: slots[i] = linked[i] for i < n. */
void Vmsnap_fill_linked(void *const *linked, void **slots, size_t n);

#endif
