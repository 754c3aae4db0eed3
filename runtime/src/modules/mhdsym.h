/*
** mhdsym.h -- libmicrohttpd, loaded on first use.
**
** As with libcurl (curlsym.h): code calls the usual MHD_* names, which go
** through a table filled when the first server starts — from the linked
** library, or with -DVMSNAP_LAZY_LIBS=ON by dlopen/dlsym then.
*/
#ifndef VMSNAP_MHDSYM_H
#define VMSNAP_MHDSYM_H

#include <microhttpd.h>

typedef struct Vmsnap_mhd_api {
	struct MHD_Daemon *(*start_daemon)(unsigned int, uint16_t, MHD_AcceptPolicyCallback, void *,
	                                   MHD_AccessHandlerCallback, void *, ...);
	void (*stop_daemon)(struct MHD_Daemon *);
	enum MHD_Result (*run)(struct MHD_Daemon *);
	enum MHD_Result (*get_timeout)(struct MHD_Daemon *, MHD_UNSIGNED_LONG_LONG *);
	const union MHD_DaemonInfo *(*get_daemon_info)(struct MHD_Daemon *, enum MHD_DaemonInfoType, ...);
	const union MHD_ConnectionInfo *(*get_connection_info)(struct MHD_Connection *,
	                                                       enum MHD_ConnectionInfoType, ...);
	int (*get_connection_values)(struct MHD_Connection *, enum MHD_ValueKind, MHD_KeyValueIterator,
	                             void *);
	const char *(*lookup_connection_value)(struct MHD_Connection *, enum MHD_ValueKind, const char *);
	struct MHD_Response *(*create_response_from_buffer)(size_t, void *, enum MHD_ResponseMemoryMode);
	struct MHD_Response *(*create_response_from_callback)(uint64_t, size_t, MHD_ContentReaderCallback,
	                                                      void *, MHD_ContentReaderFreeCallback);
	enum MHD_Result (*add_response_header)(struct MHD_Response *, const char *, const char *);
	enum MHD_Result (*queue_response)(struct MHD_Connection *, unsigned int, struct MHD_Response *);
	void (*destroy_response)(struct MHD_Response *);
	void (*suspend_connection)(struct MHD_Connection *);
	void (*resume_connection)(struct MHD_Connection *);
	const char *(*get_version)(void);
} Vmsnap_mhd_api;

/* The loaded API (loading it on the first call); NULL when libmicrohttpd
** cannot be loaded, with the reason in *why. */
const Vmsnap_mhd_api *Vmsnap_mhd(const char **why);
/* A symbol of libmicrohttpd or of a library it loaded (GnuTLS), or NULL. */
void *Vmsnap_mhd_sym(const char *name);

extern const Vmsnap_mhd_api *Vmsnap_mhd_loaded;

#ifndef VMSNAP_SYM_IMPL
#define MHD_start_daemon Vmsnap_mhd_loaded->start_daemon
#define MHD_stop_daemon Vmsnap_mhd_loaded->stop_daemon
#define MHD_run Vmsnap_mhd_loaded->run
#define MHD_get_timeout Vmsnap_mhd_loaded->get_timeout
#define MHD_get_daemon_info Vmsnap_mhd_loaded->get_daemon_info
#define MHD_get_connection_info Vmsnap_mhd_loaded->get_connection_info
#define MHD_get_connection_values Vmsnap_mhd_loaded->get_connection_values
#define MHD_lookup_connection_value Vmsnap_mhd_loaded->lookup_connection_value
#define MHD_create_response_from_buffer Vmsnap_mhd_loaded->create_response_from_buffer
#define MHD_create_response_from_callback Vmsnap_mhd_loaded->create_response_from_callback
#define MHD_add_response_header Vmsnap_mhd_loaded->add_response_header
#define MHD_queue_response Vmsnap_mhd_loaded->queue_response
#define MHD_destroy_response Vmsnap_mhd_loaded->destroy_response
#define MHD_suspend_connection Vmsnap_mhd_loaded->suspend_connection
#define MHD_resume_connection Vmsnap_mhd_loaded->resume_connection
#define MHD_get_version Vmsnap_mhd_loaded->get_version
#endif /* VMSNAP_SYM_IMPL */

#endif
