/*
** httpd.c -- `vmsnap.core.httpd`: an HTTP/1.1 server (libmicrohttpd) on the
** libuv loop.
**
** MHD runs with no thread of its own, in epoll mode: its epoll descriptor is
** watched with a uv_poll and its timeout with a uv_timer, and MHD_run() is
** called from those callbacks.  MHD's callbacks never call into Lua: a
** request whose body has arrived is suspended and queued, and the task
** waiting in srv:accept() is woken; the handler answers later (or streams
** an answer), and the connection is resumed.
**
** Lua:
**   srv = httpd.listen{host=, port=, tls_cert=, tls_key=, client_ca=,
**                      max_body=, idle_timeout=, header_timeout=,
**                      max_connections=, max_connections_per_ip=}
**                                    -> srv | nil, msg, code
**
** Limits (the defaults are kube-apiserver's where it has one):
**   max_connections (4096) and max_connections_per_ip (2048): MHD closes a
**   connection past either at once.  The process's descriptor limit is
**   raised to fit, or the limit lowered to what fits.
**   idle_timeout (90 s): a connection with no traffic either way is closed
**   (MHD's connection timeout; a suspended connection, such as a watch
**   waiting for events, is not idle).
**   header_timeout (32 s): a request's header (the TLS handshake included)
**   must be complete within this of the connection's start, and within
**   idle_timeout + header_timeout of the previous answer, or the connection
**   is shut down: a client trickling a byte a second is not idle.
**   srv:port()                       the bound port (useful with port 0)
**   srv:stats()                      {connections=, max_connections=,
**                                    header_timeouts=}
**   srv:accept([timeout])            -> req | nil, msg, "TIMEOUT" | "CLOSED"
**   srv:close()
**   req:method(), req:path()         path is percent-decoded (but %00 is kept
**                                    as written: a C string cannot hold it)
**   req:args()                       query arguments, decoded ('+' is a space)
**   req:header(name), req:headers()  header names lower-cased in headers()
**   req:body()                       -> string | nil, msg, "TOO_LARGE"
**   req:peer()                       "ip:port"
**   req:client_cert()                -> verified?, subject DN (TLS with client_ca)
**   req:respond(status, headers, body)
**   req:stream(status, headers[, length])  start a chunked response (with
**                                    a length: that many bytes, not chunked)
**   req:write(data)                  -> true | nil, msg, "CLOSED" | "EOVERFLOW"
**   req:finish()                     end the stream
**   req:closed()                     the client went away (or the answer is sent)
**   req:pending()                    bytes written and not yet sent
*/
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "mhdsym.h"

#include "../core/loader.h"
#include "../core/runtime.h"
#include "../core/scheduler.h"

#define SRV_MT "vmsnap.httpd.Server"
#define REQ_MT "vmsnap.httpd.Request"
#define STREAM_MAX (16u << 20) /* a watcher this far behind is cut off */
#define BODY_INLINE (64u << 10) /* a larger body is sent through a reader */
#define EAGER 16                /* MHD runs at every turn of the loop after progress (server_run) */

typedef struct Server Server;

enum { R_RECEIVING, R_QUEUED, R_TAKEN, R_ANSWERED, R_STREAMING };

typedef struct Hreq {
	Server *srv;                 /* NULL once the server is gone */
	struct MHD_Connection *conn; /* NULL once MHD completed the request */
	char *method, *url;
	char *body;
	size_t blen, bcap;
	int too_big;
	int state;
	int suspended;
	int boxed;  /* a Lua object refers to it */
	int done;   /* MHD is finished with it */
	/* streaming */
	char *out;
	size_t olen, ocap, opos;
	int finished;
	uv_poll_t *hup; /* watches the socket for the peer hanging up */
	struct Hreq *next;            /* accept queue */
	struct Hreq *aprev, *anext;   /* every request MHD still holds */
	/* TLS client certificate */
	int cert_checked, cert_ok;
	char *cert_dn;
	struct Conn *c; /* its connection (NULL once closed) */
} Hreq;

/* A connection, from MHD's accept to its close (header deadlines). */
typedef struct Conn {
	struct Conn *prev, *next;
	int fd;
	uint64_t deadline; /* loop ms by which a request's header must be in; 0: none */
	Hreq *r;           /* the request being served on it */
} Conn;

struct Server {
	struct MHD_Daemon *d;
	vmsnap_runtime *rt;
	unsigned zero_streak; /* MHD's timeouts of 0 in a row (server_run) */
	int progress;         /* a response reader gave MHD bytes in this run */
	unsigned eager;       /* runs left at every turn of the loop (server_run) */
	uv_poll_t poll;
	uv_timer_t timer;
	uv_idle_t idle; /* runs MHD at every turn of the loop while a body is being sent */
	int handles; /* open uv handles; the struct is freed when 0 and closed */
	int closed;
	int tls_client;
	size_t max_body;
	unsigned port;
	Hreq *qhead, *qtail;
	Vmsnap_task *waiter;
	Hreq *all; /* requests MHD still holds */
	char *cert, *key, *ca;
	Conn *conns; /* open connections */
	uv_timer_t sweep;
	uint64_t header_ms, idle_ms;
	unsigned cut;       /* connections shut down for a late header (srv:stats) */
	unsigned max_conns; /* the connection limit in force */
	int rerun;          /* a connection closed during MHD_run */
};

typedef struct Box {
	Hreq *r;
} Box;

typedef struct SrvBox {
	Server *s;
} SrvBox;

static int grow(char **p, size_t *cap, size_t need)
{
	size_t c = *cap ? *cap : 1024;
	char *np;
	if (need <= *cap)
		return 0;
	while (c < need)
		c *= 2;
	np = (char *)realloc(*p, c);
	if (!np)
		return -1;
	*p = np;
	*cap = c;
	return 0;
}

static void hup_closed(uv_handle_t *h)
{
	free(h);
}

static void stop_hup(Hreq *r)
{
	if (r->hup) {
		uv_poll_stop(r->hup);
		uv_close((uv_handle_t *)r->hup, hup_closed);
		r->hup = NULL;
	}
}

static void req_free(Hreq *r)
{
	stop_hup(r);
	free(r->method);
	free(r->url);
	free(r->body);
	free(r->out);
	free(r->cert_dn);
	free(r);
}

/* ----------------------------------------------------------- the loop */

static void server_run(Server *s, int from_io);

static void timer_cb(uv_timer_t *t)
{
	server_run((Server *)t->data, 0);
}

static void idle_cb(uv_idle_t *i)
{
	server_run((Server *)i->data, 0);
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
	(void)status;
	(void)events;
	server_run((Server *)p->data, 1);
}

/* MHD_run, then the timer for its next run.  MHD asks to run again at once
** (a timeout of 0) for as long as a TLS connection has not seen a read end
** in EAGAIN at MHD's own level, and with GnuTLS doing the reads that is the
** whole life of a keep-alive connection (and of a connection that never
** sends its ClientHello).  Taken at its word that would be a busy loop, so
** a 0 is honoured once after I/O and then backed off: 1, 2, 4 ... 20 ms.
** Real I/O wakes the epoll descriptor and runs MHD at once anyway.  (Never
** 0 from the timer's own callback: libuv would run it again in the same
** pass, before any I/O.)
**
** But a body being sent is I/O that wakes nothing: MHD sends a block per
** run, and the socket, never full for a quick reader, gives no new edge;
** backed off, a 1 MB answer took a second (and a body coming in, read a
** TLS record per run, as long).  So while the response readers hand MHD
** bytes, or a request's body comes in (s->progress), MHD runs again at
** every turn of the loop
** (the idle handle: after that turn's I/O, Lua tasks included).  A reader
** gives a block, sent as several TLS records, one per run: the eager runs
** last EAGER runs past the reader's last call.  A reader that stalls (its
** client stopped reading) ends them, and the back-off holds again. */
static void server_run(Server *s, int from_io)
{
	MHD_UNSIGNED_LONG_LONG ms = 0;
	int progressed;
	if (s->closed)
		return;
	s->progress = 0;
	MHD_run(s->d);
	if (s->rerun) {
		/* a connection closed: MHD takes its listening socket back into
		** its epoll set (dropped at the connection limit) only at the
		** start of a run, and the backlog would wait for the next I/O */
		s->rerun = 0;
		MHD_run(s->d);
	}
	progressed = s->progress;
	if (progressed)
		s->eager = EAGER;
	else if (s->eager > 0)
		s->eager--;
	if (from_io || progressed)
		s->zero_streak = 0;
	if (MHD_get_timeout(s->d, &ms) != MHD_YES) {
		uv_idle_stop(&s->idle);
		uv_timer_start(&s->timer, timer_cb, 60000, 0);
		return;
	}
	if (ms == 0 && s->eager > 0) {
		uv_idle_start(&s->idle, idle_cb);
		return;
	}
	uv_idle_stop(&s->idle);
	if (ms == 0) {
		unsigned n = s->zero_streak++;
		ms = (from_io && n == 0) ? 0 : (n >= 5 ? 20 : (1u << n));
	} else {
		s->zero_streak = 0;
	}
	uv_timer_start(&s->timer, timer_cb, ms > 60000 ? 60000 : ms, 0);
}

/* A suspended connection has something to do again (an answer, bytes of a
** stream): MHD takes it up in a run or two, at the next turns of the loop
** (eager runs, not the back-off of an idle keep-alive connection: that made
** every answer wait 20 ms twice). */
static void resume(Hreq *r)
{
	if (r->suspended && r->conn) {
		Server *s = r->srv;
		r->suspended = 0;
		MHD_resume_connection(r->conn);
		s->eager = EAGER;
		s->zero_streak = 0;
		uv_idle_start(&s->idle, idle_cb);
	}
}

/* ------------------------------------------------- client certificates */

/* The GnuTLS calls that verify a client certificate, found at run time in
** the GnuTLS that libmicrohttpd loaded (stable GnuTLS 3 functions; the types
** are opaque pointers and a datum), so vmsnap does not link GnuTLS. */
typedef struct Datum {
	unsigned char *data;
	unsigned int size;
} Datum;

static struct {
	int (*verify_peers2)(void *session, unsigned *status);
	const Datum *(*get_peers)(void *session, unsigned *n);
	int (*crt_init)(void **crt);
	int (*crt_import)(void *crt, const Datum *data, int format);
	int (*crt_get_dn)(void *crt, char *buf, size_t *len);
	void (*crt_deinit)(void *crt);
	int loaded;
} tls;

static int load_tls(void)
{
	if (tls.loaded)
		return tls.loaded > 0;
	*(void **)&tls.verify_peers2 = Vmsnap_mhd_sym("gnutls_certificate_verify_peers2");
	*(void **)&tls.get_peers = Vmsnap_mhd_sym("gnutls_certificate_get_peers");
	*(void **)&tls.crt_init = Vmsnap_mhd_sym("gnutls_x509_crt_init");
	*(void **)&tls.crt_import = Vmsnap_mhd_sym("gnutls_x509_crt_import");
	*(void **)&tls.crt_get_dn = Vmsnap_mhd_sym("gnutls_x509_crt_get_dn");
	*(void **)&tls.crt_deinit = Vmsnap_mhd_sym("gnutls_x509_crt_deinit");
	tls.loaded = (tls.verify_peers2 && tls.get_peers && tls.crt_init && tls.crt_import &&
	              tls.crt_get_dn && tls.crt_deinit)
	                 ? 1
	                 : -1;
	return tls.loaded > 0;
}

/* Verify the client's certificate against the trusted CA; record its DN. */
static void check_cert(Hreq *r)
{
	const union MHD_ConnectionInfo *ci;
	unsigned status = 1, n = 0;
	void *crt;
	r->cert_checked = 1;
	if (!load_tls())
		return; /* no verification possible: the certificate is not accepted */
	ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	if (!ci || !ci->tls_session)
		return;
	if (tls.verify_peers2(ci->tls_session, &status) != 0 || status != 0)
		return;
	const Datum *certs = tls.get_peers(ci->tls_session, &n);
	if (!certs || n == 0 || tls.crt_init(&crt) != 0)
		return;
	if (tls.crt_import(crt, &certs[0], 0 /* GNUTLS_X509_FMT_DER */) == 0) {
		char dn[512];
		size_t len = sizeof dn;
		if (tls.crt_get_dn(crt, dn, &len) == 0)
			r->cert_dn = strdup(dn);
		r->cert_ok = 1;
	}
	tls.crt_deinit(crt);
}

/* ------------------------------------------------------- MHD callbacks */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload, size_t *upload_size, void **con_cls)
{
	Server *s = (Server *)cls;
	Hreq *r = (Hreq *)*con_cls;
	(void)version;
	if (s->closed)
		return MHD_NO; /* closing: a request now would be suspended past MHD_stop_daemon */
	if (!r) {
		r = (Hreq *)calloc(1, sizeof *r);
		if (!r)
			return MHD_NO;
		r->srv = s;
		r->conn = conn;
		r->method = strdup(method);
		r->url = strdup(url);
		if (!r->method || !r->url) {
			req_free(r);
			return MHD_NO;
		}
		*con_cls = r;
		{
			const union MHD_ConnectionInfo *ci =
			    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
			Conn *c = ci ? (Conn *)ci->socket_context : NULL;
			if (c) {
				c->deadline = 0; /* the header is in */
				c->r = r;
				r->c = c;
			}
		}
		r->anext = s->all;
		if (s->all)
			s->all->aprev = r;
		s->all = r;
		return MHD_YES;
	}
	if (*upload_size) {
		s->progress = 1; /* a body coming in: MHD reads a TLS record per run */
		if (!r->too_big) {
			if (r->blen + *upload_size > s->max_body)
				r->too_big = 1;
			else if (grow(&r->body, &r->bcap, r->blen + *upload_size + 1))
				return MHD_NO;
			else {
				memcpy(r->body + r->blen, upload, *upload_size);
				r->blen += *upload_size;
			}
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (r->state != R_RECEIVING)
		return MHD_YES;
	if (s->tls_client && !r->cert_checked)
		check_cert(r);
	r->state = R_QUEUED;
	MHD_suspend_connection(conn);
	r->suspended = 1;
	if (s->qtail)
		s->qtail->next = r;
	else
		s->qhead = r;
	s->qtail = r;
	if (s->waiter) {
		Vmsnap_task *t = s->waiter;
		s->waiter = NULL;
		Vmsnap_sched_wake(t);
	}
	return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode why)
{
	Hreq *r = (Hreq *)*con_cls;
	(void)cls;
	(void)conn;
	(void)why;
	if (!r)
		return;
	*con_cls = NULL;
	if (r->c) {
		/* the next request on this connection: its header is due after
		** the idle time and the header time */
		if (r->srv)
			r->c->deadline = uv_now(&r->srv->rt->loop) + r->srv->idle_ms + r->srv->header_ms;
		r->c->r = NULL;
		r->c = NULL;
	}
	if (r->srv) {
		if (r->aprev)
			r->aprev->anext = r->anext;
		else
			r->srv->all = r->anext;
		if (r->anext)
			r->anext->aprev = r->aprev;
		r->aprev = r->anext = NULL;
		r->srv = NULL;
	}
	r->suspended = 0;
	r->conn = NULL;
	r->done = 1;
	stop_hup(r);
	/* no reader runs any more: the output buffer goes now, not with the
	** Lua object (whose collection may be far off) */
	free(r->out);
	r->out = NULL;
	r->olen = r->opos = r->ocap = 0;
	/* still in the accept queue: accept() drops it */
	if (!r->boxed && r->state != R_QUEUED)
		req_free(r);
}

/* MHD_OPTION_NOTIFY_CONNECTION: keep the list of open connections */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
	Server *s = (Server *)cls;
	Conn *c = (Conn *)*socket_context;
	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci =
		    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		c = (Conn *)calloc(1, sizeof *c);
		if (!c)
			return; /* untracked: only the idle timeout applies */
		c->fd = ci ? ci->connect_fd : -1;
		c->deadline = s->header_ms ? uv_now(&s->rt->loop) + s->header_ms : 0;
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
		*socket_context = c;
	} else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && c) {
		if (c->prev)
			c->prev->next = c->next;
		else
			s->conns = c->next;
		if (c->next)
			c->next->prev = c->prev;
		if (c->r)
			c->r->c = NULL;
		free(c);
		s->rerun = 1;
		*socket_context = NULL;
	}
}

/* Shut down the connections whose request header is late; MHD sees the
** end of the stream and closes them. */
static void sweep_cb(uv_timer_t *t)
{
	Server *s = (Server *)t->data;
	uint64_t now = uv_now(&s->rt->loop);
	Conn *c;
	int any = 0;
	if (s->closed || !s->header_ms)
		return;
	for (c = s->conns; c; c = c->next) {
		if (c->deadline && c->deadline <= now && c->fd >= 0) {
			shutdown(c->fd, SHUT_RDWR);
			c->deadline = 0;
			s->cut++;
			any = 1;
		}
	}
	if (any)
		server_run(s, 1);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* MHD_OPTION_UNESCAPE_CALLBACK: %HH decoding in place, but %00 is kept as
** written (the path reaches the handler as a C string; a NUL would cut it,
** and /x%00y would be read as /x) */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *str)
{
	char *r = str, *w = str;
	(void)cls;
	(void)conn;
	while (*r) {
		int hi, lo;
		if (r[0] == '%' && (hi = hexval(r[1])) >= 0 && (lo = hexval(r[2])) >= 0 &&
		    (hi | lo) != 0) {
			*w++ = (char)(hi * 16 + lo);
			r += 3;
		} else {
			*w++ = *r++;
		}
	}
	*w = 0;
	return (size_t)(w - str);
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
	Hreq *r = (Hreq *)cls;
	(void)pos;
	if (r->olen > r->opos) {
		size_t n = r->olen - r->opos;
		if (n > max)
			n = max;
		memcpy(buf, r->out + r->opos, n);
		r->opos += n;
		if (r->opos == r->olen)
			r->opos = r->olen = 0;
		if (r->srv)
			r->srv->progress = 1;
		return (ssize_t)n;
	}
	if (r->finished || !r->srv || r->srv->closed)
		return MHD_CONTENT_READER_END_OF_STREAM;
	if (r->conn && !r->suspended) {
		r->suspended = 1;
		MHD_suspend_connection(r->conn);
	}
	return 0;
}

/* A whole body (req:respond), handed to MHD a block at a time. */
static ssize_t body_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
	Hreq *r = (Hreq *)cls;
	size_t n;
	if (pos >= r->olen)
		return MHD_CONTENT_READER_END_OF_STREAM;
	n = r->olen - (size_t)pos;
	if (n > max)
		n = max;
	memcpy(buf, r->out + pos, n);
	if (r->srv)
		r->srv->progress = 1;
	return (ssize_t)n;
}

static void hup_cb(uv_poll_t *p, int status, int events)
{
	Hreq *r = (Hreq *)p->data;
	(void)status;
	(void)events;
	/* the peer hung up: end the stream so that MHD notices and completes */
	r->finished = 1;
	stop_hup(r);
	resume(r);
}

/* ------------------------------------------------------------ server */

static void srv_handle_closed(uv_handle_t *h)
{
	Server *s = (Server *)h->data;
	if (--s->handles == 0)
		free(s);
}

static void server_close(Server *s)
{
	Hreq *r, *next;
	if (s->closed)
		return;
	s->closed = 1;
	/* resume every suspended connection (MHD_stop_daemon requires it) and
	** forget the queue */
	for (r = s->qhead; r; r = next) {
		next = r->next;
		r->next = NULL;
		r->state = R_TAKEN;
		if (r->done && !r->boxed)
			req_free(r);
	}
	s->qhead = s->qtail = NULL;
	/* MHD_stop_daemon requires every connection resumed; streams end */
	for (r = s->all; r; r = r->anext) {
		if (r->state == R_STREAMING)
			r->finished = 1;
		if (r->suspended && r->conn) {
			r->suspended = 0;
			MHD_resume_connection(r->conn);
		}
	}
	if (s->d) {
		MHD_run(s->d);
		MHD_stop_daemon(s->d);
		s->d = NULL;
	}
	if (s->waiter) {
		Vmsnap_task *t = s->waiter;
		s->waiter = NULL;
		Vmsnap_sched_wake(t);
	}
	uv_poll_stop(&s->poll);
	uv_timer_stop(&s->timer);
	uv_timer_stop(&s->sweep);
	uv_idle_stop(&s->idle);
	uv_close((uv_handle_t *)&s->idle, srv_handle_closed);
	uv_close((uv_handle_t *)&s->poll, srv_handle_closed);
	uv_close((uv_handle_t *)&s->timer, srv_handle_closed);
	uv_close((uv_handle_t *)&s->sweep, srv_handle_closed);
	free(s->cert);
	free(s->key);
	free(s->ca);
	s->cert = s->key = s->ca = NULL;
}

static char *opt_string(lua_State *L, const char *name)
{
	char *v = NULL;
	if (lua_getfield(L, 1, name) != LUA_TNIL) {
		const char *p = luaL_checkstring(L, -1);
		v = strdup(p);
		if (!v)
			luaL_error(L, "out of memory");
	}
	lua_pop(L, 1);
	return v;
}

static lua_Integer opt_int(lua_State *L, const char *name, lua_Integer dflt, lua_Integer lo)
{
	lua_Integer v = dflt;
	if (lua_getfield(L, 1, name) != LUA_TNIL) {
		int ok;
		v = lua_tointegerx(L, -1, &ok);
		if (!ok)
			luaL_error(L, "httpd: %s must be an integer", name);
		if (v < lo)
			luaL_error(L, "httpd: %s must be at least %d", name, (int)lo);
	}
	lua_pop(L, 1);
	return v;
}

/* Room for n connections: raise the soft descriptor limit if it is lower
** (up to the hard limit); returns how many connections fit, keeping 256
** descriptors for everything else. */
static lua_Integer fit_connections(lua_Integer n)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)n + 256;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return n;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		rlim_t to = (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want) ? want : rl.rlim_max;
		struct rlimit nr = {to, rl.rlim_max};
		if (to > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &nr) == 0)
			rl.rlim_cur = to;
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
		n = rl.rlim_cur > 512 ? (lua_Integer)rl.rlim_cur - 256 : (lua_Integer)rl.rlim_cur / 2;
	return n;
}

static int l_listen(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	struct sockaddr_in sin;
	const char *host = "127.0.0.1";
	lua_Integer port = 0, max_body, idle, header, maxconn, perip;
	unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO;
	const char *why = NULL;
	luaL_checktype(L, 1, LUA_TTABLE);
	if (!Vmsnap_mhd(&why))
		return Vmsnap_pushfail(L, "ENOENT", "httpd: cannot load libmicrohttpd: %s", why ? why : "?");
	if (lua_getfield(L, 1, "host") != LUA_TNIL)
		host = luaL_checkstring(L, -1);
	port = opt_int(L, "port", 0, 0);
	max_body = opt_int(L, "max_body", 3 << 20, 1);
	idle = opt_int(L, "idle_timeout", 90, 1);
	header = opt_int(L, "header_timeout", 32, 0);
	maxconn = opt_int(L, "max_connections", 4096, 1);
	perip = opt_int(L, "max_connections_per_ip", 2048, 0);
	luaL_argcheck(L, port <= 65535, 1, "port must be 0..65535");
	maxconn = fit_connections(maxconn);
	if (perip > maxconn)
		perip = maxconn;
	lua_settop(L, 1);
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_port = htons((unsigned short)port);
	if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
		return Vmsnap_pushfail(L, "EINVAL", "httpd: host must be an IPv4 address, got '%s'", host);

	SrvBox *box = (SrvBox *)lua_newuserdatauv(L, sizeof *box, 0);
	box->s = NULL;
	luaL_setmetatable(L, SRV_MT);
	Server *s = (Server *)calloc(1, sizeof *s);
	if (!s)
		return luaL_error(L, "out of memory");
	box->s = s;
	s->rt = rt;
	s->max_body = (size_t)max_body;
	s->header_ms = (uint64_t)header * 1000;
	s->idle_ms = (uint64_t)idle * 1000;
	s->closed = 1; /* until started */
	s->cert = opt_string(L, "tls_cert");
	s->key = opt_string(L, "tls_key");
	s->ca = opt_string(L, "client_ca");
	if ((s->cert == NULL) != (s->key == NULL))
		return luaL_error(L, "httpd: tls_cert and tls_key go together");
	if (s->ca && !s->cert)
		return luaL_error(L, "httpd: client_ca needs tls_cert and tls_key");
	if (s->cert)
		flags |= MHD_USE_TLS;
	s->tls_client = s->ca != NULL;

	struct MHD_OptionItem opts[12];
	int n = 0;
	opts[n++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, &sin};
	opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, NULL};
	opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, s};
	opts[n++] = (struct MHD_OptionItem){MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)unescape, NULL};
	opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)idle, NULL};
	opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT, (intptr_t)maxconn, NULL};
	if (perip > 0)
		opts[n++] = (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT, (intptr_t)perip, NULL};
	if (s->cert) {
		opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, s->cert};
		opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, s->key};
	}
	if (s->ca)
		opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_TRUST, 0, s->ca};
	opts[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

	s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_ARRAY, opts,
	                        MHD_OPTION_END);
	if (!s->d) {
		int err = errno ? errno : EADDRINUSE;
		box->s = NULL;
		free(s->cert);
		free(s->key);
		free(s->ca);
		free(s);
		return Vmsnap_pushfail(L, Vmsnap_errno_name(err),
		                       "httpd: cannot listen on %s:%d (%s)", host, (int)port,
		                       strerror(err));
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
	s->port = di ? di->port : (unsigned)port;
	di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
	uv_timer_init(&rt->loop, &s->timer);
	s->timer.data = s;
	s->handles++;
	uv_poll_init(&rt->loop, &s->poll, di->epoll_fd);
	s->poll.data = s;
	s->handles++;
	s->closed = 0;
	uv_timer_init(&rt->loop, &s->sweep);
	s->sweep.data = s;
	s->handles++;
	uv_idle_init(&rt->loop, &s->idle);
	s->idle.data = s;
	s->handles++;
	uv_poll_start(&s->poll, UV_READABLE, poll_cb);
	uv_timer_start(&s->timer, timer_cb, 0, 0);
	if (s->header_ms)
		uv_timer_start(&s->sweep, sweep_cb, 500, 500);
	s->max_conns = (unsigned)maxconn;
	lua_pushvalue(L, 2);
	return 1;
}

static Server *check_srv(lua_State *L)
{
	SrvBox *b = (SrvBox *)luaL_checkudata(L, 1, SRV_MT);
	if (!b->s || b->s->closed)
		luaL_error(L, "httpd server is closed");
	return b->s;
}

/* srv:stats() -> {connections=, max_connections=, header_timeouts=} */
static int srv_stats(lua_State *L)
{
	Server *s = check_srv(L);
	lua_Integer n = 0;
	Conn *c;
	for (c = s->conns; c; c = c->next)
		n++;
	lua_createtable(L, 0, 3);
	lua_pushinteger(L, n);
	lua_setfield(L, -2, "connections");
	lua_pushinteger(L, s->max_conns);
	lua_setfield(L, -2, "max_connections");
	lua_pushinteger(L, s->cut);
	lua_setfield(L, -2, "header_timeouts");
	return 1;
}

static int srv_port(lua_State *L)
{
	lua_pushinteger(L, check_srv(L)->port);
	return 1;
}

static void push_req(lua_State *L, Hreq *r)
{
	Box *b = (Box *)lua_newuserdatauv(L, sizeof *b, 0);
	b->r = r;
	r->boxed = 1;
	r->state = R_TAKEN;
	luaL_setmetatable(L, REQ_MT);
}

/* Pop the next live queued request, or NULL. */
static Hreq *dequeue(Server *s)
{
	Hreq *r;
	while ((r = s->qhead) != NULL) {
		s->qhead = r->next;
		if (!s->qhead)
			s->qtail = NULL;
		r->next = NULL;
		if (!r->done)
			return r;
		req_free(r);
	}
	return NULL;
}

static void accept_cancel(void *ud)
{
	Server *s = (Server *)ud;
	s->waiter = NULL;
}

static int srv_accept(lua_State *L);

static int accept_push(lua_State *L, void *ud, int reason)
{
	Server *s = (Server *)ud;
	if (s->closed)
		return Vmsnap_pushfail(L, "CLOSED", "httpd: server closed");
	if (reason == VMSNAP_WAKE_TIMEOUT) {
		s->waiter = NULL;
		return Vmsnap_pushfail(L, "TIMEOUT", "httpd: no request within the timeout");
	}
	return srv_accept(L);
}

static const Vmsnap_waitops accept_ops = {accept_cancel, accept_push};

static int srv_accept(lua_State *L)
{
	SrvBox *b = (SrvBox *)luaL_checkudata(L, 1, SRV_MT);
	Server *s = b->s;
	double timeout = -1;
	Hreq *r;
	if (!s || s->closed)
		return Vmsnap_pushfail(L, "CLOSED", "httpd: server closed");
	if (!lua_isnoneornil(L, 2)) {
		timeout = luaL_checknumber(L, 2);
		luaL_argcheck(L, timeout >= 0, 2, "timeout must not be negative");
	}
	if ((r = dequeue(s)) != NULL) {
		push_req(L, r);
		return 1;
	}
	if (s->waiter)
		return luaL_error(L, "httpd: another task is already accepting");
	Vmsnap_task *t = Vmsnap_sched_check_wait(L);
	s->waiter = t;
	return Vmsnap_sched_wait(L, t, &accept_ops, s, timeout);
}

static int srv_close(lua_State *L)
{
	SrvBox *b = (SrvBox *)luaL_checkudata(L, 1, SRV_MT);
	if (b->s) {
		server_close(b->s);
		b->s = NULL;
	}
	return 0;
}

static int srv_tostring(lua_State *L)
{
	SrvBox *b = (SrvBox *)luaL_checkudata(L, 1, SRV_MT);
	if (b->s && !b->s->closed)
		lua_pushfstring(L, "httpd server (port %d)", (int)b->s->port);
	else
		lua_pushliteral(L, "httpd server (closed)");
	return 1;
}

/* ------------------------------------------------------------ requests */

static Hreq *check_req(lua_State *L)
{
	Box *b = (Box *)luaL_checkudata(L, 1, REQ_MT);
	if (!b->r)
		luaL_error(L, "httpd request is released");
	return b->r;
}

static int req_method(lua_State *L)
{
	lua_pushstring(L, check_req(L)->method);
	return 1;
}

static int req_path(lua_State *L)
{
	lua_pushstring(L, check_req(L)->url);
	return 1;
}

static enum MHD_Result collect(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *value)
{
	lua_State *L = (lua_State *)cls;
	(void)kind;
	if (!key)
		return MHD_YES;
	lua_pushstring(L, value ? value : "");
	lua_setfield(L, -2, key);
	return MHD_YES;
}

static enum MHD_Result collect_lower(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
	lua_State *L = (lua_State *)cls;
	char name[128];
	size_t i;
	(void)kind;
	if (!key)
		return MHD_YES;
	for (i = 0; key[i] && i < sizeof name - 1; i++)
		name[i] = (char)((key[i] >= 'A' && key[i] <= 'Z') ? key[i] + 32 : key[i]);
	name[i] = 0;
	/* a header sent twice is one list, its values joined by ", " (RFC 9110 5.3) */
	if (lua_getfield(L, -1, name) == LUA_TSTRING) {
		lua_pushliteral(L, ", ");
		lua_pushstring(L, value ? value : "");
		lua_concat(L, 3);
	} else {
		lua_pop(L, 1);
		lua_pushstring(L, value ? value : "");
	}
	lua_setfield(L, -2, name);
	return MHD_YES;
}

static int req_args(lua_State *L)
{
	Hreq *r = check_req(L);
	lua_newtable(L);
	if (r->conn)
		MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, collect, L);
	return 1;
}

static int req_headers(lua_State *L)
{
	Hreq *r = check_req(L);
	lua_newtable(L);
	if (r->conn)
		MHD_get_connection_values(r->conn, MHD_HEADER_KIND, collect_lower, L);
	return 1;
}

static int req_header(lua_State *L)
{
	Hreq *r = check_req(L);
	const char *name = luaL_checkstring(L, 2);
	const char *v = r->conn ? MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name) : NULL;
	if (!v)
		return 0;
	lua_pushstring(L, v);
	return 1;
}

static int req_body(lua_State *L)
{
	Hreq *r = check_req(L);
	if (r->too_big)
		return Vmsnap_pushfail(L, "TOO_LARGE", "request body larger than %d bytes",
		                       (int)(r->srv ? r->srv->max_body : 0));
	lua_pushlstring(L, r->body ? r->body : "", r->blen);
	return 1;
}

static int req_peer(lua_State *L)
{
	Hreq *r = check_req(L);
	const union MHD_ConnectionInfo *ci;
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	if (!r->conn)
		return 0;
	ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)ci->client_addr;
		inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
		port = ntohs(a->sin_port);
	}
	lua_pushfstring(L, "%s:%d", ip, port);
	return 1;
}

static int req_client_cert(lua_State *L)
{
	Hreq *r = check_req(L);
	lua_pushboolean(L, r->cert_ok);
	if (r->cert_dn)
		lua_pushstring(L, r->cert_dn);
	else
		lua_pushnil(L);
	return 2;
}

/* Add headers from the table at idx; raises on a bad entry. */
static int add_headers(lua_State *L, int idx, struct MHD_Response *resp)
{
	if (lua_isnoneornil(L, idx))
		return 0;
	luaL_checktype(L, idx, LUA_TTABLE);
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
		if (!k || !v || lua_type(L, -2) != LUA_TSTRING) {
			MHD_destroy_response(resp);
			return luaL_error(L, "httpd: headers must map names to strings");
		}
		if (MHD_add_response_header(resp, k, v) != MHD_YES) {
			MHD_destroy_response(resp);
			return luaL_error(L, "httpd: invalid header '%s'", k);
		}
		lua_pop(L, 1);
	}
	return 0;
}

static Hreq *check_answerable(lua_State *L)
{
	Hreq *r = check_req(L);
	if (r->state == R_ANSWERED || r->state == R_STREAMING)
		luaL_error(L, "httpd: request already answered");
	return r;
}

static int req_respond(lua_State *L)
{
	Hreq *r = check_answerable(L);
	lua_Integer status = luaL_checkinteger(L, 2);
	size_t len = 0;
	const char *body = luaL_optlstring(L, 4, "", &len);
	struct MHD_Response *resp;
	luaL_argcheck(L, status >= 100 && status <= 599, 2, "HTTP status must be 100..599");
	r->state = R_ANSWERED;
	if (!r->conn) {
		lua_pushboolean(L, 0);
		return 1;
	}
	if (len <= BODY_INLINE) {
		resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
	} else {
		/* a large body goes out through a reader (see server_run); its
		** copy is exactly its size */
		free(r->out);
		r->out = (char *)malloc(len);
		if (!r->out) {
			r->ocap = 0;
			return luaL_error(L, "out of memory");
		}
		memcpy(r->out, body, len);
		r->olen = r->ocap = len;
		r->opos = 0;
		resp = MHD_create_response_from_callback(len, 64 * 1024, body_reader, r, NULL);
	}
	if (!resp)
		return luaL_error(L, "out of memory");
	add_headers(L, 3, resp);
	MHD_queue_response(r->conn, (unsigned)status, resp);
	MHD_destroy_response(resp);
	resume(r);
	lua_pushboolean(L, 1);
	return 1;
}

static int req_stream(lua_State *L)
{
	Hreq *r = check_answerable(L);
	lua_Integer status = luaL_checkinteger(L, 2);
	struct MHD_Response *resp;
	lua_Integer length = luaL_optinteger(L, 4, -1);
	luaL_argcheck(L, status >= 100 && status <= 599, 2, "HTTP status must be 100..599");
	luaL_argcheck(L, length >= -1, 4, "length must be >= 0 (or -1: chunked)");
	r->state = R_STREAMING;
	if (!r->conn)
		return Vmsnap_pushfail(L, "CLOSED", "httpd: the client went away");
	resp = MHD_create_response_from_callback(length < 0 ? MHD_SIZE_UNKNOWN : (uint64_t)length, 64 * 1024,
	                                         stream_reader, r, NULL);
	if (!resp)
		return luaL_error(L, "out of memory");
	add_headers(L, 3, resp);
	MHD_queue_response(r->conn, (unsigned)status, resp);
	MHD_destroy_response(resp);
	/* notice a hang-up while nothing is being written */
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (ci && r->srv) {
		r->hup = (uv_poll_t *)malloc(sizeof *r->hup);
		if (r->hup && uv_poll_init_socket(&r->srv->rt->loop, r->hup, ci->connect_fd) == 0) {
			r->hup->data = r;
			uv_poll_start(r->hup, UV_DISCONNECT, hup_cb);
		} else {
			free(r->hup);
			r->hup = NULL;
		}
	}
	resume(r);
	lua_pushboolean(L, 1);
	return 1;
}

static int req_write(lua_State *L)
{
	Hreq *r = check_req(L);
	size_t len;
	const char *data = luaL_checklstring(L, 2, &len);
	if (r->state != R_STREAMING)
		return luaL_error(L, "httpd: write() needs stream() first");
	if (r->done || r->finished || !r->conn)
		return Vmsnap_pushfail(L, "CLOSED", "httpd: the client went away");
	if (r->olen - r->opos + len > STREAM_MAX)
		return Vmsnap_pushfail(L, "EOVERFLOW", "httpd: the client is too slow (%d bytes pending)",
		                       (int)(r->olen - r->opos));
	/* what was sent goes from the front (a writer that keeps ahead of a
	** slow reader never finds the buffer empty: it grew to the whole body) */
	if (r->opos > 0 && (r->opos == r->olen || r->opos >= r->ocap / 2 || r->olen + len > r->ocap)) {
		memmove(r->out, r->out + r->opos, r->olen - r->opos);
		r->olen -= r->opos;
		r->opos = 0;
	}
	if (grow(&r->out, &r->ocap, r->olen + len))
		return luaL_error(L, "out of memory");
	memcpy(r->out + r->olen, data, len);
	r->olen += len;
	resume(r);
	lua_pushboolean(L, 1);
	return 1;
}

static int req_finish(lua_State *L)
{
	Hreq *r = check_req(L);
	if (r->state == R_STREAMING && !r->finished) {
		r->finished = 1;
		resume(r);
	}
	return 0;
}

static int req_closed(lua_State *L)
{
	Hreq *r = check_req(L);
	lua_pushboolean(L, r->done || !r->conn || (r->state == R_STREAMING && r->finished));
	return 1;
}

static int req_pending(lua_State *L)
{
	Hreq *r = check_req(L);
	lua_pushinteger(L, (lua_Integer)(r->olen - r->opos));
	return 1;
}

static int req_gc(lua_State *L)
{
	Box *b = (Box *)luaL_checkudata(L, 1, REQ_MT);
	Hreq *r = b->r;
	if (!r)
		return 0;
	b->r = NULL;
	r->boxed = 0;
	if (r->done) {
		req_free(r);
		return 0;
	}
	/* dropped without an answer: answer 500 rather than hang the client */
	if (r->conn && (r->state == R_TAKEN)) {
		static const char msg[] =
		    "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\","
		    "\"message\":\"request dropped by the handler\",\"reason\":\"InternalError\",\"code\":500}";
		struct MHD_Response *resp =
		    MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
		if (resp) {
			MHD_queue_response(r->conn, 500, resp);
			MHD_destroy_response(resp);
		}
		r->state = R_ANSWERED;
	}
	if (r->state == R_STREAMING)
		r->finished = 1;
	resume(r);
	return 0;
}

static int req_tostring(lua_State *L)
{
	Box *b = (Box *)luaL_checkudata(L, 1, REQ_MT);
	if (b->r)
		lua_pushfstring(L, "httpd request (%s %s)", b->r->method, b->r->url);
	else
		lua_pushliteral(L, "httpd request (released)");
	return 1;
}

static int srv_gc(lua_State *L)
{
	return srv_close(L);
}

static const luaL_Reg srv_meth[] = {
    {"port", srv_port}, {"stats", srv_stats}, {"accept", srv_accept}, {"close", srv_close}, {NULL, NULL}};

static const luaL_Reg req_meth[] = {
    {"method", req_method},   {"path", req_path},       {"args", req_args},
    {"header", req_header},   {"headers", req_headers}, {"body", req_body},
    {"peer", req_peer},       {"client_cert", req_client_cert},
    {"respond", req_respond}, {"stream", req_stream},   {"write", req_write},
    {"finish", req_finish},   {"closed", req_closed},   {"pending", req_pending},
    {NULL, NULL}};

static int l_version(lua_State *L)
{
	const char *why = NULL;
	if (!Vmsnap_mhd(&why))
		return Vmsnap_pushfail(L, "ENOENT", "httpd: cannot load libmicrohttpd: %s", why ? why : "?");
	lua_pushstring(L, MHD_get_version());
	return 1;
}

int luaopen_vmsnap_core_httpd(lua_State *L)
{
	static const luaL_Reg funcs[] = {{"listen", l_listen}, {"version", l_version}, {NULL, NULL}};
	if (luaL_newmetatable(L, SRV_MT)) {
		lua_pushcfunction(L, srv_gc);
		lua_setfield(L, -2, "__gc");
		lua_pushcfunction(L, srv_gc);
		lua_setfield(L, -2, "__close");
		lua_pushcfunction(L, srv_tostring);
		lua_setfield(L, -2, "__tostring");
		luaL_newlib(L, srv_meth);
		lua_setfield(L, -2, "__index");
	}
	if (luaL_newmetatable(L, REQ_MT)) {
		lua_pushcfunction(L, req_gc);
		lua_setfield(L, -2, "__gc");
		lua_pushcfunction(L, req_tostring);
		lua_setfield(L, -2, "__tostring");
		luaL_newlib(L, req_meth);
		lua_setfield(L, -2, "__index");
	}
	lua_pop(L, 2);
	luaL_newlib(L, funcs);
	return 1;
}
