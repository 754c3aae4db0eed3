/*
** vmsnap.c -- the embedding API (vmsnap.h) on top of core/.
**
** Also provides `vmsnap.core.runtime`, the Lua view of the runtime:
** versions, memory figures, params and the allocation-failure switch.
*/
#include "../modules/curlsym.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <lualib.h>

#include "../core/loader.h"
#include "../core/runtime.h"
#include "../core/values.h"
#include "../core/scheduler.h"
#include "vmsnap_plugin.h"

#ifndef VMSNAP_CJSON_VERSION
#define VMSNAP_CJSON_VERSION "2.1.0"
#endif
#ifndef VMSNAP_BUILD_OPTIONS
#define VMSNAP_BUILD_OPTIONS ""
#endif

#define MAIN_KEY "vmsnap.main_task"
#define PARAMS_KEY "vmsnap.params"

/* ---------------------------------------------------------- versions */

VMSNAP_API const char *vmsnap_version(void)
{
	return VMSNAP_VERSION;
}

VMSNAP_API int vmsnap_version_num(void)
{
	return VMSNAP_VERSION_NUM;
}

VMSNAP_API const vmsnap_build_info *vmsnap_get_build_info(void)
{
	static vmsnap_build_info info;
	static char curlv[32];
	if (!info.version) {
		curl_version_info_data *c = Vmsnap_curl(NULL) ? curl_version_info(CURLVERSION_NOW) : NULL;
		snprintf(curlv, sizeof curlv, "%s", c && c->version ? c->version : "(not loadable)");
		info.age = 0;
		info.lua = LUA_RELEASE;
		info.libuv = uv_version_string();
		info.libcurl = curlv;
		info.libyaml = yaml_get_version_string();
		info.cjson = VMSNAP_CJSON_VERSION;
		info.sqlite = NULL;
		info.options = VMSNAP_BUILD_OPTIONS;
		info.version = VMSNAP_VERSION;
	}
	return &info;
}

VMSNAP_API const char *vmsnap_strerror(vmsnap_status s)
{
	switch (s) {
	case VMSNAP_OK: return "ok";
	case VMSNAP_AGAIN: return "tasks are still pending";
	case VMSNAP_ERR_SYNTAX: return "syntax error";
	case VMSNAP_ERR_RUNTIME: return "runtime error";
	case VMSNAP_ERR_WORKFLOW: return "the workflow reported failure";
	case VMSNAP_ERR_NOMEM: return "out of memory";
	case VMSNAP_ERR_TIMEOUT: return "deadline exceeded";
	case VMSNAP_ERR_CANCELLED: return "cancelled";
	case VMSNAP_ERR_IO: return "i/o error";
	case VMSNAP_ERR_MISUSE: return "library misuse";
	case VMSNAP_ERR_VERSION: return "incompatible version";
	case VMSNAP_ERR_INTERNAL: return "internal error";
	}
	return "unknown status";
}

/* ------------------------------------------------------- global init */

static int global_users;

VMSNAP_API vmsnap_status vmsnap_global_init(unsigned flags)
{
	(void)flags;
	/* libcurl's own global init runs when HTTP is first used (curlsym.c) */
	global_users++;
	return VMSNAP_OK;
}

VMSNAP_API void vmsnap_global_cleanup(void)
{
	if (global_users > 0 && --global_users == 0)
		Vmsnap_curl_unload();
}

/* ------------------------------------------------------------ config */

static void config_defaults(vmsnap_config *c)
{
	memset(c, 0, sizeof *c);
	c->log_level = VMSNAP_LOG_INFO;
	c->sandbox = VMSNAP_SANDBOX_ON;
	c->cancel_grace = 5.0;
}

VMSNAP_API vmsnap_config *vmsnap_config_new(void)
{
	vmsnap_config *c = (vmsnap_config *)malloc(sizeof *c);
	if (c)
		config_defaults(c);
	return c;
}

VMSNAP_API void vmsnap_config_free(vmsnap_config *c)
{
	if (!c)
		return;
	free(c->lua_path);
	free(c->plugin_path);
	free(c);
}

#define CHECK_CFG(c) \
	do { \
		if (!(c)) \
			return VMSNAP_ERR_MISUSE; \
	} while (0)

VMSNAP_API vmsnap_status vmsnap_config_set_allocator(vmsnap_config *c, vmsnap_alloc_fn fn,
                                                     void *ud)
{
	CHECK_CFG(c);
	c->alloc = fn;
	c->alloc_ud = ud;
	return VMSNAP_OK;
}

VMSNAP_API vmsnap_status vmsnap_config_set_memory_limit(vmsnap_config *c, size_t bytes)
{
	CHECK_CFG(c);
	c->memory_limit = bytes;
	return VMSNAP_OK;
}

VMSNAP_API vmsnap_status vmsnap_config_set_log(vmsnap_config *c, vmsnap_log_fn fn, void *ud,
                                               int min_level)
{
	CHECK_CFG(c);
	c->log = fn;
	c->log_ud = ud;
	c->log_level = min_level;
	return VMSNAP_OK;
}

VMSNAP_API vmsnap_status vmsnap_config_set_log_json(vmsnap_config *c, int on)
{
	CHECK_CFG(c);
	c->log_json = on != 0;
	return VMSNAP_OK;
}

VMSNAP_API vmsnap_status vmsnap_config_set_deadline(vmsnap_config *c, double seconds)
{
	CHECK_CFG(c);
	if (seconds < 0)
		return VMSNAP_ERR_MISUSE;
	c->deadline = seconds;
	return VMSNAP_OK;
}

static int set_str(char **slot, const char *v)
{
	char *d = NULL;
	if (v && !(d = strdup(v)))
		return -1;
	free(*slot);
	*slot = d;
	return 0;
}

VMSNAP_API vmsnap_status vmsnap_config_set_search_path(vmsnap_config *c, const char *lua_path,
                                                       const char *plugin_path)
{
	CHECK_CFG(c);
	if (set_str(&c->lua_path, lua_path) || set_str(&c->plugin_path, plugin_path))
		return VMSNAP_ERR_NOMEM;
	return VMSNAP_OK;
}

VMSNAP_API vmsnap_status vmsnap_config_set_sandbox(vmsnap_config *c, unsigned flags)
{
	CHECK_CFG(c);
	c->sandbox = flags;
	return VMSNAP_OK;
}

VMSNAP_API vmsnap_status vmsnap_config_set_embedded_only(vmsnap_config *c, int on)
{
	CHECK_CFG(c);
	c->embedded_only = on != 0;
	return VMSNAP_OK;
}

VMSNAP_API vmsnap_status vmsnap_config_set_cancel_grace(vmsnap_config *c, double seconds)
{
	CHECK_CFG(c);
	if (seconds < 0)
		return VMSNAP_ERR_MISUSE;
	c->cancel_grace = seconds;
	return VMSNAP_OK;
}

/* ----------------------------------------------------- the Lua module */

static int rt_memory(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	lua_createtable(L, 0, 3);
	lua_pushinteger(L, (lua_Integer)rt->mem_used);
	lua_setfield(L, -2, "used");
	lua_pushinteger(L, (lua_Integer)rt->mem_peak);
	lua_setfield(L, -2, "peak");
	lua_pushinteger(L, (lua_Integer)rt->cfg.memory_limit);
	lua_setfield(L, -2, "limit");
	return 1;
}

/* trim(): a full garbage collection, then the C heap's free memory given
** back to the system (glibc keeps what it has; after a large answer the
** process would stay at its peak) */
static int rt_trim(lua_State *L)
{
	lua_gc(L, LUA_GCCOLLECT);
#ifdef __GLIBC__
	malloc_trim(0);
#endif
	return 0;
}

/* fail_after(n): from the nth allocation on, allocations fail (0 turns it off) */
static int rt_fail_after(lua_State *L)
{
	Vmsnap_rt(L)->fail_after = (long)luaL_checkinteger(L, 1);
	return 0;
}

static int rt_versions(lua_State *L)
{
	const vmsnap_build_info *b = vmsnap_get_build_info();
	lua_createtable(L, 0, 7);
	lua_pushstring(L, b->version);
	lua_setfield(L, -2, "vmsnap");
	lua_pushstring(L, b->lua);
	lua_setfield(L, -2, "lua");
	lua_pushstring(L, b->libuv);
	lua_setfield(L, -2, "libuv");
	lua_pushstring(L, b->libcurl);
	lua_setfield(L, -2, "libcurl");
	lua_pushstring(L, b->libyaml);
	lua_setfield(L, -2, "libyaml");
	lua_pushstring(L, b->cjson);
	lua_setfield(L, -2, "cjson");
	lua_pushstring(L, b->options ? b->options : "");
	lua_setfield(L, -2, "build"); /* "sanitize Debug", ... */
	return 1;
}

static int rt_params(lua_State *L)
{
	luaL_getsubtable(L, LUA_REGISTRYINDEX, PARAMS_KEY);
	return 1;
}

static int rt_sandbox(lua_State *L)
{
	lua_pushinteger(L, Vmsnap_rt(L)->cfg.sandbox);
	return 1;
}

static int rt_registry_refs(lua_State *L)
{
	lua_pushinteger(L, Vmsnap_rt(L)->registry_refs);
	return 1;
}

static int rt_cancel_requested(lua_State *L)
{
	lua_pushboolean(L, Vmsnap_rt(L)->cancel_requested != 0);
	return 1;
}

/* The directory of the running program, with its final '/', in buf
** (empty when /proc/self/exe cannot be read). */
static const char *exe_dir(char *buf, size_t size)
{
	ssize_t n = readlink("/proc/self/exe", buf, size - 1);
	char *slash;
	if (n <= 0) {
		buf[0] = 0;
		return buf;
	}
	buf[n] = 0;
	slash = strrchr(buf, '/');
	if (slash)
		slash[1] = 0;
	else
		buf[0] = 0;
	return buf;
}

/* Where the built-in scripts (workflows, preconditions, hooks, CRDs) are:
** VMSNAP_SCRIPTS_DIR, else beside the program as installed (BIN/../share/
** vmsnap/scripts: an install moved to another prefix still finds them),
** else the configured install directory, else the source tree. */
static int rt_scripts_dirs(lua_State *L)
{
	const char *env = getenv("VMSNAP_SCRIPTS_DIR");
	char exe[4096];
	struct stat st;
	int n = 0;
	lua_newtable(L);
	if (env && *env) {
		lua_pushstring(L, env);
		lua_rawseti(L, -2, ++n);
	}
	if (*exe_dir(exe, sizeof exe)) {
		lua_pushfstring(L, "%s../share/vmsnap/scripts", exe);
		if (stat(lua_tostring(L, -1), &st) == 0 && S_ISDIR(st.st_mode))
			lua_rawseti(L, -2, ++n);
		else
			lua_pop(L, 1);
	}
#ifdef VMSNAP_SCRIPTS_INSTALL_DIR
	lua_pushstring(L, VMSNAP_SCRIPTS_INSTALL_DIR);
	lua_rawseti(L, -2, ++n);
#endif
#ifdef VMSNAP_SCRIPTS_SOURCE_DIR
	lua_pushstring(L, VMSNAP_SCRIPTS_SOURCE_DIR);
	lua_rawseti(L, -2, ++n);
#endif
	return 1;
}

/* Where vmsnap-launcher may be, first found wins: VMSNAP_LAUNCHER, next to
** the running program (a build tree, or an install with bindir = libexec),
** BIN/../libexec/vmsnap (an install, wherever its prefix), the configured
** libexec copy. */
static int rt_launcher_paths(lua_State *L)
{
	const char *env = getenv("VMSNAP_LAUNCHER");
	char exe[4096];
	int k = 0;
	lua_newtable(L);
	if (env && *env) {
		lua_pushstring(L, env);
		lua_rawseti(L, -2, ++k);
	}
	if (*exe_dir(exe, sizeof exe)) {
		lua_pushfstring(L, "%svmsnap-launcher", exe);
		lua_rawseti(L, -2, ++k);
		lua_pushfstring(L, "%s../libexec/vmsnap/vmsnap-launcher", exe); /* an install moved elsewhere */
		lua_rawseti(L, -2, ++k);
	}
#ifdef VMSNAP_LAUNCHER_INSTALL
	lua_pushstring(L, VMSNAP_LAUNCHER_INSTALL);
	lua_rawseti(L, -2, ++k);
#endif
	return 1;
}

/* wall-clock seconds since the epoch, with the fraction (CLOCK_REALTIME) */
static int rt_wallclock(lua_State *L)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
	return 1;
}

static int rt_deepcopy(lua_State *L)
{
	luaL_checkany(L, 1);
	Vmsnap_deep_copy(L, 1);
	return 1;
}

/* same(a, b): are the strings equal, in a time that depends only on their
** lengths (a secret compared with what a client sent) */
static int rt_same(lua_State *L)
{
	size_t na, nb, i;
	const unsigned char *a = (const unsigned char *)luaL_checklstring(L, 1, &na);
	const unsigned char *b = (const unsigned char *)luaL_checklstring(L, 2, &nb);
	unsigned char d = 0;
	if (na != nb) {
		lua_pushboolean(L, 0);
		return 1;
	}
	for (i = 0; i < na; i++)
		d |= (unsigned char)(a[i] ^ b[i]);
	lua_pushboolean(L, d == 0);
	return 1;
}

static int rt_deepequal(lua_State *L)
{
	luaL_checkany(L, 1);
	luaL_checkany(L, 2);
	lua_pushboolean(L, Vmsnap_deep_equal(L, 1, 2));
	return 1;
}

static const luaL_Reg rt_funcs[] = {{"memory", rt_memory},
                                    {"deepcopy", rt_deepcopy},
                                    {"deepequal", rt_deepequal},
                                    {"trim", rt_trim},
                                    {"same", rt_same},
                                    {"wallclock", rt_wallclock},
                                    {"scripts_dirs", rt_scripts_dirs},
                                    {"launcher_paths", rt_launcher_paths},
                                    {"fail_after", rt_fail_after},
                                    {"versions", rt_versions},
                                    {"params", rt_params},
                                    {"sandbox", rt_sandbox},
                                    {"registry_refs", rt_registry_refs},
                                    {"cancel_requested", rt_cancel_requested},
                                    {NULL, NULL}};

int luaopen_vmsnap_core_runtime(lua_State *L)
{
	luaL_newlib(L, rt_funcs);
	lua_pushinteger(L, VMSNAP_SANDBOX_ON);
	lua_setfield(L, -2, "SANDBOX_ON");
	lua_pushinteger(L, VMSNAP_SANDBOX_ALLOW_OS);
	lua_setfield(L, -2, "SANDBOX_ALLOW_OS");
	lua_pushinteger(L, VMSNAP_SANDBOX_ALLOW_REQUIRE);
	lua_setfield(L, -2, "SANDBOX_ALLOW_REQUIRE");
	return 1;
}

/* ---------------------------------------------------------- lifecycle */

static int init_p(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	luaL_openlibs(L);
	/* sandboxed tasks (hooks) get string patterns checked for cost */
	lua_getglobal(L, "string");
	Vmsnap_guard_patterns(L);
	lua_pop(L, 1);
	Vmsnap_errors_open(L);
	Vmsnap_sched_open(L);
	Vmsnap_loader_open(rt);
	luaL_getsubtable(L, LUA_REGISTRYINDEX, PARAMS_KEY);
	lua_pop(L, 1);
	return 0;
}

static int panic_handler(lua_State *L)
{
	const char *m = lua_tostring(L, -1);
	fprintf(stderr, "vmsnap: PANIC: unprotected error in call to Lua API (%s)\n",
	        m ? m : "?");
	return 0; /* abort() follows */
}

VMSNAP_API vmsnap_status vmsnap_open(const vmsnap_config *cfg, vmsnap_runtime **out)
{
	vmsnap_runtime *rt;
	if (!out)
		return VMSNAP_ERR_MISUSE;
	*out = NULL;
	rt = (vmsnap_runtime *)calloc(1, sizeof *rt);
	if (!rt)
		return VMSNAP_ERR_NOMEM;
	*out = rt;
	if (cfg) {
		rt->cfg = *cfg;
		rt->cfg.lua_path = cfg->lua_path ? strdup(cfg->lua_path) : NULL;
		rt->cfg.plugin_path = cfg->plugin_path ? strdup(cfg->plugin_path) : NULL;
	} else {
		config_defaults(&rt->cfg);
	}
	if (vmsnap_global_init(0) != VMSNAP_OK) {
		Vmsnap_set_error(rt, "INTERNAL", "libcurl global init failed");
		return VMSNAP_ERR_INTERNAL;
	}
	rt->global_held = 1;
	if (uv_loop_init(&rt->loop) != 0) {
		Vmsnap_set_error(rt, "INTERNAL", "cannot create the event loop");
		return VMSNAP_ERR_INTERNAL;
	}
	rt->loop_open = 1;
	rt->loop.data = rt;
	Vmsnap_sched_init(rt);
	rt->L = lua_newstate(Vmsnap_alloc, rt);
	if (!rt->L) {
		Vmsnap_set_error(rt, "NOMEM", "cannot create the Lua state");
		return VMSNAP_ERR_NOMEM;
	}
	*(vmsnap_runtime **)lua_getextraspace(rt->L) = rt;
	lua_atpanic(rt->L, panic_handler);
	lua_pushcfunction(rt->L, init_p);
	if (lua_pcall(rt->L, 0, 0, 0) != LUA_OK) {
		Vmsnap_set_error_from(rt, rt->L, -1, "NOMEM");
		lua_pop(rt->L, 1);
		return VMSNAP_ERR_NOMEM;
	}
	return VMSNAP_OK;
}

static void close_walk(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

VMSNAP_API void vmsnap_close(vmsnap_runtime *rt)
{
	if (!rt)
		return;
	if (rt->L) {
		Vmsnap_sched_shutdown(rt);
		if (rt->registry_refs != 0)
			Vmsnap_log(rt, VMSNAP_LOG_DEBUG, "runtime", "%ld registry reference(s) still held",
			           rt->registry_refs);
		lua_close(rt->L);
		rt->L = NULL;
	}
	Vmsnap_sched_unbind(rt);
	if (rt->http_free)
		rt->http_free(rt);
	if (rt->loop_open) {
		uv_walk(&rt->loop, close_walk, NULL);
		uv_run(&rt->loop, UV_RUN_DEFAULT);
		uv_loop_close(&rt->loop);
		rt->loop_open = 0;
	}
	if (rt->global_held)
		vmsnap_global_cleanup();
	free(rt->cfg.lua_path);
	free(rt->cfg.plugin_path);
	free(rt->errmsg);
	free(rt);
}

/* ---------------------------------------------------------- extending */

VMSNAP_API vmsnap_status vmsnap_register_module(vmsnap_runtime *rt, const char *name,
                                                vmsnap_lua_cfunction openf)
{
	if (!rt || !rt->L || !name || !openf)
		return VMSNAP_ERR_MISUSE;
	lua_State *L = rt->L;
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
	lua_pushcfunction(L, (lua_CFunction)(void (*)(void))openf);
	lua_setfield(L, -2, name);
	lua_pop(L, 1);
	return VMSNAP_OK;
}

static int set_args_p(lua_State *L)
{
	int argc = (int)lua_tointeger(L, 1);
	char **argv = (char **)lua_touserdata(L, 2);
	int i;
	lua_createtable(L, argc > 0 ? argc - 1 : 0, 1);
	for (i = 0; i < argc; i++) {
		lua_pushstring(L, argv[i]);
		lua_rawseti(L, -2, i);
	}
	lua_setglobal(L, "arg");
	return 0;
}

VMSNAP_API vmsnap_status vmsnap_set_args(vmsnap_runtime *rt, int argc, char **argv)
{
	if (!rt || !rt->L || argc < 0 || (argc > 0 && !argv))
		return VMSNAP_ERR_MISUSE;
	lua_pushcfunction(rt->L, set_args_p);
	lua_pushinteger(rt->L, argc);
	lua_pushlightuserdata(rt->L, argv);
	if (lua_pcall(rt->L, 2, 0, 0) != LUA_OK) {
		lua_pop(rt->L, 1);
		return VMSNAP_ERR_NOMEM;
	}
	return VMSNAP_OK;
}

static int set_param_p(lua_State *L)
{
	lua_getglobal(L, "require");
	lua_pushliteral(L, "vmsnap.core.json");
	lua_call(L, 1, 1);
	lua_getfield(L, -1, "decode");
	lua_pushvalue(L, 2);
	lua_call(L, 1, 3);
	if (lua_isnil(L, -3) && !lua_isnil(L, -1))
		return luaL_error(L, "param %s: %s", lua_tostring(L, 1), lua_tostring(L, -2));
	lua_pop(L, 2);
	luaL_getsubtable(L, LUA_REGISTRYINDEX, PARAMS_KEY);
	lua_pushvalue(L, 1);
	lua_pushvalue(L, -3);
	lua_rawset(L, -3);
	return 0;
}

VMSNAP_API vmsnap_status vmsnap_set_param(vmsnap_runtime *rt, const char *key, const char *json)
{
	if (!rt || !rt->L || !key || !json)
		return VMSNAP_ERR_MISUSE;
	lua_pushcfunction(rt->L, set_param_p);
	lua_pushstring(rt->L, key);
	lua_pushstring(rt->L, json);
	if (lua_pcall(rt->L, 2, 0, 0) != LUA_OK) {
		Vmsnap_set_error_from(rt, rt->L, -1, "JSON_DECODE");
		lua_pop(rt->L, 1);
		return VMSNAP_ERR_MISUSE;
	}
	return VMSNAP_OK;
}

VMSNAP_API void *vmsnap_lua_state(vmsnap_runtime *rt)
{
	return rt ? rt->L : NULL;
}

/* ------------------------------------------------------------ running */

static vmsnap_status load_chunk(vmsnap_runtime *rt, const char *path, const char *buf,
                                size_t len, const char *chunkname)
{
	lua_State *L = rt->L;
	int st = buf ? luaL_loadbufferx(L, buf, len, chunkname, "t") : luaL_loadfilex(L, path, "t");
	if (st == LUA_OK)
		return VMSNAP_OK;
	Vmsnap_set_error(rt, st == LUA_ERRSYNTAX ? "SYNTAX" : (st == LUA_ERRMEM ? "NOMEM" : "IO"),
	                 "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "cannot load");
	lua_pop(L, 1);
	return st == LUA_ERRSYNTAX ? VMSNAP_ERR_SYNTAX
	                           : (st == LUA_ERRMEM ? VMSNAP_ERR_NOMEM : VMSNAP_ERR_IO);
}

/* The chunk (or function) is on the stack with nargs values above it. */
static vmsnap_status spawn_main(vmsnap_runtime *rt, int nargs)
{
	lua_State *L = rt->L;
	double deadline = rt->cfg.deadline > 0 ? Vmsnap_now() + rt->cfg.deadline : 0;
	Vmsnap_task *t;
	rt->cancel_seen = 0;
	free(rt->errmsg);
	rt->errmsg = NULL;
	rt->errcode[0] = 0;
	lua_pushnil(L);
	lua_setfield(L, LUA_REGISTRYINDEX, MAIN_KEY);
	rt->cancel_requested = 0;
	t = Vmsnap_sched_spawn(L, nargs, deadline);
	lua_setfield(L, LUA_REGISTRYINDEX, MAIN_KEY);
	rt->main_task = t;
	return VMSNAP_OK;
}

/* Push the arguments of the chunk: arg[1..n] */
static int push_script_args(lua_State *L)
{
	int n = 0, i;
	if (lua_getglobal(L, "arg") != LUA_TTABLE) {
		lua_pop(L, 1);
		return 0;
	}
	n = (int)luaL_len(L, -1);
	luaL_checkstack(L, n + 3, "too many arguments to script");
	for (i = 1; i <= n; i++)
		lua_rawgeti(L, -i, i);
	lua_remove(L, -i);
	return n;
}

static vmsnap_status outcome(vmsnap_runtime *rt)
{
	lua_State *L = rt->L;
	vmsnap_status st = VMSNAP_OK;
	Vmsnap_task *t = rt->main_task;
	if (!t)
		return VMSNAP_ERR_MISUSE;
	if (lua_getfield(L, LUA_REGISTRYINDEX, MAIN_KEY) != LUA_TUSERDATA) {
		lua_pop(L, 1);
		return VMSNAP_ERR_INTERNAL;
	}
	if (t->failed) {
		st = Vmsnap_status_for_code(t->fail_code);
		if (st == VMSNAP_ERR_RUNTIME && rt->errcode[0] &&
		    Vmsnap_status_for_code(rt->errcode) != VMSNAP_ERR_RUNTIME)
			st = Vmsnap_status_for_code(rt->errcode);
	} else {
		/* a chunk that returns nil, message declared failure */
		lua_getiuservalue(L, -1, 1);
		lua_getfield(L, -1, "n");
		lua_Integer n = lua_tointeger(L, -1);
		lua_rawgeti(L, -2, 1);
		lua_rawgeti(L, -3, 2);
		lua_rawgeti(L, -4, 3);
		if (n >= 2 && lua_isnil(L, -3) && lua_type(L, -2) == LUA_TSTRING) {
			Vmsnap_set_error(rt, lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "FAILED",
			                 "%s", lua_tostring(L, -2));
			st = VMSNAP_ERR_WORKFLOW;
		}
		lua_pop(L, 5);
	}
	lua_pop(L, 1);
	return st;
}

static vmsnap_status run_main(vmsnap_runtime *rt)
{
	Vmsnap_sched_run(rt);
	return outcome(rt);
}

static int start_p(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	int nargs = lua_toboolean(L, 2) ? push_script_args(L) : 0;
	lua_pushvalue(L, 1);
	lua_insert(L, -(nargs + 1));
	spawn_main(rt, nargs);
	return 0;
}

static vmsnap_status start(vmsnap_runtime *rt, const char *path, const char *buf, size_t len,
                           const char *chunkname)
{
	vmsnap_status st;
	if (!rt || !rt->L)
		return VMSNAP_ERR_MISUSE;
	if (rt->ntasks > 0 && rt->main_task && rt->main_task->state != TASK_DONE) {
		Vmsnap_set_error(rt, "MISUSE", "a run is already in progress");
		return VMSNAP_ERR_MISUSE;
	}
	st = load_chunk(rt, path, buf, len, chunkname);
	if (st != VMSNAP_OK)
		return st;
	lua_pushcfunction(rt->L, start_p);
	lua_insert(rt->L, -2);
	lua_pushboolean(rt->L, 1);
	if (lua_pcall(rt->L, 2, 0, 0) != LUA_OK) {
		Vmsnap_set_error_from(rt, rt->L, -1, "NOMEM");
		lua_pop(rt->L, 1);
		return VMSNAP_ERR_NOMEM;
	}
	if (rt->io_hooks_set && rt->io_hooks.set_timer)
		rt->io_hooks.set_timer(rt->io_ud, 0);
	return VMSNAP_OK;
}

VMSNAP_API vmsnap_status vmsnap_check_file(vmsnap_runtime *rt, const char *path)
{
	vmsnap_status st;
	if (!rt || !rt->L)
		return VMSNAP_ERR_MISUSE;
	st = load_chunk(rt, path, NULL, 0, NULL);
	if (st == VMSNAP_OK)
		lua_pop(rt->L, 1);
	return st;
}

VMSNAP_API vmsnap_status vmsnap_start_file(vmsnap_runtime *rt, const char *path)
{
	return start(rt, path, NULL, 0, NULL);
}

VMSNAP_API vmsnap_status vmsnap_start_buffer(vmsnap_runtime *rt, const char *buf, size_t len,
                                             const char *chunkname)
{
	if (!buf)
		return VMSNAP_ERR_MISUSE;
	return start(rt, NULL, buf, len, chunkname ? chunkname : "=buffer");
}

VMSNAP_API vmsnap_status vmsnap_run_file(vmsnap_runtime *rt, const char *path)
{
	vmsnap_status st = vmsnap_start_file(rt, path);
	return st == VMSNAP_OK ? run_main(rt) : st;
}

VMSNAP_API vmsnap_status vmsnap_run_buffer(vmsnap_runtime *rt, const char *buf, size_t len,
                                           const char *chunkname)
{
	vmsnap_status st = vmsnap_start_buffer(rt, buf, len, chunkname);
	return st == VMSNAP_OK ? run_main(rt) : st;
}

/* call a function of the internal module vmsnap._api as the main task;
** its first result is the JSON text of the results */
static int call_p(lua_State *L)
{
	vmsnap_runtime *rt = Vmsnap_rt(L);
	int nargs = lua_gettop(L) - 1;
	lua_getglobal(L, "require");
	lua_pushliteral(L, "vmsnap._api");
	lua_call(L, 1, 1);
	lua_getfield(L, -1, lua_tostring(L, 1));
	lua_remove(L, -2);
	lua_remove(L, 1);
	lua_insert(L, 1);
	spawn_main(rt, nargs);
	return 0;
}

static vmsnap_status api_call(vmsnap_runtime *rt, const char *fn, int nargs, char **result_json)
{
	lua_State *L = rt->L;
	vmsnap_status st;
	if (result_json)
		*result_json = NULL;
	lua_pushcfunction(L, call_p);
	lua_pushstring(L, fn);
	lua_rotate(L, -(nargs + 2), 2);
	if (lua_pcall(L, nargs + 1, 0, 0) != LUA_OK) {
		Vmsnap_set_error_from(rt, L, -1, "ERROR");
		lua_pop(L, 1);
		return VMSNAP_ERR_RUNTIME;
	}
	Vmsnap_sched_run(rt);
	st = outcome(rt);
	if (st == VMSNAP_OK || st == VMSNAP_ERR_WORKFLOW) {
		/* results: json text, [failure message, code] */
		lua_getfield(L, LUA_REGISTRYINDEX, MAIN_KEY);
		lua_getiuservalue(L, -1, 1);
		lua_rawgeti(L, -1, 1);
		lua_rawgeti(L, -2, 2);
		lua_rawgeti(L, -3, 3);
		if (lua_type(L, -2) == LUA_TSTRING) {
			Vmsnap_set_error(rt, lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "FAILED",
			                 "%s", lua_tostring(L, -2));
			st = VMSNAP_ERR_WORKFLOW;
		}
		if (result_json && lua_type(L, -3) == LUA_TSTRING) {
			*result_json = strdup(lua_tostring(L, -3));
			if (!*result_json)
				st = VMSNAP_ERR_NOMEM;
		}
		lua_pop(L, 5);
	}
	return st;
}

VMSNAP_API vmsnap_status vmsnap_call(vmsnap_runtime *rt, const char *name, const char *args_json,
                                     char **result_json)
{
	if (!rt || !rt->L || !name)
		return VMSNAP_ERR_MISUSE;
	lua_pushstring(rt->L, name);
	lua_pushstring(rt->L, args_json ? args_json : "[]");
	return api_call(rt, "call", 2, result_json);
}

VMSNAP_API vmsnap_status vmsnap_call_hook(vmsnap_runtime *rt, const char *script,
                                          const char *hook_point, const char *args_json,
                                          char **result_json)
{
	if (!rt || !rt->L || !script || !hook_point)
		return VMSNAP_ERR_MISUSE;
	lua_pushstring(rt->L, script);
	lua_pushstring(rt->L, hook_point);
	lua_pushstring(rt->L, args_json ? args_json : "{}");
	return api_call(rt, "call_hook", 3, result_json);
}

VMSNAP_API void vmsnap_free(void *p)
{
	free(p);
}

/* ---------------------------------------------------- host event loops */

static vmsnap_status after_step(vmsnap_runtime *rt, int pending)
{
	if (rt->io_hooks_set && rt->io_hooks.set_timer)
		rt->io_hooks.set_timer(rt->io_ud, pending ? (rt->ready_head ? 0 : uv_backend_timeout(&rt->loop)) : -1);
	if (pending)
		return VMSNAP_AGAIN;
	return rt->main_task ? outcome(rt) : VMSNAP_OK;
}

VMSNAP_API vmsnap_status vmsnap_step(vmsnap_runtime *rt, int timeout_ms)
{
	if (!rt || !rt->L)
		return VMSNAP_ERR_MISUSE;
	return after_step(rt, Vmsnap_sched_step(rt, timeout_ms));
}

VMSNAP_API int vmsnap_backend_fd(vmsnap_runtime *rt)
{
	return rt ? uv_backend_fd(&rt->loop) : -1;
}

VMSNAP_API int vmsnap_backend_timeout(vmsnap_runtime *rt)
{
	if (!rt)
		return -1;
	if (rt->ready_head || rt->cancel_requested)
		return 0;
	return uv_backend_timeout(&rt->loop);
}

VMSNAP_API vmsnap_status vmsnap_set_io_hooks(vmsnap_runtime *rt, const vmsnap_io_hooks *hooks,
                                             void *ud)
{
	if (!rt || !hooks || hooks->version != 1 || !hooks->watch_fd || !hooks->set_timer)
		return VMSNAP_ERR_MISUSE;
	rt->io_hooks = *hooks;
	rt->io_ud = ud;
	rt->io_hooks_set = 1;
	hooks->watch_fd(ud, uv_backend_fd(&rt->loop), VMSNAP_IO_READ);
	return VMSNAP_OK;
}

VMSNAP_API vmsnap_status vmsnap_io_ready(vmsnap_runtime *rt, int fd, int events)
{
	(void)fd;
	(void)events;
	return vmsnap_step(rt, 0);
}

VMSNAP_API vmsnap_status vmsnap_timer_expired(vmsnap_runtime *rt)
{
	return vmsnap_step(rt, 0);
}

VMSNAP_API void vmsnap_wakeup(vmsnap_runtime *rt)
{
	if (rt && rt->loop_open)
		uv_async_send(&rt->wakeup);
}

VMSNAP_API void vmsnap_cancel(vmsnap_runtime *rt)
{
	if (!rt)
		return;
	rt->cancel_requested = 1;
	Vmsnap_sched_interrupt(rt); /* a task busy computing checks at once */
	if (rt->loop_open)
		uv_async_send(&rt->wakeup);
}

VMSNAP_API const char *vmsnap_errmsg(vmsnap_runtime *rt)
{
	return rt && rt->errmsg ? rt->errmsg : "";
}

VMSNAP_API const char *vmsnap_errcode(vmsnap_runtime *rt)
{
	return rt && rt->errcode[0] ? rt->errcode : NULL;
}

/* ------------------------------------------------------- plugin ABI */

VMSNAP_API void vmsnap_plugin_check_abi(lua_State *L, int abi, int lua_version_num)
{
	if (abi != 1)
		luaL_error(L, "plugin built for vmsnap plugin ABI %d, this is ABI 1", abi);
	if (lua_version_num != LUA_VERSION_NUM)
		luaL_error(L, "plugin built for Lua %d, this is Lua %d", lua_version_num,
		           LUA_VERSION_NUM);
	luaL_checkversion(L);
}
