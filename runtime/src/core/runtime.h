/*
** runtime.h -- the internal state of a vmsnap runtime, shared by core/,
** modules/ and api/.
**
** Provides: struct vmsnap_runtime (one Lua state, one libuv loop, the
** scheduler's queues, limits, the last error), the accounting allocator,
** logging to the configured sink, and the failure helpers every module
** uses to report `nil, message, code`.
** Uses: Lua 5.4, libuv.
*/
#ifndef VMSNAP_RUNTIME_H
#define VMSNAP_RUNTIME_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "vmsnap.h"

typedef struct Vmsnap_task Vmsnap_task;

/* A memory account: what a task (and the tasks it spawns) may grow the
** Lua heap by.  The allocator charges the running task's account. */
typedef struct Vmsnap_account {
	long long used;  /* bytes allocated minus bytes freed while it ran */
	long long limit; /* > 0 */
	int refs;
	int exceeded;    /* an allocation was refused */
} Vmsnap_account;


struct vmsnap_config {
	vmsnap_alloc_fn alloc;
	void *alloc_ud;
	size_t memory_limit;
	vmsnap_log_fn log;
	void *log_ud;
	int log_level;
	int log_json;
	double deadline;
	char *lua_path;
	char *plugin_path;
	unsigned sandbox;
	int embedded_only;
	double cancel_grace;
};

struct vmsnap_runtime {
	lua_State *L;
	uv_loop_t loop;
	int loop_open;
	int global_held; /* this runtime holds a vmsnap_global_init */
	vmsnap_config cfg;

	/* memory accounting (alloc.c) */
	size_t mem_used;
	size_t mem_peak;
	long fail_after; /* >0: fail from the Nth next allocation on (tests) */
	int alloc_exempt; /* >0: limits do not apply (scheduler bookkeeping) */
	Vmsnap_account *acct; /* the running task's memory account, or NULL */

	/* scheduler (sched.c) */
	Vmsnap_task *current;    /* the task whose coroutine is running */
	Vmsnap_task *ready_head; /* FIFO of tasks to resume */
	Vmsnap_task *ready_tail;
	Vmsnap_task *all;        /* every live task (doubly linked) */
	int ntasks;
	Vmsnap_task *main_task;
	uv_async_t wakeup;
	uv_idle_t idle; /* active while tasks are ready (sched.c) */
	volatile sig_atomic_t cancel_requested;
	int cancel_seen;

	/* preemption (sched.c): tasks run without a Lua hook; a signal sets
	** one on the running thread when a kill may be due */
	lua_State *volatile running;   /* the Lua thread executing a task's code, or NULL */
	volatile sig_atomic_t preempt; /* a signal asked `running` to check for kills */
	int wd_state;                  /* 0 = unbound, 1 = timer on wd_thread, -1 = no preemption */
	pthread_t wd_thread;           /* the thread the runtime runs on */
	timer_t wd_timer;              /* fires the preemption signal at a deadline */
	double wd_due;                 /* when it fires (monotonic seconds), 0 = disarmed */
	long registry_refs; /* references taken and not yet released */

	/* host event loop integration (api) */
	vmsnap_io_hooks io_hooks;
	void *io_ud;
	int io_hooks_set;

	/* per-module state, owned by the module; freed at close */
	void *http;
	void (*http_free)(vmsnap_runtime *rt);

	/* last error */
	char *errmsg;
	char errcode[64];
};

/* The runtime that owns L (any thread of its state). */
#define Vmsnap_rt(L) (*(vmsnap_runtime **)lua_getextraspace(L))

/* alloc.c */
void *Vmsnap_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* log.c: deliver one formatted record to the sink if level passes. */
void Vmsnap_log(vmsnap_runtime *rt, int level, const char *subsystem, const char *fmt, ...);
void Vmsnap_logv(vmsnap_runtime *rt, int level, const char *subsystem, const char *fmt,
                 va_list ap);

/* errors.c */
/* Push nil, message, code; returns 3.  May raise (memory). */
int Vmsnap_pushfail(lua_State *L, const char *code, const char *fmt, ...);
/* Push nil, message, errno-name for errno value `err` (positive). */
int Vmsnap_pusherrno(lua_State *L, int err, const char *what);
/* The errno name ("ENOENT") for an errno value, or "EIO"-style fallback. */
const char *Vmsnap_errno_name(int err);
/* Push a new vmsnap.Error {message=, code=} object. May raise. */
void Vmsnap_newerror(lua_State *L, const char *code, const char *msg);
/* Raise an error object with a code. Never returns. May raise (always). */
int Vmsnap_raise(lua_State *L, const char *code, const char *fmt, ...);
/* The message handler used for every chunk, task and hook: turns the error
** into a vmsnap.Error with a traceback. */
int Vmsnap_msghandler(lua_State *L);
/* Set rt's last error from the error value at `idx` (string or Error). */
void Vmsnap_set_error_from(vmsnap_runtime *rt, lua_State *L, int idx, const char *defcode);
void Vmsnap_set_error(vmsnap_runtime *rt, const char *code, const char *fmt, ...);
/* The status for a stable code ("TIMEOUT" -> VMSNAP_ERR_TIMEOUT ...). */
vmsnap_status Vmsnap_status_for_code(const char *code);
/* Create the error metatable (before anything can raise an error object). */
void Vmsnap_errors_open(lua_State *L);

/* loader.c: register the embedded Lua library and C modules in preload. */
void Vmsnap_loader_open(vmsnap_runtime *rt);

/* time */
double Vmsnap_now(void); /* monotonic seconds */

/* patguard.c: wrap string.find/match/gmatch/gsub of the table on top of
** L's stack so that sandboxed tasks' patterns are checked for cost. */
void Vmsnap_guard_patterns(lua_State *L);

#endif
