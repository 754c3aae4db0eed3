/*
** testhttpd.c -- a small HTTP/1.1 server for the tests, on 127.0.0.1 only.
**
** usage: testhttpd --port-file FILE [--max-seconds N]
** Writes the port to FILE (atomically) once listening, then serves:
**   GET  /delay?ms=N      200 "ok" after N ms (counts requests in flight)
**   GET  /stats           {"peak":P,"total":T,"inflight":I,"connections":C}
**                         (total counts every request but /stats)
**   POST /echo            200 with the request body (and its content type)
**   GET  /status/CODE     that status with a short body
**   GET  /stream?n=K&ms=M K lines "line i\n" in a chunked body, M ms apart
**   GET  /headers         the request headers back, one per line
**   GET  /close           closes the connection without answering
** Exits after --max-seconds (default 120) so a broken test cannot leak it.
*/
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <uv.h>

typedef struct Conn {
	uv_tcp_t tcp;
	char *buf;
	size_t len, cap;
	uv_timer_t timer;
	int timer_open;
	int busy; /* a delayed or streamed response is pending */
	int stream_left, stream_ms, stream_i;
	int closing;
} Conn;

static uv_loop_t *loop;
static int inflight, peak, total, connections;

static void conn_closed(uv_handle_t *h)
{
	Conn *c = (Conn *)h->data;
	if (--c->timer_open == 0) {
		free(c->buf);
		free(c);
	}
}

static void conn_close(Conn *c)
{
	if (c->closing)
		return;
	c->closing = 1;
	if (c->busy) {
		c->busy = 0;
		inflight--;
	}
	uv_close((uv_handle_t *)&c->timer, conn_closed);
	uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void write_done(uv_write_t *w, int status)
{
	(void)status;
	free(w->data);
	free(w);
}

static void send_raw(Conn *c, const char *s, size_t n)
{
	uv_write_t *w;
	uv_buf_t b;
	if (c->closing)
		return;
	w = (uv_write_t *)malloc(sizeof *w);
	w->data = malloc(n);
	memcpy(w->data, s, n);
	b = uv_buf_init((char *)w->data, (unsigned)n);
	uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, write_done);
}

static void respond(Conn *c, int code, const char *ctype, const char *body, size_t blen)
{
	char head[256];
	int n = snprintf(head, sizeof head,
	                 "HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n", code,
	                 ctype, blen);
	send_raw(c, head, (size_t)n);
	send_raw(c, body, blen);
}

static void process(Conn *c);

static void delay_done(uv_timer_t *t)
{
	Conn *c = (Conn *)t->data;
	if (c->stream_left > 0) {
		char line[64], chunk[96];
		int n = snprintf(line, sizeof line, "line %d\n", ++c->stream_i);
		int m = snprintf(chunk, sizeof chunk, "%x\r\n%s\r\n", n, line);
		send_raw(c, chunk, (size_t)m);
		if (--c->stream_left > 0) {
			uv_timer_start(&c->timer, delay_done, (uint64_t)c->stream_ms, 0);
			return;
		}
		send_raw(c, "0\r\n\r\n", 5);
	} else {
		respond(c, 200, "text/plain", "ok", 2);
	}
	c->busy = 0;
	inflight--;
	process(c); /* a pipelined request may be waiting */
}

static int query_int(const char *path, const char *key, int def)
{
	const char *q = strchr(path, '?');
	size_t kl = strlen(key);
	while (q) {
		q++;
		if (strncmp(q, key, kl) == 0 && q[kl] == '=')
			return atoi(q + kl + 1);
		q = strchr(q, '&');
	}
	return def;
}

/* handle one complete request at the start of c->buf, if there is one */
static void process(Conn *c)
{
	char *end, method[16], path[512];
	size_t hlen, clen = 0, total_len;
	const char *cl;
	if (c->busy || c->closing)
		return;
	c->buf[c->len] = 0;
	end = strstr(c->buf, "\r\n\r\n");
	if (!end)
		return;
	hlen = (size_t)(end - c->buf) + 4;
	cl = strcasestr(c->buf, "\ncontent-length:");
	if (cl && cl < end)
		clen = (size_t)strtoul(cl + 16, NULL, 10);
	total_len = hlen + clen;
	if (c->len < total_len)
		return;
	if (sscanf(c->buf, "%15s %511s", method, path) != 2) {
		conn_close(c);
		return;
	}
	if (strcmp(path, "/stats") != 0)
		total++;
	if (strncmp(path, "/delay", 6) == 0) {
		c->busy = 1;
		if (++inflight > peak)
			peak = inflight;
		c->stream_left = 0;
		uv_timer_start(&c->timer, delay_done, (uint64_t)query_int(path, "ms", 100), 0);
	} else if (strncmp(path, "/stream", 7) == 0) {
		static const char head[] =
		    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
		send_raw(c, head, sizeof head - 1);
		c->busy = 1;
		inflight++;
		c->stream_left = query_int(path, "n", 3);
		c->stream_ms = query_int(path, "ms", 10);
		c->stream_i = 0;
		uv_timer_start(&c->timer, delay_done, (uint64_t)c->stream_ms, 0);
	} else if (strcmp(path, "/stats") == 0) {
		char body[160];
		int n = snprintf(body, sizeof body,
		                 "{\"peak\":%d,\"total\":%d,\"inflight\":%d,\"connections\":%d}", peak,
		                 total, inflight, connections);
		respond(c, 200, "application/json", body, (size_t)n);
	} else if (strcmp(path, "/echo") == 0) {
		respond(c, 200, "application/octet-stream", c->buf + hlen, clen);
	} else if (strncmp(path, "/status/", 8) == 0) {
		respond(c, atoi(path + 8), "text/plain", "status", 6);
	} else if (strcmp(path, "/headers") == 0) {
		respond(c, 200, "text/plain", c->buf, hlen);
	} else if (strcmp(path, "/close") == 0) {
		conn_close(c);
		return;
	} else {
		respond(c, 404, "text/plain", "not found", 9);
	}
	memmove(c->buf, c->buf + total_len, c->len - total_len);
	c->len -= total_len;
	if (!c->busy)
		process(c);
}

static void alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
	Conn *c = (Conn *)h->data;
	(void)sz;
	if (c->cap - c->len < 65536) {
		c->cap = c->cap * 2 + 65536;
		c->buf = (char *)realloc(c->buf, c->cap + 1);
	}
	b->base = c->buf + c->len;
	b->len = c->cap - c->len;
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	Conn *c = (Conn *)s->data;
	(void)b;
	if (n < 0) {
		conn_close(c);
		return;
	}
	c->len += (size_t)n;
	process(c);
}

static void on_conn(uv_stream_t *server, int status)
{
	Conn *c;
	if (status < 0)
		return;
	c = (Conn *)calloc(1, sizeof *c);
	uv_tcp_init(loop, &c->tcp);
	uv_timer_init(loop, &c->timer);
	c->tcp.data = c->timer.data = c;
	c->timer_open = 2; /* handles still to close */
	if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
		conn_close(c);
		return;
	}
	connections++;
	uv_tcp_nodelay(&c->tcp, 1);
	uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static void on_limit(uv_timer_t *t)
{
	(void)t;
	fprintf(stderr, "testhttpd: time limit reached, exiting\n");
	exit(0);
}

int main(int argc, char **argv)
{
	uv_tcp_t server;
	uv_timer_t limit;
	struct sockaddr_in addr;
	struct sockaddr_storage bound;
	int len = sizeof bound, secs = 120, i;
	const char *port_file = NULL;
	char tmp[4096];
	FILE *f;
	for (i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--max-seconds") == 0)
			secs = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--port-file") == 0)
			port_file = argv[i + 1];
	}
	if (!port_file) {
		fprintf(stderr, "usage: testhttpd --port-file FILE [--max-seconds N]\n");
		return 2;
	}
	loop = uv_default_loop();
	uv_tcp_init(loop, &server);
	uv_ip4_addr("127.0.0.1", 0, &addr);
	if (uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0) ||
	    uv_listen((uv_stream_t *)&server, 512, on_conn)) {
		fprintf(stderr, "testhttpd: cannot listen\n");
		return 1;
	}
	uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
	snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
	f = fopen(tmp, "w");
	if (!f || fprintf(f, "%d\n", ntohs(((struct sockaddr_in *)&bound)->sin_port)) < 0 ||
	    fclose(f) != 0 || rename(tmp, port_file) != 0) {
		fprintf(stderr, "testhttpd: cannot write %s\n", port_file);
		return 1;
	}
	uv_timer_init(loop, &limit);
	uv_timer_start(&limit, on_limit, (uint64_t)secs * 1000, 0);
	uv_unref((uv_handle_t *)&limit);
	return uv_run(loop, UV_RUN_DEFAULT);
}
