/*
** curlsym.h -- libcurl, loaded on first use.
**
** Code that includes this header calls the usual curl_* names; they resolve
** to a table of the functions vmsnap uses, filled the first time HTTP is
** needed (libcurl's global init runs then). libcurl is linked (ldd and
** dpkg-shlibdeps see it); built with -DVMSNAP_LAZY_LIBS=ON, it is instead
** looked up with dlopen/dlsym then, so that a start does not map the thirty
** libraries it pulls in (docs/runtime.md says what that saves).
*/
#ifndef VMSNAP_CURLSYM_H
#define VMSNAP_CURLSYM_H

#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>

typedef struct Vmsnap_curl_api {
	CURL *(*easy_init)(void);
	CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
	CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
	void (*easy_cleanup)(CURL *);
	const char *(*easy_strerror)(CURLcode);
	CURLcode (*easy_pause)(CURL *, int);
	CURLM *(*multi_init)(void);
	CURLMcode (*multi_setopt)(CURLM *, CURLMoption, ...);
	CURLMcode (*multi_add_handle)(CURLM *, CURL *);
	CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
	CURLMcode (*multi_socket_action)(CURLM *, curl_socket_t, int, int *);
	CURLMsg *(*multi_info_read)(CURLM *, int *);
	CURLMcode (*multi_assign)(CURLM *, curl_socket_t, void *);
	CURLMcode (*multi_cleanup)(CURLM *);
	struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
	void (*slist_free_all)(struct curl_slist *);
	curl_version_info_data *(*version_info)(CURLversion);
	CURLcode (*global_init)(long);
	void (*global_cleanup)(void);
} Vmsnap_curl_api;

/* The loaded API, loading it (and running curl_global_init) on the first
** call; NULL when libcurl cannot be loaded, with the reason in *why. */
const Vmsnap_curl_api *Vmsnap_curl(const char **why);
/* curl_global_cleanup and dlclose, if loaded (process exit). */
void Vmsnap_curl_unload(void);

extern const Vmsnap_curl_api *Vmsnap_curl_loaded;

#ifndef VMSNAP_SYM_IMPL
/* curl.h may define some of these names as macros */
#undef curl_easy_setopt
#undef curl_easy_getinfo
#undef curl_multi_setopt
#define curl_easy_init Vmsnap_curl_loaded->easy_init
#define curl_easy_setopt Vmsnap_curl_loaded->easy_setopt
#define curl_easy_getinfo Vmsnap_curl_loaded->easy_getinfo
#define curl_easy_cleanup Vmsnap_curl_loaded->easy_cleanup
#define curl_easy_strerror Vmsnap_curl_loaded->easy_strerror
#define curl_easy_pause Vmsnap_curl_loaded->easy_pause
#define curl_multi_init Vmsnap_curl_loaded->multi_init
#define curl_multi_setopt Vmsnap_curl_loaded->multi_setopt
#define curl_multi_add_handle Vmsnap_curl_loaded->multi_add_handle
#define curl_multi_remove_handle Vmsnap_curl_loaded->multi_remove_handle
#define curl_multi_socket_action Vmsnap_curl_loaded->multi_socket_action
#define curl_multi_info_read Vmsnap_curl_loaded->multi_info_read
#define curl_multi_assign Vmsnap_curl_loaded->multi_assign
#define curl_multi_cleanup Vmsnap_curl_loaded->multi_cleanup
#define curl_slist_append Vmsnap_curl_loaded->slist_append
#define curl_slist_free_all Vmsnap_curl_loaded->slist_free_all
#define curl_version_info Vmsnap_curl_loaded->version_info

#endif /* VMSNAP_SYM_IMPL */

#endif
