/*
** embed.c -- an embedding program that uses only vmsnap.h (and Lua's own
** headers for the host module it registers).  Each check prints TAP;
** the exit status is the number of failures.
*/
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "vmsnap.h"

static int failures, count;

#define CHECK(cond, what) check((cond) != 0, what, __LINE__)

static void check(int ok, const char *what, int line)
{
	count++;
	printf("%s %d - %s\n", ok ? "ok" : "not ok", count, what);
	if (!ok) {
		failures++;
		printf("  # at embed.c:%d\n", line);
	}
}

/* a log sink that keeps the last record */
static char last_log[1024];
static int log_records;
static void sink(void *ud, int level, const char *subsystem, const char *message)
{
	(void)ud;
	(void)level;
	(void)subsystem;
	log_records++;
	snprintf(last_log, sizeof last_log, "%s", message);
}

/* a host module */
static int host_add(lua_State *L)
{
	lua_pushinteger(L, luaL_checkinteger(L, 1) + luaL_checkinteger(L, 2));
	return 1;
}
static int open_host(void *Lv)
{
	lua_State *L = (lua_State *)Lv;
	lua_newtable(L);
	lua_pushcfunction(L, host_add);
	lua_setfield(L, -2, "add");
	return 1;
}

static vmsnap_runtime *open_rt(size_t memlimit)
{
	vmsnap_config *cfg = vmsnap_config_new();
	vmsnap_runtime *rt = NULL;
	vmsnap_config_set_log(cfg, sink, NULL, VMSNAP_LOG_DEBUG);
	vmsnap_config_set_memory_limit(cfg, memlimit);
	vmsnap_config_set_embedded_only(cfg, 1);
	vmsnap_config_set_cancel_grace(cfg, 1.0);
	if (vmsnap_open(cfg, &rt) != VMSNAP_OK) {
		fprintf(stderr, "open: %s\n", rt ? vmsnap_errmsg(rt) : "?");
		exit(99);
	}
	vmsnap_config_free(cfg);
	return rt;
}

static vmsnap_status run(vmsnap_runtime *rt, const char *code)
{
	return vmsnap_run_buffer(rt, code, strlen(code), "=embed");
}

/* -------------------------------------------- host event loop (io hooks) */

static int watched_fd = -1, timer_ms = -1;
static void h_watch(void *ud, int fd, int ev)
{
	(void)ud;
	(void)ev;
	watched_fd = fd;
}
static void h_unwatch(void *ud, int fd)
{
	(void)ud;
	(void)fd;
	watched_fd = -1;
}
static void h_timer(void *ud, int ms)
{
	(void)ud;
	timer_ms = ms;
}

static void *cancel_later(void *arg)
{
	struct timespec ts = {0, 100 * 1000 * 1000};
	nanosleep(&ts, NULL);
	vmsnap_cancel((vmsnap_runtime *)arg);
	return NULL;
}


/* a busy loop past the runtime's deadline, on the calling thread; with
** *block set, the preemption signal is blocked there first (the runtime
** must fall back to its count hook) */
struct busy_run {
	vmsnap_runtime *rt;
	int block;
	vmsnap_status st;
};
static void *busy_on_thread(void *arg)
{
	struct busy_run *b = arg;
	if (b->block) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGRTMAX - 2);
		pthread_sigmask(SIG_BLOCK, &set, NULL);
	}
	b->st = run(b->rt, "local i = 0 while true do i = i + 1 end");
	return NULL;
}
static vmsnap_status busy_thread(vmsnap_runtime *rt, int block)
{
	pthread_t th;
	struct busy_run b = {rt, block, VMSNAP_OK};
	pthread_create(&th, NULL, busy_on_thread, &b);
	pthread_join(th, NULL);
	return b.st;
}

/* ------------------------------------ the shipped hooks through the C API */

/* a one-shot HTTP server on 127.0.0.1: it keeps the request it got and
** answers 204 (what the webhook hook posts to) */
struct http_once {
	int fd, port;
	char request[8192];
};

static void *http_once_serve(void *arg)
{
	struct http_once *h = arg;
	struct pollfd p = {h->fd, POLLIN, 0};
	size_t n = 0;
	int c;
	if (poll(&p, 1, 10000) != 1)
		return NULL;
	c = accept(h->fd, NULL, NULL);
	if (c < 0)
		return NULL;
	for (;;) {
		struct pollfd q = {c, POLLIN, 0};
		ssize_t r;
		char *end, *cl;
		if (poll(&q, 1, 5000) != 1 || n >= sizeof h->request - 1)
			break;
		r = read(c, h->request + n, sizeof h->request - 1 - n);
		if (r <= 0)
			break;
		n += (size_t)r;
		h->request[n] = 0;
		end = strstr(h->request, "\r\n\r\n");
		cl = strcasestr(h->request, "content-length:");
		if (end && (!cl || n >= (size_t)(end + 4 - h->request) + (size_t)atoi(cl + 15)))
			break;
	}
	static const char answer[] = "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
	if (write(c, answer, sizeof answer - 1) < 0)
		perror("write");
	close(c);
	return NULL;
}

static int http_once_start(struct http_once *h, pthread_t *th)
{
	struct sockaddr_in a;
	socklen_t len = sizeof a;
	memset(h, 0, sizeof *h);
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	h->fd = socket(AF_INET, SOCK_STREAM, 0);
	if (h->fd < 0 || bind(h->fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(h->fd, 1) != 0 ||
	    getsockname(h->fd, (struct sockaddr *)&a, &len) != 0)
		return -1;
	h->port = ntohs(a.sin_port);
	return pthread_create(th, NULL, http_once_serve, h);
}

/* a real qemu-ga on a unix socket in dir (the global freeze blocked; these
** checks only run commands); its pid, or -1 when qemu-ga is not installed */
static pid_t start_agent(const char *dir, char *sock, size_t socklen)
{
	pid_t pid;
	int i;
	snprintf(sock, socklen, "%s/qga.sock", dir);
	pid = fork();
	if (pid == 0) {
		execlp("qemu-ga", "qemu-ga", "-m", "unix-listen", "-p", sock, "-t", dir, "-b", "guest-fsfreeze-freeze",
		       (char *)NULL);
		_exit(127);
	}
	for (i = 0; pid > 0 && i < 500; i++) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		int status;
		if (access(sock, F_OK) == 0)
			return pid;
		if (waitpid(pid, &status, WNOHANG) == pid)
			return -1;
		nanosleep(&ts, NULL);
	}
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	return -1;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* a hook's failure is a message of its own, never a Lua error of the runner */
static int clean_failure(vmsnap_runtime *rt, vmsnap_status st)
{
	const char *m = vmsnap_errmsg(rt);
	return st == VMSNAP_ERR_WORKFLOW && m && *m && !strstr(m, "attempt to") && !strstr(m, "stack traceback");
}

static void shipped_hooks(vmsnap_runtime *rt, const char *source)
{
	char dir[] = "/tmp/vmsnap-embed-agentXXXXXX", sock[256], path[512], args[2048];
	struct http_once web;
	pthread_t th;
	char *res = NULL;
	vmsnap_status st;
	pid_t agent;

	/* webhook: a real POST to a local server, and its ctx.log line */
	CHECK(http_once_start(&web, &th) == 0, "a local HTTP server for the webhook hook");
	snprintf(path, sizeof path, "%s/scripts/hooks/webhook.lua", source);
	snprintf(args, sizeof args,
	         "{\"params\":{\"url\":\"http://127.0.0.1:%d/vmsnap\"},\"outcome\":\"Ready\","
	         "\"vm\":{\"metadata\":{\"name\":\"linux-vm\",\"namespace\":\"default\"}},"
	         "\"snapshot\":{\"metadata\":{\"name\":\"s1\",\"namespace\":\"default\"},\"status\":{\"consistent\":true}}}",
	         web.port);
	log_records = 0;
	st = vmsnap_call_hook(rt, path, "post_snapshot", args, &res);
	pthread_join(th, NULL);
	close(web.fd);
	CHECK(st == VMSNAP_OK, "webhook post_snapshot through vmsnap_call_hook");
	if (st != VMSNAP_OK)
		printf("  # %s\n", vmsnap_errmsg(rt));
	CHECK(strstr(web.request, "POST /vmsnap ") && strstr(web.request, "\"event\":\"post_snapshot\"") &&
	          strstr(web.request, "\"outcome\":\"Ready\"") && strstr(web.request, "\"snapshot\":\"s1\""),
	      "webhook: the server got the event");
	CHECK(strstr(last_log, "notified (204)") != NULL, "webhook: ctx.log reaches the host's log sink");
	vmsnap_free(res);
	res = NULL;
	st = vmsnap_call_hook(rt, path, "snapshot_failed", "{\"params\":{}}", &res);
	CHECK(clean_failure(rt, st) && strstr(vmsnap_errmsg(rt), "params.url is required"),
	      "webhook without a url: its own message");
	vmsnap_free(res);
	res = NULL;

	/* the guest hooks, through a real qemu-ga */
	if (!mkdtemp(dir) || (agent = start_agent(dir, sock, sizeof sock)) < 0) {
		printf("ok %d - # SKIP qemu-ga is not available: the guest hooks were not run\n", ++count);
		if (dir[0])
			rmdir(dir);
		return;
	}
#define VM_WITH_AGENT "\"vm\":{\"metadata\":{\"name\":\"linux-vm\",\"namespace\":\"default\"," \
	                   "\"annotations\":{\"vmsnap.io/agent\":\"unix:%s\"}}}"
	snprintf(path, sizeof path, "%s/scripts/hooks/guest-command.lua", source);
	snprintf(args, sizeof args, "{\"params\":{\"pre_freeze\":\"echo quiesced\",\"post_thaw\":[\"/bin/sh\",\"-c\",\"exit 3\"]}," VM_WITH_AGENT "}", sock);
	st = vmsnap_call_hook(rt, path, "pre_freeze", args, &res);
	CHECK(st == VMSNAP_OK, "guest-command pre_freeze runs its command in the guest");
	if (st != VMSNAP_OK)
		printf("  # %s\n", vmsnap_errmsg(rt));
	vmsnap_free(res);
	res = NULL;
	st = vmsnap_call_hook(rt, path, "post_thaw", args, &res);
	CHECK(clean_failure(rt, st) && strstr(vmsnap_errmsg(rt), "exited with 3"),
	      "guest-command: a failing command is the hook's failure");
	vmsnap_free(res);
	res = NULL;

	/* the database hooks with a client that is not there: they fail with
	** their own message (the databases themselves are tested in hooks_spec) */
	snprintf(path, sizeof path, "%s/scripts/hooks/mysql.lua", source);
	snprintf(args, sizeof args, "{\"params\":{\"client\":\"/nonexistent/mariadb\",\"hold\":1}," VM_WITH_AGENT "}", sock);
	st = vmsnap_call_hook(rt, path, "pre_freeze", args, &res);
	CHECK(clean_failure(rt, st), "mysql pre_freeze without a client: its own message");
	printf("  # %s\n", vmsnap_errmsg(rt));
	vmsnap_free(res);
	res = NULL;
	st = vmsnap_call_hook(rt, path, "post_thaw", args, &res);
	CHECK(st == VMSNAP_OK || clean_failure(rt, st), "mysql post_thaw: done or its own message");
	vmsnap_free(res);
	res = NULL;
	snprintf(path, sizeof path, "%s/scripts/hooks/postgresql.lua", source);
	snprintf(args, sizeof args, "{\"params\":{\"psql\":\"/nonexistent/psql\"}," VM_WITH_AGENT "}", sock);
	st = vmsnap_call_hook(rt, path, "pre_freeze", args, &res);
	CHECK(clean_failure(rt, st), "postgresql pre_freeze without a client: its own message");
	printf("  # %s\n", vmsnap_errmsg(rt));
	vmsnap_free(res);
	res = NULL;
#undef VM_WITH_AGENT
	kill(agent, SIGKILL);
	waitpid(agent, NULL, 0);
	unlink(sock);
	snprintf(path, sizeof path, "rm -rf '%s'", dir);
	if (system(path) != 0)
		perror("rm");
}

/* the bounds of the controllers' runner hold through the C API */
static void hook_bounds(vmsnap_runtime *rt)
{
	char path[] = "/tmp/vmsnap-embed-boundXXXXXX";
	int fd = mkstemp(path);
	char *res = NULL;
	double t0;
	vmsnap_status st;
	static const char hook[] =
	    "return {\n"
	    "  timeout = 0.3,\n"
	    "  pre_freeze = function() while true do pcall(function() while true do end end) end end,\n"
	    "  post_thaw = function() local s = ('x'):rep(1 << 20) return #s:rep(1536) end,\n"
	    "  post_freeze = function(ctx) ctx.sleep(0.05) ctx.log('slept') return getmetatable('') == nil end,\n"
	    "}\n";
	CHECK(fd >= 0 && write(fd, hook, sizeof hook - 1) == (ssize_t)(sizeof hook - 1), "write the bounds hook");
	close(fd);
	t0 = now_s();
	st = vmsnap_call_hook(rt, path, "pre_freeze", "{}", &res);
	CHECK(st == VMSNAP_ERR_TIMEOUT && strstr(vmsnap_errmsg(rt), "exceeded its timeout of 0.3s") && now_s() - t0 < 2,
	      "a hook looping in pcall is stopped at its timeout");
	vmsnap_free(res);
	res = NULL;
	st = vmsnap_call_hook(rt, path, "post_thaw", "{}", &res);
	CHECK(st == VMSNAP_ERR_NOMEM && strstr(vmsnap_errmsg(rt), "memory limit of 64 MiB"),
	      "a 1.5 GiB string is refused at the hook's memory bound");
	if (st != VMSNAP_ERR_NOMEM)
		printf("  # %d %s\n", st, vmsnap_errmsg(rt));
	vmsnap_free(res);
	res = NULL;
	log_records = 0;
	st = vmsnap_call_hook(rt, path, "post_freeze", "{}", &res);
	CHECK(st == VMSNAP_OK && res && strcmp(res, "[true]") == 0 && strstr(last_log, "slept"),
	      "ctx.sleep and ctx.log work, and the string metatable is hidden");
	vmsnap_free(res);
	unlink(path);
}

int main(int argc, char **argv)
{
	vmsnap_runtime *rt;
	vmsnap_status st;
	char *res = NULL;

	CHECK(VMSNAP_VERSION_NUM == vmsnap_version_num(), "header and library versions agree");
	CHECK(strcmp(vmsnap_version(), VMSNAP_VERSION) == 0, "version string");
	CHECK(VMSNAP_AT_LEAST_VERSION(0, 1, 0), "VMSNAP_AT_LEAST_VERSION");
	CHECK(vmsnap_get_build_info()->age >= 0 && vmsnap_get_build_info()->libcurl, "build info");
	CHECK(strcmp(vmsnap_strerror(VMSNAP_ERR_TIMEOUT), "deadline exceeded") == 0, "strerror");
	vmsnap_close(NULL);
	vmsnap_config_free(NULL);
	CHECK(vmsnap_open(NULL, NULL) == VMSNAP_ERR_MISUSE, "open without an out pointer is misuse");

	rt = open_rt(0);
	st = run(rt, "local t = require('vmsnap.task') t.sleep(0.01) return 1");
	CHECK(st == VMSNAP_OK, "run a buffer with a task wait");

	st = run(rt, "error('boom')");
	CHECK(st == VMSNAP_ERR_RUNTIME, "a raised error is VMSNAP_ERR_RUNTIME");
	CHECK(strstr(vmsnap_errmsg(rt), "embed:1: boom") && strstr(vmsnap_errmsg(rt), "stack traceback"),
	      "errmsg has the message and a traceback");
	CHECK(vmsnap_errcode(rt) && strcmp(vmsnap_errcode(rt), "ERROR") == 0, "errcode ERROR");

	st = run(rt, "return nil, 'no class for storage class x', 'NotFound'");
	CHECK(st == VMSNAP_ERR_WORKFLOW, "nil, message is VMSNAP_ERR_WORKFLOW");
	CHECK(strcmp(vmsnap_errmsg(rt), "no class for storage class x") == 0, "workflow message");
	CHECK(strcmp(vmsnap_errcode(rt), "NotFound") == 0, "workflow code");

	st = run(rt, "local x = = 1");
	CHECK(st == VMSNAP_ERR_SYNTAX, "syntax error status");
	CHECK(strstr(vmsnap_errmsg(rt), "embed:1:") != NULL, "syntax error names the line");

	CHECK(vmsnap_check_file(rt, "/nonexistent/file.lua") == VMSNAP_ERR_IO, "check_file of a missing file");

	/* call a function with JSON arguments */
	st = vmsnap_call(rt, "string.rep", "[\"ab\", 3]", &res);
	CHECK(st == VMSNAP_OK && res && strcmp(res, "[\"ababab\"]") == 0, "vmsnap_call string.rep");
	vmsnap_free(res);
	res = NULL;
	st = vmsnap_call(rt, "vmsnap.json.decode", "[\"{\\\"a\\\":[]}\"]", &res);
	CHECK(st == VMSNAP_OK && res && strcmp(res, "[{\"a\":[]}]") == 0, "vmsnap_call a module function");
	vmsnap_free(res);
	res = NULL;
	st = vmsnap_call(rt, "nosuch.fn", NULL, &res);
	CHECK(st == VMSNAP_ERR_RUNTIME && strstr(vmsnap_errmsg(rt), "cannot find module 'nosuch'"),
	      "vmsnap_call of a missing function");

	/* params */
	CHECK(vmsnap_set_param(rt, "vm", "{\"name\":\"linux-vm\"}") == VMSNAP_OK, "set_param");
	CHECK(vmsnap_set_param(rt, "bad", "{") == VMSNAP_ERR_MISUSE, "set_param with bad JSON");
	st = run(rt, "assert(require('vmsnap').params.vm.name == 'linux-vm')");
	CHECK(st == VMSNAP_OK, "params visible to scripts");

	/* a host module */
	CHECK(vmsnap_register_module(rt, "host", open_host) == VMSNAP_OK, "register_module");
	st = run(rt, "assert(require('host').add(2, 3) == 5)");
	CHECK(st == VMSNAP_OK, "host module callable");

	/* logging through the sink */
	log_records = 0;
	st = run(rt, "require('vmsnap.log').warn('disk busy', {disk = 'root'})");
	CHECK(st == VMSNAP_OK && log_records == 1 && strstr(last_log, "WARN  script: disk busy disk=root"),
	      "log records reach the host sink");

	/* hooks in the sandbox */
	{
		char path[] = "/tmp/vmsnap-embed-hookXXXXXX";
		int fd = mkstemp(path);
		static const char hook[] =
		    "return {\n"
		    "  pre_freeze = function(ctx) return 'froze ' .. ctx.vm end,\n"
		    "  post_thaw = function(ctx) return os.execute('true') end,\n"
		    "  snapshot_failed = function(ctx) return nil, 'db not flushed' end,\n"
		    "}\n";
		CHECK(fd >= 0 && write(fd, hook, sizeof hook - 1) == (ssize_t)(sizeof hook - 1), "write hook file");
		close(fd);
		st = vmsnap_call_hook(rt, path, "pre_freeze", "{\"vm\":\"linux-vm\"}", &res);
		CHECK(st == VMSNAP_OK && res && strcmp(res, "[\"froze linux-vm\"]") == 0, "call_hook result");
		vmsnap_free(res);
		res = NULL;
		st = vmsnap_call_hook(rt, path, "post_thaw", "{}", &res);
		CHECK(st == VMSNAP_ERR_RUNTIME && strstr(vmsnap_errmsg(rt), "not available in the hook sandbox"),
		      "the sandbox hides os.execute");
		st = vmsnap_call_hook(rt, path, "snapshot_failed", "{}", &res);
		CHECK(st == VMSNAP_ERR_WORKFLOW && strcmp(vmsnap_errmsg(rt), "db not flushed") == 0,
		      "a hook returning nil, message is VMSNAP_ERR_WORKFLOW");
		vmsnap_free(res);
		res = NULL;
		unlink(path);
	}
	hook_bounds(rt);
	if (argc > 1)
		shipped_hooks(rt, argv[1]);
	else
		printf("ok %d - # SKIP no source directory given: the shipped hooks were not run\n", ++count);

	/* non-blocking mode: the host drives the loop with its own poll() */
	{
		vmsnap_io_hooks hooks = {1, h_watch, h_unwatch, h_timer};
		int steps = 0;
		CHECK(vmsnap_set_io_hooks(rt, &hooks, NULL) == VMSNAP_OK && watched_fd >= 0,
		      "io hooks: the host is asked to watch the backend fd");
		st = vmsnap_start_buffer(rt,
		                         "local t = require('vmsnap.task')\n"
		                         "local a = t.spawn(function() t.sleep(0.05) return 2 end)\n"
		                         "t.sleep(0.02)\n"
		                         "assert(t.wait(a) == 2)\n",
		                         strlen("local t = require('vmsnap.task')\n"
		                                "local a = t.spawn(function() t.sleep(0.05) return 2 end)\n"
		                                "t.sleep(0.02)\n"
		                                "assert(t.wait(a) == 2)\n"),
		                         "=nonblocking");
		CHECK(st == VMSNAP_OK, "start_buffer");
		for (;;) {
			struct pollfd p = {watched_fd, POLLIN, 0};
			int n = poll(&p, 1, timer_ms < 0 ? 1000 : timer_ms);
			st = n > 0 ? vmsnap_io_ready(rt, watched_fd, VMSNAP_IO_READ) : vmsnap_timer_expired(rt);
			steps++;
			if (st != VMSNAP_AGAIN || steps > 1000)
				break;
		}
		CHECK(st == VMSNAP_OK, "the host loop ran the script to completion");
		CHECK(steps > 1 && steps < 100, "in a few steps, not a busy loop");
	}

	/* vmsnap_step and cancellation from another thread */
	{
		pthread_t th;
		static const char code[] =
		    "local t = require('vmsnap.task')\n"
		    "local _ <close> = setmetatable({}, {__close = function() t.sleep(0.01) end})\n"
		    "t.sleep(30)\n";
		st = vmsnap_start_buffer(rt, code, sizeof code - 1, "=cancel");
		pthread_create(&th, NULL, cancel_later, rt);
		do
			st = vmsnap_step(rt, -1);
		while (st == VMSNAP_AGAIN);
		pthread_join(th, NULL);
		CHECK(st == VMSNAP_ERR_CANCELLED, "vmsnap_cancel from another thread cancels the run");
		st = run(rt, "return 1");
		CHECK(st == VMSNAP_OK, "the runtime is usable after a cancel");
	}
	/* ... and of a run busy computing (no wait point to raise at) */
	{
		pthread_t th;
		static const char code[] = "local i = 0 while true do i = i + 1 end\n";
		st = vmsnap_start_buffer(rt, code, sizeof code - 1, "=busy");
		pthread_create(&th, NULL, cancel_later, rt);
		do
			st = vmsnap_step(rt, -1);
		while (st == VMSNAP_AGAIN);
		pthread_join(th, NULL);
		CHECK(st == VMSNAP_ERR_CANCELLED, "vmsnap_cancel from another thread stops a busy loop");
	}
	vmsnap_close(rt);

	/* deadline and memory limit */
	{
		vmsnap_config *cfg = vmsnap_config_new();
		vmsnap_config_set_deadline(cfg, 0.1);
		vmsnap_config_set_log(cfg, sink, NULL, VMSNAP_LOG_ERROR);
		CHECK(vmsnap_config_set_deadline(cfg, -1) == VMSNAP_ERR_MISUSE, "negative deadline is misuse");
		CHECK(vmsnap_open(cfg, &rt) == VMSNAP_OK, "open with a deadline");
		vmsnap_config_free(cfg);
		st = run(rt, "while true do end");
		CHECK(st == VMSNAP_ERR_TIMEOUT, "a busy loop past the deadline is VMSNAP_ERR_TIMEOUT");
		/* the runtime moved to another thread, and back: its timer follows */
		CHECK(busy_thread(rt, 0) == VMSNAP_ERR_TIMEOUT, "a busy loop on another thread is stopped");
		st = run(rt, "while true do end");
		CHECK(st == VMSNAP_ERR_TIMEOUT, "and again on the first thread");
		/* a thread that blocks the signal: the count hook stops it instead */
		CHECK(busy_thread(rt, 1) == VMSNAP_ERR_TIMEOUT,
		      "a busy loop is stopped on a thread that blocks the preemption signal");
		vmsnap_close(rt);
	}
	rt = open_rt(4 * 1024 * 1024);
	st = run(rt, "local t = {} for i = 1, 1e7 do t[i] = i end");
	CHECK(st == VMSNAP_ERR_NOMEM, "over the memory limit is VMSNAP_ERR_NOMEM");
	st = run(rt, "return 1");
	CHECK(st == VMSNAP_OK, "usable after NOMEM");
	vmsnap_close(rt);

	printf("1..%d\n%d passed, %d failed\n", count, count - failures, failures);
	return failures;
}
