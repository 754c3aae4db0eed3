/*
** curlsym.c -- see curlsym.h.
*/
#include <stddef.h>

#define VMSNAP_SYM_IMPL
#include "curlsym.h"
#include "dlsyms.h"

const Vmsnap_curl_api *Vmsnap_curl_loaded;

static Vmsnap_curl_api api;
static void *lib;
static const char *load_error;

static const char *const names[] = {
    "curl_easy_init",          "curl_easy_setopt",         "curl_easy_getinfo",
    "curl_easy_cleanup",       "curl_easy_strerror",       "curl_easy_pause",
    "curl_multi_init",         "curl_multi_setopt",        "curl_multi_add_handle",
    "curl_multi_remove_handle", "curl_multi_socket_action", "curl_multi_info_read",
    "curl_multi_assign",       "curl_multi_cleanup",       "curl_slist_append",
    "curl_slist_free_all",     "curl_version_info",        "curl_global_init",
    "curl_global_cleanup"};

#ifndef VMSNAP_LAZY_LIBS
/* the linked library's functions, in the order of names[] */
static void *const linked[] = {
    (void *)curl_easy_init,          (void *)curl_easy_setopt,         (void *)curl_easy_getinfo,
    (void *)curl_easy_cleanup,       (void *)curl_easy_strerror,       (void *)curl_easy_pause,
    (void *)curl_multi_init,         (void *)curl_multi_setopt,        (void *)curl_multi_add_handle,
    (void *)curl_multi_remove_handle, (void *)curl_multi_socket_action, (void *)curl_multi_info_read,
    (void *)curl_multi_assign,       (void *)curl_multi_cleanup,       (void *)curl_slist_append,
    (void *)curl_slist_free_all,     (void *)curl_version_info,        (void *)curl_global_init,
    (void *)curl_global_cleanup};
#endif

const Vmsnap_curl_api *Vmsnap_curl(const char **why)
{
	if (Vmsnap_curl_loaded)
		return Vmsnap_curl_loaded;
	if (load_error) {
		if (why)
			*why = load_error;
		return NULL;
	}
#ifdef VMSNAP_LAZY_LIBS
	static const char *const sonames[] = {"libcurl.so.4", "libcurl-gnutls.so.4", "libcurl.so"};
	lib = Vmsnap_dlsyms(sonames, sizeof sonames / sizeof *sonames, names, (void **)&api,
	                    sizeof names / sizeof *names, "libcurl.so.4 not found", &load_error);
#else
	Vmsnap_fill_linked(linked, (void **)&api, sizeof names / sizeof *names);
	lib = (void *)linked;
#endif
	if (!lib) {
		if (why)
			*why = load_error;
		return NULL;
	}
	if (api.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		load_error = "curl_global_init failed";
		if (why)
			*why = load_error;
		return NULL;
	}
	Vmsnap_curl_loaded = &api;
	return Vmsnap_curl_loaded;
}

void Vmsnap_curl_unload(void)
{
	if (Vmsnap_curl_loaded) {
		api.global_cleanup();
		Vmsnap_curl_loaded = NULL;
	}
	/* the library stays mapped: other runtimes in the process may load it again */
}
