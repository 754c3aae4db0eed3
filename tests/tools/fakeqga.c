/*
** fakeqga.c -- a guest agent that misbehaves on demand, for what the real
** qemu-ga will not do: hang, send garbage, stop half-way through a reply,
** answer late, or answer a sync with a stale id first.  Unix socket only.
**
** usage: fakeqga --socket PATH [--max-seconds N] ACTION...
**
** Each command received (guest-sync-delimited included) takes the next
** ACTION; when they run out, every command gets "ok".  A 0xFF byte in the
** input drops a partial command, as qemu-ga does.
**   ok        the proper reply (sync: 0xFF, then {"return": ID})
**   hang      no reply at all
**   garbage   bytes that are not JSON, then the proper reply
**   half      the first half of a reply, and nothing more
**   late:MS   the proper reply after MS milliseconds
**   stale     (sync) a delimited reply with another id first, then the proper one
** Replies: guest-ping {}; guest-info {"version":"fake"}; guest-sync-delimited
** the id; anything else {"return": "fake:NAME"}.
*/
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include <uv.h>

static char **actions;
static int nactions, next_action;
static uv_loop_t *loop;

typedef struct Client {
	uv_pipe_t pipe;
	char buf[65536];
	size_t len;
	int closing;
	int open;
} Client;

typedef struct Late {
	uv_timer_t t;
	Client *c;
	char *data;
	size_t len;
} Late;

static void closed(uv_handle_t *h)
{
	Client *c = (Client *)h->data;
	free(c);
}

static void write_done(uv_write_t *w, int status)
{
	(void)status;
	free(w->data);
	free(w);
}

static void send_bytes(Client *c, const char *p, size_t n)
{
	if (c->closing)
		return;
	uv_write_t *w = (uv_write_t *)malloc(sizeof *w);
	char *copy = (char *)malloc(n);
	if (!w || !copy) {
		free(w);
		free(copy);
		return;
	}
	memcpy(copy, p, n);
	w->data = copy;
	uv_buf_t b = uv_buf_init(copy, (unsigned)n);
	if (uv_write(w, (uv_stream_t *)&c->pipe, &b, 1, write_done) != 0) {
		free(copy);
		free(w);
	}
}

static void late_closed(uv_handle_t *h)
{
	Late *l = (Late *)h->data;
	free(l->data);
	free(l);
}

static void late_fire(uv_timer_t *t)
{
	Late *l = (Late *)t->data;
	send_bytes(l->c, l->data, l->len);
	uv_close((uv_handle_t *)&l->t, late_closed);
}

/* the proper reply to a command, in out (NUL-terminated) */
static void reply_for(const char *cmd, char *out, size_t cap)
{
	const char *name = strstr(cmd, "\"execute\"");
	char exe[128] = "";
	if (name) {
		name = strchr(name + 9, '"');
		if (name)
			sscanf(name + 1, "%127[^\"]", exe);
	}
	if (strcmp(exe, "guest-sync-delimited") == 0 || strcmp(exe, "guest-sync") == 0) {
		const char *id = strstr(cmd, "\"id\"");
		long long v = id ? strtoll(strchr(id + 4, ':') + 1, NULL, 10) : 0;
		snprintf(out, cap, "%s{\"return\": %lld}\n", exe[10] == '-' ? "\xff" : "", v);
	} else if (strcmp(exe, "guest-ping") == 0) {
		snprintf(out, cap, "{\"return\": {}}\n");
	} else if (strcmp(exe, "guest-info") == 0) {
		snprintf(out, cap, "{\"return\": {\"version\": \"fake\", \"supported_commands\": []}}\n");
	} else {
		snprintf(out, cap, "{\"return\": \"fake:%s\"}\n", exe);
	}
}

static void handle(Client *c, const char *cmd)
{
	char reply[512];
	const char *a = next_action < nactions ? actions[next_action++] : "ok";
	reply_for(cmd, reply, sizeof reply);
	if (strcmp(a, "ok") == 0) {
		send_bytes(c, reply, strlen(reply));
	} else if (strcmp(a, "hang") == 0) {
		/* nothing */
	} else if (strcmp(a, "garbage") == 0) {
		static const char junk[] = "\x01\x02 not json ]}{ [[ \"unterminated\n}}}\n";
		send_bytes(c, junk, sizeof junk - 1);
		send_bytes(c, reply, strlen(reply));
	} else if (strcmp(a, "half") == 0) {
		send_bytes(c, reply, strlen(reply) / 2);
	} else if (strncmp(a, "late:", 5) == 0) {
		Late *l = (Late *)calloc(1, sizeof *l);
		l->c = c;
		l->len = strlen(reply);
		l->data = strdup(reply);
		uv_timer_init(loop, &l->t);
		l->t.data = l;
		uv_timer_start(&l->t, late_fire, (uint64_t)atol(a + 5), 0);
	} else if (strcmp(a, "stale") == 0) {
		static const char old[] = "\xff{\"return\": 999999999}\n";
		send_bytes(c, old, sizeof old - 1);
		send_bytes(c, reply, strlen(reply));
	}
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	Client *c = (Client *)s->data;
	if (n > 0) {
		ssize_t i;
		for (i = 0; i < n; i++) {
			char ch = b->base[i];
			if ((unsigned char)ch == 0xFF) {
				c->len = 0; /* drop a partial command */
				continue;
			}
			if (ch == '\n') {
				c->buf[c->len] = 0;
				if (c->len > 0 && strchr(c->buf, '{'))
					handle(c, c->buf);
				c->len = 0;
				continue;
			}
			if (c->len + 1 < sizeof c->buf)
				c->buf[c->len++] = ch;
		}
	}
	free(b->base);
	if (n < 0 && !c->closing) {
		c->closing = 1;
		uv_close((uv_handle_t *)&c->pipe, closed);
	}
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	(void)h;
	b->base = (char *)malloc(suggested);
	b->len = b->base ? suggested : 0;
}

static void on_connection(uv_stream_t *server, int status)
{
	if (status != 0)
		return;
	Client *c = (Client *)calloc(1, sizeof *c);
	uv_pipe_init(loop, &c->pipe, 0);
	c->pipe.data = c;
	if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
		uv_close((uv_handle_t *)&c->pipe, closed);
		return;
	}
	uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, on_read);
}

static void on_max(uv_timer_t *t)
{
	(void)t;
	exit(0);
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	long max_seconds = 120;
	int i;
	actions = (char **)calloc((size_t)argc, sizeof *actions);
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc)
			path = argv[++i];
		else if (strcmp(argv[i], "--max-seconds") == 0 && i + 1 < argc)
			max_seconds = atol(argv[++i]);
		else
			actions[nactions++] = argv[i];
	}
	if (!path) {
		fprintf(stderr, "usage: fakeqga --socket PATH [--max-seconds N] ACTION...\n");
		return 2;
	}
	loop = uv_default_loop();
	uv_pipe_t server;
	uv_pipe_init(loop, &server, 0);
	remove(path);
	if (uv_pipe_bind(&server, path) != 0 || uv_listen((uv_stream_t *)&server, 8, on_connection) != 0) {
		fprintf(stderr, "fakeqga: cannot listen on %s\n", path);
		return 1;
	}
	/* PATH.ready tells the tests that connections are accepted now (the
	** socket file exists from bind on, before listen) */
	char ready[4096];
	snprintf(ready, sizeof ready, "%s.ready", path);
	FILE *rf = fopen(ready, "w");
	if (rf)
		fclose(rf);
	uv_timer_t maxt;
	uv_timer_init(loop, &maxt);
	uv_timer_start(&maxt, on_max, (uint64_t)max_seconds * 1000, 0);
	uv_unref((uv_handle_t *)&maxt);
	return uv_run(loop, UV_RUN_DEFAULT);
}
