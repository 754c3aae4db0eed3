/*
** vmsnap.h -- the embedding API of libvmsnap.
**
** libvmsnap is a Lua 5.4 runtime for VM snapshot and restore orchestration.
** A host creates a runtime, runs workflow scripts or calls Lua functions
** in it, and reads results back as JSON.  Every script runs as a task (a
** coroutine) on one libuv loop owned by the runtime.
**
** Conventions (read once, they hold for every declaration below):
**  - Handles are opaque.  vmsnap_close(NULL) and vmsnap_config_free(NULL)
**    are no-ops.
**  - Every fallible function returns a vmsnap_status; out parameters come
**    last.  The detailed message of the last failure is vmsnap_errmsg(rt).
**  - Strings returned as `const char *` are owned by the runtime and valid
**    until the next call on that runtime; strings returned through `char **`
**    are allocated and must be released with vmsnap_free().
**  - One runtime belongs to one thread at a time.  Different runtimes may
**    live on different threads.  Only vmsnap_cancel() and vmsnap_wakeup()
**    may be called from another thread or from a signal handler.
*/
#ifndef VMSNAP_H
#define VMSNAP_H

#include <stddef.h>

#include "vmsnap_version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(VMSNAP_BUILDING) && defined(__GNUC__)
#define VMSNAP_API __attribute__((visibility("default")))
#else
#define VMSNAP_API
#endif

/* ---------------------------------------------------------------- status */

/* Append-only: the numbers never change. */
typedef enum vmsnap_status {
	VMSNAP_OK = 0,
	VMSNAP_AGAIN = 1,           /* tasks are still pending (vmsnap_step) */
	VMSNAP_ERR_SYNTAX = 2,      /* a chunk did not compile */
	VMSNAP_ERR_RUNTIME = 3,     /* a script raised an error */
	VMSNAP_ERR_WORKFLOW = 4,    /* a script returned nil, message */
	VMSNAP_ERR_NOMEM = 5,       /* memory limit reached or malloc failed */
	VMSNAP_ERR_TIMEOUT = 6,     /* a deadline passed */
	VMSNAP_ERR_CANCELLED = 7,   /* vmsnap_cancel() or SIGINT */
	VMSNAP_ERR_IO = 8,          /* a file could not be read */
	VMSNAP_ERR_MISUSE = 9,      /* the API was called wrongly */
	VMSNAP_ERR_VERSION = 10,    /* incompatible version or ABI */
	VMSNAP_ERR_INTERNAL = 11    /* a bug in libvmsnap */
} vmsnap_status;

/* Static English text for a status; never NULL. */
VMSNAP_API const char *vmsnap_strerror(vmsnap_status status);

/* ------------------------------------------------------- version, build */

/* The library's version at run time ("X.Y.Z"), to compare with VMSNAP_VERSION. */
VMSNAP_API const char *vmsnap_version(void);
/* The library's VMSNAP_VERSION_NUM at run time. */
VMSNAP_API int vmsnap_version_num(void);

/* Build information.  New fields are only ever added at the end, and `age`
** grows when they are; check `age` before reading a field added later. */
typedef struct vmsnap_build_info {
	int age;                    /* 0 in this version */
	const char *version;        /* vmsnap */
	const char *lua;            /* e.g. "Lua 5.4" (LUA_RELEASE when known) */
	const char *libuv;
	const char *libcurl;
	const char *libyaml;
	const char *cjson;
	const char *sqlite;         /* NULL when not linked */
	const char *options;        /* compile options, space separated */
} vmsnap_build_info;

/* A pointer to a static struct; never NULL. */
VMSNAP_API const vmsnap_build_info *vmsnap_get_build_info(void);

/* ---------------------------------------------------------- process-wide */

#define VMSNAP_GLOBAL_DEFAULT 0

/* One-time process setup (libcurl's global init among it).  Not thread
** safe; calls are counted, and vmsnap_open() calls it for you when the
** host did not. */
VMSNAP_API vmsnap_status vmsnap_global_init(unsigned flags);
/* Undoes vmsnap_global_init() when the last user calls it. */
VMSNAP_API void vmsnap_global_cleanup(void);

/* --------------------------------------------------------- configuration */

typedef struct vmsnap_config vmsnap_config;
typedef struct vmsnap_runtime vmsnap_runtime;

/* Log levels, from most to least verbose. */
enum {
	VMSNAP_LOG_DEBUG = 10,
	VMSNAP_LOG_INFO = 20,
	VMSNAP_LOG_WARN = 30,
	VMSNAP_LOG_ERROR = 40
};

/* A log sink.  `subsystem` is e.g. "task" or "http"; `message` is one
** formatted record (text or a JSON object, see vmsnap.log) without a
** trailing newline.  Called on the runtime's thread. */
typedef void (*vmsnap_log_fn)(void *ud, int level, const char *subsystem,
                              const char *message);

/* The lua_Alloc contract: free when nsize == 0, otherwise realloc. */
typedef void *(*vmsnap_alloc_fn)(void *ud, void *ptr, size_t osize, size_t nsize);

/* Create a configuration with defaults (no memory limit, no deadline,
** stderr log at INFO, embedded Lua library, hook sandbox on).  Returns NULL
** when out of memory. */
VMSNAP_API vmsnap_config *vmsnap_config_new(void);
VMSNAP_API void vmsnap_config_free(vmsnap_config *cfg);

/* The allocator for the Lua state; NULL restores the default (realloc). */
VMSNAP_API vmsnap_status vmsnap_config_set_allocator(vmsnap_config *cfg,
                                                     vmsnap_alloc_fn fn, void *ud);
/* A hard cap on the Lua heap in bytes; 0 means none.  A script that goes
** over it fails with NOMEM. */
VMSNAP_API vmsnap_status vmsnap_config_set_memory_limit(vmsnap_config *cfg, size_t bytes);
/* The log sink and the least level it receives; fn NULL = stderr. */
VMSNAP_API vmsnap_status vmsnap_config_set_log(vmsnap_config *cfg, vmsnap_log_fn fn,
                                               void *ud, int min_level);
/* Log records as JSON lines (1) or text (0, the default). */
VMSNAP_API vmsnap_status vmsnap_config_set_log_json(vmsnap_config *cfg, int on);
/* Default wall-clock limit in seconds for a run (the main task); 0 = none. */
VMSNAP_API vmsnap_status vmsnap_config_set_deadline(vmsnap_config *cfg, double seconds);
/* Where `require` looks beyond the builtin modules: a Lua path template
** list ("dir/?.lua;dir/?/init.lua") and a plugin path template list
** ("dir/?.so").  Either may be NULL.  Copied. */
VMSNAP_API vmsnap_status vmsnap_config_set_search_path(vmsnap_config *cfg,
                                                       const char *lua_path,
                                                       const char *plugin_path);

/* Sandbox flags for hook scripts (vmsnap_call_hook). */
enum {
	VMSNAP_SANDBOX_ON = 1,        /* run hooks in an allow-listed environment */
	VMSNAP_SANDBOX_ALLOW_OS = 2,  /* also allow os.execute, io.popen, io.open */
	VMSNAP_SANDBOX_ALLOW_REQUIRE = 4 /* allow require of vmsnap.* modules */
};
VMSNAP_API vmsnap_status vmsnap_config_set_sandbox(vmsnap_config *cfg, unsigned flags);
/* 1: use only the Lua library compiled into the binary (production);
** 0 (default): honour VMSNAP_LUA_DIR, which loads the library from a
** source tree instead, for development. */
VMSNAP_API vmsnap_status vmsnap_config_set_embedded_only(vmsnap_config *cfg, int on);
/* Seconds a cancelled task is given to run its cleanups before every line
** raises again; default 5. */
VMSNAP_API vmsnap_status vmsnap_config_set_cancel_grace(vmsnap_config *cfg, double seconds);

/* ------------------------------------------------------------- lifecycle */

/* Create a runtime from cfg (NULL = defaults; cfg is copied and may be
** freed afterwards).  *out is set even on most failures so that
** vmsnap_errmsg(*out) can be read; close it in every case. */
VMSNAP_API vmsnap_status vmsnap_open(const vmsnap_config *cfg, vmsnap_runtime **out);
/* Cancel the tasks, run their cleanups and `__close`/`__gc`, free
** everything.  NULL is a no-op. */
VMSNAP_API void vmsnap_close(vmsnap_runtime *rt);

/* ------------------------------------------------------------- extending */

typedef int (*vmsnap_lua_cfunction)(void *L); /* a lua_CFunction */

/* Add a host C module to package.preload under `name`; `openf` is a
** lua_CFunction (cast) like luaopen_x.  Call before running scripts. */
VMSNAP_API vmsnap_status vmsnap_register_module(vmsnap_runtime *rt, const char *name,
                                                vmsnap_lua_cfunction openf);
/* Build the global `arg` table the way lua.c does: argv[0] is the script
** and goes to arg[0]; the rest to arg[1..n] and to the chunk's `...`. */
VMSNAP_API vmsnap_status vmsnap_set_args(vmsnap_runtime *rt, int argc, char **argv);
/* Set vmsnap.params[key] to the decoded JSON value. */
VMSNAP_API vmsnap_status vmsnap_set_param(vmsnap_runtime *rt, const char *key,
                                          const char *json);
/* The lua_State (as void *) for advanced use; leave its stack balanced. */
VMSNAP_API void *vmsnap_lua_state(vmsnap_runtime *rt);

/* --------------------------------------------------------------- running */

/* Compile only; VMSNAP_ERR_SYNTAX with "file:line: message" on failure. */
VMSNAP_API vmsnap_status vmsnap_check_file(vmsnap_runtime *rt, const char *path);
/* Run a script file as the main task and drive the loop until every task
** has finished.  path NULL reads standard input. */
VMSNAP_API vmsnap_status vmsnap_run_file(vmsnap_runtime *rt, const char *path);
/* The same for code in memory; chunkname like "=stdin" or "@file.lua". */
VMSNAP_API vmsnap_status vmsnap_run_buffer(vmsnap_runtime *rt, const char *buf, size_t len,
                                           const char *chunkname);
/* Call the global or module function `name` ("f", "mod.f" or "mod:f" where
** mod is a require-able module) as a task with the elements of the JSON
** array args_json as arguments (NULL = none), drive the loop until it
** ends, and store its results as a JSON array in *result_json (release
** with vmsnap_free; may be NULL to ignore). */
VMSNAP_API vmsnap_status vmsnap_call(vmsnap_runtime *rt, const char *name,
                                     const char *args_json, char **result_json);
/* Load the hook script at `script` in the sandbox, call its handler for
** `hook_point` with a context built from args_json (a JSON object, its
** fields become ctx fields), and store the handler's results as a JSON
** array in *result_json.  A handler returning nil, message is
** VMSNAP_ERR_WORKFLOW. */
VMSNAP_API vmsnap_status vmsnap_call_hook(vmsnap_runtime *rt, const char *script,
                                          const char *hook_point, const char *args_json,
                                          char **result_json);
/* Release memory the library returned. NULL is a no-op. */
VMSNAP_API void vmsnap_free(void *ptr);

/* --------------------------------------- running inside a host event loop */

/* Start a script as a task without waiting for it; drive with vmsnap_step
** or the io hooks. */
VMSNAP_API vmsnap_status vmsnap_start_file(vmsnap_runtime *rt, const char *path);
VMSNAP_API vmsnap_status vmsnap_start_buffer(vmsnap_runtime *rt, const char *buf, size_t len,
                                             const char *chunkname);
/* Run ready tasks and poll for events for at most timeout_ms (0 = do not
** block, -1 = block until something happens).  VMSNAP_AGAIN while tasks
** are pending, VMSNAP_OK when all have finished (then the main task's
** outcome is reported like vmsnap_run_file's). */
VMSNAP_API vmsnap_status vmsnap_step(vmsnap_runtime *rt, int timeout_ms);
/* The fd that becomes readable when vmsnap_step has work (the loop's
** backend fd), and the ms until the next timer (-1 = none). */
VMSNAP_API int vmsnap_backend_fd(vmsnap_runtime *rt);
VMSNAP_API int vmsnap_backend_timeout(vmsnap_runtime *rt);

enum { VMSNAP_IO_READ = 1, VMSNAP_IO_WRITE = 2 };

/* Callbacks for hosts that own an event loop: watch `fd` for `events`,
** stop watching it, and call vmsnap_timer_expired() after timeout_ms
** (-1 = cancel the timer).  Set before the first run. */
typedef struct vmsnap_io_hooks {
	int version; /* 1 */
	void (*watch_fd)(void *ud, int fd, int events);
	void (*unwatch_fd)(void *ud, int fd);
	void (*set_timer)(void *ud, int timeout_ms);
} vmsnap_io_hooks;
VMSNAP_API vmsnap_status vmsnap_set_io_hooks(vmsnap_runtime *rt, const vmsnap_io_hooks *hooks,
                                             void *ud);
/* The host reports readiness of a watched fd / expiry of the timer.
** Both return like vmsnap_step(rt, 0). */
VMSNAP_API vmsnap_status vmsnap_io_ready(vmsnap_runtime *rt, int fd, int events);
VMSNAP_API vmsnap_status vmsnap_timer_expired(vmsnap_runtime *rt);
/* Make a blocked vmsnap_step return.  Thread safe. */
VMSNAP_API void vmsnap_wakeup(vmsnap_runtime *rt);

/* --------------------------------------------------------------- control */

/* Request cancellation of every task: running code sees CANCELLED at its
** next wait, or at once when it is computing (a signal, SIGRTMAX - 2, makes
** it check; docs/embedding.md), and gets the cancel grace for its cleanups.
** Async-signal-safe and thread safe. */
VMSNAP_API void vmsnap_cancel(vmsnap_runtime *rt);

/* ---------------------------------------------------------------- errors */

/* The message of the last failure on rt, with the Lua traceback when
** there is one; "" when none.  Owned by rt. */
VMSNAP_API const char *vmsnap_errmsg(vmsnap_runtime *rt);
/* The stable code of that failure ("NotFound", "TIMEOUT", ...) or NULL. */
VMSNAP_API const char *vmsnap_errcode(vmsnap_runtime *rt);

#ifdef __cplusplus
}
#endif

#endif /* VMSNAP_H */
