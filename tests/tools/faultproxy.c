/*
** faultproxy.c -- an HTTP/1.1 proxy in front of a real API server that
** injects the faults a real server will not produce on demand.  127.0.0.1 only.
**
** usage: faultproxy --upstream PORT --port-file FILE [--max-seconds N] [--upstream-tls]
**
** --upstream-tls: the upstream speaks HTTPS (vmsnap serve always does); the
** proxy is its TLS client (OpenSSL with memory BIOs on the libuv loop; the
** certificate is not verified: a test tool on loopback) and speaks plain
** HTTP to its own clients, so that faults can be put in plain requests.
**
** Each client connection gets its own upstream connection, and everything the
** upstream sends is passed through.  Requests are parsed (Content-Length
** bodies) so that faults can be put in their place.  Control requests:
**   POST   /_faults?match=PREFIX&do=A,B,...   the next requests whose path
**          starts with PREFIX get actions A, B, ... in turn (PREFIX ending in
**          '$': the path is exactly PREFIX, its query aside; "METHOD PREFIX",
**          e.g. "POST /apis/...": only requests of that method; "WATCH /...":
**          only watches, GETs with watch=1|true); rules are tried
**          in the order they were added, and a rule ends with its actions
**   GET    /_faults                            {"requests":N,"faulted":F,"proxied":P,
**                                               "pending":actions not used yet}
**   DELETE /_faults                            forget the rules, zero the counters
**   POST   /_faults/reset                      close every proxied connection now
**          (open watches included: a network blip)
** Actions:
**   ok           pass the request through
**   429[:S]      answer 429 TooManyRequests with Retry-After: S (default 1)
**   403          answer 403 Forbidden (a refusal no retry fixes: quota, policy)
**   500 502 503 504   answer that status with a Status body
**   drop         answer 200 with Content-Length 1000, send 10 bytes, close
**   close        close the connection without answering
**   slow:MS      pass the request through after MS milliseconds
**   cut:MS       pass it through, close the connection MS ms later (breaks a watch)
**   stall:MS     pass it through, its answer for MS ms, then nothing more while
**                the connection stays open (a peer that hangs mid-stream)
**   lost         pass it through; when its answer comes, close the connection
**                instead (the server did it, the client never hears)
**   gone         answer a watch with one ERROR event (410 Expired), then end
**   empty200     answer 200 with `{}`                 (none of these is the
**   event200     answer 200 with a watch ERROR event   object asked for, and
**   nometa200    answer 200 with a VirtualDiskSnapshot a client must not
**                without metadata                      take it for one)
**   junk200      answer 200 with an HTML page
** FAULTPROXY_LOG set in the environment: each request line goes to stderr.
** Exits after --max-seconds (default 300) so a broken test cannot leak it.
*/
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>

#define MAX_RULES 64
#define MAX_ACTIONS 64

typedef struct Rule {
	char prefix[256];
	char actions[MAX_ACTIONS][32];
	int n, next;
} Rule;

static Rule rules[MAX_RULES];
static int nrules;
static long n_requests, n_faulted, n_proxied;
static uv_loop_t *loop;
static int upstream_port;
static SSL_CTX *up_tls; /* --upstream-tls */

typedef struct Conn {
	uv_tcp_t client;
	uv_tcp_t up;
	uv_connect_t creq;
	uv_timer_t timer;
	int up_state; /* 0 none, 1 connecting, 2 connected */
	char *buf;    /* client bytes not yet handled */
	size_t len, cap;
	char *pending; /* request bytes waiting for the upstream connection */
	size_t plen;
	int open_handles;
	int closing;
	int delayed; /* a slow: request is waiting on the timer */
	int lose;    /* lost: the answer's first bytes close the connection */
	int stalled; /* stall: the answer's bytes go no further, the connection stays */
	int stall_armed; /* stall: its timer runs */
	char *delayed_req;
	SSL *ssl; /* --upstream-tls: the upstream session (memory BIOs) */
	BIO *rbio, *wbio;
	size_t delayed_len;
} Conn;

static void on_handle_closed(uv_handle_t *h)
{
	Conn *c = (Conn *)h->data;
	if (--c->open_handles == 0) {
		free(c->buf);
		free(c->pending);
		free(c->delayed_req);
		if (c->ssl)
			SSL_free(c->ssl); /* frees its BIOs */
		free(c);
	}
}

static void conn_close(Conn *c)
{
	if (c->closing)
		return;
	c->closing = 1;
	uv_close((uv_handle_t *)&c->client, on_handle_closed);
	uv_close((uv_handle_t *)&c->timer, on_handle_closed);
	if (c->up_state > 0)
		uv_close((uv_handle_t *)&c->up, on_handle_closed);
}

static void write_done(uv_write_t *w, int status)
{
	(void)status;
	free(w->data);
	free(w);
}

static void send_to(uv_stream_t *s, const char *data, size_t n)
{
	uv_write_t *w;
	char *copy;
	uv_buf_t b;
	if (uv_is_closing((uv_handle_t *)s))
		return;
	w = (uv_write_t *)malloc(sizeof *w);
	copy = (char *)malloc(n ? n : 1);
	if (!w || !copy) {
		free(w);
		free(copy);
		return;
	}
	memcpy(copy, data, n);
	w->data = copy;
	b = uv_buf_init(copy, (unsigned)n);
	if (uv_write(w, s, &b, 1, write_done) != 0) {
		free(copy);
		free(w);
	}
}

static void send_client(Conn *c, const char *data, size_t n)
{
	send_to((uv_stream_t *)&c->client, data, n);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	(void)h;
	b->base = (char *)malloc(suggested);
	b->len = b->base ? suggested : 0;
}

/* ------------------------------------------------------------ upstream */

/* TLS: send what the session wrote to its output BIO */
static void tls_flush(Conn *c)
{
	char buf[16384];
	int n;
	while ((n = BIO_read(c->wbio, buf, sizeof buf)) > 0)
		send_to((uv_stream_t *)&c->up, buf, (size_t)n);
}

/* TLS: go on with the handshake; once it is done, encrypt what waits */
static void tls_pump(Conn *c)
{
	if (!SSL_is_init_finished(c->ssl)) {
		int r = SSL_do_handshake(c->ssl);
		tls_flush(c);
		if (r != 1) {
			int e = SSL_get_error(c->ssl, r);
			if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
				fprintf(stderr, "faultproxy: TLS handshake with the upstream failed\n");
				conn_close(c);
			}
			return;
		}
	}
	if (c->plen) {
		if (SSL_write(c->ssl, c->pending, (int)c->plen) <= 0) {
			conn_close(c);
			return;
		}
		c->plen = 0;
		tls_flush(c);
	}
}

static void up_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	Conn *c = (Conn *)s->data;
	if (n > 0 && c->ssl) {
		char plain[16384];
		int k;
		BIO_write(c->rbio, b->base, (int)n);
		tls_pump(c);
		while (!c->closing && (k = SSL_read(c->ssl, plain, sizeof plain)) > 0) {
			if (c->lose)
				conn_close(c); /* lost: the answer goes no further */
			else if (!c->stalled)
				send_client(c, plain, (size_t)k);
		}
		if (!c->closing)
			tls_flush(c); /* what the session answers (tickets, key updates) */
	} else if (n > 0) {
		if (c->lose)
			conn_close(c);
		else if (!c->stalled)
			send_client(c, b->base, (size_t)n);
	}
	free(b->base);
	if (n < 0)
		conn_close(c); /* the upstream went away: so does the client */
}

static void up_connected(uv_connect_t *r, int status)
{
	Conn *c = (Conn *)r->data;
	if (c->closing)
		return;
	if (status != 0) {
		conn_close(c);
		return;
	}
	c->up_state = 2;
	uv_read_start((uv_stream_t *)&c->up, alloc_cb, up_read);
	if (up_tls) {
		c->ssl = SSL_new(up_tls);
		c->rbio = BIO_new(BIO_s_mem());
		c->wbio = BIO_new(BIO_s_mem());
		if (!c->ssl || !c->rbio || !c->wbio) {
			conn_close(c);
			return;
		}
		SSL_set_bio(c->ssl, c->rbio, c->wbio);
		SSL_set_connect_state(c->ssl);
		tls_pump(c);
		return;
	}
	if (c->plen) {
		send_to((uv_stream_t *)&c->up, c->pending, c->plen);
		c->plen = 0;
	}
}

static void forward(Conn *c, const char *req, size_t n)
{
	n_proxied++;
	if (c->up_state == 2 && !c->ssl) {
		send_to((uv_stream_t *)&c->up, req, n);
		return;
	}
	char *p = (char *)realloc(c->pending, c->plen + n);
	if (!p)
		return;
	c->pending = p;
	memcpy(c->pending + c->plen, req, n);
	c->plen += n;
	if (c->ssl) {
		tls_pump(c);
		return;
	}
	if (c->up_state == 0) {
		struct sockaddr_in a;
		uv_ip4_addr("127.0.0.1", upstream_port, &a);
		uv_tcp_init(loop, &c->up);
		c->up.data = c;
		c->open_handles++;
		c->up_state = 1;
		c->creq.data = c;
		if (uv_tcp_connect(&c->creq, &c->up, (const struct sockaddr *)&a, up_connected) != 0)
			conn_close(c);
	}
}

/* ------------------------------------------------------------ faults */

static void answer(Conn *c, int code, const char *reason, const char *extra)
{
	char body[512], head[768];
	int bl = snprintf(body, sizeof body,
	                  "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\","
	                  "\"message\":\"injected %d\",\"reason\":\"%s\",\"code\":%d}",
	                  code, reason, code);
	int hl = snprintf(head, sizeof head,
	                  "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n",
	                  code, reason, bl, extra ? extra : "");
	send_client(c, head, (size_t)hl);
	send_client(c, body, (size_t)bl);
}

static void answer_200(Conn *c, const char *ctype, const char *body)
{
	char head[256];
	int hl = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n",
	                  ctype, strlen(body));
	send_client(c, head, (size_t)hl);
	send_client(c, body, strlen(body));
}

static void cut_cb(uv_timer_t *t)
{
	conn_close((Conn *)t->data);
}

static void stall_cb(uv_timer_t *t)
{
	Conn *c = (Conn *)t->data;
	c->stall_armed = 0;
	c->stalled = 1;
}

static void slow_cb(uv_timer_t *t)
{
	Conn *c = (Conn *)t->data;
	c->delayed = 0;
	forward(c, c->delayed_req, c->delayed_len);
	free(c->delayed_req);
	c->delayed_req = NULL;
}

/* does path match a rule's prefix? A prefix ending in '$' is a whole path:
   what follows it can only be the query */
static int query_value(const char *q, const char *key, char *out, size_t cap);

/* a GET with watch=1 or watch=true in its query */
static int is_watch(const char *method, const char *query)
{
	char v[16];
	return strcmp(method, "GET") == 0 && query_value(query, "watch", v, sizeof v) &&
	       (strcmp(v, "1") == 0 || strcmp(v, "true") == 0);
}

static int rule_matches(const Rule *r, const char *method, const char *path, const char *query)
{
	const char *prefix = r->prefix;
	const char *sp = strchr(prefix, ' ');
	if (sp) {
		if ((size_t)(sp - prefix) == 5 && strncmp(prefix, "WATCH", 5) == 0) {
			if (!is_watch(method, query))
				return 0;
		} else if (strncmp(prefix, method, (size_t)(sp - prefix)) != 0 || method[sp - prefix] != '\0') {
			return 0;
		}
		prefix = sp + 1;
	}
	size_t l = strlen(prefix);
	if (l > 0 && prefix[l - 1] == '$')
		return strncmp(path, prefix, l - 1) == 0 && (path[l - 1] == '\0' || path[l - 1] == '?');
	return strncmp(path, prefix, l) == 0;
}

static const char *next_action(const char *method, const char *path, const char *query)
{
	int i;
	for (i = 0; i < nrules; i++) {
		Rule *r = &rules[i];
		if (r->next < r->n && rule_matches(r, method, path, query))
			return r->actions[r->next++];
	}
	return NULL;
}

/* value of ?key= in a query (percent-decoding only %2C and %2F) */
static int query_value(const char *q, const char *key, char *out, size_t cap)
{
	size_t kl = strlen(key), o = 0;
	while (q && *q) {
		if (strncmp(q, key, kl) == 0 && q[kl] == '=') {
			const char *v = q + kl + 1;
			while (*v && *v != '&' && o + 1 < cap) {
				if (v[0] == '%' && v[1] && v[2]) {
					char hex[3] = {v[1], v[2], 0};
					out[o++] = (char)strtol(hex, NULL, 16);
					v += 3;
				} else {
					out[o++] = *v++;
				}
			}
			out[o] = 0;
			return 1;
		}
		q = strchr(q, '&');
		if (q)
			q++;
	}
	return 0;
}

/* uv_walk: close every proxied connection but the control one */
static void reset_one(uv_handle_t *h, void *arg)
{
	Conn *c = (Conn *)h->data;
	if (h->type == UV_TCP && c && h == (uv_handle_t *)&c->client && c != (Conn *)arg && !c->closing)
		conn_close(c);
}

static void control(Conn *c, const char *method, const char *path, const char *query)
{
	char buf[256];
	if (strcmp(method, "POST") == 0 && strcmp(path, "/_faults/reset") == 0) {
		uv_walk(loop, reset_one, c);
	} else if (strcmp(method, "POST") == 0) {
		char acts[2048];
		if (nrules >= MAX_RULES) { /* make room: forget the rules that are used up */
			int i, k = 0;
			for (i = 0; i < nrules; i++)
				if (rules[i].next < rules[i].n)
					rules[k++] = rules[i];
			nrules = k;
		}
		if (nrules >= MAX_RULES || !query_value(query, "match", buf, sizeof buf) ||
		    !query_value(query, "do", acts, sizeof acts)) {
			answer(c, 400, "BadRequest", NULL);
			return;
		}
		Rule *r = &rules[nrules++];
		memset(r, 0, sizeof *r);
		snprintf(r->prefix, sizeof r->prefix, "%s", buf);
		char *save = NULL, *tok = strtok_r(acts, ",", &save);
		while (tok && r->n < MAX_ACTIONS) {
			snprintf(r->actions[r->n++], sizeof r->actions[0], "%s", tok);
			tok = strtok_r(NULL, ",", &save);
		}
	} else if (strcmp(method, "DELETE") == 0) {
		nrules = 0;
		n_requests = n_faulted = n_proxied = 0;
	}
	char body[256], head[256];
	long pending = 0;
	int i;
	for (i = 0; i < nrules; i++)
		pending += rules[i].n - rules[i].next;
	int bl = snprintf(body, sizeof body, "{\"requests\":%ld,\"faulted\":%ld,\"proxied\":%ld,\"pending\":%ld}",
	                  n_requests, n_faulted, n_proxied, pending);
	int hl = snprintf(head, sizeof head,
	                  "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", bl);
	send_client(c, head, (size_t)hl);
	send_client(c, body, (size_t)bl);
}

/* Handle one complete request; returns 0 to go on, -1 when the connection closed. */
static int handle(Conn *c, const char *req, size_t n)
{
	char method[16] = "", target[2048] = "";
	char path[2048], *query;
	if (sscanf(req, "%15s %2047s", method, target) != 2) {
		conn_close(c);
		return -1;
	}
	snprintf(path, sizeof path, "%s", target);
	query = strchr(path, '?');
	if (query)
		*query++ = 0;
	if (strncmp(path, "/_faults", 8) == 0) {
		control(c, method, path, query);
		return 0;
	}
	n_requests++;
	if (c->stalled || c->stall_armed) {
		/* a stall: is one request's; a later one on the connection starts clean */
		uv_timer_stop(&c->timer);
		c->stalled = c->stall_armed = 0;
	}
	if (getenv("FAULTPROXY_LOG"))
		fprintf(stderr, "faultproxy: %s %s\n", method, target);
	const char *a = next_action(method, path, query);
	if (!a || strcmp(a, "ok") == 0) {
		forward(c, req, n);
		return 0;
	}
	n_faulted++;
	if (strncmp(a, "429", 3) == 0) {
		char extra[64];
		snprintf(extra, sizeof extra, "Retry-After: %s\r\n", a[3] == ':' ? a + 4 : "1");
		answer(c, 429, "TooManyRequests", extra);
	} else if (strcmp(a, "403") == 0) {
		answer(c, 403, "Forbidden", NULL);
	} else if (strcmp(a, "500") == 0) {
		answer(c, 500, "InternalError", NULL);
	} else if (strcmp(a, "502") == 0) {
		answer(c, 502, "BadGateway", NULL);
	} else if (strcmp(a, "503") == 0) {
		answer(c, 503, "ServiceUnavailable", NULL);
	} else if (strcmp(a, "504") == 0) {
		answer(c, 504, "Timeout", NULL);
	} else if (strcmp(a, "drop") == 0) {
		static const char part[] =
		    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"kind\":\"";
		send_client(c, part, sizeof part - 1);
		conn_close(c);
		return -1;
	} else if (strcmp(a, "close") == 0) {
		conn_close(c);
		return -1;
	} else if (strncmp(a, "slow:", 5) == 0) {
		n_faulted--;
		c->delayed_req = (char *)malloc(n);
		if (!c->delayed_req)
			return 0;
		memcpy(c->delayed_req, req, n);
		c->delayed_len = n;
		c->delayed = 1;
		uv_timer_start(&c->timer, slow_cb, (uint64_t)atol(a + 5), 0);
	} else if (strncmp(a, "stall:", 6) == 0) {
		forward(c, req, n);
		c->stall_armed = 1;
		uv_timer_start(&c->timer, stall_cb, (uint64_t)atol(a + 6), 0);
	} else if (strcmp(a, "lost") == 0) {
		c->lose = 1;
		forward(c, req, n);
	} else if (strncmp(a, "cut:", 4) == 0) {
		forward(c, req, n);
		uv_timer_start(&c->timer, cut_cb, (uint64_t)atol(a + 4), 0);
	} else if (strcmp(a, "gone") == 0) {
		static const char ev[] =
		    "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},"
		    "\"status\":\"Failure\",\"message\":\"too old resource version: 1 (2)\",\"reason\":\"Expired\","
		    "\"code\":410}}\n";
		char head[256], chunk[64];
		int hl = snprintf(head, sizeof head,
		                  "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
		send_client(c, head, (size_t)hl);
		hl = snprintf(chunk, sizeof chunk, "%zx\r\n", sizeof ev - 1);
		send_client(c, chunk, (size_t)hl);
		send_client(c, ev, sizeof ev - 1);
		send_client(c, "\r\n0\r\n\r\n", 7);
	} else if (strcmp(a, "empty200") == 0) {
		answer_200(c, "application/json", "{}");
	} else if (strcmp(a, "event200") == 0) {
		answer_200(c, "application/json",
		           "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},"
		           "\"status\":\"Failure\",\"message\":\"injected\",\"reason\":\"InternalError\",\"code\":500}}");
	} else if (strcmp(a, "nometa200") == 0) {
		answer_200(c, "application/json", "{\"kind\":\"VirtualDiskSnapshot\",\"apiVersion\":\"virtualization.deckhouse.io/v1alpha2\"}");
	} else if (strcmp(a, "junk200") == 0) {
		answer_200(c, "text/html", "<html><body>502 Bad Gateway</body></html>");
	} else {
		answer(c, 400, "BadRequest", NULL);
	}
	return 0;
}

/* the Content-Length of a request whose header is head[0, hlen) (hlen counts
   the blank line); only the header's own bytes are looked at (the buffer
   behind it holds what earlier requests left there, and is no C string) */
static size_t content_length(const char *head, size_t hlen)
{
	static const char key[] = "\r\ncontent-length:";
	size_t kl = sizeof key - 1, i;
	for (i = 0; i + kl <= hlen - 2; i++) {
		if (strncasecmp(head + i, key, kl) == 0) {
			char num[24];
			size_t j = i + kl, k = 0;
			while (j < hlen && head[j] == ' ')
				j++;
			while (j < hlen && k + 1 < sizeof num && head[j] >= '0' && head[j] <= '9')
				num[k++] = head[j++];
			num[k] = 0;
			return (size_t)strtoul(num, NULL, 10);
		}
	}
	return 0;
}

static void process(Conn *c)
{
	while (!c->closing && !c->delayed) {
		char *end = c->len ? (char *)memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
		if (!end)
			return;
		size_t hlen = (size_t)(end - c->buf) + 4;
		size_t total = hlen + content_length(c->buf, hlen);
		if (c->len < total)
			return;
		char *req = (char *)malloc(total + 1);
		if (!req)
			return;
		memcpy(req, c->buf, total);
		req[total] = 0;
		memmove(c->buf, c->buf + total, c->len - total);
		c->len -= total;
		int r = handle(c, req, total);
		free(req);
		if (r < 0)
			return;
	}
}

static void client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	Conn *c = (Conn *)s->data;
	if (n > 0) {
		if (c->len + (size_t)n > c->cap) {
			size_t cap = c->cap ? c->cap * 2 : 8192;
			while (cap < c->len + (size_t)n)
				cap *= 2;
			char *p = (char *)realloc(c->buf, cap);
			if (!p) {
				free(b->base);
				conn_close(c);
				return;
			}
			c->buf = p;
			c->cap = cap;
		}
		memcpy(c->buf + c->len, b->base, (size_t)n);
		c->len += (size_t)n;
		process(c);
	}
	free(b->base);
	if (n < 0)
		conn_close(c);
}

static void on_connection(uv_stream_t *server, int status)
{
	Conn *c;
	if (status != 0)
		return;
	c = (Conn *)calloc(1, sizeof *c);
	if (!c)
		return;
	uv_tcp_init(loop, &c->client);
	uv_timer_init(loop, &c->timer);
	c->client.data = c;
	c->timer.data = c;
	c->open_handles = 2;
	if (uv_accept(server, (uv_stream_t *)&c->client) != 0) {
		conn_close(c);
		return;
	}
	uv_read_start((uv_stream_t *)&c->client, alloc_cb, client_read);
}

static void on_max(uv_timer_t *t)
{
	(void)t;
	fprintf(stderr, "faultproxy: --max-seconds reached, exiting\n");
	exit(0);
}

int main(int argc, char **argv)
{
	const char *port_file = NULL;
	long max_seconds = 300;
	int i;
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--upstream") == 0 && i + 1 < argc)
			upstream_port = atoi(argv[++i]);
		else if (strcmp(argv[i], "--port-file") == 0 && i + 1 < argc)
			port_file = argv[++i];
		else if (strcmp(argv[i], "--max-seconds") == 0 && i + 1 < argc)
			max_seconds = atol(argv[++i]);
		else if (strcmp(argv[i], "--upstream-tls") == 0) {
			up_tls = SSL_CTX_new(TLS_client_method());
			if (!up_tls)
				return 1;
			SSL_CTX_set_verify(up_tls, SSL_VERIFY_NONE, NULL);
		}
		else {
			fprintf(stderr, "usage: faultproxy --upstream PORT --port-file FILE [--max-seconds N] [--upstream-tls]\n");
			return 2;
		}
	}
	if (!port_file || upstream_port <= 0) {
		fprintf(stderr, "usage: faultproxy --upstream PORT --port-file FILE [--max-seconds N] [--upstream-tls]\n");
		return 2;
	}
	loop = uv_default_loop();
	uv_tcp_t server;
	memset(&server, 0, sizeof server); /* data NULL: not a Conn (reset_one) */
	struct sockaddr_in addr;
	uv_tcp_init(loop, &server);
	uv_ip4_addr("127.0.0.1", 0, &addr);
	if (uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0) != 0 ||
	    uv_listen((uv_stream_t *)&server, 128, on_connection) != 0) {
		fprintf(stderr, "faultproxy: cannot listen\n");
		return 1;
	}
	struct sockaddr_storage bound;
	int blen = sizeof bound;
	uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &blen);
	int port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
	FILE *f = fopen(tmp, "w");
	if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 || rename(tmp, port_file) != 0) {
		fprintf(stderr, "faultproxy: cannot write %s\n", port_file);
		return 1;
	}
	uv_timer_t maxt;
	uv_timer_init(loop, &maxt);
	uv_timer_start(&maxt, on_max, (uint64_t)max_seconds * 1000, 0);
	uv_unref((uv_handle_t *)&maxt);
	return uv_run(loop, UV_RUN_DEFAULT);
}
