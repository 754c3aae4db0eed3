/*
** sched.c -- the task scheduler (see scheduler.h).
**
** A task is a full userdata ("vmsnap.task.Task") holding a pointer to a
** malloc'd Vmsnap_task.  The C struct outlives the userdata while its
** libuv timer is closing (refs counts both).  User values of the userdata:
** 1 = result table, 2 = waiters {task userdata -> wait sequence}, 3 = the
** coroutine.  While a task is alive the registry anchors its userdata.
**
** The coroutine runs task_main, which calls the task function under
** lua_pcallk with Vmsnap_msghandler.  Because the pcall is inside the
** coroutine, an error raised at a wait point (CANCELLED, TIMEOUT) unwinds
** through yieldable frames: `<close>` handlers may still wait (a thaw).
**
** Kills between waits (a deadline passed in a busy loop, a cancel, a cleanup
** that computes too long) are delivered by a Lua hook.  Any count hook makes
** Lua 5.4 trace every instruction (about half the VM's speed), so trusted
** tasks run without one until a kill may be due: a POSIX timer armed at the
** running task's deadline, or vmsnap_cancel(), sends PREEMPT_SIGNAL to the
** runtime's thread, whose handler sets a one-instruction hook on the thread
** running now (rt->running, kept by the scheduler and by our
** coroutine.resume/wrap/close).  The hook then decides as before.  Tasks
** that are sandboxed (hooks), bounded in memory, profiled, covered (fuzz
** build) or already being killed keep the count hook always on; so do all
** tasks when the signal cannot be used (docs/embedding.md).
*/
#include "scheduler.h"
#include "vmsnap_plugin.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TASK_MT "vmsnap.task.Task"
#define HOOK_COUNT 1000
/* A cancelled task may go on only in short slices between waits. */
#define CANCEL_SLICE 0.1

typedef struct TaskBox {
	Vmsnap_task *t;
} TaskBox;


static unsigned next_task_id = 1;

double Vmsnap_now(void)
{
	return (double)uv_hrtime() / 1e9;
}

/* ------------------------------------------------------------ helpers */

static void acct_unref(Vmsnap_account *a)
{
	if (a && --a->refs == 0)
		free(a);
}

static void task_unref(Vmsnap_task *t)
{
	if (--t->refs == 0) {
		acct_unref(t->acct);
		free(t);
	}
}

static void timer_closed(uv_handle_t *h)
{
	task_unref((Vmsnap_task *)h->data);
}

static void close_timer(Vmsnap_task *t)
{
	if (t->timer_open) {
		t->timer_open = 0;
		uv_close((uv_handle_t *)&t->timer, timer_closed);
	}
}

static void idle_cb(uv_idle_t *h)
{
	(void)h; /* while active, the loop polls without blocking */
}

/* libuv runs due timers before it polls, and then blocks in the poll: a
** task made ready by a timer callback would wait for the next event.  An
** active idle handle makes that poll non-blocking while tasks are ready. */
static void enqueue_ready(Vmsnap_task *t)
{
	vmsnap_runtime *rt = t->rt;
	if (!rt->ready_head && rt->loop_open)
		uv_idle_start(&rt->idle, idle_cb);
	t->state = TASK_READY;
	t->next_ready = NULL;
	if (rt->ready_tail)
		rt->ready_tail->next_ready = t;
	else
		rt->ready_head = t;
	rt->ready_tail = t;
}

static Vmsnap_task *pop_ready(vmsnap_runtime *rt)
{
	Vmsnap_task *t = rt->ready_head;
	if (t) {
		rt->ready_head = t->next_ready;
		if (!rt->ready_head)
			rt->ready_tail = NULL;
		t->next_ready = NULL;
	}
	return t;
}

static void remove_ready(Vmsnap_task *t)
{
	vmsnap_runtime *rt = t->rt;
	Vmsnap_task **p = &rt->ready_head, *prev = NULL;
	while (*p) {
		if (*p == t) {
			*p = t->next_ready;
			if (rt->ready_tail == t)
				rt->ready_tail = prev;
			t->next_ready = NULL;
			return;
		}
		prev = *p;
		p = &(*p)->next_ready;
	}
}

static void link_task(vmsnap_runtime *rt, Vmsnap_task *t)
{
	t->next = rt->all;
	t->prev = NULL;
	if (rt->all)
		rt->all->prev = t;
	rt->all = t;
	rt->ntasks++;
}

static void unlink_task(Vmsnap_task *t)
{
	vmsnap_runtime *rt = t->rt;
	if (t->prev)
		t->prev->next = t->next;
	else if (rt->all == t)
		rt->all = t->next;
	if (t->next)
		t->next->prev = t->prev;
	t->prev = t->next = NULL;
	rt->ntasks--;
}

/* Arm the task's timer for the earliest of its wait timeout, deadline
** and cancel grace; stop it when there is none. */
static void on_timer(uv_timer_t *h);

static void arm_timer(Vmsnap_task *t)
{
	double due = 0, now;
	if (!t->timer_open)
		return;
	if (t->wait_until > 0)
		due = t->wait_until;
	if (t->deadline > 0 && !t->kill_code && (due == 0 || t->deadline < due))
		due = t->deadline;
	if (t->kill_delivered && !t->kill_hard && (due == 0 || t->grace_until < due))
		due = t->grace_until;
	if (due == 0) {
		uv_timer_stop(&t->timer);
		return;
	}
	now = Vmsnap_now();
	double ms = ceil((due - now) * 1000.0);
	if (ms < 0)
		ms = 0;
	uv_timer_start(&t->timer, on_timer, (uint64_t)ms, 0);
}

/* Undo the current wait registration. */
static void abort_wait(Vmsnap_task *t)
{
	const Vmsnap_waitops *ops = t->ops;
	if (ops && ops->cancel)
		ops->cancel(t->wait_ud);
	/* ops = NULL tells the continuation that the wait was aborted (and
	** keeps cancel from running twice); wait_ud stays for its push */
	t->ops = NULL;
}

void Vmsnap_sched_wake(Vmsnap_task *t)
{
	if (t->state != TASK_WAITING)
		return;
	t->wait_until = 0;
	if (t->timer_open)
		uv_timer_stop(&t->timer);
	enqueue_ready(t);
}

static void on_timer(uv_timer_t *h)
{
	Vmsnap_task *t = (Vmsnap_task *)h->data;
	double now = Vmsnap_now() + 0.0005; /* timers have ms resolution */
	if (t->state != TASK_WAITING)
		return;
	if (t->deadline > 0 && !t->kill_code && now >= t->deadline) {
		Vmsnap_sched_cancel(t, "TIMEOUT");
	} else if (t->kill_delivered && !t->kill_hard && now >= t->grace_until) {
		/* a cleanup that waited through the whole grace: say where (it
		** held a shutdown or a cancel for that long) */
		luaL_traceback(t->co, t->co, NULL, 0);
		Vmsnap_log(t->rt, VMSNAP_LOG_WARN, "task", "task %u: its cleanup waited past the cancel grace; stopping it: %s",
		           t->id, lua_tostring(t->co, -1));
		lua_pop(t->co, 1);
		t->kill_hard = 1;
		abort_wait(t);
		Vmsnap_sched_wake(t);
	} else if (t->wait_until > 0 && now >= t->wait_until) {
		abort_wait(t);
		t->wake_reason = VMSNAP_WAKE_TIMEOUT;
		Vmsnap_sched_wake(t);
	} else {
		arm_timer(t);
	}
}

/* --------------------------------------------------------- kill codes */

static const char *kill_message(const char *code)
{
	if (strcmp(code, "TIMEOUT") == 0)
		return "deadline exceeded";
	if (strcmp(code, "DEADLOCK") == 0)
		return "deadlock: every task is waiting and nothing can wake them";
	if (strcmp(code, "NOMEM") == 0)
		return "not enough memory: the task's memory limit is reached";
	return "cancelled";
}

/* The code a kill is reported with (a deadlock is a cancellation). */
static const char *kill_public_code(const char *code)
{
	return strcmp(code, "DEADLOCK") == 0 ? "CANCELLED" : code;
}

/* Raise the task's kill error in L.  Never returns. */
static int raise_kill(lua_State *L, Vmsnap_task *t)
{
	vmsnap_runtime *rt = t->rt;
	if (!t->kill_delivered) {
		t->kill_delivered = 1;
		t->slice_start = Vmsnap_now();
		t->grace_until = t->slice_start + (t->grace >= 0 ? t->grace : rt->cfg.cancel_grace);
	}
	return Vmsnap_raise(L, kill_public_code(t->kill_code), "%s", kill_message(t->kill_code));
}

/* Bring t's kill state up to date (a requested cancel, a passed deadline,
** an exhausted grace or, when `computing`, a cleanup slice that ran too
** long without waiting) and say whether the kill must be raised now. */
static int kill_due(vmsnap_runtime *rt, Vmsnap_task *t, int computing)
{
	double now;
	if (rt->cancel_requested && !t->kill_code)
		t->kill_code = "CANCELLED";
	if (!t->kill_code && t->deadline > 0 && Vmsnap_now() >= t->deadline)
		t->kill_code = "TIMEOUT";
	if (!t->kill_code && t->acct && t->acct->exceeded)
		t->kill_code = "NOMEM"; /* caught once in a pcall, it is raised again */
	if (!t->kill_code)
		return 0;
	if (!t->kill_delivered || t->kill_hard)
		return 1;
	now = Vmsnap_now();
	if (now >= t->grace_until || (computing && now - t->slice_start > CANCEL_SLICE))
		t->kill_hard = 1;
	return t->kill_hard;
}

#ifdef VMSNAP_FUZZ_COVERAGE
/* The fuzz build (tests/fuzz): every Lua line a task runs is coverage that
** libFuzzer sees (its extra counters), so inputs that reach new Lua code are
** kept as C coverage would be. Keyed by the function's source and line. */
#include <stdint.h>
#define TASK_HOOK_MASK (LUA_MASKCOUNT | LUA_MASKLINE)
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t lua_lines[1 << 16];
static void cover_line(lua_State *L, lua_Debug *ar)
{
	if (lua_getinfo(L, "S", ar)) {
		uintptr_t h = (uintptr_t)ar->source * 2654435761u + (uintptr_t)ar->currentline * 40503u;
		h ^= h >> 16;
		lua_lines[h & 0xFFFF]++;
	}
}
#else
#define TASK_HOOK_MASK LUA_MASKCOUNT
#endif

/* ------------------------------------------------------------ profiling */

/*
** VMSNAP_PROFILE=FILE: a sampling profile of the tasks' Lua code, for
** developers (docs/performance.md).  Each count hook (every HOOK_COUNT
** instructions) counts the running function, named by its source and first
** line (a C function by its Lua caller's); every PROFILE_EVERY samples the
** counts are written to FILE, most first, as "samples<TAB>function".  The
** counts live in a registry table keyed by the function's name.
*/
#define PROFILE_EVERY 2000
static int profile_state; /* 0 = unknown, 1 = off, 2 = on */
static const char *profile_path;
static unsigned long profile_samples;
static const char PROFILE_KEY = 'p';

typedef struct ProfileRow {
	lua_Integer count;
	char name[240];
} ProfileRow;

static int profile_cmp(const void *a, const void *b)
{
	const ProfileRow *x = a, *y = b;
	return (y->count > x->count) - (y->count < x->count);
}

static void profile_dump(lua_State *L)
{
	FILE *f = fopen(profile_path, "w");
	size_t n = 0, cap = 0, i;
	ProfileRow *rows = NULL;
	if (!f)
		return;
	lua_rawgetp(L, LUA_REGISTRYINDEX, &PROFILE_KEY);
	lua_pushnil(L);
	while (lua_next(L, -2)) {
		if (n == cap) {
			void *nr = realloc(rows, (cap = cap ? cap * 2 : 256) * sizeof *rows);
			if (!nr) {
				lua_pop(L, 2); /* the value and the key: the walk ends here */
				break;
			}
			rows = nr;
		}
		rows[n].count = lua_tointeger(L, -1);
		snprintf(rows[n].name, sizeof rows[n].name, "%s", lua_tostring(L, -2));
		n++;
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	if (n)
		qsort(rows, n, sizeof *rows, profile_cmp);
	fprintf(f, "# %lu samples of %d instructions\n", profile_samples, HOOK_COUNT);
	for (i = 0; i < n; i++)
		fprintf(f, "%lld\t%s\n", (long long)rows[i].count, rows[i].name);
	free(rows);
	fclose(f);
}

static void profile_sample(lua_State *L)
{
	lua_Debug d;
	char key[240];
	if (!lua_checkstack(L, 4))
		return;
	if (!lua_getstack(L, 0, &d) || !lua_getinfo(L, "Sn", &d))
		return;
	if (d.what[0] == 'C') {
		char cname[60];
		snprintf(cname, sizeof cname, "%s", d.name ? d.name : "?"); /* d is reused below */
		if (lua_getstack(L, 1, &d) && lua_getinfo(L, "Sl", &d))
			snprintf(key, sizeof key, "[C] %s <- %s:%d", cname, d.short_src, d.currentline);
		else
			snprintf(key, sizeof key, "[C] %s", cname);
	} else {
		snprintf(key, sizeof key, "%s:%d %s", d.short_src, d.linedefined, d.name ? d.name : "");
	}
	lua_rawgetp(L, LUA_REGISTRYINDEX, &PROFILE_KEY);
	if (!lua_istable(L, -1)) {
		lua_pop(L, 1);
		lua_newtable(L);
		lua_pushvalue(L, -1);
		lua_rawsetp(L, LUA_REGISTRYINDEX, &PROFILE_KEY);
	}
	lua_pushstring(L, key);
	lua_pushvalue(L, -1);
	lua_rawget(L, -3);
	lua_pushinteger(L, lua_tointeger(L, -1) + 1);
	lua_replace(L, -2);
	lua_rawset(L, -3);
	lua_pop(L, 1);
	if (++profile_samples % PROFILE_EVERY == 0)
		profile_dump(L);
}

static int profile_on(void)
{
	if (profile_state == 0) {
		profile_path = getenv("VMSNAP_PROFILE");
		profile_state = profile_path && *profile_path ? 2 : 1;
	}
	return profile_state == 2;
}

/* ----------------------------------------------------------- preemption */

#define PREEMPT_SIGNAL (SIGRTMAX - 2)
static pthread_once_t preempt_once = PTHREAD_ONCE_INIT;
static int preempt_installed; /* the signal's handler is ours */

/* Ask the thread running a task's code to check for kills at its next
** instruction.  Async-signal-safe; on the runtime's own thread only (Lua
** allows lua_sethook there even from a signal handler). */
static void preempt_here(vmsnap_runtime *rt)
{
	lua_State *L = rt->running;
	rt->preempt = 1;
	if (L)
		lua_sethook(L, Vmsnap_sched_hook, LUA_MASKCOUNT, 1);
}

static void preempt_signal(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	(void)sig;
	(void)uc;
	/* our timers, or vmsnap_cancel() on another thread of this process; only
	** on the thread the runtime runs on (a timer whose thread has exited may
	** signal another one) */
	if ((si->si_code == SI_TIMER || (si->si_code == SI_QUEUE && si->si_pid == getpid())) &&
	    si->si_value.sival_ptr) {
		vmsnap_runtime *rt = si->si_value.sival_ptr;
		if (pthread_equal(pthread_self(), rt->wd_thread))
			preempt_here(rt);
	}
	errno = saved;
}

static void preempt_install(void)
{
	struct sigaction sa, old;
	if (sigaction(PREEMPT_SIGNAL, NULL, &old) != 0)
		return;
	if (!(old.sa_flags & SA_SIGINFO) && old.sa_handler != SIG_DFL)
		return; /* the host uses the signal: keep the count hook always on */
	if ((old.sa_flags & SA_SIGINFO) && old.sa_sigaction != preempt_signal)
		return;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = preempt_signal;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	preempt_installed = sigaction(PREEMPT_SIGNAL, &sa, NULL) == 0;
}

/* Bind the runtime's preemption to the calling thread (once per thread it
** runs on); 1 if tasks may run without a hook. */
static int preempt_bind(vmsnap_runtime *rt)
{
	struct sigevent sev;
	sigset_t cur;
	if (rt->wd_state != 0 && pthread_equal(rt->wd_thread, pthread_self()))
		return rt->wd_state == 1;
	pthread_once(&preempt_once, preempt_install);
	if (rt->wd_state == 1)
		timer_delete(rt->wd_timer);
	rt->wd_state = -1;
	rt->wd_due = 0;
	rt->wd_thread = pthread_self();
	if (!preempt_installed || pthread_sigmask(SIG_BLOCK, NULL, &cur) != 0 ||
	    sigismember(&cur, PREEMPT_SIGNAL))
		return 0;
	memset(&sev, 0, sizeof sev);
	sev.sigev_notify = SIGEV_THREAD_ID;
	sev.sigev_signo = PREEMPT_SIGNAL;
	sev.sigev_value.sival_ptr = rt;
	sev._sigev_un._tid = (pid_t)gettid();
	if (timer_create(CLOCK_MONOTONIC, &sev, &rt->wd_timer) != 0)
		return 0;
	rt->wd_state = 1;
	return 1;
}

/* Make sure the timer fires by `deadline` (Vmsnap_now()'s clock, which is
** CLOCK_MONOTONIC): re-armed only when it would fire too late or has fired. */
static void preempt_at(vmsnap_runtime *rt, double deadline)
{
	struct itimerspec its;
	double due = deadline + 0.001, now = Vmsnap_now(); /* never before the deadline */
	if (rt->wd_due > now && rt->wd_due <= due)
		return;
	memset(&its, 0, sizeof its);
	its.it_value.tv_sec = (time_t)due;
	its.it_value.tv_nsec = (long)((due - floor(due)) * 1e9);
	if (timer_settime(rt->wd_timer, TIMER_ABSTIME, &its, NULL) == 0)
		rt->wd_due = due;
}

/* Whether t's threads carry the count hook all the time. */
static int hook_always(vmsnap_runtime *rt, const Vmsnap_task *t)
{
#ifdef VMSNAP_FUZZ_COVERAGE
	(void)rt;
	(void)t;
	return 1;
#else
	return rt->wd_state != 1 || t->sandboxed || t->acct || t->kill_code || profile_on();
#endif
}

/* Give thread co the hook that task t (or no task) needs now. */
static void watch_thread(vmsnap_runtime *rt, lua_State *co, const Vmsnap_task *t)
{
	int mask = 0, count = 0;
	if (t && t->kill_hard) {
		mask = LUA_MASKLINE | LUA_MASKCOUNT;
		count = 1;
	} else if (t && hook_always(rt, t)) {
		mask = TASK_HOOK_MASK;
		count = HOOK_COUNT;
	}
	if (lua_gethookmask(co) != mask || (mask && lua_gethookcount(co) != count))
		lua_sethook(co, mask ? Vmsnap_sched_hook : NULL, mask, count);
}

/* co starts or goes on running the current task's code (NULL: none). */
static void enter_thread(vmsnap_runtime *rt, lua_State *co)
{
	rt->running = co;
	if (!co)
		return;
	watch_thread(rt, co, rt->current);
	if (rt->preempt) /* a signal came while we switched */
		lua_sethook(co, Vmsnap_sched_hook, LUA_MASKCOUNT, 1);
}

void Vmsnap_sched_interrupt(vmsnap_runtime *rt)
{
	if (rt->wd_state != 1 || !rt->running)
		return; /* nothing runs between waits (or the count hook is on) */
	if (pthread_equal(pthread_self(), rt->wd_thread)) {
		preempt_here(rt);
	} else {
		union sigval v;
		v.sival_ptr = rt;
		pthread_sigqueue(rt->wd_thread, PREEMPT_SIGNAL, v);
	}
}

void Vmsnap_sched_unbind(vmsnap_runtime *rt)
{
	if (rt->wd_state == 1)
		timer_delete(rt->wd_timer);
	rt->wd_state = 0;
}

/* ---------------------------------------------------- tracked coroutines */

/* coroutine.resume, .wrap and .close, as the base library's, but keeping
** rt->running up to date so that preemption finds a busy plain coroutine. */

static int resume_thread(lua_State *L, lua_State *co, int narg)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	lua_State *prev = rt->running;
	int st, nres;
	if (!lua_checkstack(co, narg)) {
		lua_pushliteral(L, "too many arguments to resume");
		return -1;
	}
	lua_xmove(L, co, narg);
	enter_thread(rt, co);
	st = lua_resume(co, L, narg, &nres);
	enter_thread(rt, prev);
	if (st != LUA_OK && st != LUA_YIELD) {
		lua_xmove(co, L, 1); /* the error */
		return -1;
	}
	if (!lua_checkstack(L, nres + 1)) {
		lua_pop(co, nres);
		lua_pushliteral(L, "too many results to resume");
		return -1;
	}
	lua_xmove(co, L, nres);
	return nres;
}

static int co_resume(lua_State *L)
{
	lua_State *co = lua_tothread(L, 1);
	int n;
	luaL_argexpected(L, co, 1, "thread");
	n = resume_thread(L, co, lua_gettop(L) - 1);
	lua_pushboolean(L, n >= 0);
	lua_insert(L, n >= 0 ? -(n + 1) : -2);
	return n >= 0 ? n + 1 : 2;
}

/* Close co's pending to-be-closed variables, tracked; returns the status. */
static int close_thread(lua_State *L, lua_State *co)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	lua_State *prev = rt->running;
	int st;
	enter_thread(rt, co);
#if LUA_VERSION_RELEASE_NUM >= 50406
	st = lua_closethread(co, L);
#else
	st = lua_resetthread(co);
#endif
	enter_thread(rt, prev);
	return st;
}

static int co_wrapped(lua_State *L)
{
	lua_State *co = lua_tothread(L, lua_upvalueindex(1));
	int n = resume_thread(L, co, lua_gettop(L)), st;
	if (n >= 0)
		return n;
	st = lua_status(co);
	if (st != LUA_OK && st != LUA_YIELD) { /* it died: close it, its error goes on */
		lua_pop(L, 1);
		st = close_thread(L, co);
		lua_xmove(co, L, 1);
	}
	if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
		luaL_where(L, 1); /* where the wrapper was called */
		lua_insert(L, -2);
		lua_concat(L, 2);
	}
	return lua_error(L);
}

static int co_wrap(lua_State *L)
{
	lua_State *co;
	luaL_checktype(L, 1, LUA_TFUNCTION);
	co = lua_newthread(L);
	lua_pushvalue(L, 1);
	lua_xmove(L, co, 1);
	lua_pushcclosure(L, co_wrapped, 1);
	return 1;
}

static int co_close(lua_State *L)
{
	lua_State *co = lua_tothread(L, 1);
	lua_Debug ar;
	int st;
	luaL_argexpected(L, co, 1, "thread");
	st = lua_status(co);
	if (co == L)
		return luaL_error(L, "cannot close a running coroutine");
	if (st == LUA_OK && lua_getstack(co, 0, &ar))
		return luaL_error(L, "cannot close a normal coroutine");
	st = close_thread(L, co);
	if (st == LUA_OK) {
		lua_pushboolean(L, 1);
		return 1;
	}
	lua_pushboolean(L, 0);
	lua_xmove(co, L, 1);
	return 2;
}

void Vmsnap_sched_hook(lua_State *L, lua_Debug *ar)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	Vmsnap_task *t = rt->current;
	if (ar->event == LUA_HOOKCOUNT && profile_on())
		profile_sample(L);
#ifdef VMSNAP_FUZZ_COVERAGE
	if (ar->event == LUA_HOOKLINE) {
		cover_line(L, ar);
		if (!t || !t->kill_hard)
			return;
	}
#endif
	rt->preempt = 0;
	if (!t || !kill_due(rt, t, 1)) {
		/* nothing to deliver: back to the hook the task runs with */
		if (t)
			watch_thread(rt, L, t);
		else
			lua_sethook(L, NULL, 0, 0);
		if (rt->preempt) /* a signal came meanwhile */
			lua_sethook(L, Vmsnap_sched_hook, LUA_MASKCOUNT, 1);
		else if (t && t->deadline > 0 && rt->wd_state == 1 && !hook_always(rt, t))
			preempt_at(rt, t->deadline); /* it fired early (for another task) */
		return;
	}
	/* from now on the task's threads carry the count hook (its cleanups get
	** short slices); once hard, every line raises, so pcall cannot hold it */
	watch_thread(rt, L, t);
	if (L != t->co)
		watch_thread(rt, t->co, t);
	raise_kill(L, t);
}

void Vmsnap_sched_cancel(Vmsnap_task *t, const char *code)
{
	if (t->state == TASK_DONE || t->kill_code)
		return;
	t->kill_code = code;
	if (t->state == TASK_WAITING) {
		abort_wait(t);
		Vmsnap_sched_wake(t);
	}
	/* READY: the continuation or the first resume sees kill_code;
	** RUNNING: the count hook or the next wait delivers it */
}

/* ------------------------------------------------------------- waiting */

Vmsnap_task *Vmsnap_sched_check_wait(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	Vmsnap_task *t = rt->current;
	if (!t || t->co != L || !lua_isyieldable(L))
		luaL_error(L, "cannot wait here: not in a task (waiting APIs work only in "
		              "code run by vmsnap, outside metamethods and plain coroutines)");
	if (kill_due(rt, t, 0))
		raise_kill(L, t);
	return t;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	Vmsnap_task *t = rt->current;
	const Vmsnap_waitops *ops = (const Vmsnap_waitops *)ctx;
	void *ud = t->wait_ud;
	int reason = t->wake_reason;
	int aborted = (t->ops == NULL);
	(void)status;
	t->ops = NULL;
	t->wait_ud = NULL;
	t->wake_reason = VMSNAP_WAKE_OK;
	if (t->kill_code && (!t->kill_delivered || t->kill_hard))
		return raise_kill(L, t);
	if (aborted && reason != VMSNAP_WAKE_TIMEOUT) /* aborted by a kill */
		return raise_kill(L, t);
	return ops->push ? ops->push(L, ud, reason) : 0;
}

int Vmsnap_sched_wait(lua_State *L, Vmsnap_task *t, const Vmsnap_waitops *ops, void *ud,
                      double timeout)
{
	t->ops = ops;
	t->wait_ud = ud;
	t->wake_reason = VMSNAP_WAKE_OK;
	t->state = TASK_WAITING;
	t->wait_seq++;
	t->wait_until = timeout >= 0 ? Vmsnap_now() + timeout : 0;
	arm_timer(t);
	return lua_yieldk(L, 0, (lua_KContext)ops, wait_k);
}

/* ------------------------------------------------------------ spawning */

static int task_main_k(lua_State *L, int status, lua_KContext ctx)
{
	(void)ctx;
	/* stack: msgh, results... | msgh, error */
	int ok = (status == LUA_OK || status == LUA_YIELD);
	lua_pushboolean(L, ok);
	lua_replace(L, 1);
	if (!ok) {
		lua_pushinteger(L, status);
		return 3;
	}
	return lua_gettop(L);
}

static int task_main(lua_State *L)
{
	int n = lua_gettop(L) - 1;
	lua_pushcfunction(L, Vmsnap_msghandler);
	lua_insert(L, 1);
	int st = lua_pcallk(L, n, LUA_MULTRET, 1, 0, task_main_k);
	return task_main_k(L, st, 0);
}

Vmsnap_task *Vmsnap_sched_spawn(lua_State *L, int nargs, double deadline)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	int fidx = lua_gettop(L) - nargs;
	luaL_checktype(L, fidx, LUA_TFUNCTION);
	luaL_checkstack(L, 4, NULL);

	TaskBox *b = (TaskBox *)lua_newuserdatauv(L, sizeof(TaskBox), 3);
	b->t = NULL;
	luaL_setmetatable(L, TASK_MT);
	lua_insert(L, fidx); /* box, fn, args... */
	lua_State *co = lua_newthread(L);
	lua_setiuservalue(L, fidx, 3);
	luaL_checkstack(co, nargs + 2, NULL);

	Vmsnap_task *t = (Vmsnap_task *)calloc(1, sizeof(Vmsnap_task));
	if (!t)
		Vmsnap_raise(L, "NOMEM", "not enough memory for a task");
	b->t = t;
	t->rt = rt;
	t->co = co;
	t->id = next_task_id++;
	t->refs = 1;
	t->boxed = 1;
	*(vmsnap_runtime **)lua_getextraspace(co) = rt;
	/* its hook is set at each resume (watch_thread) */

	lua_pushcfunction(co, task_main);
	lua_xmove(L, co, nargs + 1); /* fn and args */
	t->nargs = nargs + 1;

	/* inherit the spawning task's deadline and bounds */
	if (rt->current && rt->current->deadline > 0 &&
	    (deadline <= 0 || rt->current->deadline < deadline))
		deadline = rt->current->deadline;
	t->deadline = deadline > 0 ? deadline : 0;
	t->grace = -1;
	if (rt->current) {
		t->grace = rt->current->grace;
		t->sandboxed = rt->current->sandboxed;
		t->acct = rt->current->acct;
		if (t->acct)
			t->acct->refs++;
	}

	if (uv_timer_init(&rt->loop, &t->timer) == 0) {
		t->timer.data = t;
		t->timer_open = 1;
		t->refs++;
	}
	lua_pushvalue(L, fidx);
	t->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	rt->registry_refs++;
	link_task(rt, t);
	enqueue_ready(t);
	return t;
}

Vmsnap_task *Vmsnap_sched_check(lua_State *L, int idx)
{
	TaskBox *b = (TaskBox *)luaL_checkudata(L, idx, TASK_MT);
	if (!b->t)
		luaL_argerror(L, idx, "attempt to use a released task");
	return b->t;
}

/* push the userdata of a live task */
static void push_task(lua_State *L, Vmsnap_task *t)
{
	lua_rawgeti(L, LUA_REGISTRYINDEX, t->co_ref);
}

/* ---------------------------------------------------------- finishing */

/* Record the outcome; the task's values are on co's stack: ok, values...
** or false, error, status (from task_main).  Runs under drain's pcall. */
static void finish(vmsnap_runtime *rt, Vmsnap_task *t, int rstatus)
{
	lua_State *L = rt->L, *co = t->co;
	int n = lua_gettop(co), i;
	int base = lua_gettop(L);

	push_task(L, t); /* base+1 */
	lua_createtable(L, n, 2);    /* base+2 result */
	if (rstatus == LUA_OK && n >= 1 && lua_toboolean(co, 1) && !t->kill_code) {
		lua_xmove(co, L, n - 1);
		for (i = n - 1; i >= 1; i--)
			lua_rawseti(L, base + 2, i);
		lua_pushinteger(L, n - 1);
		lua_setfield(L, base + 2, "n");
	} else {
		const char *code = "ERROR";
		int st = LUA_ERRRUN;
		t->failed = 1;
		if (rstatus != LUA_OK) {
			/* the error escaped task_main: its value is on top of co */
			st = rstatus;
			lua_xmove(co, L, 1);
		} else if (n >= 2 && !lua_toboolean(co, 1)) {
			st = (int)lua_tointeger(co, 3);
			lua_settop(co, 2);
			lua_xmove(co, L, 1);
		} else {
			lua_pushnil(L);
		}
		/* base+3: error value (or nil when a kill overrode success) */
		if (st == LUA_ERRMEM)
			code = "NOMEM";
		if (t->kill_code)
			code = kill_public_code(t->kill_code);
		else if (lua_istable(L, base + 3)) {
			lua_getfield(L, base + 3, "code");
			if (lua_type(L, -1) == LUA_TSTRING)
				code = lua_tostring(L, -1); /* anchored by the error table */
			lua_pop(L, 1);
		}
		if (lua_isnil(L, base + 3) || (t->kill_code && !lua_istable(L, base + 3))) {
			lua_pop(L, 1);
			Vmsnap_newerror(L, code, t->kill_code ? kill_message(t->kill_code) : "error");
		} else if (!lua_istable(L, base + 3)) {
			const char *m = lua_tostring(L, base + 3);
			Vmsnap_newerror(L, code, m ? m : "error");
			lua_replace(L, base + 3);
		}
		/* a kill wins over whatever error the unwinding produced */
		if (t->kill_code) {
			lua_pushstring(L, code);
			lua_setfield(L, base + 3, "code");
		}
		t->fail_code = strcmp(code, "NOMEM") == 0 ? "NOMEM"
		               : strcmp(code, "TIMEOUT") == 0   ? "TIMEOUT"
		               : strcmp(code, "CANCELLED") == 0 ? "CANCELLED"
		                                                : "ERROR";
		lua_pushnil(L);
		lua_rawseti(L, base + 2, 1);
		lua_getfield(L, base + 3, "message");
		lua_rawseti(L, base + 2, 2);
		lua_getfield(L, base + 3, "code");
		lua_rawseti(L, base + 2, 3);
		lua_pushinteger(L, 3);
		lua_setfield(L, base + 2, "n");
		lua_pushvalue(L, base + 3);
		lua_setfield(L, base + 2, "error");
		lua_pop(L, 1);
	}
	lua_setiuservalue(L, base + 1, 1);

	t->state = TASK_DONE;
	lua_settop(co, 0);
	if (rstatus != LUA_OK)
		lua_resetthread(co);
	unlink_task(t);
	close_timer(t);

	/* wake the tasks waiting for this one */
	int nwait = 0;
	if (lua_getiuservalue(L, base + 1, 2) == LUA_TTABLE) {
		lua_pushnil(L);
		while (lua_next(L, -2)) {
			TaskBox *wb = (TaskBox *)lua_touserdata(L, -2);
			Vmsnap_task *w = wb ? wb->t : NULL;
			if (w && w->state == TASK_WAITING && w->wait_seq == (unsigned)lua_tointeger(L, -1)) {
				Vmsnap_sched_wake(w);
				nwait++;
			}
			lua_pop(L, 1);
		}
	}
	lua_pop(L, 1);
	lua_pushnil(L);
	lua_setiuservalue(L, base + 1, 2);

	if (nwait > 0 || t == rt->main_task)
		t->observed = 1;
	if (t == rt->main_task) {
		lua_getiuservalue(L, base + 1, 1);
		if (t->failed) {
			lua_getfield(L, -1, "error");
			Vmsnap_set_error_from(rt, L, lua_gettop(L), t->fail_code);
			lua_pop(L, 1);
		}
		lua_pop(L, 1);
	}
	luaL_unref(L, LUA_REGISTRYINDEX, t->co_ref);
	rt->registry_refs--;
	t->co_ref = LUA_NOREF;
	/* the coroutine is no longer needed; results stay in the userdata */
	lua_pushnil(L);
	lua_setiuservalue(L, base + 1, 3);
	t->co = NULL;
	lua_settop(L, base);
}

static void resume(vmsnap_runtime *rt, Vmsnap_task *t)
{
	lua_State *co = t->co;
	int nres = 0, nargs = 0, st;
	if (!t->started) {
		if (t->kill_code) { /* cancelled before it ever ran */
			lua_settop(co, 0);
			rt->alloc_exempt++;
			finish(rt, t, LUA_OK);
			rt->alloc_exempt--;
			return;
		}
		t->started = 1;
		nargs = t->nargs;
	}
	t->state = TASK_RUNNING;
	rt->current = t;
	rt->acct = t->acct;
	t->slice_start = Vmsnap_now();
	preempt_bind(rt);
	kill_due(rt, t, 0); /* a kill that came while it was ready: its hook */
	enter_thread(rt, co);
	if (t->deadline > 0 && !hook_always(rt, t))
		preempt_at(rt, t->deadline);
	st = lua_resume(co, rt->L, nargs, &nres);
	rt->running = NULL;
	rt->current = NULL;
	rt->acct = NULL;
	if (st == LUA_YIELD) {
		if (t->state == TASK_RUNNING) { /* a bare coroutine.yield(): run again later */
			lua_pop(co, nres);
			enqueue_ready(t);
		}
	} else {
		rt->alloc_exempt++;
		finish(rt, t, st);
		rt->alloc_exempt--;
	}
}

static int drain_p(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	Vmsnap_task *t;
	if (rt->cancel_requested && !rt->cancel_seen) {
		rt->cancel_seen = 1;
		for (t = rt->all; t; t = t->next)
			Vmsnap_sched_cancel(t, "CANCELLED");
	}
	while ((t = pop_ready(rt)) != NULL)
		resume(rt, t);
	uv_idle_stop(&rt->idle);
	return 0;
}

void Vmsnap_sched_drain(vmsnap_runtime *rt)
{
	lua_State *L = rt->L;
	lua_pushcfunction(L, drain_p);
	if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
		rt->alloc_exempt = 0;
		Vmsnap_log(rt, VMSNAP_LOG_ERROR, "task", "scheduler: %s", lua_tostring(L, -1));
		lua_pop(L, 1);
	}
}

static void on_deadlock(vmsnap_runtime *rt)
{
	Vmsnap_task *t;
	Vmsnap_log(rt, VMSNAP_LOG_ERROR, "task", "deadlock: %d task(s) wait and nothing can wake them",
	           rt->ntasks);
	for (t = rt->all; t; t = t->next) {
		if (t->kill_code && t->state == TASK_WAITING) {
			t->kill_hard = 1;
			abort_wait(t);
			Vmsnap_sched_wake(t);
		} else {
			Vmsnap_sched_cancel(t, "DEADLOCK");
		}
	}
}

int Vmsnap_sched_step(vmsnap_runtime *rt, int timeout_ms)
{
	Vmsnap_sched_drain(rt);
	if (rt->ntasks == 0)
		return 0;
	if (!rt->ready_head) {
		int alive;
		if (timeout_ms < 0) {
			alive = uv_run(&rt->loop, UV_RUN_ONCE);
		} else {
			int bt = uv_backend_timeout(&rt->loop);
			if (timeout_ms > 0 && uv_loop_alive(&rt->loop)) {
				struct pollfd pfd = {uv_backend_fd(&rt->loop), POLLIN, 0};
				int ms = (bt >= 0 && bt < timeout_ms) ? bt : timeout_ms;
				poll(&pfd, 1, ms);
			}
			alive = uv_run(&rt->loop, UV_RUN_NOWAIT);
		}
		if (!alive && !rt->ready_head && !rt->cancel_requested && rt->ntasks > 0 &&
		    !uv_loop_alive(&rt->loop))
			on_deadlock(rt);
	}
	Vmsnap_sched_drain(rt);
	return rt->ntasks > 0;
}

void Vmsnap_sched_run(vmsnap_runtime *rt)
{
	while (Vmsnap_sched_step(rt, -1))
		;
}

void Vmsnap_sched_shutdown(vmsnap_runtime *rt)
{
	Vmsnap_task *t;
	double limit = Vmsnap_now() + rt->cfg.cancel_grace + 2.0;
	for (t = rt->all; t; t = t->next)
		Vmsnap_sched_cancel(t, "CANCELLED");
	while (rt->ntasks > 0 && Vmsnap_now() < limit)
		Vmsnap_sched_step(rt, 100);
}

static void wakeup_cb(uv_async_t *h)
{
	(void)h; /* only makes uv_run return */
}

void Vmsnap_sched_init(vmsnap_runtime *rt)
{
	uv_async_init(&rt->loop, &rt->wakeup, wakeup_cb);
	uv_unref((uv_handle_t *)&rt->wakeup);
	uv_idle_init(&rt->loop, &rt->idle);
}

int Vmsnap_sched_push_result(lua_State *L, Vmsnap_task *t)
{
	int n, i;
	t->observed = 1;
	lua_getiuservalue(L, -1, 1);
	lua_getfield(L, -1, "n");
	n = (int)lua_tointeger(L, -1);
	lua_pop(L, 1);
	luaL_checkstack(L, n, "too many results");
	for (i = 1; i <= n; i++)
		lua_rawgeti(L, -i, i);
	lua_remove(L, -(n + 1));
	return n;
}

/* ------------------------------------------------------------- Lua API */

static int task_spawn(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TFUNCTION);
	Vmsnap_sched_spawn(L, lua_gettop(L) - 1, 0);
	return 1;
}

/* spawn_within(seconds, fn, ...): a task whose deadline is now + seconds */
static int task_spawn_within(lua_State *L)
{
	double s = luaL_checknumber(L, 1);
	luaL_argcheck(L, s >= 0, 1, "seconds must not be negative");
	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_remove(L, 1);
	Vmsnap_sched_spawn(L, lua_gettop(L) - 1, Vmsnap_now() + s);
	return 1;
}

/* spawn_bounded(opts, fn, ...): a task with bounds, which the tasks it
** spawns share: opts.within (seconds to its deadline), opts.memory (bytes the
** heap may grow by while it runs), opts.grace (seconds its cleanups get once
** cancelled; 0: every line raises at once), opts.sandbox (string patterns
** are checked for cost). */
static int task_spawn_bounded(lua_State *L)
{
	double within = -1, grace = -1, memory = 0;
	int sandbox = 0;
	luaL_checktype(L, 1, LUA_TTABLE);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	if (lua_getfield(L, 1, "within") != LUA_TNIL)
		within = luaL_checknumber(L, -1);
	if (lua_getfield(L, 1, "memory") != LUA_TNIL)
		memory = luaL_checknumber(L, -1);
	if (lua_getfield(L, 1, "grace") != LUA_TNIL)
		grace = luaL_checknumber(L, -1);
	lua_getfield(L, 1, "sandbox");
	sandbox = lua_toboolean(L, -1);
	lua_pop(L, 4);
	luaL_argcheck(L, memory >= 0, 1, "memory must not be negative");
	lua_remove(L, 1);
	Vmsnap_task *t = Vmsnap_sched_spawn(L, lua_gettop(L) - 1, within >= 0 ? Vmsnap_now() + within : 0);
	if (grace >= 0 && (t->grace < 0 || grace < t->grace))
		t->grace = grace;
	if (sandbox)
		t->sandboxed = 1;
	if (memory > 0 && (!t->acct || memory < (double)(t->acct->limit - t->acct->used))) {
		Vmsnap_account *a = (Vmsnap_account *)calloc(1, sizeof *a);
		if (!a)
			return Vmsnap_raise(L, "NOMEM", "not enough memory for a task's account");
		a->limit = (long long)memory;
		a->refs = 1;
		acct_unref(t->acct);
		t->acct = a;
	}
	return 1;
}

/* account(t): bytes t's account has grown the heap by, its limit, whether it refused */
static int task_account(lua_State *L)
{
	Vmsnap_task *t = Vmsnap_sched_check(L, 1);
	if (!t->acct)
		return 0;
	lua_pushinteger(L, (lua_Integer)t->acct->used);
	lua_pushinteger(L, (lua_Integer)t->acct->limit);
	lua_pushboolean(L, t->acct->exceeded);
	return 3;
}

static int task_current(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	if (!rt->current || rt->current->co != L)
		return 0;
	push_task(L, rt->current);
	return 1;
}

static double opt_timeout(lua_State *L, int idx)
{
	if (lua_isnoneornil(L, idx))
		return -1;
	double s = luaL_checknumber(L, idx);
	luaL_argcheck(L, s >= 0, idx, "timeout must not be negative");
	return s;
}

static int sleep_push(lua_State *L, void *ud, int reason)
{
	(void)ud;
	(void)reason;
	lua_pushboolean(L, 1);
	return 1;
}

static const Vmsnap_waitops sleep_ops = {NULL, sleep_push};

static int task_sleep(lua_State *L)
{
	double s = luaL_checknumber(L, 1);
	luaL_argcheck(L, s >= 0, 1, "seconds must not be negative");
	Vmsnap_task *t = Vmsnap_sched_check_wait(L);
	return Vmsnap_sched_wait(L, t, &sleep_ops, NULL, s);
}

/* suspend(timeout): wait until wakeup(task); true, or nil, msg, TIMEOUT */
static int suspend_push(lua_State *L, void *ud, int reason)
{
	(void)ud;
	if (reason == VMSNAP_WAKE_TIMEOUT)
		return Vmsnap_pushfail(L, "TIMEOUT", "timeout");
	lua_pushboolean(L, 1);
	return 1;
}

static const Vmsnap_waitops suspend_ops = {NULL, suspend_push};

static int task_suspend(lua_State *L)
{
	double s = opt_timeout(L, 1);
	Vmsnap_task *t = Vmsnap_sched_check_wait(L);
	return Vmsnap_sched_wait(L, t, &suspend_ops, NULL, s);
}

static int task_wakeup(lua_State *L)
{
	Vmsnap_task *t = Vmsnap_sched_check(L, 1);
	int ok = (t->state == TASK_WAITING && t->ops == &suspend_ops);
	if (ok)
		Vmsnap_sched_wake(t);
	lua_pushboolean(L, ok);
	return 1;
}

static int wait_push(lua_State *L, void *ud, int reason)
{
	Vmsnap_task *t = (Vmsnap_task *)ud;
	/* the waited task's userdata is argument 1 of task_wait */
	if (reason == VMSNAP_WAKE_TIMEOUT || t->state != TASK_DONE)
		return Vmsnap_pushfail(L, "TIMEOUT", "timeout waiting for task %d", (int)t->id);
	lua_pushvalue(L, 1);
	return Vmsnap_sched_push_result(L, t);
}

static const Vmsnap_waitops wait_ops = {NULL, wait_push};

static int task_wait(lua_State *L)
{
	Vmsnap_task *t = Vmsnap_sched_check(L, 1);
	double s = opt_timeout(L, 2);
	lua_settop(L, 1);
	if (t->state == TASK_DONE)
		return Vmsnap_sched_push_result(L, t);
	Vmsnap_task *self = Vmsnap_sched_check_wait(L);
	if (self == t)
		luaL_argerror(L, 1, "a task cannot wait for itself");
	if (lua_getiuservalue(L, 1, 2) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_newtable(L);
		lua_pushvalue(L, -1);
		lua_setiuservalue(L, 1, 2);
	}
	push_task(L, self);
	lua_pushinteger(L, self->wait_seq + 1); /* the seq Vmsnap_sched_wait assigns */
	lua_rawset(L, -3);
	lua_pop(L, 1);
	return Vmsnap_sched_wait(L, self, &wait_ops, t, s);
}

static int task_cancel(lua_State *L)
{
	Vmsnap_task *t = Vmsnap_sched_check(L, 1);
	int was = (t->state != TASK_DONE && !t->kill_code);
	Vmsnap_sched_cancel(t, "CANCELLED");
	lua_pushboolean(L, was);
	return 1;
}

static const char *const state_names[] = {"ready", "ready", "running", "waiting", "done"};

static int task_status(lua_State *L)
{
	Vmsnap_task *t = Vmsnap_sched_check(L, 1);
	if (t->state == TASK_DONE)
		lua_pushstring(L, t->failed ? (t->kill_code ? "cancelled" : "failed") : "done");
	else
		lua_pushstring(L, state_names[t->state]);
	return 1;
}

static int task_id(lua_State *L)
{
	lua_pushinteger(L, Vmsnap_sched_check(L, 1)->id);
	return 1;
}

static int task_deadline(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	Vmsnap_task *t = lua_isnoneornil(L, 1) ? rt->current : Vmsnap_sched_check(L, 1);
	if (!t || t->deadline <= 0)
		return 0;
	lua_pushnumber(L, t->deadline);
	return 1;
}

static int task_now(lua_State *L)
{
	lua_pushnumber(L, Vmsnap_now());
	return 1;
}

static int task_count(lua_State *L)
{
	lua_pushinteger(L, Vmsnap_rt(L)->ntasks);
	return 1;
}

static int task_tostring(lua_State *L)
{
	TaskBox *b = (TaskBox *)luaL_checkudata(L, 1, TASK_MT);
	if (!b->t)
		lua_pushliteral(L, "task (released)");
	else {
		task_status(L);
		lua_pushfstring(L, "task %d (%s)", (int)b->t->id, lua_tostring(L, -1));
	}
	return 1;
}

static int task_gc(lua_State *L)
{
	TaskBox *b = (TaskBox *)luaL_checkudata(L, 1, TASK_MT);
	Vmsnap_task *t = b->t;
	if (!t)
		return 0;
	b->t = NULL;
	if (t->state == TASK_DONE && t->failed && !t->kill_code && !t->observed) {
		/* an error nobody looked at must not vanish */
		lua_getiuservalue(L, 1, 1);
		lua_getfield(L, -1, "error");
		lua_getfield(L, -1, "traceback");
		lua_getfield(L, -2, "message");
		Vmsnap_log(t->rt, VMSNAP_LOG_WARN, "task", "task %u failed and its result was never read: %s%s%s",
		           t->id, lua_tostring(L, -1) ? lua_tostring(L, -1) : "?",
		           lua_tostring(L, -2) ? "\n" : "", lua_tostring(L, -2) ? lua_tostring(L, -2) : "");
		lua_pop(L, 4);
	}
	if (t->state != TASK_DONE) { /* only at lua_close */
		if (t->state == TASK_WAITING)
			abort_wait(t);
		if (t->state == TASK_READY)
			remove_ready(t);
		if (t->rt->current == t)
			t->rt->current = NULL;
		t->state = TASK_DONE;
		unlink_task(t);
	}
	close_timer(t);
	task_unref(t);
	return 0;
}

static const luaL_Reg task_funcs[] = {
    {"spawn", task_spawn},     {"spawn_within", task_spawn_within},
    {"current", task_current}, {"sleep", task_sleep},
    {"suspend", task_suspend}, {"wakeup", task_wakeup},
    {"wait", task_wait},       {"cancel", task_cancel},
    {"status", task_status},   {"id", task_id},
    {"deadline", task_deadline}, {"now", task_now},
    {"count", task_count},     {"spawn_bounded", task_spawn_bounded},
    {"account", task_account}, {NULL, NULL}};

static const luaL_Reg task_meth[] = {
    {"wait", task_wait}, {"cancel", task_cancel}, {"status", task_status}, {"id", task_id},
    {NULL, NULL}};

static const luaL_Reg task_metameth[] = {
    {"__index", NULL}, {"__gc", task_gc}, {"__tostring", task_tostring}, {NULL, NULL}};

void Vmsnap_sched_open(lua_State *L)
{
	if (luaL_newmetatable(L, TASK_MT)) {
		luaL_setfuncs(L, task_metameth, 0);
		luaL_newlibtable(L, task_meth);
		luaL_setfuncs(L, task_meth, 0);
		lua_setfield(L, -2, "__index");
	}
	lua_pop(L, 1);
	/* coroutine.resume, .wrap and .close that preemption can follow */
	if (lua_getglobal(L, "coroutine") == LUA_TTABLE) {
		lua_pushcfunction(L, co_resume);
		lua_setfield(L, -2, "resume");
		lua_pushcfunction(L, co_wrap);
		lua_setfield(L, -2, "wrap");
		lua_pushcfunction(L, co_close);
		lua_setfield(L, -2, "close");
	}
	lua_pop(L, 1);
}

int luaopen_vmsnap_core_task(lua_State *L)
{
	Vmsnap_sched_open(L);
	luaL_newlib(L, task_funcs);
	return 1;
}

/* ------------------------------------------------ plugin cosockets */

typedef struct FdWait {
	uv_poll_t poll;
	Vmsnap_task *t;
	int events;
	int open;
} FdWait;

static void fdwait_closed(uv_handle_t *h)
{
	free(h->data);
}

static void fdwait_close(FdWait *w)
{
	if (w->open) {
		w->open = 0;
		uv_poll_stop(&w->poll);
		uv_close((uv_handle_t *)&w->poll, fdwait_closed);
	}
}

static void fdwait_cb(uv_poll_t *p, int status, int events)
{
	FdWait *w = (FdWait *)p->data;
	w->events = status < 0 ? -1 : events;
	uv_poll_stop(p);
	if (w->t)
		Vmsnap_sched_wake(w->t);
}

static void fdwait_cancel(void *ud)
{
	FdWait *w = (FdWait *)ud;
	w->t = NULL;
	fdwait_close(w);
}

static int fdwait_push(lua_State *L, void *ud, int reason)
{
	FdWait *w = (FdWait *)ud;
	int ev;
	if (reason == VMSNAP_WAKE_TIMEOUT) /* fdwait_cancel closed it already */
		return Vmsnap_pushfail(L, "TIMEOUT", "timeout");
	ev = w->events;
	fdwait_close(w);
	if (ev < 0)
		return Vmsnap_pushfail(L, "EIO", "error polling the descriptor");
	lua_pushinteger(L, ((ev & UV_READABLE) ? VMSNAP_IO_READ : 0) |
	                       ((ev & UV_WRITABLE) ? VMSNAP_IO_WRITE : 0));
	return 1;
}

static const Vmsnap_waitops fdwait_ops = {fdwait_cancel, fdwait_push};

VMSNAP_API int vmsnap_await_fd(lua_State *L, int fd, int events, double timeout)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	Vmsnap_task *t = Vmsnap_sched_check_wait(L);
	FdWait *w;
	int uvev = ((events & VMSNAP_IO_READ) ? UV_READABLE : 0) |
	           ((events & VMSNAP_IO_WRITE) ? UV_WRITABLE : 0);
	if (!uvev)
		return luaL_error(L, "vmsnap_await_fd: no events to wait for");
	w = (FdWait *)calloc(1, sizeof *w);
	if (!w)
		return luaL_error(L, "not enough memory");
	if (uv_poll_init(&rt->loop, &w->poll, fd) != 0) {
		free(w);
		return Vmsnap_pushfail(L, "EBADF", "cannot watch descriptor %d", fd);
	}
	w->poll.data = w;
	w->open = 1;
	w->t = t;
	uv_poll_start(&w->poll, uvev, fdwait_cb);
	return Vmsnap_sched_wait(L, t, &fdwait_ops, w, timeout);
}

VMSNAP_API int vmsnap_await_timer(lua_State *L, double seconds)
{
	Vmsnap_task *t = Vmsnap_sched_check_wait(L);
	if (seconds < 0)
		return luaL_error(L, "vmsnap_await_timer: seconds must not be negative");
	return Vmsnap_sched_wait(L, t, &sleep_ops, NULL, seconds);
}
