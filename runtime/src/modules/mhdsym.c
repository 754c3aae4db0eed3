/*
** mhdsym.c -- see mhdsym.h.
*/
#include <dlfcn.h>
#include <stddef.h>

#define VMSNAP_SYM_IMPL
#include "dlsyms.h"
#include "mhdsym.h"

const Vmsnap_mhd_api *Vmsnap_mhd_loaded;

static Vmsnap_mhd_api api;
static void *lib;
static const char *load_error;

/* in the order of Vmsnap_mhd_api's members */
static const char *const names[] = {
    "MHD_start_daemon",         "MHD_stop_daemon",
    "MHD_run",                  "MHD_get_timeout",
    "MHD_get_daemon_info",      "MHD_get_connection_info",
    "MHD_get_connection_values", "MHD_lookup_connection_value",
    "MHD_create_response_from_buffer", "MHD_create_response_from_callback",
    "MHD_add_response_header",  "MHD_queue_response",
    "MHD_destroy_response",     "MHD_suspend_connection",
    "MHD_resume_connection",    "MHD_get_version"};

#ifndef VMSNAP_LAZY_LIBS
/* the linked library's functions, in the order of names[] */
static void *const linked[] = {
    (void *)MHD_start_daemon,         (void *)MHD_stop_daemon,
    (void *)MHD_run,                  (void *)MHD_get_timeout,
    (void *)MHD_get_daemon_info,      (void *)MHD_get_connection_info,
    (void *)MHD_get_connection_values, (void *)MHD_lookup_connection_value,
    (void *)MHD_create_response_from_buffer, (void *)MHD_create_response_from_callback,
    (void *)MHD_add_response_header,  (void *)MHD_queue_response,
    (void *)MHD_destroy_response,     (void *)MHD_suspend_connection,
    (void *)MHD_resume_connection,    (void *)MHD_get_version};
#endif

const Vmsnap_mhd_api *Vmsnap_mhd(const char **why)
{
	if (Vmsnap_mhd_loaded)
		return Vmsnap_mhd_loaded;
	if (load_error) {
		if (why)
			*why = load_error;
		return NULL;
	}
#ifdef VMSNAP_LAZY_LIBS
	static const char *const sonames[] = {"libmicrohttpd.so.12", "libmicrohttpd.so"};
	lib = Vmsnap_dlsyms(sonames, sizeof sonames / sizeof *sonames, names, (void **)&api,
	                    sizeof names / sizeof *names, "libmicrohttpd.so.12 not found", &load_error);
#else
	Vmsnap_fill_linked(linked, (void **)&api, sizeof names / sizeof *names);
	lib = dlopen(NULL, RTLD_NOW); /* the program and what it links: for Vmsnap_mhd_sym */
#endif
	if (!lib) {
		if (why)
			*why = load_error;
		return NULL;
	}
	Vmsnap_mhd_loaded = &api;
	return Vmsnap_mhd_loaded;
}

void *Vmsnap_mhd_sym(const char *name)
{
	/* dlsym on a handle also searches the libraries it depends on (linked:
	** the process's own scope, where GnuTLS came with libmicrohttpd) */
	return lib ? dlsym(lib, name) : NULL;
}
