/*
** scheduler.h -- tasks: coroutines resumed by one scheduler on the libuv loop.
**
** Provides: spawning a Lua function as a task, the cosocket wait protocol
** (register an operation and yield; the loop wakes the task; the task's
** continuation pushes the results), cancellation with a grace period for
** cleanups, deadlines enforced by a Lua hook (set on demand by a signal;
** sched.c), and the run loop.
**
** The wait protocol, for a C function that must wait:
**
**     static const Vmsnap_waitops ops = { my_cancel, my_push };
**     ... validate arguments (raise on misuse) ...
**     Vmsnap_task *t = Vmsnap_sched_check_wait(L);   -- raises "cannot wait here"
**     ... register with libuv/curl; the callback later calls
**         Vmsnap_sched_wake(t) and never touches Lua ...
**     return Vmsnap_sched_wait(L, t, &ops, ud, timeout);
**
** When the task resumes, ops->push(L, ud, reason) runs inside the task
** (it may raise) and pushes what the C function returns.  reason is
** VMSNAP_WAKE_OK, or VMSNAP_WAKE_TIMEOUT after `timeout` seconds (then
** ops->cancel ran first).  On cancellation ops->cancel(ud) runs and the
** wait raises CANCELLED or TIMEOUT in the task instead.
** Uses: runtime.h.
*/
#ifndef VMSNAP_SCHEDULER_H
#define VMSNAP_SCHEDULER_H

#include "runtime.h"

enum { VMSNAP_WAKE_OK = 0, VMSNAP_WAKE_TIMEOUT = 1 };

typedef struct Vmsnap_waitops {
	/* Undo the registration (stop a watcher, remove a transfer).  Must not
	** call into Lua.  May be NULL. */
	void (*cancel)(void *ud);
	/* Push the results of the wait; returns how many.  May raise. */
	int (*push)(lua_State *L, void *ud, int reason);
} Vmsnap_waitops;

enum {
	TASK_NEW,      /* spawned, not yet started */
	TASK_READY,    /* in the ready queue */
	TASK_RUNNING,  /* its coroutine is executing */
	TASK_WAITING,  /* suspended in a wait */
	TASK_DONE
};

struct Vmsnap_task {
	vmsnap_runtime *rt;
	lua_State *co;
	int co_ref;   /* registry ref anchoring the task userdata while alive */
	int state;
	unsigned id;
	int nargs;    /* values on co's stack for the first resume */

	/* the current wait */
	const Vmsnap_waitops *ops;
	void *wait_ud;
	int wake_reason;
	uv_timer_t timer;  /* wait timeout and deadline */
	int timer_open;

	/* deadline and cancellation */
	double deadline;       /* monotonic seconds, 0 = none */
	const char *kill_code; /* "CANCELLED" or "TIMEOUT" once requested */
	int kill_delivered;    /* raised once in the task */
	int kill_hard;         /* grace over: raise on every line and wait */
	double grace_until;
	double slice_start; /* last resume, or the kill delivery */

	/* outcome */
	int failed;
	const char *fail_code;

	int started;         /* first resumed */
	int observed;        /* somebody read the outcome */
	unsigned wait_seq;   /* numbers each wait, so stale wake-ups are ignored */
	double wait_until;   /* the current wait's timeout, 0 = none */

	/* bounds for a task and the tasks it spawns (a hook's handler) */
	Vmsnap_account *acct; /* memory it may grow the heap by, NULL = none */
	double grace;         /* cancel grace in seconds, < 0 = the runtime's */
	int sandboxed;        /* string patterns are checked for cost */

	int refs; /* 1 for the userdata, 1 for the open timer */
	int boxed;
	Vmsnap_task *next_ready;
	Vmsnap_task *prev, *next; /* rt->all */
};

/* Spawn a task running the function found below the `nargs` values on
** top of L's stack, called with those values.  Pops the function and the
** values, pushes the task object.  deadline: absolute monotonic
** seconds or 0.  May raise. */
Vmsnap_task *Vmsnap_sched_spawn(lua_State *L, int nargs, double deadline);
/* The task object at idx (raises on a wrong type). */
Vmsnap_task *Vmsnap_sched_check(lua_State *L, int idx);
/* The running task if L is its coroutine and may yield; raises otherwise. */
Vmsnap_task *Vmsnap_sched_check_wait(lua_State *L);
/* Suspend t (see the header comment).  timeout < 0: none. */
int Vmsnap_sched_wait(lua_State *L, Vmsnap_task *t, const Vmsnap_waitops *ops, void *ud,
                      double timeout);
/* Mark a waiting task ready to resume.  Safe from any libuv/curl callback. */
void Vmsnap_sched_wake(Vmsnap_task *t);
/* Request cancellation of t with code "CANCELLED" or "TIMEOUT". */
void Vmsnap_sched_cancel(Vmsnap_task *t, const char *code);
/* Resume ready tasks until none is ready. */
void Vmsnap_sched_drain(vmsnap_runtime *rt);
/* Run until every task is done (blocking). */
void Vmsnap_sched_run(vmsnap_runtime *rt);
/* One step: drain, poll for at most timeout_ms, drain.  Returns 1 while
** tasks remain. */
int Vmsnap_sched_step(vmsnap_runtime *rt, int timeout_ms);
/* Cancel everything and run until done, bounded by the grace (close). */
void Vmsnap_sched_shutdown(vmsnap_runtime *rt);
void Vmsnap_sched_init(vmsnap_runtime *rt);
/* Create the task metatable (before the first spawn).  May raise. */
void Vmsnap_sched_open(lua_State *L);
/* Push the outcome of a done task: its values, or nil, message, code. */
int Vmsnap_sched_push_result(lua_State *L, Vmsnap_task *t);
/* The hook that delivers kills to a task's running code. */
void Vmsnap_sched_hook(lua_State *L, lua_Debug *ar);
/* Make the code running now check for kills (a cancel) soon, from any
** thread or a signal handler. */
void Vmsnap_sched_interrupt(vmsnap_runtime *rt);
/* Release the preemption timer (close, on the runtime's thread). */
void Vmsnap_sched_unbind(vmsnap_runtime *rt);

int luaopen_vmsnap_core_task(lua_State *L);

#endif
