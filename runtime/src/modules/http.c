/*
** http.c -- `vmsnap.core.http`: libcurl's multi-socket API on the libuv loop.
**
** One CURLM per runtime (so connections are reused across requests and
** HTTP/2 streams are multiplexed); curl's sockets are watched with uv_poll
** and its timer is a uv_timer.  A request is a userdata
** ("vmsnap.http.Request") that owns its easy handle.  curl's callbacks only
** fill C buffers and wake the waiting task; the task's continuation turns
** them into Lua values (scheduler.h).
**
** Lua (core; vmsnap.http builds the friendly API on it):
**   req = http.new(opts)            configure; raises on misuse
**   req:start()                     add to the transfer set
**   req:await(what [, timeout])     what = "headers" | "data" | "done"
**       headers -> true; data -> next chunk, or nil at the end; done -> true
**       failures -> nil, message, code (TIMEOUT, CLOSED, ECONNREFUSED, ...)
**   req:info() -> status, http_version, raw header block
**   req:take() -> and clear the buffered body
**   req:close()
** HTTP status codes are not failures at this level.
*/
#include <stdlib.h>
#include <string.h>

#include "curlsym.h"

#include "../core/loader.h"
#include "../core/runtime.h"
#include "../core/scheduler.h"

#define REQ_MT "vmsnap.http.Request"
#define HIGH_WATER (1u << 20) /* pause a streamed transfer above this */

typedef struct Http {
	CURLM *multi;
	uv_timer_t timer;
	vmsnap_runtime *rt;
} Http;

typedef struct Sock {
	uv_poll_t poll;
	curl_socket_t fd;
	Http *h;
} Sock;

enum { WANT_NONE, WANT_HEADERS, WANT_DATA, WANT_DONE };

typedef struct Req {
	CURL *easy;
	struct curl_slist *hdrs, *connect_to;
	Http *h;
	char *body;
	size_t blen, bcap, max_body, total;
	char *hdr;
	size_t hlen, hcap;
	int in_multi, started, done, headers_done, stream, paused, closed, too_big;
	CURLcode result;
	Vmsnap_task *waiter;
	int want;
	char errbuf[CURL_ERROR_SIZE];
} Req;

/* ------------------------------------------------------------ buffers */

static int grow(char **p, size_t *cap, size_t need)
{
	size_t c = *cap ? *cap : 4096;
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

static void wake(Req *r, int what)
{
	if (r->waiter && (r->want == what || what == WANT_DONE)) {
		Vmsnap_task *t = r->waiter;
		r->waiter = NULL;
		Vmsnap_sched_wake(t);
	}
}

/* ---------------------------------------------------- curl callbacks */

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
	Req *r = (Req *)ud;
	size_t n = size * nmemb;
	if (r->stream && r->blen >= HIGH_WATER) {
		r->paused = 1;
		return CURL_WRITEFUNC_PAUSE;
	}
	if (r->max_body && r->total + n > r->max_body) {
		r->too_big = 1;
		return 0;
	}
	if (grow(&r->body, &r->bcap, r->blen + n))
		return 0;
	memcpy(r->body + r->blen, ptr, n);
	r->blen += n;
	r->total += n;
	wake(r, WANT_DATA);
	return n;
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *ud)
{
	Req *r = (Req *)ud;
	size_t n = size * nitems;
	if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0)
		r->hlen = 0; /* a new response (after 1xx or a redirect) */
	if (grow(&r->hdr, &r->hcap, r->hlen + n + 1))
		return 0;
	memcpy(r->hdr + r->hlen, buf, n);
	r->hlen += n;
	r->hdr[r->hlen] = 0;
	if ((n == 2 && buf[0] == '\r') || (n == 1 && buf[0] == '\n')) {
		long code = 0;
		curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
		if (code >= 200 || code == 0) {
			r->headers_done = 1;
			wake(r, WANT_HEADERS);
		}
	}
	return n;
}

static void check_done(Http *h)
{
	CURLMsg *m;
	int left;
	while ((m = curl_multi_info_read(h->multi, &left)) != NULL) {
		if (m->msg == CURLMSG_DONE) {
			Req *r = NULL;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
			if (r) {
				r->done = 1;
				r->result = m->data.result;
				r->headers_done = 1;
				wake(r, WANT_DONE);
			}
		}
	}
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
	Sock *sk = (Sock *)p->data;
	Http *h = sk->h;
	int flags = 0, running;
	if (status < 0)
		flags = CURL_CSELECT_ERR;
	if (events & UV_READABLE)
		flags |= CURL_CSELECT_IN;
	if (events & UV_WRITABLE)
		flags |= CURL_CSELECT_OUT;
	curl_multi_socket_action(h->multi, sk->fd, flags, &running);
	check_done(h);
}

static void sock_closed(uv_handle_t *hd)
{
	free(hd->data);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
	Http *h = (Http *)userp;
	Sock *sk = (Sock *)socketp;
	(void)e;
	if (what == CURL_POLL_REMOVE) {
		if (sk) {
			uv_poll_stop(&sk->poll);
			uv_close((uv_handle_t *)&sk->poll, sock_closed);
			curl_multi_assign(h->multi, s, NULL);
		}
		return 0;
	}
	if (!sk) {
		sk = (Sock *)calloc(1, sizeof *sk);
		if (!sk)
			return -1;
		sk->fd = s;
		sk->h = h;
		if (uv_poll_init_socket(&h->rt->loop, &sk->poll, s) != 0) {
			free(sk);
			return -1;
		}
		sk->poll.data = sk;
		curl_multi_assign(h->multi, s, sk);
	}
	uv_poll_start(&sk->poll,
	              ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0),
	              poll_cb);
	return 0;
}

static void timer_cb(uv_timer_t *t)
{
	Http *h = (Http *)t->data;
	int running;
	curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_done(h);
}

static int timerfunc(CURLM *m, long timeout_ms, void *userp)
{
	Http *h = (Http *)userp;
	(void)m;
	if (timeout_ms < 0)
		uv_timer_stop(&h->timer);
	else
		uv_timer_start(&h->timer, timer_cb, (uint64_t)timeout_ms, 0);
	return 0;
}

static void http_timer_closed(uv_handle_t *hd)
{
	free(hd->data);
}

static void http_free(vmsnap_runtime *rt)
{
	Http *h = (Http *)rt->http;
	if (!h)
		return;
	rt->http = NULL;
	curl_multi_cleanup(h->multi);
	uv_close((uv_handle_t *)&h->timer, http_timer_closed);
}

static Http *get_http(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	Http *h = (Http *)rt->http;
	const char *why = NULL;
	if (h)
		return h;
	if (!Vmsnap_curl(&why))
		luaL_error(L, "http: cannot load libcurl: %s", why ? why : "?");
	h = (Http *)calloc(1, sizeof *h);
	if (!h)
		luaL_error(L, "not enough memory");
	h->rt = rt;
	h->multi = curl_multi_init();
	if (!h->multi) {
		free(h);
		luaL_error(L, "cannot create a curl multi handle");
	}
	uv_timer_init(&rt->loop, &h->timer);
	h->timer.data = h;
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timerfunc);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
	rt->http = h;
	rt->http_free = http_free;
	return h;
}

/* --------------------------------------------------------- the handle */

static void req_release(Req *r)
{
	if (r->easy) {
		if (r->in_multi && r->h && r->h->rt->http == r->h)
			curl_multi_remove_handle(r->h->multi, r->easy);
		r->in_multi = 0;
		curl_easy_cleanup(r->easy);
		r->easy = NULL;
	}
	curl_slist_free_all(r->hdrs);
	curl_slist_free_all(r->connect_to);
	r->hdrs = r->connect_to = NULL;
	free(r->body);
	free(r->hdr);
	r->body = r->hdr = NULL;
	r->blen = r->bcap = r->hlen = r->hcap = 0;
	r->closed = 1;
	if (r->waiter) {
		Vmsnap_task *t = r->waiter;
		r->waiter = NULL;
		Vmsnap_sched_wake(t);
	}
}

static Req *check_req(lua_State *L)
{
	Req *r = (Req *)luaL_checkudata(L, 1, REQ_MT);
	if (r->closed)
		luaL_error(L, "attempt to use a closed http request");
	return r;
}

static int req_gc(lua_State *L)
{
	Req *r = (Req *)luaL_checkudata(L, 1, REQ_MT);
	if (!r->closed)
		req_release(r);
	return 0;
}

static const char *opt_string(lua_State *L, int t, const char *k)
{
	const char *s;
	lua_getfield(L, t, k);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		return NULL;
	}
	if (lua_type(L, -1) != LUA_TSTRING)
		luaL_error(L, "http: option '%s' must be a string", k);
	s = lua_tostring(L, -1);
	lua_pop(L, 1); /* the options table anchors it */
	return s;
}

static double opt_number(lua_State *L, int t, const char *k, double def)
{
	double d = def;
	lua_getfield(L, t, k);
	if (!lua_isnil(L, -1)) {
		if (!lua_isnumber(L, -1))
			luaL_error(L, "http: option '%s' must be a number", k);
		d = lua_tonumber(L, -1);
		if (d < 0)
			luaL_error(L, "http: option '%s' must not be negative", k);
	}
	lua_pop(L, 1);
	return d;
}

static int opt_bool(lua_State *L, int t, const char *k)
{
	int b;
	lua_getfield(L, t, k);
	b = lua_toboolean(L, -1);
	lua_pop(L, 1);
	return b;
}

static void set_blob(Req *r, CURLoption o, const char *data, size_t n)
{
	struct curl_blob blob;
	blob.data = (void *)data;
	blob.len = n;
	blob.flags = CURL_BLOB_COPY;
	curl_easy_setopt(r->easy, o, &blob);
}

static struct curl_slist *append_or_raise(lua_State *L, struct curl_slist *l, const char *s)
{
	struct curl_slist *n = curl_slist_append(l, s);
	if (!n)
		luaL_error(L, "not enough memory");
	return n;
}

/* http.new(opts) -- see vmsnap.http for the options */
static int http_new(lua_State *L)
{
	Http *h = get_http(L);
	const char *url, *method, *s;
	size_t blen = 0;
	const char *body = NULL;
	luaL_checktype(L, 1, LUA_TTABLE);
	url = opt_string(L, 1, "url");
	if (!url)
		return luaL_error(L, "http: option 'url' is required");
	method = opt_string(L, 1, "method");
	lua_getfield(L, 1, "body");
	if (!lua_isnil(L, -1)) {
		if (lua_type(L, -1) != LUA_TSTRING)
			return luaL_error(L, "http: option 'body' must be a string");
		body = lua_tolstring(L, -1, &blen);
	}
	lua_pop(L, 1);

	Req *r = (Req *)lua_newuserdatauv(L, sizeof(Req), 0);
	memset(r, 0, sizeof *r);
	r->closed = 1; /* until the easy handle exists */
	luaL_setmetatable(L, REQ_MT);
	r->easy = curl_easy_init();
	if (!r->easy)
		return luaL_error(L, "not enough memory");
	r->closed = 0;
	r->h = h;
	CURL *e = r->easy;
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");

	if (method) {
		if (strcmp(method, "HEAD") == 0)
			curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
		else if (strcmp(method, "GET") != 0)
			curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	}
	if (body) {
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
		curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
		if (!method)
			curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "POST");
	}

	r->hdrs = append_or_raise(L, r->hdrs, "Expect:");
	lua_getfield(L, 1, "headers");
	if (lua_istable(L, -1)) {
		lua_pushnil(L);
		while (lua_next(L, -2)) {
			if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
				return luaL_error(L, "http: headers must map names to strings");
			lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
			r->hdrs = append_or_raise(L, r->hdrs, lua_tostring(L, -1));
			lua_pop(L, 2);
		}
	} else if (!lua_isnil(L, -1)) {
		return luaL_error(L, "http: option 'headers' must be a table");
	}
	lua_pop(L, 1);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);

	double timeout = opt_number(L, 1, "timeout", 0);
	double ctimeout = opt_number(L, 1, "connect_timeout", 0);
	if (timeout > 0)
		curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
	if (ctimeout > 0)
		curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(ctimeout * 1000));
	r->max_body = (size_t)opt_number(L, 1, "max_body", 256.0 * 1024 * 1024);
	r->stream = opt_bool(L, 1, "stream");

	/* wait for a connection that can multiplex only where HTTP/2 may be
	** spoken; on plain HTTP/1.1 it would queue requests behind each other */
	if (strncmp(url, "https:", 6) == 0)
		curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
	s = opt_string(L, 1, "http_version");
	if (!s || strcmp(s, "2") == 0)
		curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	else if (strcmp(s, "1.1") == 0)
		curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	else if (strcmp(s, "2-prior-knowledge") == 0) {
		curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
		curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
	}
	else
		return luaL_error(L, "http: option 'http_version' must be \"1.1\", \"2\" or "
		                     "\"2-prior-knowledge\"");
	if ((s = opt_string(L, 1, "unix_socket")) != NULL)
		curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, s);
	lua_getfield(L, 1, "connect_to");
	if (lua_istable(L, -1)) {
		lua_Integer i, n = (lua_Integer)lua_rawlen(L, -1);
		for (i = 1; i <= n; i++) {
			lua_rawgeti(L, -1, i);
			if (lua_type(L, -1) != LUA_TSTRING)
				return luaL_error(L, "http: connect_to entries must be strings");
			r->connect_to = append_or_raise(L, r->connect_to, lua_tostring(L, -1));
			lua_pop(L, 1);
		}
		curl_easy_setopt(e, CURLOPT_CONNECT_TO, r->connect_to);
	}
	lua_pop(L, 1);

	lua_getfield(L, 1, "tls");
	if (lua_istable(L, -1)) {
		int t = lua_gettop(L);
		size_t n;
		if ((s = opt_string(L, t, "ca_file")) != NULL)
			curl_easy_setopt(e, CURLOPT_CAINFO, s);
		lua_getfield(L, t, "ca_data");
		if ((s = lua_tolstring(L, -1, &n)) != NULL)
			set_blob(r, CURLOPT_CAINFO_BLOB, s, n);
		lua_pop(L, 1);
		if ((s = opt_string(L, t, "cert_file")) != NULL)
			curl_easy_setopt(e, CURLOPT_SSLCERT, s);
		lua_getfield(L, t, "cert_data");
		if ((s = lua_tolstring(L, -1, &n)) != NULL)
			set_blob(r, CURLOPT_SSLCERT_BLOB, s, n);
		lua_pop(L, 1);
		if ((s = opt_string(L, t, "key_file")) != NULL)
			curl_easy_setopt(e, CURLOPT_SSLKEY, s);
		lua_getfield(L, t, "key_data");
		if ((s = lua_tolstring(L, -1, &n)) != NULL)
			set_blob(r, CURLOPT_SSLKEY_BLOB, s, n);
		lua_pop(L, 1);
		if (opt_bool(L, t, "insecure")) {
			curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
			curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
		}
	} else if (!lua_isnil(L, -1)) {
		return luaL_error(L, "http: option 'tls' must be a table");
	}
	lua_pop(L, 1);
	return 1;
}

static int req_start(lua_State *L)
{
	Req *r = check_req(L);
	if (r->started)
		return luaL_error(L, "http request already started");
	r->started = 1;
	if (curl_multi_add_handle(r->h->multi, r->easy) != CURLM_OK)
		return Vmsnap_pushfail(L, "CURL", "http: cannot start the transfer");
	r->in_multi = 1;
	check_done(r->h); /* a transfer can fail inside add_handle */
	lua_pushboolean(L, 1);
	return 1;
}

static const char *code_for(CURLcode c, long oserr)
{
	switch (c) {
	case CURLE_OPERATION_TIMEDOUT:
		return "TIMEOUT";
	case CURLE_COULDNT_CONNECT:
		return oserr ? Vmsnap_errno_name((int)oserr) : "ECONNREFUSED";
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return "RESOLVE";
	case CURLE_GOT_NOTHING:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return "CLOSED";
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
		return "TLS";
	case CURLE_URL_MALFORMAT:
	case CURLE_UNSUPPORTED_PROTOCOL:
		return "BAD_URL";
	default:
		return "CURL";
	}
}

static int push_transfer_error(lua_State *L, Req *r)
{
	long oserr = 0;
	const char *url = NULL;
	if (r->too_big)
		return Vmsnap_pushfail(L, "TOO_LARGE", "http: response body larger than %d bytes",
		                       (int)r->max_body);
	curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &oserr);
	curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &url);
	return Vmsnap_pushfail(L, code_for(r->result, oserr), "http %s: %s", url ? url : "?",
	                       r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result));
}

static void await_cancel(void *ud)
{
	Req *r = (Req *)ud;
	r->waiter = NULL;
}

/* What `what` would return now, or -1 if it must wait. */
static int await_ready(lua_State *L, Req *r, int what)
{
	if (what == WANT_DATA) {
		if (r->blen > 0) {
			lua_pushlstring(L, r->body, r->blen);
			r->blen = 0;
			if (r->paused) {
				r->paused = 0;
				curl_easy_pause(r->easy, CURLPAUSE_CONT);
			}
			return 1;
		}
		if (r->done) {
			if (r->result != CURLE_OK)
				return push_transfer_error(L, r);
			lua_pushnil(L);
			return 1;
		}
		return -1;
	}
	if (what == WANT_HEADERS && r->headers_done && !(r->done && r->result != CURLE_OK)) {
		lua_pushboolean(L, 1);
		return 1;
	}
	if (r->done) {
		if (r->result != CURLE_OK)
			return push_transfer_error(L, r);
		lua_pushboolean(L, 1);
		return 1;
	}
	return -1;
}

static int req_await(lua_State *L);

static int await_push(lua_State *L, void *ud, int reason)
{
	Req *r = (Req *)ud;
	if (r->closed)
		return Vmsnap_pushfail(L, "CLOSED", "http: request closed while waiting");
	if (reason == VMSNAP_WAKE_TIMEOUT) {
		r->waiter = NULL;
		return Vmsnap_pushfail(L, "TIMEOUT", "http: timeout waiting for the response");
	}
	/* woken: evaluate again; a wake that brought nothing waits again */
	return req_await(L);
}

static const Vmsnap_waitops await_ops = {await_cancel, await_push};

static int req_await(lua_State *L)
{
	static const char *const whats[] = {"headers", "data", "done", NULL};
	Req *r = check_req(L);
	int what = luaL_checkoption(L, 2, NULL, whats) + WANT_HEADERS;
	double timeout = -1;
	int n;
	if (!lua_isnoneornil(L, 3)) {
		timeout = luaL_checknumber(L, 3);
		luaL_argcheck(L, timeout >= 0, 3, "timeout must not be negative");
	}
	if (!r->started)
		return luaL_error(L, "http request not started");
	lua_settop(L, 3);
	if (!r->done && r->h->rt->http == r->h)
		check_done(r->h);
	n = await_ready(L, r, what);
	if (n >= 0)
		return n;
	Vmsnap_task *t = Vmsnap_sched_check_wait(L);
	r->waiter = t;
	r->want = what;
	return Vmsnap_sched_wait(L, t, &await_ops, r, timeout);
}

static int req_info(lua_State *L)
{
	Req *r = check_req(L);
	long code = 0, ver = 0;
	curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_getinfo(r->easy, CURLINFO_HTTP_VERSION, &ver);
	lua_pushinteger(L, code);
	lua_pushstring(L, ver == CURL_HTTP_VERSION_2_0 ? "2"
	                  : ver == CURL_HTTP_VERSION_1_0 ? "1.0"
	                  : ver == CURL_HTTP_VERSION_1_1 ? "1.1"
	                                                 : "");
	lua_pushlstring(L, r->hdr ? r->hdr : "", r->hlen);
	return 3;
}

static int req_take(lua_State *L)
{
	Req *r = check_req(L);
	lua_pushlstring(L, r->body ? r->body : "", r->blen);
	r->blen = 0;
	return 1;
}

static int req_close(lua_State *L)
{
	Req *r = (Req *)luaL_checkudata(L, 1, REQ_MT);
	if (!r->closed)
		req_release(r);
	return 0;
}

static int req_tostring(lua_State *L)
{
	Req *r = (Req *)luaL_checkudata(L, 1, REQ_MT);
	lua_pushfstring(L, "http request (%s)", r->closed ? "closed" : r->done ? "done" : "open");
	return 1;
}

static int http_version_info(lua_State *L)
{
	const char *why = NULL;
	if (!Vmsnap_curl(&why))
		return Vmsnap_pushfail(L, "ENOENT", "http: cannot load libcurl: %s", why ? why : "?");
	curl_version_info_data *d = curl_version_info(CURLVERSION_NOW);
	lua_createtable(L, 0, 3);
	lua_pushstring(L, d->version);
	lua_setfield(L, -2, "version");
	lua_pushstring(L, d->ssl_version ? d->ssl_version : "");
	lua_setfield(L, -2, "ssl");
	lua_pushboolean(L, (d->features & CURL_VERSION_HTTP2) != 0);
	lua_setfield(L, -2, "http2");
	return 1;
}

static const luaL_Reg http_funcs[] = {
    {"new", http_new}, {"curl_version", http_version_info}, {NULL, NULL}};

static const luaL_Reg req_meth[] = {{"start", req_start}, {"await", req_await},
                                    {"info", req_info},   {"take", req_take},
                                    {"close", req_close}, {NULL, NULL}};

static const luaL_Reg req_metameth[] = {{"__index", NULL},
                                        {"__gc", req_gc},
                                        {"__close", req_gc},
                                        {"__tostring", req_tostring},
                                        {NULL, NULL}};

int luaopen_vmsnap_core_http(lua_State *L)
{
	if (luaL_newmetatable(L, REQ_MT)) {
		luaL_setfuncs(L, req_metameth, 0);
		luaL_newlibtable(L, req_meth);
		luaL_setfuncs(L, req_meth, 0);
		lua_setfield(L, -2, "__index");
	}
	lua_pop(L, 1);
	luaL_newlib(L, http_funcs);
	return 1;
}
