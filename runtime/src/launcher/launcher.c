/*
** launcher.c -- vmsnap-launcher: a guest's freeze does not outlive its
** deadline, whatever happens to the orchestrator (docs/behaviour.md,
** Decision 11; docs/guest.md).
**
**   vmsnap-launcher serve --socket PATH --agent-socket PATH [--max-freeze S] -- AGENT ARGS...
**   vmsnap-launcher thaw-after SECONDS AGENT_SOCKET [MOUNTPOINT...]
**
** serve: the local platform runs one per VM, next to the guest, as the
** platform's own launcher runs next to a real one.  It starts the agent
** (qemu-ga listening on --agent-socket), is the agent's only client, and
** serves the agent's protocol to any number of clients on --socket, one
** command at a time.  It watches the freezes that pass through it: a freeze
** is thawed by the launcher itself when its unfreeze timeout passes (set
** by the launcher's own command vmsnap-unfreeze-timeout before the freeze;
** --max-freeze, default 60 s, when none was set), when the launcher is
** told to stop, and when its parent dies (PR_SET_PDEATHSIG with SIGTERM,
** a signal it catches).  If the agent does not answer the thaw within 5 s
** the launcher thaws the frozen mountpoints itself (FITHAW).
**
** Its own commands (everything else goes to the agent unchanged):
**   {"execute":"vmsnap-unfreeze-timeout","arguments":{"seconds":N}}
**       the next freeze (or the current one) is thawed N s after it began
**       (after now, for the current one) unless thawed before
**   {"execute":"vmsnap-launcher-status"}
**       {"return":{"frozen":B,"thaw-in-ms":N,"agent-pid":P,"thaws-by-timeout":K}}
**
** thaw-after: a watchdog for a freeze made directly through an agent's
** socket: after SECONDS, or at once when its parent dies (SIGTERM), it
** thaws through the socket (FITHAW on the mountpoints if the agent does not
** answer).  The parent ends it with SIGUSR1 once it has thawed itself.
**
** Both write one line per action to stderr.  Pure C, libuv; no Lua.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "qgaframe.h"

#define MAX_MOUNTS 64
#define REQUEST_TIMEOUT_MS 30000
#define THAW_TIMEOUT_MS 5000
#define MAX_FRAME (4u << 20)
#define THAW "{\"execute\":\"guest-fsfreeze-thaw\"}"

static void say(const char *fmt, ...)
{
	va_list ap;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	fprintf(stderr, "vmsnap-launcher[%d] %ld.%03ld: ", (int)getpid(), (long)ts.tv_sec, ts.tv_nsec / 1000000);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* ------------------------------------------------------------ JSON bits */

/* the string value of the top-level "key" in a JSON object (a frame of our
** own protocol: no need for more than finding "key": "value") into out */
static int json_string(const char *s, size_t n, const char *key, char *out, size_t cap)
{
	size_t kl = strlen(key), i;
	for (i = 0; i + kl + 2 < n; i++) {
		if (s[i] == '"' && strncmp(s + i + 1, key, kl) == 0 && s[i + 1 + kl] == '"') {
			size_t j = i + kl + 2, o = 0;
			while (j < n && (s[j] == ' ' || s[j] == ':' || s[j] == '\t'))
				j++;
			if (j >= n || s[j] != '"')
				return 0;
			j++;
			while (j < n && s[j] != '"' && o + 1 < cap)
				out[o++] = s[j++];
			out[o] = 0;
			return 1;
		}
	}
	return 0;
}

static int json_number(const char *s, size_t n, const char *key, double *out)
{
	size_t kl = strlen(key), i;
	for (i = 0; i + kl + 2 < n; i++) {
		if (s[i] == '"' && strncmp(s + i + 1, key, kl) == 0 && s[i + 1 + kl] == '"') {
			char num[64];
			size_t j = i + kl + 2, o = 0;
			while (j < n && (s[j] == ' ' || s[j] == ':'))
				j++;
			while (j < n && o + 1 < sizeof num && strchr("0123456789.eE+-", s[j]))
				num[o++] = s[j++];
			num[o] = 0;
			if (!o)
				return 0;
			*out = strtod(num, NULL);
			return 1;
		}
	}
	return 0;
}

static int contains(const char *s, size_t n, const char *what)
{
	return memmem(s, n, what, strlen(what)) != NULL;
}

/* ------------------------------------------------------------ FITHAW */

static char mounts[MAX_MOUNTS][512];
static int nmounts;

/* the mountpoints of a guest-fsfreeze-freeze-list request */
static void record_mounts(const char *s, size_t n)
{
	const char *p = memmem(s, n, "\"mountpoints\"", 13);
	const char *end = s + n;
	nmounts = 0;
	if (!p)
		return;
	p = memchr(p, '[', (size_t)(end - p));
	while (p && p < end && *p != ']' && nmounts < MAX_MOUNTS) {
		const char *q = memchr(p, '"', (size_t)(end - p));
		if (!q)
			break;
		const char *r = memchr(q + 1, '"', (size_t)(end - q - 1));
		if (!r)
			break;
		size_t l = (size_t)(r - q - 1);
		if (l < sizeof mounts[0]) {
			memcpy(mounts[nmounts], q + 1, l);
			mounts[nmounts][l] = 0;
			nmounts++;
		}
		p = r + 1;
		while (p < end && (*p == ',' || *p == ' '))
			p++;
	}
}

/* thaw the recorded mountpoints ourselves (the agent did not answer) */
static void fithaw_all(void)
{
	int i;
	for (i = 0; i < nmounts; i++) {
		int fd = open(mounts[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0) {
			say("cannot open %s to thaw it: %s", mounts[i], strerror(errno));
			continue;
		}
		if (ioctl(fd, FITHAW, 0) == 0)
			say("thawed %s itself (FITHAW)", mounts[i]);
		else if (errno != EINVAL) /* EINVAL: it was not frozen */
			say("FITHAW %s: %s", mounts[i], strerror(errno));
		close(fd);
	}
}

/* ------------------------------------------------------------ thaw-after */

static int connect_unix(const char *path)
{
	struct sockaddr_un a;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	memset(&a, 0, sizeof a);
	a.sun_family = AF_UNIX;
	snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* thaw through the agent's socket, waiting at most timeout_ms; 0 on a reply */
static int thaw_through(const char *sock, int timeout_ms)
{
	static const char req[] = "\xff{\"execute\":\"guest-fsfreeze-thaw\"}\n";
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		int fd = connect_unix(sock);
		if (fd >= 0) {
			struct timeval tv = {1, 0};
			setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
			if (write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
				char buf[4096];
				size_t got = 0;
				for (;;) {
					ssize_t r = read(fd, buf + got, sizeof buf - 1 - got);
					if (r > 0) {
						got += (size_t)r;
						buf[got] = 0;
						if (strstr(buf, "\"return\"") || strstr(buf, "\"error\"")) {
							close(fd);
							say("thawed through %s", sock);
							return 0;
						}
						if (got + 1 >= sizeof buf)
							break;
					} else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
						break;
					}
					clock_gettime(CLOCK_MONOTONIC, &t);
					if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > timeout_ms)
						break;
				}
			}
			close(fd);
		}
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > timeout_ms)
			return -1;
		usleep(50000);
	}
}

static int thaw_after(int argc, char **argv)
{
	sigset_t set;
	siginfo_t info;
	struct timespec wait;
	double secs;
	int i;
	if (argc < 2) {
		fprintf(stderr, "usage: vmsnap-launcher thaw-after SECONDS AGENT_SOCKET [MOUNTPOINT...]\n");
		return 2;
	}
	secs = strtod(argv[0], NULL);
	if (!(secs > 0)) {
		fprintf(stderr, "vmsnap-launcher: thaw-after: SECONDS must be a positive number, not '%s'\n", argv[0]);
		return 2;
	}
	for (i = 2; i < argc && nmounts < MAX_MOUNTS; i++)
		snprintf(mounts[nmounts++], sizeof mounts[0], "%s", argv[i]);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() == 1)
		kill(getpid(), SIGTERM); /* the parent is gone already */
	wait.tv_sec = (time_t)secs;
	wait.tv_nsec = (long)((secs - (double)wait.tv_sec) * 1e9);
	int sig = sigtimedwait(&set, &info, &wait);
	if (sig == SIGUSR1)
		return 0; /* the freezer thawed: nothing to do (SIGUSR1 is the only quiet end: a
		             KILL could land while talking to the agent, which dies of the EPIPE) */
	if (sig < 0 && errno == EAGAIN)
		say("the freeze through %s is past its deadline (%gs): thawing", argv[1], secs);
	else
		say("the freezer of %s is gone: thawing", argv[1]);
	if (thaw_through(argv[1], THAW_TIMEOUT_MS) != 0) {
		say("the agent at %s does not answer: thawing the mountpoints", argv[1]);
		fithaw_all();
	}
	return 0;
}

/* ------------------------------------------------------------ serve */

typedef struct Client Client;
typedef struct Request {
	Client *client; /* NULL: the launcher's own (a thaw) */
	char *data;
	size_t len;
	struct Request *next;
} Request;

struct Client {
	uv_pipe_t pipe;
	Vmsnap_qgaframe fr;
	int closing;
	int refs; /* requests queued or in flight */
	Client *next;
};

static uv_loop_t *loop;
static uv_pipe_t server, agent;
static uv_timer_t freeze_timer, request_timer, start_timer;
static uv_signal_t sig_term, sig_int, sig_hup, sig_chld;
static Vmsnap_qgaframe agent_fr;
static Request *queue_head, *queue_tail, *inflight;
static const char *agent_socket, *socket_path;
static pid_t agent_pid;
static double max_freeze = 60, pending_timeout = -1;
static int frozen, inflight_freeze, inflight_thaw, stopping, agent_up, stale, thaws_by_timeout;
static long stale_id;
static uint64_t frozen_until; /* uv_now() ms */

static void dispatch(void);
static void finish(int code);

static void written(uv_write_t *w, int status)
{
	(void)status;
	free(w->data);
	free(w);
}

static void send_bytes(uv_stream_t *s, const char *data, size_t n)
{
	uv_write_t *w = (uv_write_t *)malloc(sizeof *w);
	char *copy = (char *)malloc(n ? n : 1);
	uv_buf_t b;
	if (!w || !copy || uv_is_closing((uv_handle_t *)s)) {
		free(w);
		free(copy);
		return;
	}
	memcpy(copy, data, n);
	w->data = copy;
	b = uv_buf_init(copy, (unsigned)n);
	if (uv_write(w, s, &b, 1, written) != 0) {
		free(copy);
		free(w);
	}
}

static void client_closed(uv_handle_t *h)
{
	Client *c = (Client *)h->data;
	c->closing = 2;
	if (c->refs == 0) {
		Vmsnap_qgaframe_free(&c->fr);
		free(c);
	}
}

static void client_close(Client *c)
{
	if (c->closing)
		return;
	c->closing = 1;
	uv_close((uv_handle_t *)&c->pipe, client_closed);
}

static void unref_client(Client *c)
{
	if (c && --c->refs == 0 && c->closing == 2) {
		Vmsnap_qgaframe_free(&c->fr);
		free(c);
	}
}

static void reply_client(Client *c, const char *text)
{
	if (c && !c->closing)
		send_bytes((uv_stream_t *)&c->pipe, text, strlen(text));
}

static void enqueue(Client *c, const char *data, size_t n, int front)
{
	Request *r = (Request *)calloc(1, sizeof *r);
	if (!r)
		return;
	r->data = (char *)malloc(n);
	if (!r->data) {
		free(r);
		return;
	}
	memcpy(r->data, data, n);
	r->len = n;
	r->client = c;
	if (c)
		c->refs++;
	if (front) {
		r->next = queue_head;
		queue_head = r;
		if (!queue_tail)
			queue_tail = r;
	} else {
		if (queue_tail)
			queue_tail->next = r;
		else
			queue_head = r;
		queue_tail = r;
	}
	dispatch();
}

static void free_request(Request *r)
{
	unref_client(r->client);
	free(r->data);
	free(r);
}

static void on_freeze_timeout(uv_timer_t *t)
{
	(void)t;
	if (!frozen)
		return;
	say("the freeze is past its unfreeze timeout: thawing");
	thaws_by_timeout++;
	enqueue(NULL, THAW, strlen(THAW), 1);
}

static void start_freeze_timer(double secs)
{
	frozen_until = uv_now(loop) + (uint64_t)(secs * 1000.0);
	uv_timer_start(&freeze_timer, on_freeze_timeout, (uint64_t)(secs * 1000.0), 0);
}

/* a launcher command: answered here */
static int own_command(Request *r, const char *exec)
{
	char out[256];
	if (strcmp(exec, "vmsnap-unfreeze-timeout") == 0) {
		double s = 0;
		if (!json_number(r->data, r->len, "seconds", &s) || !(s > 0)) {
			reply_client(r->client, "{\"error\":{\"class\":\"GenericError\",\"desc\":"
			                        "\"vmsnap-unfreeze-timeout: arguments.seconds must be a positive number\"}}\n");
			return 1;
		}
		if (s > max_freeze)
			s = max_freeze;
		if (frozen)
			start_freeze_timer(s);
		else
			pending_timeout = s;
		reply_client(r->client, "{\"return\":{}}\n");
		return 1;
	}
	if (strcmp(exec, "vmsnap-launcher-status") == 0) {
		long left = frozen ? (long)(frozen_until > uv_now(loop) ? frozen_until - uv_now(loop) : 0) : 0;
		snprintf(out, sizeof out, "{\"return\":{\"frozen\":%s,\"thaw-in-ms\":%ld,\"agent-pid\":%d,\"thaws-by-timeout\":%d}}\n",
		         frozen ? "true" : "false", left, (int)agent_pid, thaws_by_timeout);
		reply_client(r->client, out);
		return 1;
	}
	return 0;
}

static void on_request_timeout(uv_timer_t *t)
{
	char sync[128];
	(void)t;
	if (!inflight)
		return;
	say("the agent did not answer in %d ms: failing the request, resynchronising",
	    inflight_thaw && !inflight->client ? THAW_TIMEOUT_MS : REQUEST_TIMEOUT_MS);
	if (inflight->client)
		reply_client(inflight->client, "{\"error\":{\"class\":\"GenericError\",\"desc\":"
		                               "\"vmsnap-launcher: the agent did not answer in time\"}}\n");
	else if (inflight_thaw)
		fithaw_all(); /* our own thaw got no answer */
	if (inflight_thaw) {
		frozen = 0;
		uv_timer_stop(&freeze_timer);
	}
	free_request(inflight);
	inflight = NULL;
	inflight_freeze = inflight_thaw = 0;
	/* whatever the agent answers to what it was asked goes: resynchronise */
	stale = 1;
	stale_id = (long)(uv_now(loop) & 0x3fffffff) + 1;
	snprintf(sync, sizeof sync, "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%ld}}\n", stale_id);
	send_bytes((uv_stream_t *)&agent, sync, strlen(sync));
	if (stopping)
		finish(0);
}

static void dispatch(void)
{
	while (!inflight && queue_head && agent_up && !stale) {
		Request *r = queue_head;
		char exec[128] = "";
		queue_head = r->next;
		if (!queue_head)
			queue_tail = NULL;
		r->next = NULL;
		json_string(r->data, r->len, "execute", exec, sizeof exec);
		if (strncmp(exec, "vmsnap-", 7) == 0) {
			if (!own_command(r, exec))
				reply_client(r->client, "{\"error\":{\"class\":\"CommandNotFound\",\"desc\":"
				                        "\"vmsnap-launcher: unknown command\"}}\n");
			free_request(r);
			continue;
		}
		if (r->client && r->client->closing) {
			free_request(r);
			continue;
		}
		inflight = r;
		inflight_freeze = strncmp(exec, "guest-fsfreeze-freeze", 21) == 0;
		inflight_thaw = strcmp(exec, "guest-fsfreeze-thaw") == 0;
		if (inflight_freeze)
			record_mounts(r->data, r->len);
		/* the frame as the client sent it (not its 0xFF: the agent answers a
		   0xFF with an error reply of its own, which would take this one's place) */
		send_bytes((uv_stream_t *)&agent, r->data, r->len);
		send_bytes((uv_stream_t *)&agent, "\n", 1);
		uv_timer_start(&request_timer, on_request_timeout,
		               inflight_thaw && !r->client ? THAW_TIMEOUT_MS : REQUEST_TIMEOUT_MS, 0);
	}
}

/* ------------------------------------------------------------ the agent */

static int agent_event(void *ud, int ev, const char *text, size_t n)
{
	(void)ud;
	if (stale) {
		double id = 0;
		if (ev == QGAF_FRAME && json_number(text, n, "return", &id) && (long)id == stale_id) {
			stale = 0;
			dispatch();
		}
		return 0;
	}
	if (!inflight)
		return 0; /* nobody asked (an answer to a request that timed out) */
	if (ev == QGAF_DELIM) {
		if (inflight->client)
			reply_client(inflight->client, "\xff");
		return 0;
	}
	if (ev != QGAF_FRAME)
		return 0;
	uv_timer_stop(&request_timer);
	int ok = contains(text, n, "\"return\"");
	if (inflight_freeze && ok) {
		frozen = 1;
		double s = pending_timeout > 0 ? pending_timeout : max_freeze;
		pending_timeout = -1;
		start_freeze_timer(s);
		say("frozen (%d mountpoints); thawed in %gs at the latest", nmounts, s);
	} else if (inflight_thaw && ok) {
		if (frozen)
			say("thawed");
		frozen = 0;
		uv_timer_stop(&freeze_timer);
	} else if (inflight_thaw && !ok && !inflight->client) {
		say("the agent refused the thaw: thawing the mountpoints");
		fithaw_all();
		frozen = 0;
	}
	if (inflight->client && !inflight->client->closing) {
		send_bytes((uv_stream_t *)&inflight->client->pipe, text, n);
		send_bytes((uv_stream_t *)&inflight->client->pipe, "\n", 1);
	}
	int was_internal_thaw = inflight_thaw && !inflight->client;
	free_request(inflight);
	inflight = NULL;
	inflight_freeze = inflight_thaw = 0;
	if (stopping && was_internal_thaw)
		finish(0);
	dispatch();
	return 0;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	(void)h;
	b->base = (char *)malloc(suggested);
	b->len = b->base ? suggested : 0;
}

static void agent_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	(void)s;
	if (n > 0)
		Vmsnap_qgaframe_feed(&agent_fr, b->base, (size_t)n, agent_event, NULL);
	free(b->base);
	if (n < 0) {
		say("the agent closed its socket");
		if (frozen)
			fithaw_all();
		finish(1);
	}
}

static void agent_connected(uv_connect_t *req, int status);

static void try_agent(uv_timer_t *t)
{
	static int tries;
	uv_connect_t *req;
	(void)t;
	if (++tries > 200) { /* 10 s */
		say("the agent did not listen on %s", agent_socket);
		finish(1);
		return;
	}
	req = (uv_connect_t *)malloc(sizeof *req);
	if (!req)
		return;
	uv_pipe_init(loop, &agent, 0);
	uv_pipe_connect(req, &agent, agent_socket, agent_connected);
}

static void agent_closed_retry(uv_handle_t *h)
{
	(void)h;
	uv_timer_start(&start_timer, try_agent, 50, 0);
}

static void agent_connected(uv_connect_t *req, int status)
{
	free(req);
	if (status != 0) {
		uv_close((uv_handle_t *)&agent, agent_closed_retry);
		return;
	}
	agent_up = 1;
	uv_read_start((uv_stream_t *)&agent, alloc_cb, agent_read);
	say("serving the agent %s (pid %d) on %s", agent_socket, (int)agent_pid, socket_path);
	dispatch();
}

/* ------------------------------------------------------------ clients */

static int client_event(void *ud, int ev, const char *text, size_t n)
{
	Client *c = (Client *)ud;
	if (ev == QGAF_FRAME)
		enqueue(c, text, n, 0);
	else if (ev == QGAF_OVERSIZE || ev == QGAF_BAD)
		reply_client(c, "{\"error\":{\"class\":\"GenericError\",\"desc\":\"vmsnap-launcher: bad request\"}}\n");
	return 0;
}

static void client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	Client *c = (Client *)s->data;
	if (n > 0)
		Vmsnap_qgaframe_feed(&c->fr, b->base, (size_t)n, client_event, c);
	free(b->base);
	if (n < 0)
		client_close(c);
}

static void on_client(uv_stream_t *srv, int status)
{
	Client *c;
	if (status != 0)
		return;
	c = (Client *)calloc(1, sizeof *c);
	if (!c)
		return;
	Vmsnap_qgaframe_init(&c->fr, MAX_FRAME);
	uv_pipe_init(loop, &c->pipe, 0);
	c->pipe.data = c;
	if (uv_accept(srv, (uv_stream_t *)&c->pipe) != 0) {
		client_close(c);
		return;
	}
	uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, client_read);
}

/* ------------------------------------------------------------ ends */

static void finish(int code)
{
	if (agent_pid > 0) {
		kill(agent_pid, SIGTERM);
		for (int i = 0; i < 20; i++) {
			if (waitpid(agent_pid, NULL, WNOHANG) == agent_pid) {
				agent_pid = 0;
				break;
			}
			usleep(50000);
		}
		if (agent_pid > 0) {
			kill(agent_pid, SIGKILL); /* qemu-ga ignores SIGTERM while frozen */
			waitpid(agent_pid, NULL, 0);
		}
	}
	if (socket_path)
		unlink(socket_path);
	say("exiting");
	exit(code);
}

static void on_signal(uv_signal_t *s, int signum)
{
	(void)s;
	if (stopping)
		return;
	stopping = 1;
	say("signal %d (%s): stopping", signum, signum == SIGTERM && getppid() == 1 ? "the parent is gone" : "told to");
	uv_close((uv_handle_t *)&server, NULL);
	if (frozen && agent_up) {
		enqueue(NULL, THAW, strlen(THAW), 1);
		if (!inflight) /* the queue is held by a stale agent */
			finish(0);
		return; /* finish() when the thaw is answered, or times out */
	}
	if (frozen)
		fithaw_all();
	finish(0);
}

static void on_child(uv_signal_t *s, int signum)
{
	int st;
	(void)s;
	(void)signum;
	if (agent_pid > 0 && waitpid(agent_pid, &st, WNOHANG) == agent_pid) {
		say("the agent exited (%s %d)", WIFSIGNALED(st) ? "signal" : "status",
		    WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
		agent_pid = 0;
		if (frozen)
			fithaw_all();
		finish(1);
	}
}

static int serve(int argc, char **argv)
{
	int i, agent_argc = 0;
	char **agent_argv = NULL;
	for (i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
			socket_path = argv[++i];
		} else if (strcmp(argv[i], "--agent-socket") == 0 && i + 1 < argc) {
			agent_socket = argv[++i];
		} else if (strcmp(argv[i], "--max-freeze") == 0 && i + 1 < argc) {
			max_freeze = strtod(argv[++i], NULL);
		} else if (strcmp(argv[i], "--") == 0) {
			agent_argv = argv + i + 1;
			agent_argc = argc - i - 1;
			break;
		} else {
			fprintf(stderr, "vmsnap-launcher: serve: unknown argument '%s'\n", argv[i]);
			return 2;
		}
	}
	if (!socket_path || !agent_socket || agent_argc < 1 || !(max_freeze > 0)) {
		fprintf(stderr, "usage: vmsnap-launcher serve --socket PATH --agent-socket PATH [--max-freeze S] -- AGENT ARGS...\n");
		return 2;
	}
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() == 1) {
		fprintf(stderr, "vmsnap-launcher: the parent is gone already\n");
		return 1;
	}
	loop = uv_default_loop();
	/* signals first: a SIGTERM between here and the loop is not lost */
	uv_signal_init(loop, &sig_term);
	uv_signal_start(&sig_term, on_signal, SIGTERM);
	uv_signal_init(loop, &sig_int);
	uv_signal_start(&sig_int, on_signal, SIGINT);
	uv_signal_init(loop, &sig_hup);
	uv_signal_start(&sig_hup, on_signal, SIGHUP);
	uv_signal_init(loop, &sig_chld);
	uv_signal_start(&sig_chld, on_child, SIGCHLD);
	unlink(agent_socket);
	agent_pid = fork();
	if (agent_pid < 0) {
		perror("vmsnap-launcher: fork");
		return 1;
	}
	if (agent_pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execvp(agent_argv[0], agent_argv);
		fprintf(stderr, "vmsnap-launcher: cannot run %s: %s\n", agent_argv[0], strerror(errno));
		_exit(127);
	}
	Vmsnap_qgaframe_init(&agent_fr, MAX_FRAME);
	uv_timer_init(loop, &freeze_timer);
	uv_timer_init(loop, &request_timer);
	uv_timer_init(loop, &start_timer);
	unlink(socket_path);
	uv_pipe_init(loop, &server, 0);
	if (uv_pipe_bind(&server, socket_path) != 0) {
		say("cannot listen on %s", socket_path);
		finish(1);
	}
	chmod(socket_path, 0600);
	if (uv_listen((uv_stream_t *)&server, 64, on_client) != 0) {
		say("cannot listen on %s", socket_path);
		finish(1);
	}
	uv_timer_start(&start_timer, try_agent, 20, 0);
	uv_run(loop, UV_RUN_DEFAULT);
	finish(0);
	return 0;
}

int main(int argc, char **argv)
{
	/* a client that hangs up is not a reason to die (and leave a guest frozen) */
	signal(SIGPIPE, SIG_IGN);
	if (argc >= 2 && strcmp(argv[1], "serve") == 0)
		return serve(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "thaw-after") == 0)
		return thaw_after(argc - 2, argv + 2);
	fprintf(stderr,
	        "usage: vmsnap-launcher serve --socket PATH --agent-socket PATH [--max-freeze S] -- AGENT ARGS...\n"
	        "       vmsnap-launcher thaw-after SECONDS AGENT_SOCKET [MOUNTPOINT...]\n");
	return 2;
}
