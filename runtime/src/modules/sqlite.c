/*
** sqlite.c -- `vmsnap.core.sqlite`: a small, synchronous SQLite binding.
**
** SQLite calls are short and local, so they run on the loop thread without
** yielding (a busy timeout bounds lock waits).  Values map directly:
** INTEGER <-> integer, REAL <-> float, TEXT and BLOB <-> string, NULL <-> nil.
**
** Lua:
**   db = sqlite.open(path [, {readonly=, busy_timeout_ms=}])  -> db | nil, msg, code
**   db:exec(sql)                   run one or more statements, no rows
**   st = db:prepare(sql)           -> statement | nil, msg, code
**   st:first(...)                  bind, step once, reset -> the row's columns, or nothing
**   st:run(...)                    bind, step to the end, reset -> changes
**   st:all(...)                    bind, collect rows (arrays), reset -> {row, ...}
**   st:each(...)                   bind -> iterator over rows (arrays); resets at the end
**   db:changes(), db:last_rowid(), db:close()
**   sqlite.version()
** Failures return nil, message, code where code is SQLite's primary code
** name ("SQLITE_BUSY", "SQLITE_CONSTRAINT", ...).  A closed handle raises.
*/
#include <string.h>

#include <sqlite3.h>

#include "../core/loader.h"
#include "../core/runtime.h"

#define DB_MT "vmsnap.sqlite.Db"
#define ST_MT "vmsnap.sqlite.Stmt"

typedef struct Db {
	sqlite3 *db;
} Db;

typedef struct Stmt {
	sqlite3_stmt *st;
	int busy;  /* iterating */
} Stmt;

static const char *code_name(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_ERROR: return "SQLITE_ERROR";
	case SQLITE_PERM: return "SQLITE_PERM";
	case SQLITE_ABORT: return "SQLITE_ABORT";
	case SQLITE_BUSY: return "SQLITE_BUSY";
	case SQLITE_LOCKED: return "SQLITE_LOCKED";
	case SQLITE_NOMEM: return "SQLITE_NOMEM";
	case SQLITE_READONLY: return "SQLITE_READONLY";
	case SQLITE_IOERR: return "SQLITE_IOERR";
	case SQLITE_CORRUPT: return "SQLITE_CORRUPT";
	case SQLITE_FULL: return "SQLITE_FULL";
	case SQLITE_CANTOPEN: return "SQLITE_CANTOPEN";
	case SQLITE_CONSTRAINT: return "SQLITE_CONSTRAINT";
	case SQLITE_MISMATCH: return "SQLITE_MISMATCH";
	case SQLITE_TOOBIG: return "SQLITE_TOOBIG";
	case SQLITE_NOTADB: return "SQLITE_NOTADB";
	default: return "SQLITE_ERROR";
	}
}

static int fail(lua_State *L, sqlite3 *db, int rc)
{
	return Vmsnap_pushfail(L, code_name(rc), "sqlite: %s",
	                       db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
}

static Db *check_db(lua_State *L)
{
	Db *d = (Db *)luaL_checkudata(L, 1, DB_MT);
	if (!d->db)
		luaL_error(L, "sqlite database is closed");
	return d;
}

static int l_open(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
	int busy = 5000, rc;
	if (!lua_isnoneornil(L, 2)) {
		luaL_checktype(L, 2, LUA_TTABLE);
		if (lua_getfield(L, 2, "readonly") != LUA_TNIL && lua_toboolean(L, -1))
			flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX;
		if (lua_getfield(L, 2, "busy_timeout_ms") != LUA_TNIL)
			busy = (int)luaL_checkinteger(L, -1);
		lua_pop(L, 2);
	}
	Db *d = (Db *)lua_newuserdatauv(L, sizeof *d, 0);
	d->db = NULL;
	luaL_setmetatable(L, DB_MT);
	rc = sqlite3_open_v2(path, &d->db, flags, NULL);
	if (rc != SQLITE_OK) {
		int n = fail(L, d->db, rc);
		sqlite3_close(d->db);
		d->db = NULL;
		return n;
	}
	sqlite3_extended_result_codes(d->db, 1);
	sqlite3_busy_timeout(d->db, busy);
	return 1;
}

static int db_exec(lua_State *L)
{
	Db *d = check_db(L);
	const char *sql = luaL_checkstring(L, 2);
	int rc = sqlite3_exec(d->db, sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return fail(L, d->db, rc);
	lua_pushboolean(L, 1);
	return 1;
}

static int db_prepare(lua_State *L)
{
	Db *d = check_db(L);
	size_t len;
	const char *sql = luaL_checklstring(L, 2, &len);
	/* the user value keeps the Db alive while the statement lives */
	Stmt *s = (Stmt *)lua_newuserdatauv(L, sizeof *s, 1);
	s->st = NULL;
	s->busy = 0;
	luaL_setmetatable(L, ST_MT);
	int rc = sqlite3_prepare_v3(d->db, sql, (int)len + 1, SQLITE_PREPARE_PERSISTENT, &s->st, NULL);
	if (rc != SQLITE_OK)
		return fail(L, d->db, rc);
	if (!s->st)
		return luaL_error(L, "sqlite: empty statement");
	lua_pushvalue(L, 1);
	lua_setiuservalue(L, -2, 1);
	return 1;
}

static int db_changes(lua_State *L)
{
	lua_pushinteger(L, sqlite3_changes(check_db(L)->db));
	return 1;
}

static int db_last_rowid(lua_State *L)
{
	lua_pushinteger(L, (lua_Integer)sqlite3_last_insert_rowid(check_db(L)->db));
	return 1;
}

static int db_close(lua_State *L)
{
	Db *d = (Db *)luaL_checkudata(L, 1, DB_MT);
	if (d->db) {
		/* statements still open keep the connection as a zombie until
		** they are finalized (sqlite3_close_v2) */
		sqlite3_close_v2(d->db);
		d->db = NULL;
	}
	return 0;
}

static int db_tostring(lua_State *L)
{
	Db *d = (Db *)luaL_checkudata(L, 1, DB_MT);
	lua_pushfstring(L, "sqlite database (%s)", d->db ? sqlite3_db_filename(d->db, "main") : "closed");
	return 1;
}

/* ------------------------------------------------------------ statements */

static Stmt *check_st(lua_State *L)
{
	Stmt *s = (Stmt *)luaL_checkudata(L, 1, ST_MT);
	if (!s->st)
		luaL_error(L, "sqlite statement is finalized");
	return s;
}

/* Bind arguments 2..top; raises on a value that cannot be stored. */
static void bind_args(lua_State *L, Stmt *s)
{
	int n = lua_gettop(L) - 1, i, rc = SQLITE_OK;
	if (s->busy)
		luaL_error(L, "sqlite statement is busy (an each() loop is still running)");
	sqlite3_reset(s->st);
	sqlite3_clear_bindings(s->st);
	if (n > sqlite3_bind_parameter_count(s->st))
		luaL_error(L, "sqlite: %d values for %d parameters", n, sqlite3_bind_parameter_count(s->st));
	for (i = 1; i <= n; i++) {
		int idx = i + 1;
		switch (lua_type(L, idx)) {
		case LUA_TNIL: rc = sqlite3_bind_null(s->st, i); break;
		case LUA_TBOOLEAN: rc = sqlite3_bind_int(s->st, i, lua_toboolean(L, idx)); break;
		case LUA_TNUMBER:
			if (lua_isinteger(L, idx))
				rc = sqlite3_bind_int64(s->st, i, (sqlite3_int64)lua_tointeger(L, idx));
			else
				rc = sqlite3_bind_double(s->st, i, lua_tonumber(L, idx));
			break;
		case LUA_TSTRING: {
			size_t len;
			const char *p = lua_tolstring(L, idx, &len);
			rc = sqlite3_bind_text64(s->st, i, p, len, SQLITE_TRANSIENT, SQLITE_UTF8);
			break;
		}
		default:
			luaL_argerror(L, idx, lua_pushfstring(L, "cannot bind a %s", luaL_typename(L, idx)));
		}
		if (rc != SQLITE_OK)
			luaL_error(L, "sqlite: bind %d: %s", i, sqlite3_errstr(rc));
	}
}

static void push_col(lua_State *L, sqlite3_stmt *st, int i)
{
	switch (sqlite3_column_type(st, i)) {
	case SQLITE_INTEGER: lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, i)); break;
	case SQLITE_FLOAT: lua_pushnumber(L, sqlite3_column_double(st, i)); break;
	case SQLITE_NULL: lua_pushnil(L); break;
	default: {
		const void *p = sqlite3_column_blob(st, i);
		lua_pushlstring(L, (const char *)p, (size_t)sqlite3_column_bytes(st, i));
	}
	}
}

static int step_fail(lua_State *L, Stmt *s, int rc)
{
	sqlite3 *db = sqlite3_db_handle(s->st);
	int n = fail(L, db, rc);
	sqlite3_reset(s->st);
	return n;
}

static int st_first(lua_State *L)
{
	Stmt *s = check_st(L);
	int rc, i, n;
	bind_args(L, s);
	rc = sqlite3_step(s->st);
	if (rc == SQLITE_DONE) {
		sqlite3_reset(s->st);
		return 0;
	}
	if (rc != SQLITE_ROW)
		return step_fail(L, s, rc);
	n = sqlite3_column_count(s->st);
	luaL_checkstack(L, n, "too many columns");
	for (i = 0; i < n; i++)
		push_col(L, s->st, i);
	sqlite3_reset(s->st);
	return n;
}

static int st_run(lua_State *L)
{
	Stmt *s = check_st(L);
	int rc;
	bind_args(L, s);
	while ((rc = sqlite3_step(s->st)) == SQLITE_ROW)
		;
	if (rc != SQLITE_DONE)
		return step_fail(L, s, rc);
	sqlite3_reset(s->st);
	lua_pushinteger(L, sqlite3_changes(sqlite3_db_handle(s->st)));
	return 1;
}

static void push_row(lua_State *L, sqlite3_stmt *st)
{
	int n = sqlite3_column_count(st), i;
	lua_createtable(L, n, 0);
	for (i = 0; i < n; i++) {
		push_col(L, st, i);
		lua_rawseti(L, -2, i + 1);
	}
}

static int st_all(lua_State *L)
{
	Stmt *s = check_st(L);
	int rc;
	lua_Integer k = 0;
	bind_args(L, s);
	lua_newtable(L);
	while ((rc = sqlite3_step(s->st)) == SQLITE_ROW) {
		push_row(L, s->st);
		lua_rawseti(L, -2, ++k);
	}
	if (rc != SQLITE_DONE)
		return step_fail(L, s, rc);
	sqlite3_reset(s->st);
	return 1;
}

static int each_next(lua_State *L)
{
	Stmt *s = (Stmt *)luaL_checkudata(L, 1, ST_MT);
	int rc;
	if (!s->st || !s->busy)
		return 0;
	rc = sqlite3_step(s->st);
	if (rc == SQLITE_ROW) {
		push_row(L, s->st);
		return 1;
	}
	s->busy = 0;
	sqlite3_reset(s->st);
	if (rc != SQLITE_DONE)
		return luaL_error(L, "sqlite: %s", sqlite3_errmsg(sqlite3_db_handle(s->st)));
	return 0;
}

static int st_each(lua_State *L)
{
	Stmt *s = check_st(L);
	bind_args(L, s);
	s->busy = 1;
	lua_pushcfunction(L, each_next);
	lua_pushvalue(L, 1);
	return 2;
}

static int st_finalize(lua_State *L)
{
	Stmt *s = (Stmt *)luaL_checkudata(L, 1, ST_MT);
	if (s->st) {
		sqlite3_finalize(s->st);
		s->st = NULL;
	}
	return 0;
}

static int l_version(lua_State *L)
{
	lua_pushstring(L, sqlite3_libversion());
	return 1;
}

static const luaL_Reg db_meth[] = {{"exec", db_exec},       {"prepare", db_prepare},
                                   {"changes", db_changes}, {"last_rowid", db_last_rowid},
                                   {"close", db_close},     {NULL, NULL}};
static const luaL_Reg st_meth[] = {{"first", st_first}, {"run", st_run},
                                   {"all", st_all},     {"each", st_each},
                                   {"finalize", st_finalize}, {NULL, NULL}};

int luaopen_vmsnap_core_sqlite(lua_State *L)
{
	static const luaL_Reg funcs[] = {{"open", l_open}, {"version", l_version}, {NULL, NULL}};
	if (luaL_newmetatable(L, DB_MT)) {
		lua_pushcfunction(L, db_close);
		lua_setfield(L, -2, "__gc");
		lua_pushcfunction(L, db_close);
		lua_setfield(L, -2, "__close");
		lua_pushcfunction(L, db_tostring);
		lua_setfield(L, -2, "__tostring");
		luaL_newlib(L, db_meth);
		lua_setfield(L, -2, "__index");
	}
	if (luaL_newmetatable(L, ST_MT)) {
		lua_pushcfunction(L, st_finalize);
		lua_setfield(L, -2, "__gc");
		luaL_newlib(L, st_meth);
		lua_setfield(L, -2, "__index");
	}
	lua_pop(L, 2);
	luaL_newlib(L, funcs);
	return 1;
}
