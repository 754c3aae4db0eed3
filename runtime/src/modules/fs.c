/*
** fs.c -- `vmsnap.core.fs`: files, with the slow operations off the loop.
**
** Quick metadata calls (stat, mkdir -p, mkdtemp, list, remove) run inline.
** Writing durably (write_atomic: temp file, fsync, rename, fsync of the
** directory) and copying (copy: a reflink with FICLONE when the filesystem
** shares extents, else a sparse copy that visits only the data regions
** found with SEEK_DATA/SEEK_HOLE) run on libuv's thread pool; the calling
** task waits and other tasks run meanwhile.  The worker threads touch no
** Lua state.  Failures return nil, message, errno-name.
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/loader.h"
#include "../core/runtime.h"
#include "../core/scheduler.h"

/* ------------------------------------------------------------- inline */

static int mkdir_p(const char *path, mode_t mode)
{
	char tmp[4096];
	size_t n = strlen(path), i;
	if (n == 0 || n >= sizeof tmp)
		return ENAMETOOLONG;
	memcpy(tmp, path, n + 1);
	for (i = 1; i <= n; i++) {
		if (tmp[i] == '/' || tmp[i] == 0) {
			char c = tmp[i];
			tmp[i] = 0;
			if (mkdir(tmp, mode) != 0 && errno != EEXIST)
				return errno;
			tmp[i] = c;
		}
	}
	struct stat st;
	if (stat(path, &st) != 0)
		return errno;
	return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

/* fs.mkdir_p(path [, mode]) -> true | nil, message, code */
static int fs_mkdir_p(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int mode = (int)luaL_optinteger(L, 2, 0755);
	int e = mkdir_p(path, (mode_t)mode);
	if (e)
		return Vmsnap_pusherrno(L, e, path);
	lua_pushboolean(L, 1);
	return 1;
}

/* fs.tempdir([prefix]) -> path of a new private directory */
static int fs_tempdir(lua_State *L)
{
	const char *prefix = luaL_optstring(L, 1, "vmsnap");
	const char *base = getenv("TMPDIR");
	char tmpl[4096];
	if (!base || !*base)
		base = "/tmp";
	if (snprintf(tmpl, sizeof tmpl, "%s/%s.XXXXXX", base, prefix) >= (int)sizeof tmpl)
		return Vmsnap_pusherrno(L, ENAMETOOLONG, base);
	if (!mkdtemp(tmpl))
		return Vmsnap_pusherrno(L, errno, tmpl);
	lua_pushstring(L, tmpl);
	return 1;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p) != 0 && errno != ENOENT ? errno : 0;
}

/* fs.remove_tree(path) -> true | nil, message, code (a missing path is fine) */
static int fs_remove_tree(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	luaL_argcheck(L, strcmp(path, "/") != 0 && path[0] != 0, 1, "refusing to remove this path");
	int r = nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS);
	if (r != 0 && errno != ENOENT)
		return Vmsnap_pusherrno(L, r > 0 ? r : errno, path);
	lua_pushboolean(L, 1);
	return 1;
}

static int fs_remove(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	if (remove(path) != 0)
		return Vmsnap_pusherrno(L, errno, path);
	lua_pushboolean(L, 1);
	return 1;
}

static int fs_rename(lua_State *L)
{
	const char *a = luaL_checkstring(L, 1), *b = luaL_checkstring(L, 2);
	if (rename(a, b) != 0)
		return Vmsnap_pusherrno(L, errno, a);
	lua_pushboolean(L, 1);
	return 1;
}

/* fs.truncate(path, size) -> true | fail: set a file's size, creating it
** (sparse: growing allocates nothing) */
static int fs_truncate(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	lua_Integer size = luaL_checkinteger(L, 2);
	int fd;
	luaL_argcheck(L, size >= 0, 2, "size must not be negative");
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return Vmsnap_pusherrno(L, errno, path);
	if (ftruncate(fd, (off_t)size) != 0) {
		int e = errno;
		close(fd);
		return Vmsnap_pusherrno(L, e, path);
	}
	close(fd);
	lua_pushboolean(L, 1);
	return 1;
}

/* fs.stat(path) -> {type=, size=, allocated=, mode=, mtime=} | fail */
static int fs_stat(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct stat st;
	if (lstat(path, &st) != 0)
		return Vmsnap_pusherrno(L, errno, path);
	lua_createtable(L, 0, 5);
	lua_pushstring(L, S_ISREG(st.st_mode)   ? "file"
	                  : S_ISDIR(st.st_mode) ? "directory"
	                  : S_ISLNK(st.st_mode) ? "link"
	                  : S_ISBLK(st.st_mode) ? "block"
	                  : S_ISCHR(st.st_mode) ? "char"
	                  : S_ISSOCK(st.st_mode) ? "socket"
	                                         : "other");
	lua_setfield(L, -2, "type");
	lua_pushinteger(L, (lua_Integer)st.st_size);
	lua_setfield(L, -2, "size");
	lua_pushinteger(L, (lua_Integer)st.st_blocks * 512);
	lua_setfield(L, -2, "allocated");
	lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
	lua_setfield(L, -2, "mode");
	lua_pushnumber(L, (lua_Number)st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9);
	lua_setfield(L, -2, "mtime");
	return 1;
}

static int fs_exists(lua_State *L)
{
	struct stat st;
	lua_pushboolean(L, stat(luaL_checkstring(L, 1), &st) == 0);
	return 1;
}

/* fs.chmod(path, mode) -> true | fail (symbolic links are not followed) */
static int fs_chmod(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	lua_Integer mode = luaL_checkinteger(L, 2);
	luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "mode must be 0..07777");
	if (fchmodat(AT_FDCWD, path, (mode_t)mode, 0) != 0)
		return Vmsnap_pusherrno(L, errno, path);
	lua_pushboolean(L, 1);
	return 1;
}

/* fs.umask(mask) -> the previous mask (the process's: files created from now on) */
static int fs_umask(lua_State *L)
{
	lua_Integer mask = luaL_checkinteger(L, 1);
	luaL_argcheck(L, mask >= 0 && mask <= 0777, 1, "mask must be 0..0777");
	lua_pushinteger(L, (lua_Integer)umask((mode_t)mask));
	return 1;
}

/* fs.list(dir) -> sorted names | fail */
static int fs_list(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct dirent **names = NULL;
	int n = scandir(path, &names, NULL, alphasort), i, k = 0;
	if (n < 0)
		return Vmsnap_pusherrno(L, errno, path);
	lua_createtable(L, n, 0);
	for (i = 0; i < n; i++) {
		if (strcmp(names[i]->d_name, ".") && strcmp(names[i]->d_name, "..")) {
			lua_pushstring(L, names[i]->d_name); /* may raise: names leak then; rare */
			lua_rawseti(L, -2, ++k);
		}
		free(names[i]);
	}
	free(names);
	return 1;
}

/* fs.read_file(path) -> contents | fail */
static int fs_read_file(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	FILE *f = fopen(path, "rb");
	luaL_Buffer b;
	size_t n;
	if (!f)
		return Vmsnap_pusherrno(L, errno, path);
	luaL_buffinit(L, &b);
	do {
		char *p = luaL_prepbuffer(&b);
		n = fread(p, 1, LUAL_BUFFERSIZE, f);
		luaL_addsize(&b, n);
	} while (n == LUAL_BUFFERSIZE);
	int err = ferror(f);
	fclose(f);
	if (err)
		return Vmsnap_pusherrno(L, EIO, path);
	luaL_pushresult(&b);
	return 1;
}

/* --------------------------------------------------------- thread pool */

enum { OP_WRITE, OP_COPY };

typedef struct Work {
	uv_work_t req;
	int op;
	int err;
	const char *err_path;
	char *a, *b;  /* paths */
	char *data;
	size_t len;
	int mode, do_fsync;
	/* results of copy */
	int reflinked;
	long long bytes, size;
	int done, orphan;
	Vmsnap_task *waiter;
} Work;

static void work_free(Work *w)
{
	free(w->a);
	free(w->b);
	free(w->data);
	free(w);
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t k = write(fd, p, n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static int fsync_dir_of(const char *path)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	size_t n = slash ? (size_t)(slash - path) : 0;
	if (n == 0) {
		strcpy(dir, slash ? "/" : ".");
	} else {
		if (n >= sizeof dir)
			return ENAMETOOLONG;
		memcpy(dir, path, n);
		dir[n] = 0;
	}
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int r = fsync(fd) == 0 ? 0 : errno;
	close(fd);
	return r == EINVAL ? 0 : r;
}

static void do_write(Work *w)
{
	size_t n = strlen(w->a);
	char *tmp = (char *)malloc(n + 16);
	int fd;
	if (!tmp) {
		w->err = ENOMEM;
		return;
	}
	snprintf(tmp, n + 16, "%s.tmp.XXXXXX", w->a);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		w->err = errno;
		free(tmp);
		return;
	}
	w->err = write_all(fd, w->data, w->len);
	if (!w->err && fchmod(fd, (mode_t)w->mode) != 0)
		w->err = errno;
	if (!w->err && w->do_fsync && fsync(fd) != 0)
		w->err = errno;
	if (close(fd) != 0 && !w->err)
		w->err = errno;
	if (!w->err && rename(tmp, w->a) != 0)
		w->err = errno;
	if (w->err)
		unlink(tmp);
	else if (w->do_fsync)
		w->err = fsync_dir_of(w->a);
	free(tmp);
}

static int copy_range(int in, int out, off_t off, off_t len, long long *bytes)
{
	static __thread char buf[1 << 17];
	while (len > 0) {
		loff_t ioff = off, ooff = off;
		ssize_t k = copy_file_range(in, &ioff, out, &ooff, (size_t)len, 0);
		if (k < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL)) {
			ssize_t r = pread(in, buf, (size_t)(len < (off_t)sizeof buf ? len : (off_t)sizeof buf), off);
			if (r < 0)
				return errno;
			if (r == 0)
				break;
			if (pwrite(out, buf, (size_t)r, off) != r)
				return errno ? errno : EIO;
			k = r;
		} else if (k < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		} else if (k == 0) {
			break;
		}
		off += k;
		len -= k;
		*bytes += k;
	}
	return 0;
}

static void do_copy(Work *w)
{
	int in = open(w->a, O_RDONLY | O_CLOEXEC), out;
	struct stat st;
	if (in < 0) {
		w->err = errno;
		w->err_path = w->a;
		return;
	}
	if (fstat(in, &st) != 0) {
		w->err = errno;
		close(in);
		return;
	}
	w->size = (long long)st.st_size;
	out = open(w->b, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, w->mode ? w->mode : (int)(st.st_mode & 0777));
	if (out < 0) {
		w->err = errno;
		w->err_path = w->b;
		close(in);
		return;
	}
	w->err_path = w->b;
	if (ioctl(out, FICLONE, in) == 0) {
		w->reflinked = 1;
		w->bytes = (long long)st.st_size;
	} else {
		off_t off = 0, data, hole;
		if (ftruncate(out, st.st_size) != 0) {
			w->err = errno;
			goto done;
		}
		while (off < st.st_size) {
			data = lseek(in, off, SEEK_DATA);
			if (data < 0) {
				if (errno == ENXIO)
					break; /* only a hole remains */
				/* no SEEK_DATA support: copy everything */
				w->err = copy_range(in, out, off, st.st_size - off, &w->bytes);
				goto done;
			}
			hole = lseek(in, data, SEEK_HOLE);
			if (hole < 0)
				hole = st.st_size;
			if ((w->err = copy_range(in, out, data, hole - data, &w->bytes)) != 0)
				goto done;
			off = hole;
		}
	}
	if (w->do_fsync && fsync(out) != 0)
		w->err = errno;
done:
	if (close(out) != 0 && !w->err)
		w->err = errno;
	close(in);
	if (w->err)
		unlink(w->b);
}

static void work_cb(uv_work_t *req)
{
	Work *w = (Work *)req->data;
	if (w->op == OP_WRITE)
		do_write(w);
	else
		do_copy(w);
}

static void after_cb(uv_work_t *req, int status)
{
	Work *w = (Work *)req->data;
	if (status == UV_ECANCELED && !w->err)
		w->err = ECANCELED;
	w->done = 1;
	if (w->orphan) {
		work_free(w);
		return;
	}
	if (w->waiter) {
		Vmsnap_task *t = w->waiter;
		w->waiter = NULL;
		Vmsnap_sched_wake(t);
	}
}

static void work_cancel(void *ud)
{
	Work *w = (Work *)ud;
	w->waiter = NULL;
	w->orphan = 1; /* the thread may still run; after_cb frees it */
	uv_cancel((uv_req_t *)&w->req);
}

static int work_push(lua_State *L, void *ud, int reason)
{
	Work *w = (Work *)ud;
	int n;
	(void)reason; /* no timeout is ever set */
	if (w->err) {
		n = Vmsnap_pusherrno(L, w->err, w->err_path ? w->err_path : w->a);
	} else if (w->op == OP_WRITE) {
		lua_pushboolean(L, 1);
		n = 1;
	} else {
		lua_createtable(L, 0, 3);
		lua_pushstring(L, w->reflinked ? "reflink" : "sparse");
		lua_setfield(L, -2, "method");
		lua_pushinteger(L, w->bytes);
		lua_setfield(L, -2, "bytes");
		lua_pushinteger(L, w->size);
		lua_setfield(L, -2, "size");
		n = 1;
	}
	work_free(w);
	return n;
}

static const Vmsnap_waitops work_ops = {work_cancel, work_push};

static int queue(lua_State *L, Work *w)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	Vmsnap_task *t = Vmsnap_sched_check_wait(L); /* may raise: w not yet owned */
	int r;
	w->req.data = w;
	r = uv_queue_work(&rt->loop, &w->req, work_cb, after_cb);
	if (r != 0) {
		work_free(w);
		return Vmsnap_pushfail(L, uv_err_name(r), "fs: cannot queue work: %s", uv_strerror(r));
	}
	w->waiter = t;
	return Vmsnap_sched_wait(L, t, &work_ops, w, -1);
}

static Work *new_work(lua_State *L, int op, const char *a, const char *b)
{
	Work *w = (Work *)calloc(1, sizeof *w);
	if (!w)
		luaL_error(L, "not enough memory");
	w->op = op;
	w->a = strdup(a);
	w->b = b ? strdup(b) : NULL;
	if (!w->a || (b && !w->b)) {
		work_free(w);
		luaL_error(L, "not enough memory");
	}
	w->do_fsync = 1;
	return w;
}

static void read_opts(lua_State *L, int idx, int *mode, int *do_fsync)
{
	if (lua_isnoneornil(L, idx))
		return;
	luaL_checktype(L, idx, LUA_TTABLE);
	lua_getfield(L, idx, "mode");
	if (!lua_isnil(L, -1))
		*mode = (int)luaL_checkinteger(L, -1);
	lua_getfield(L, idx, "fsync");
	if (!lua_isnil(L, -1))
		*do_fsync = lua_toboolean(L, -1);
	lua_pop(L, 2);
}

/* fs.write_atomic(path, data [, {mode=0644, fsync=true}]) -> true | fail */
static int fs_write_atomic(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	size_t n;
	const char *data = luaL_checklstring(L, 2, &n);
	int mode = 0644, do_fsync = 1;
	read_opts(L, 3, &mode, &do_fsync);
	Vmsnap_sched_check_wait(L); /* raise before allocating */
	Work *w = new_work(L, OP_WRITE, path, NULL);
	w->data = (char *)malloc(n ? n : 1);
	if (!w->data) {
		work_free(w);
		return luaL_error(L, "not enough memory");
	}
	memcpy(w->data, data, n);
	w->len = n;
	w->mode = mode;
	w->do_fsync = do_fsync;
	return queue(L, w);
}

/* fs.copy(src, dst [, {mode=, fsync=true}]) -> {method=, bytes=, size=} | fail */
static int fs_copy(lua_State *L)
{
	const char *a = luaL_checkstring(L, 1), *b = luaL_checkstring(L, 2);
	int mode = 0, do_fsync = 1;
	read_opts(L, 3, &mode, &do_fsync);
	Vmsnap_sched_check_wait(L);
	Work *w = new_work(L, OP_COPY, a, b);
	w->mode = mode;
	w->do_fsync = do_fsync;
	return queue(L, w);
}

static const luaL_Reg fs_funcs[] = {{"mkdir_p", fs_mkdir_p},
                                    {"tempdir", fs_tempdir},
                                    {"remove_tree", fs_remove_tree},
                                    {"remove", fs_remove},
                                    {"rename", fs_rename},
                                    {"truncate", fs_truncate},
                                    {"stat", fs_stat},
                                    {"exists", fs_exists},
                                    {"list", fs_list},
                                    {"read_file", fs_read_file},
                                    {"write_atomic", fs_write_atomic},
                                    {"copy", fs_copy},
                                    {"chmod", fs_chmod},
                                    {"umask", fs_umask},
                                    {NULL, NULL}};

int luaopen_vmsnap_core_fs(lua_State *L)
{
	luaL_newlib(L, fs_funcs);
	return 1;
}
