/*
** proc.c -- `vmsnap.core.proc`: child processes on the libuv loop.
**
**   p = proc.spawn(argv, opts)  -> process | nil, message, code (ENOENT...)
**       opts.env        {NAME = value}: added to (or, with clear_env, replacing)
**                       the current environment
**       opts.cwd, opts.stdin (string written then closed; default: /dev/null)
**       opts.stdout, opts.stderr = "capture" (default) | "inherit" | "null"
**       opts.max_output bytes kept per stream (default 64 MiB)
**   p:wait([timeout]) -> {status=, signal=, stdout=, stderr=, pid=, truncated=}
**                        | nil, message, "TIMEOUT"
**   p:kill([signal])    signal name ("TERM", "KILL", ...) or number
**   p:pid(), p:close()  close kills a process that still runs
**
** The C struct lives in malloc'd memory because its libuv handles outlive
** the userdata while they close; refs counts the userdata and each open
** handle.  libuv callbacks only fill buffers and wake the waiting task.
*/
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/loader.h"
#include "../core/runtime.h"
#include "../core/scheduler.h"

#define PROC_MT "vmsnap.proc.Process"

typedef struct Out {
	char *p;
	size_t n, cap;
	int open, eof;
	uv_pipe_t pipe;
} Out;

typedef struct Proc {
	uv_process_t proc;
	uv_pipe_t in;
	uv_write_t wreq;
	Out out, err;
	int refs;
	int proc_open, in_open, exited, truncated;
	int64_t exit_status;
	int term_signal;
	int pid;
	size_t max_output;
	char *stdin_data;
	Vmsnap_task *waiter;
} Proc;

typedef struct ProcBox {
	Proc *p;
} ProcBox;

static void proc_unref(Proc *p)
{
	if (--p->refs == 0) {
		free(p->out.p);
		free(p->err.p);
		free(p->stdin_data);
		free(p);
	}
}

static void handle_closed(uv_handle_t *h)
{
	proc_unref((Proc *)h->data);
}

static int finished(Proc *p)
{
	return p->exited && (!p->out.open || p->out.eof) && (!p->err.open || p->err.eof);
}

static void maybe_wake(Proc *p)
{
	if (p->waiter && finished(p)) {
		Vmsnap_task *t = p->waiter;
		p->waiter = NULL;
		Vmsnap_sched_wake(t);
	}
}

static void on_exit_cb(uv_process_t *h, int64_t status, int sig)
{
	Proc *p = (Proc *)h->data;
	p->exited = 1;
	p->exit_status = status;
	p->term_signal = sig;
	if (p->proc_open) {
		p->proc_open = 0;
		uv_close((uv_handle_t *)&p->proc, handle_closed);
	}
	maybe_wake(p);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	/* libuv reads into it synchronously; one per thread, since runtimes
	** on different threads run their loops at the same time */
	static _Thread_local char slab[65536];
	(void)h;
	(void)suggested;
	buf->base = slab;
	buf->len = sizeof slab;
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	Out *o = (Out *)((char *)s - offsetof(Out, pipe));
	Proc *p = (Proc *)s->data;
	if (n > 0) {
		size_t keep = (size_t)n;
		if (o->n + keep > p->max_output) {
			keep = p->max_output > o->n ? p->max_output - o->n : 0;
			p->truncated = 1;
		}
		if (keep) {
			if (o->n + keep > o->cap) {
				size_t cap = o->cap ? o->cap : 4096;
				while (cap < o->n + keep)
					cap *= 2;
				char *np = (char *)realloc(o->p, cap);
				if (!np) {
					p->truncated = 1;
					return;
				}
				o->p = np;
				o->cap = cap;
			}
			memcpy(o->p + o->n, buf->base, keep);
			o->n += keep;
		}
	} else if (n < 0) {
		o->eof = 1;
		uv_close((uv_handle_t *)&o->pipe, handle_closed);
		maybe_wake(p);
	}
}

static void write_cb(uv_write_t *req, int status)
{
	Proc *p = (Proc *)req->data;
	(void)status;
	if (p->in_open) {
		p->in_open = 0;
		uv_close((uv_handle_t *)&p->in, handle_closed);
	}
}

static int sig_number(lua_State *L, int idx)
{
	static const struct {
		const char *name;
		int sig;
	} sigs[] = {{"TERM", SIGTERM}, {"KILL", SIGKILL}, {"INT", SIGINT},   {"HUP", SIGHUP},
	            {"QUIT", SIGQUIT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"STOP", SIGSTOP},
	            {"CONT", SIGCONT}, {NULL, 0}};
	int i;
	if (lua_isnoneornil(L, idx))
		return SIGTERM;
	if (lua_type(L, idx) == LUA_TNUMBER)
		return (int)luaL_checkinteger(L, idx);
	const char *s = luaL_checkstring(L, idx);
	if (strncmp(s, "SIG", 3) == 0)
		s += 3;
	for (i = 0; sigs[i].name; i++)
		if (strcmp(s, sigs[i].name) == 0)
			return sigs[i].sig;
	return luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", s));
}

static int stdio_mode(lua_State *L, int opts, const char *k)
{
	static const char *const modes[] = {"capture", "inherit", "null", NULL};
	int m;
	lua_getfield(L, opts, k);
	m = lua_isnil(L, -1) ? 0 : luaL_checkoption(L, -1, NULL, modes);
	lua_pop(L, 1);
	return m;
}

/* proc.spawn(argv, opts) */
static int proc_spawn(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	uv_process_options_t o;
	uv_stdio_container_t stdio[3];
	lua_Integer n, i;
	int opts, r, outm, errm, clear_env;
	const char *cwd = NULL;
	size_t inlen = 0;
	const char *indata = NULL;

	luaL_checktype(L, 1, LUA_TTABLE);
	n = (lua_Integer)lua_rawlen(L, 1);
	luaL_argcheck(L, n >= 1, 1, "argv must hold at least the program");
	if (lua_isnoneornil(L, 2)) {
		lua_settop(L, 1);
		lua_newtable(L);
	}
	luaL_checktype(L, 2, LUA_TTABLE);
	opts = 2;
	outm = stdio_mode(L, opts, "stdout");
	errm = stdio_mode(L, opts, "stderr");
	lua_getfield(L, opts, "cwd");
	cwd = lua_tostring(L, -1);
	lua_getfield(L, opts, "stdin");
	if (!lua_isnil(L, -1)) {
		if (lua_type(L, -1) != LUA_TSTRING)
			return luaL_argerror(L, 2, "stdin must be a string");
		indata = lua_tolstring(L, -1, &inlen);
	}
	lua_getfield(L, opts, "clear_env");
	clear_env = lua_toboolean(L, -1);
	lua_pop(L, 1);
	double maxo = 64.0 * 1024 * 1024;
	lua_getfield(L, opts, "max_output");
	if (!lua_isnil(L, -1))
		maxo = luaL_checknumber(L, -1);
	lua_pop(L, 1);

	/* argv and env as userdata-anchored arrays of C strings */
	lua_createtable(L, (int)n, 0); /* anchors the argument strings */
	int anchor = lua_gettop(L);
	char **argv = (char **)lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
	for (i = 1; i <= n; i++) {
		lua_rawgeti(L, 1, i);
		if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
			return luaL_argerror(L, 1, "argv elements must be strings");
		argv[i - 1] = (char *)lua_tostring(L, -1);
		lua_rawseti(L, anchor, i);
	}
	argv[n] = NULL;

	char **env = NULL;
	lua_getfield(L, opts, "env");
	if (!lua_isnil(L, -1) || clear_env) {
		int envt = lua_gettop(L);
		size_t cnt = 0, k = 0;
		lua_newtable(L); /* strings "K=V" */
		int strs = lua_gettop(L);
		if (!clear_env) {
			char **e;
			for (e = environ; *e; e++) {
				const char *eq = strchr(*e, '=');
				if (!eq)
					continue;
				lua_pushlstring(L, *e, (size_t)(eq - *e));
				if (lua_istable(L, envt)) {
					lua_pushvalue(L, -1);
					if (lua_rawget(L, envt) != LUA_TNIL) {
						lua_pop(L, 2);
						continue; /* overridden */
					}
					lua_pop(L, 1);
				}
				lua_pop(L, 1);
				lua_pushstring(L, *e);
				lua_rawseti(L, strs, (lua_Integer)++cnt);
			}
		}
		if (lua_istable(L, envt)) {
			lua_pushnil(L);
			while (lua_next(L, envt)) {
				if (lua_type(L, -2) != LUA_TSTRING)
					return luaL_argerror(L, 2, "env keys must be strings");
				if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
					lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
					lua_rawseti(L, strs, (lua_Integer)++cnt);
				} else if (lua_type(L, -1) != LUA_TBOOLEAN) {
					return luaL_argerror(L, 2, "env values must be strings");
				}
				lua_pop(L, 1);
			}
		}
		env = (char **)lua_newuserdatauv(L, sizeof(char *) * (cnt + 1), 0);
		for (k = 0; k < cnt; k++) {
			lua_rawgeti(L, strs, (lua_Integer)k + 1);
			env[k] = (char *)lua_tostring(L, -1); /* anchored in strs */
			lua_pop(L, 1);
		}
		env[cnt] = NULL;
	}

	ProcBox *box = (ProcBox *)lua_newuserdatauv(L, sizeof(ProcBox), 0);
	box->p = NULL;
	luaL_setmetatable(L, PROC_MT);
	Proc *p = (Proc *)calloc(1, sizeof(Proc));
	if (!p)
		return luaL_error(L, "not enough memory");
	if (indata) {
		p->stdin_data = (char *)malloc(inlen ? inlen : 1);
		if (!p->stdin_data) {
			free(p);
			return luaL_error(L, "not enough memory");
		}
		memcpy(p->stdin_data, indata, inlen);
	}
	box->p = p;
	p->refs = 1;
	p->max_output = (size_t)maxo;

	memset(&o, 0, sizeof o);
	o.file = argv[0];
	o.args = argv;
	o.env = env;
	o.cwd = cwd;
	o.exit_cb = on_exit_cb;
	o.stdio_count = 3;
	o.stdio = stdio;
	if (indata) {
		uv_pipe_init(&rt->loop, &p->in, 0);
		p->in.data = p;
		p->in_open = 1;
		p->refs++;
		stdio[0].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_READABLE_PIPE);
		stdio[0].data.stream = (uv_stream_t *)&p->in;
	} else {
		stdio[0].flags = UV_IGNORE;
	}
	Out *outs[2] = {&p->out, &p->err};
	int modes[2] = {outm, errm};
	for (i = 0; i < 2; i++) {
		if (modes[i] == 0) {
			uv_pipe_init(&rt->loop, &outs[i]->pipe, 0);
			outs[i]->pipe.data = p;
			outs[i]->open = 1;
			p->refs++;
			stdio[i + 1].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
			stdio[i + 1].data.stream = (uv_stream_t *)&outs[i]->pipe;
		} else if (modes[i] == 1) {
			stdio[i + 1].flags = UV_INHERIT_FD;
			stdio[i + 1].data.fd = (int)i + 1;
		} else {
			stdio[i + 1].flags = UV_IGNORE;
		}
	}
	r = uv_spawn(&rt->loop, &p->proc, &o);
	p->proc.data = p;
	if (r != 0) {
		/* close the pipes we created; the process handle needs closing too */
		p->refs++;
		uv_close((uv_handle_t *)&p->proc, handle_closed);
		if (p->in_open) {
			p->in_open = 0;
			uv_close((uv_handle_t *)&p->in, handle_closed);
		}
		for (i = 0; i < 2; i++)
			if (outs[i]->open) {
				outs[i]->eof = 1;
				uv_close((uv_handle_t *)&outs[i]->pipe, handle_closed);
			}
		p->exited = 1;
		lua_pushnil(L);
		lua_pushfstring(L, "spawn %s: %s", argv[0], uv_strerror(r));
		lua_pushstring(L, uv_err_name(r));
		return 3;
	}
	p->proc_open = 1;
	p->refs++;
	p->pid = p->proc.pid;
	for (i = 0; i < 2; i++)
		if (outs[i]->open)
			uv_read_start((uv_stream_t *)&outs[i]->pipe, alloc_cb, read_cb);
	if (p->in_open) {
		uv_buf_t b = uv_buf_init(p->stdin_data, (unsigned)inlen);
		p->wreq.data = p;
		if (uv_write(&p->wreq, (uv_stream_t *)&p->in, &b, 1, write_cb) != 0) {
			p->in_open = 0;
			uv_close((uv_handle_t *)&p->in, handle_closed);
		}
	}
	return 1;
}

static Proc *check_proc(lua_State *L)
{
	ProcBox *b = (ProcBox *)luaL_checkudata(L, 1, PROC_MT);
	if (!b->p)
		luaL_error(L, "attempt to use a closed process");
	return b->p;
}

static int push_result(lua_State *L, Proc *p)
{
	lua_createtable(L, 0, 6);
	if (p->exited && p->term_signal == 0) {
		lua_pushinteger(L, p->exit_status);
		lua_setfield(L, -2, "status");
	}
	if (p->term_signal) {
		lua_pushinteger(L, p->term_signal);
		lua_setfield(L, -2, "signal");
	}
	lua_pushlstring(L, p->out.p ? p->out.p : "", p->out.n);
	lua_setfield(L, -2, "stdout");
	lua_pushlstring(L, p->err.p ? p->err.p : "", p->err.n);
	lua_setfield(L, -2, "stderr");
	lua_pushinteger(L, p->pid);
	lua_setfield(L, -2, "pid");
	lua_pushboolean(L, p->truncated);
	lua_setfield(L, -2, "truncated");
	return 1;
}

static void wait_cancel(void *ud)
{
	((Proc *)ud)->waiter = NULL;
}

static int wait_push(lua_State *L, void *ud, int reason)
{
	Proc *p = (Proc *)ud;
	if (reason == VMSNAP_WAKE_TIMEOUT || !finished(p)) {
		p->waiter = NULL;
		lua_pushnil(L);
		lua_pushfstring(L, "process %d still running", p->pid);
		lua_pushliteral(L, "TIMEOUT");
		push_result(L, p);
		return 4;
	}
	return push_result(L, p);
}

static const Vmsnap_waitops wait_ops = {wait_cancel, wait_push};

static int proc_wait(lua_State *L)
{
	Proc *p = check_proc(L);
	double timeout = -1;
	if (!lua_isnoneornil(L, 2)) {
		timeout = luaL_checknumber(L, 2);
		luaL_argcheck(L, timeout >= 0, 2, "timeout must not be negative");
	}
	if (finished(p))
		return push_result(L, p);
	if (p->waiter)
		return luaL_error(L, "another task already waits for this process");
	Vmsnap_task *t = Vmsnap_sched_check_wait(L);
	p->waiter = t;
	return Vmsnap_sched_wait(L, t, &wait_ops, p, timeout);
}

static int proc_kill(lua_State *L)
{
	Proc *p = check_proc(L);
	int sig = sig_number(L, 2);
	int r;
	if (p->exited) {
		lua_pushboolean(L, 0);
		return 1;
	}
	r = uv_process_kill(&p->proc, sig);
	if (r != 0)
		return Vmsnap_pushfail(L, uv_err_name(r), "kill %d: %s", p->pid, uv_strerror(r));
	lua_pushboolean(L, 1);
	return 1;
}

static int proc_pid(lua_State *L)
{
	lua_pushinteger(L, check_proc(L)->pid);
	return 1;
}

static int proc_running(lua_State *L)
{
	lua_pushboolean(L, !check_proc(L)->exited);
	return 1;
}

static int proc_gc(lua_State *L)
{
	ProcBox *b = (ProcBox *)luaL_checkudata(L, 1, PROC_MT);
	Proc *p = b->p;
	int i;
	if (!p)
		return 0;
	b->p = NULL;
	if (!p->exited && p->proc_open)
		uv_process_kill(&p->proc, SIGKILL);
	if (p->proc_open) {
		p->proc_open = 0;
		uv_close((uv_handle_t *)&p->proc, handle_closed);
	}
	if (p->in_open) {
		p->in_open = 0;
		uv_close((uv_handle_t *)&p->in, handle_closed);
	}
	Out *outs[2] = {&p->out, &p->err};
	for (i = 0; i < 2; i++)
		if (outs[i]->open && !outs[i]->eof) {
			outs[i]->eof = 1;
			uv_close((uv_handle_t *)&outs[i]->pipe, handle_closed);
		}
	p->waiter = NULL;
	proc_unref(p);
	return 0;
}

static int proc_tostring(lua_State *L)
{
	ProcBox *b = (ProcBox *)luaL_checkudata(L, 1, PROC_MT);
	if (!b->p)
		lua_pushliteral(L, "process (closed)");
	else
		lua_pushfstring(L, "process %d (%s)", b->p->pid, b->p->exited ? "exited" : "running");
	return 1;
}

static const luaL_Reg proc_funcs[] = {{"spawn", proc_spawn}, {NULL, NULL}};

static const luaL_Reg proc_meth[] = {{"wait", proc_wait}, {"kill", proc_kill},
                                     {"pid", proc_pid},   {"running", proc_running},
                                     {"close", proc_gc},  {NULL, NULL}};

static const luaL_Reg proc_metameth[] = {{"__index", NULL},
                                         {"__gc", proc_gc},
                                         {"__close", proc_gc},
                                         {"__tostring", proc_tostring},
                                         {NULL, NULL}};

int luaopen_vmsnap_core_proc(lua_State *L)
{
	if (luaL_newmetatable(L, PROC_MT)) {
		luaL_setfuncs(L, proc_metameth, 0);
		luaL_newlibtable(L, proc_meth);
		luaL_setfuncs(L, proc_meth, 0);
		lua_setfield(L, -2, "__index");
	}
	lua_pop(L, 1);
	luaL_newlib(L, proc_funcs);
	return 1;
}
