/*
** sock.c -- `vmsnap.core.sock`: byte-stream connections on the loop (unix
** sockets, vsock, character devices), and `vmsnap.core.qga`'s reply framer.
**
** A connection is a non-blocking fd watched with a uv_poll; read and write
** are scheduler waits (scheduler.h), so a task talking to a guest agent
** never blocks the loop, and every wait has a timeout.
**
** Lua (vmsnap.core.sock):
**   c, pending = sock.open(target)    "unix:/path", "vsock:CID:PORT", or a device
**                                     path ("/dev/virtio-ports/..."); pending: the
**                                     connection is still being made
**   c:wait("r" | "w" [, timeout])     -> true when ready, false on timeout
**   c:finish_connect()                -> true | nil, msg, errno name
**   c:read_some()                     -> bytes | nil, msg, "EAGAIN" | "CLOSED" | errno
**   c:write_some(data, offset)        -> bytes written (0: it would block)
**   c:close(), c:fd()
** (vmsnap.sock builds connect/read/write with timeouts on these.)
** Lua (vmsnap.core.qga):
**   f = qga.framer([max_frame])
**   f:feed(bytes) -> list of events: "delim", or the text of a frame, or
**                    false for a frame dropped because it was too long
**   f:reset()
*/
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "../core/loader.h"
#include "../core/qgaframe.h"
#include "../core/runtime.h"
#include "../core/scheduler.h"

#define CONN_MT "vmsnap.sock.Conn"
#define FRAMER_MT "vmsnap.qga.Framer"

typedef struct Conn {
	int fd;
	uv_poll_t *poll; /* malloc'd: it may outlive the userdata until closed */
	Vmsnap_task *waiter;
	int closed;
} Conn;

static void poll_closed(uv_handle_t *h)
{
	free(h);
}

static void conn_shut(Conn *c)
{
	if (c->poll) {
		uv_poll_stop(c->poll);
		uv_close((uv_handle_t *)c->poll, poll_closed);
		c->poll = NULL;
	}
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	c->closed = 1;
}

static void on_poll(uv_poll_t *p, int status, int events)
{
	Conn *c = (Conn *)p->data;
	(void)status;
	(void)events;
	uv_poll_stop(p); /* ready, or an error the next read/write reports */
	if (c->waiter) {
		Vmsnap_task *t = c->waiter;
		c->waiter = NULL;
		Vmsnap_sched_wake(t);
	}
}

static void wait_cancel(void *ud)
{
	Conn *c = (Conn *)ud;
	c->waiter = NULL;
	if (c->poll)
		uv_poll_stop(c->poll);
}

static int wait_push(lua_State *L, void *ud, int reason)
{
	Conn *c = (Conn *)ud;
	if (reason == VMSNAP_WAKE_TIMEOUT) {
		c->waiter = NULL;
		if (c->poll)
			uv_poll_stop(c->poll);
		lua_pushboolean(L, 0);
		return 1;
	}
	lua_pushboolean(L, 1);
	return 1;
}

static const Vmsnap_waitops wait_ops = {wait_cancel, wait_push};

static Conn *check_conn(lua_State *L)
{
	Conn *c = (Conn *)luaL_checkudata(L, 1, CONN_MT);
	if (c->closed)
		luaL_error(L, "sock: connection is closed");
	return c;
}

/* c:wait("r" | "w" [, timeout]) -> true when ready, false on timeout */
static int conn_wait(lua_State *L)
{
	static const char *const what[] = {"r", "w", NULL};
	Conn *c = check_conn(L);
	int events = luaL_checkoption(L, 2, NULL, what) == 0 ? UV_READABLE : UV_WRITABLE;
	double timeout = luaL_optnumber(L, 3, -1);
	Vmsnap_task *t = Vmsnap_sched_check_wait(L);
	if (uv_poll_start(c->poll, events | UV_DISCONNECT, on_poll) != 0)
		return Vmsnap_pushfail(L, "EIO", "sock: cannot watch the connection");
	c->waiter = t;
	return Vmsnap_sched_wait(L, t, &wait_ops, c, timeout);
}

/* sock.open(target) -> conn, pending | nil, msg, code */
static int l_open(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	const char *target = luaL_checkstring(L, 1);
	int fd = -1, r;
	Conn *c = (Conn *)lua_newuserdatauv(L, sizeof *c, 0);
	memset(c, 0, sizeof *c);
	c->fd = -1;
	luaL_setmetatable(L, CONN_MT);
	if (strncmp(target, "unix:", 5) == 0) {
		struct sockaddr_un a;
		const char *path = target + 5;
		if (strlen(path) >= sizeof a.sun_path)
			return Vmsnap_pushfail(L, "ENAMETOOLONG", "sock: socket path too long: %s", path);
		memset(&a, 0, sizeof a);
		a.sun_family = AF_UNIX;
		memcpy(a.sun_path, path, strlen(path) + 1);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return Vmsnap_pusherrno(L, errno, "sock: socket");
		r = connect(fd, (struct sockaddr *)&a, sizeof a);
	} else if (strncmp(target, "vsock:", 6) == 0) {
		struct sockaddr_vm a;
		unsigned cid = 0, port = 0;
		char extra;
		if (sscanf(target + 6, "%u:%u%c", &cid, &port, &extra) != 2)
			return Vmsnap_pushfail(L, "EINVAL", "sock: vsock target must be vsock:CID:PORT, got '%s'", target);
		memset(&a, 0, sizeof a);
		a.svm_family = AF_VSOCK;
		a.svm_cid = cid;
		a.svm_port = port;
		fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return Vmsnap_pusherrno(L, errno, "sock: vsock socket");
		r = connect(fd, (struct sockaddr *)&a, sizeof a);
	} else if (target[0] == '/') {
		fd = open(target, O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
		if (fd < 0)
			return Vmsnap_pusherrno(L, errno, target);
		r = 0;
	} else {
		return Vmsnap_pushfail(L, "EINVAL",
		                       "sock: target must be unix:PATH, vsock:CID:PORT or a device path, got '%s'",
		                       target);
	}
	int cerr = r < 0 ? errno : 0;
	c->fd = fd;
	/* a unix socket whose listen backlog is full says EAGAIN and is not
	   connecting at all: the caller tries again (a busy qemu-ga serves one
	   client at a time) */
	if (r < 0 && cerr == EAGAIN && strncmp(target, "unix:", 5) == 0) {
		conn_shut(c);
		return Vmsnap_pushfail(L, "EAGAIN", "sock: %s is busy (its listen backlog is full)", target);
	}
	if (r < 0 && cerr != EINPROGRESS && cerr != EAGAIN) {
		conn_shut(c);
		return Vmsnap_pusherrno(L, cerr, target);
	}
	c->poll = (uv_poll_t *)malloc(sizeof *c->poll);
	if (!c->poll || uv_poll_init(&rt->loop, c->poll, fd) != 0) {
		free(c->poll);
		c->poll = NULL;
		conn_shut(c);
		return Vmsnap_pushfail(L, "EIO", "sock: cannot watch %s", target);
	}
	c->poll->data = c;
	lua_pushboolean(L, r < 0); /* still connecting */
	return 2;
}

/* c:finish_connect() -> true | nil, msg, code (after wait("w")) */
static int conn_finish_connect(lua_State *L)
{
	Conn *c = check_conn(L);
	int err = 0;
	socklen_t len = sizeof err;
	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
		err = errno;
	if (err)
		return Vmsnap_pusherrno(L, err, "sock: connect");
	lua_pushboolean(L, 1);
	return 1;
}

/* c:read_some() -> bytes | nil, msg, "EAGAIN" | "CLOSED" | errno name */
static int conn_read_some(lua_State *L)
{
	Conn *c = check_conn(L);
	char buf[16384];
	ssize_t n;
	do
		n = read(c->fd, buf, sizeof buf);
	while (n < 0 && errno == EINTR);
	if (n > 0) {
		lua_pushlstring(L, buf, (size_t)n);
		return 1;
	}
	if (n == 0)
		return Vmsnap_pushfail(L, "CLOSED", "sock: the peer closed the connection");
	if (errno == EAGAIN || errno == EWOULDBLOCK)
		return Vmsnap_pushfail(L, "EAGAIN", "sock: nothing to read yet");
	if (errno == ECONNRESET || errno == EIO)
		return Vmsnap_pushfail(L, "CLOSED", "sock: the connection was reset");
	return Vmsnap_pusherrno(L, errno, "sock: read");
}

/* c:write_some(data, offset) -> bytes written from offset (0 when it would block) */
static int conn_write_some(lua_State *L)
{
	Conn *c = check_conn(L);
	size_t len;
	const char *data = luaL_checklstring(L, 2, &len);
	lua_Integer off = luaL_optinteger(L, 3, 0);
	ssize_t n;
	luaL_argcheck(L, off >= 0 && (size_t)off <= len, 3, "offset out of range");
	do
		n = send(c->fd, data + off, len - (size_t)off, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0 && errno == ENOTSOCK) /* a character device */
		do
			n = write(c->fd, data + off, len - (size_t)off);
		while (n < 0 && errno == EINTR);
	if (n >= 0) {
		lua_pushinteger(L, n);
		return 1;
	}
	if (errno == EAGAIN || errno == EWOULDBLOCK) {
		lua_pushinteger(L, 0);
		return 1;
	}
	if (errno == EPIPE || errno == ECONNRESET)
		return Vmsnap_pushfail(L, "CLOSED", "sock: the peer closed the connection");
	return Vmsnap_pusherrno(L, errno, "sock: write");
}

static int conn_fd(lua_State *L)
{
	lua_pushinteger(L, check_conn(L)->fd);
	return 1;
}

static int conn_close(lua_State *L)
{
	Conn *c = (Conn *)luaL_checkudata(L, 1, CONN_MT);
	if (!c->closed) {
		if (c->waiter) {
			Vmsnap_task *t = c->waiter;
			c->waiter = NULL;
			Vmsnap_sched_wake(t);
		}
		conn_shut(c);
	}
	return 0;
}

static int conn_tostring(lua_State *L)
{
	Conn *c = (Conn *)luaL_checkudata(L, 1, CONN_MT);
	lua_pushfstring(L, "connection (%s)", c->closed ? "closed" : "open");
	return 1;
}

/* ------------------------------------------------------------ framer */

typedef struct Framer {
	Vmsnap_qgaframe f;
} Framer;

typedef struct FeedCtx {
	lua_State *L;
	int n;
} FeedCtx;

static int feed_cb(void *ud, int event, const char *text, size_t len)
{
	FeedCtx *x = (FeedCtx *)ud;
	if (event == QGAF_FRAME)
		lua_pushlstring(x->L, text, len);
	else if (event == QGAF_DELIM)
		lua_pushliteral(x->L, "delim");
	else
		lua_pushboolean(x->L, 0);
	lua_rawseti(x->L, -2, ++x->n);
	return 0;
}

static int framer_feed(lua_State *L)
{
	Framer *fr = (Framer *)luaL_checkudata(L, 1, FRAMER_MT);
	size_t len;
	const char *p = luaL_checklstring(L, 2, &len);
	FeedCtx x = {L, 0};
	lua_newtable(L);
	if (Vmsnap_qgaframe_feed(&fr->f, p, len, feed_cb, &x) < 0)
		return luaL_error(L, "out of memory");
	return 1;
}

static int framer_reset(lua_State *L)
{
	Framer *fr = (Framer *)luaL_checkudata(L, 1, FRAMER_MT);
	Vmsnap_qgaframe_reset(&fr->f);
	return 0;
}

static int framer_gc(lua_State *L)
{
	Framer *fr = (Framer *)luaL_checkudata(L, 1, FRAMER_MT);
	Vmsnap_qgaframe_free(&fr->f);
	return 0;
}

static int l_framer(lua_State *L)
{
	lua_Integer max = luaL_optinteger(L, 1, 16 << 20);
	Framer *fr = (Framer *)lua_newuserdatauv(L, sizeof *fr, 0);
	Vmsnap_qgaframe_init(&fr->f, (size_t)max);
	luaL_setmetatable(L, FRAMER_MT);
	return 1;
}

static const luaL_Reg conn_meth[] = {{"wait", conn_wait},
                                     {"finish_connect", conn_finish_connect},
                                     {"read_some", conn_read_some},
                                     {"write_some", conn_write_some},
                                     {"fd", conn_fd},
                                     {"close", conn_close},
                                     {NULL, NULL}};

int luaopen_vmsnap_core_sock(lua_State *L)
{
	static const luaL_Reg funcs[] = {{"open", l_open}, {NULL, NULL}};
	if (luaL_newmetatable(L, CONN_MT)) {
		lua_pushcfunction(L, conn_close);
		lua_setfield(L, -2, "__gc");
		lua_pushcfunction(L, conn_close);
		lua_setfield(L, -2, "__close");
		lua_pushcfunction(L, conn_tostring);
		lua_setfield(L, -2, "__tostring");
		luaL_newlib(L, conn_meth);
		lua_setfield(L, -2, "__index");
	}
	lua_pop(L, 1);
	luaL_newlib(L, funcs);
	return 1;
}

int luaopen_vmsnap_core_qga(lua_State *L)
{
	static const luaL_Reg funcs[] = {{"framer", l_framer}, {NULL, NULL}};
	static const luaL_Reg fmeth[] = {{"feed", framer_feed}, {"reset", framer_reset}, {NULL, NULL}};
	if (luaL_newmetatable(L, FRAMER_MT)) {
		lua_pushcfunction(L, framer_gc);
		lua_setfield(L, -2, "__gc");
		luaL_newlib(L, fmeth);
		lua_setfield(L, -2, "__index");
	}
	lua_pop(L, 1);
	luaL_newlib(L, funcs);
	return 1;
}
