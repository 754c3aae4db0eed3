/*
** json.c -- `vmsnap.core.json`: JSON for Kubernetes objects.
**
** Decoding uses lua-cjson, then fixes up what cjson 2.1.0 cannot express:
** integral numbers become Lua integers (cjson yields floats), and empty
** arrays become empty tables with the shared array metatable
** (vmsnap.array_mt), so that `[]` and `{}` survive a round trip.  The text
** is scanned once for `[ ]`; only when one is present is it rewritten with
** a marker element that the fix-up pass removes.
**
** Encoding is our own: cjson 2.1.0 has no empty-array marker and emits
** keys in table order.  We emit object keys sorted (stable output), arrays
** for sequences and array_mt tables, `null` for vmsnap.null (cjson.null,
** a NULL light userdata), and the shortest float text that reads back the
** same.  Failures return nil, message, code (JSON_DECODE, JSON_ENCODE).
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/buf.h"
#include "../core/loader.h"
#include "../core/runtime.h"
#include "../core/values.h"

#include <lua-cjson.h>

#define ARRAY_MT VMSNAP_ARRAY_MT
#define EMPTY_MARK "\x01vmsnap:empty-array\x01"
#define EMPTY_MARK_JSON "\"\\u0001vmsnap:empty-array\\u0001\""
#define MAX_DEPTH 200

/* ---------------------------------------------------------------- decode */

/* Does the text contain `[` ws* `]` outside strings? */
static int has_empty_array(const char *s, size_t n)
{
	size_t i;
	int instr = 0;
	for (i = 0; i < n; i++) {
		char c = s[i];
		if (instr) {
			if (c == '\\')
				i++;
			else if (c == '"')
				instr = 0;
		} else if (c == '"') {
			instr = 1;
		} else if (c == '[') {
			size_t j = i + 1;
			while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r'))
				j++;
			if (j < n && s[j] == ']')
				return 1;
		}
	}
	return 0;
}

/* Push a copy of the text with every empty array holding the marker. */
static void push_marked(lua_State *L, const char *s, size_t n)
{
	Vmsnap_buf *b = Vmsnap_buf_new(L);
	size_t i;
	int instr = 0;
	for (i = 0; i < n; i++) {
		char c = s[i];
		Vmsnap_buf_addc(b, c);
		if (instr) {
			if (c == '\\' && i + 1 < n)
				Vmsnap_buf_addc(b, s[++i]);
			else if (c == '"')
				instr = 0;
		} else if (c == '"') {
			instr = 1;
		} else if (c == '[') {
			size_t j = i + 1;
			while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r'))
				j++;
			if (j < n && s[j] == ']')
				Vmsnap_buf_adds(b, EMPTY_MARK_JSON);
		}
	}
	lua_pushlstring(L, b->p, b->n);
	Vmsnap_buf_free(b);
	lua_remove(L, -2);
}

/* Fix up the decoded value at the top of the stack (see the header).
** Returns -1 when a number is out of a double's range (1e999). */
static int fixup(lua_State *L, int depth)
{
	int t = lua_gettop(L);
	if (depth > MAX_DEPTH)
		return 0;
	if (lua_type(L, t) != LUA_TTABLE)
		return 0;
	luaL_checkstack(L, 4, "json: nesting too deep"); /* two slots a level, and the next */
	if (lua_rawlen(L, t) == 1) {
		lua_rawgeti(L, t, 1);
		if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), EMPTY_MARK) == 0) {
			lua_pop(L, 1);
			lua_pushnil(L);
			lua_rawseti(L, t, 1);
			luaL_setmetatable(L, ARRAY_MT);
			return 0;
		}
		lua_pop(L, 1);
	}
	lua_pushnil(L);
	while (lua_next(L, t)) {
		int vt = lua_type(L, -1);
		if (vt == LUA_TNUMBER && !lua_isinteger(L, -1)) {
			lua_Number d = lua_tonumber(L, -1);
			if (!isfinite(d)) {
				lua_settop(L, t);
				return -1;
			}
			if (d == floor(d) && fabs(d) < 9223372036854775808.0) {
				lua_pushvalue(L, -2);
				lua_pushinteger(L, (lua_Integer)d);
				lua_rawset(L, t);
			}
		} else if (vt == LUA_TTABLE) {
			if (fixup(L, depth + 1)) {
				lua_settop(L, t);
				return -1;
			}
		}
		lua_pop(L, 1);
	}
	return 0;
}

/* cjson reports "... at character N"; turn N into line and column */
static void push_decode_error(lua_State *L, const char *text, size_t n, const char *msg)
{
	const char *at = strstr(msg, "at character ");
	if (at) {
		long pos = strtol(at + 13, NULL, 10);
		long line = 1, col = 1, i;
		for (i = 0; i < pos - 1 && (size_t)i < n; i++) {
			if (text[i] == '\n') {
				line++;
				col = 1;
			} else {
				col++;
			}
		}
		lua_pushfstring(L, "json: %s (line %d column %d)", msg, (int)line, (int)col);
	} else {
		lua_pushfstring(L, "json: %s", msg);
	}
}

/* json.decode(text) -> value | nil, message, "JSON_DECODE" */
static int json_decode(lua_State *L)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	lua_settop(L, 1);
	if (!Vmsnap_utf8_valid(s, n)) {
		/* as Kubernetes (Go's encoding/json) does: every ill-formed
		** sequence becomes U+FFFD; outside a string it is a syntax
		** error either way */
		Vmsnap_utf8_push_fixed(L, s, n);
		lua_replace(L, 1);
		s = lua_tolstring(L, 1, &n);
	}
	lua_pushvalue(L, lua_upvalueindex(1)); /* cjson.decode */
	if (has_empty_array(s, n)) {
		push_marked(L, s, n);
	} else {
		lua_pushvalue(L, 1);
	}
	/* lua-cjson leaks its buffers when a Lua allocation fails in the
	** middle of a decode, so the decode runs exempt from the memory
	** limit and the limit is checked right after */
	vmsnap_runtime *rt = Vmsnap_rt(L);
	rt->alloc_exempt++;
	int st = lua_pcall(L, 1, 1, 0);
	rt->alloc_exempt--;
	if (rt->cfg.memory_limit && rt->mem_used > rt->cfg.memory_limit) {
		lua_settop(L, 1); /* drop the value; the collector reclaims it */
		return Vmsnap_pushfail(L, "NOMEM", "json: the decoded value exceeds the memory limit");
	}
	if (st != LUA_OK) {
		const char *msg = lua_tostring(L, -1);
		if (!msg)
			msg = "decode error";
		lua_pushnil(L);
		push_decode_error(L, s, n, msg);
		lua_pushliteral(L, "JSON_DECODE");
		return 3;
	}
	if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
		lua_Number d = lua_tonumber(L, -1);
		if (!isfinite(d))
			return Vmsnap_pushfail(L, "JSON_DECODE", "json: a number is out of range");
		if (d == floor(d) && fabs(d) < 9223372036854775808.0) {
			lua_pop(L, 1);
			lua_pushinteger(L, (lua_Integer)d);
		}
	}
	if (fixup(L, 0))
		return Vmsnap_pushfail(L, "JSON_DECODE", "json: a number is out of range");
	return 1;
}

/* ---------------------------------------------------------------- encode */

typedef struct Enc {
	lua_State *L;
	Vmsnap_buf *b;
	/* the keys of the objects being written, outermost first: a stack of
	** Vmsnap_key shared by every level (made at the first object) */
	Vmsnap_buf *keys;
	int keys_slot; /* its userdata's stack index */
	const char *indent; /* NULL: compact */
	char err[256];
} Enc;

static const char hexd[] = "0123456789abcdef";

static void enc_string(Enc *e, const char *s, size_t n)
{
	size_t i, start = 0, mark;
	Vmsnap_buf *b = e->b;
	int high = 0;
	mark = b->n;
	Vmsnap_buf_addc(b, '"');
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		const char *rep = NULL;
		char u[7];
		if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) {
			high |= c >= 0x80;
			continue;
		}
		switch (c) {
		case '"': rep = "\\\""; break;
		case '\\': rep = "\\\\"; break;
		case '\n': rep = "\\n"; break;
		case '\r': rep = "\\r"; break;
		case '\t': rep = "\\t"; break;
		case '\b': rep = "\\b"; break;
		case '\f': rep = "\\f"; break;
		default:
			u[0] = '\\';
			u[1] = 'u';
			u[2] = '0';
			u[3] = '0';
			u[4] = hexd[c >> 4];
			u[5] = hexd[c & 15];
			u[6] = 0;
			rep = u;
		}
		Vmsnap_buf_add(b, s + start, i - start);
		Vmsnap_buf_adds(b, rep);
		start = i + 1;
	}
	if (high && !Vmsnap_utf8_valid(s, n)) {
		/* JSON is UTF-8: written again with each ill-formed sequence as
		** U+FFFD (checked only for strings past ASCII, once written) */
		b->n = mark;
		Vmsnap_utf8_push_fixed(e->L, s, n);
		s = lua_tolstring(e->L, -1, &n);
		enc_string(e, s, n);
		lua_pop(e->L, 1);
		return;
	}
	Vmsnap_buf_add(b, s + start, n - start);
	Vmsnap_buf_addc(b, '"');
}

static int enc_number(Enc *e, int idx)
{
	char tmp[64];
	if (lua_isinteger(e->L, idx)) {
		snprintf(tmp, sizeof tmp, "%lld", (long long)lua_tointeger(e->L, idx));
	} else {
		double d = lua_tonumber(e->L, idx);
		if (isnan(d) || isinf(d)) {
			snprintf(e->err, sizeof e->err, "cannot encode %s", isnan(d) ? "NaN" : "infinity");
			return -1;
		}
		Vmsnap_fmt_double(tmp, sizeof tmp, d);
	}
	Vmsnap_buf_adds(e->b, tmp);
	return 0;
}

static void newline(Enc *e, int depth)
{
	int i;
	if (!e->indent)
		return;
	Vmsnap_buf_addc(e->b, '\n');
	for (i = 0; i < depth; i++)
		Vmsnap_buf_adds(e->b, e->indent);
}

static int enc_value(Enc *e, int idx, int depth);

/* An object whose keys are all strings (nearly every one): their texts
** sorted on e->keys above the levels outside this one, each value read by
** its key. 1 (nothing written) when a key is not a string: such a table
** goes through Vmsnap_sorted_keys, which writes numbers as text and
** refuses 1 and "1" together. The strings stay valid while popped: they
** are the keys of the table, which nothing changes meanwhile. */
static int enc_string_keyed(Enc *e, int idx, int depth)
{
	lua_State *L = e->L;
	const size_t K = sizeof(Vmsnap_key);
	size_t base, nk, j;
	if (!e->keys) {
		e->keys = Vmsnap_buf_new(L);
		lua_replace(L, e->keys_slot); /* anchored for the whole encoding */
	}
	base = e->keys->n / K;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		Vmsnap_key k;
		lua_pop(L, 1);
		if (lua_type(L, -1) != LUA_TSTRING) {
			lua_pop(L, 1);
			e->keys->n = base * K;
			return 1;
		}
		k.s = lua_tolstring(L, -1, &k.n);
		Vmsnap_buf_add(e->keys, (const char *)&k, K);
	}
	nk = e->keys->n / K - base;
	if (nk == 0) {
		Vmsnap_buf_adds(e->b, "{}");
		return 0;
	}
	qsort((Vmsnap_key *)(void *)e->keys->p + base, nk, K, Vmsnap_key_cmp);
	Vmsnap_buf_addc(e->b, '{');
	for (j = 0; j < nk; j++) {
		/* (read again each time: a level below may have moved the stack) */
		Vmsnap_key k = ((Vmsnap_key *)(void *)e->keys->p)[base + j];
		if (j > 0)
			Vmsnap_buf_addc(e->b, ',');
		newline(e, depth + 1);
		enc_string(e, k.s, k.n);
		Vmsnap_buf_adds(e->b, e->indent ? ": " : ":");
		lua_pushlstring(L, k.s, k.n);
		lua_rawget(L, idx);
		if (enc_value(e, lua_gettop(L), depth + 1))
			return -1;
		lua_pop(L, 1);
	}
	newline(e, depth);
	Vmsnap_buf_addc(e->b, '}');
	e->keys->n = base * K;
	return 0;
}

static int enc_table(Enc *e, int idx, int depth)
{
	lua_State *L = e->L;
	lua_Integer n, i;
	if (depth > MAX_DEPTH) {
		snprintf(e->err, sizeof e->err, "nesting deeper than %d (a cycle?)", MAX_DEPTH);
		return -1;
	}
	luaL_checkstack(L, 8, NULL);
	if (Vmsnap_is_array_mt(L, idx)) {
		n = (lua_Integer)lua_rawlen(L, idx);
		if (n == 0) {
			Vmsnap_buf_adds(e->b, "[]");
			return 0;
		}
	} else {
		n = Vmsnap_seq_len(L, idx);
	}
	if (n > 0) {
		Vmsnap_buf_addc(e->b, '[');
		for (i = 1; i <= n; i++) {
			if (i > 1)
				Vmsnap_buf_addc(e->b, ',');
			newline(e, depth + 1);
			lua_rawgeti(L, idx, i);
			if (enc_value(e, lua_gettop(L), depth + 1))
				return -1;
			lua_pop(L, 1);
		}
		newline(e, depth);
		Vmsnap_buf_addc(e->b, ']');
		return 0;
	}
	switch (enc_string_keyed(e, idx, depth)) {
	case 0: return 0;
	case -1: return -1;
	default: break; /* a key that is not a string: below */
	}
	/* object: keys as text, sorted */
	size_t nk, j;
	Vmsnap_key *ks = Vmsnap_sorted_keys(L, idx, 0, &nk, e->err, sizeof e->err);
	if (!ks)
		return -1;
	int keys = lua_gettop(L) - 1;
	if (nk == 0) {
		lua_pop(L, 2);
		Vmsnap_buf_adds(e->b, "{}");
		return 0;
	}
	Vmsnap_buf_addc(e->b, '{');
	for (j = 0; j < nk; j++) {
		if (j > 0)
			Vmsnap_buf_addc(e->b, ',');
		newline(e, depth + 1);
		enc_string(e, ks[j].s, ks[j].n);
		Vmsnap_buf_adds(e->b, e->indent ? ": " : ":");
		lua_pushlstring(L, ks[j].s, ks[j].n);
		lua_rawget(L, keys); /* original key */
		lua_rawget(L, idx);
		if (enc_value(e, lua_gettop(L), depth + 1))
			return -1;
		lua_pop(L, 1);
	}
	newline(e, depth);
	Vmsnap_buf_addc(e->b, '}');
	lua_pop(L, 2); /* the key array, keys */
	return 0;
}

static int enc_value(Enc *e, int idx, int depth)
{
	lua_State *L = e->L;
	size_t n;
	const char *s;
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		Vmsnap_buf_adds(e->b, "null");
		return 0;
	case LUA_TBOOLEAN:
		Vmsnap_buf_adds(e->b, lua_toboolean(L, idx) ? "true" : "false");
		return 0;
	case LUA_TNUMBER:
		return enc_number(e, idx);
	case LUA_TSTRING:
		s = lua_tolstring(L, idx, &n);
		enc_string(e, s, n);
		return 0;
	case LUA_TLIGHTUSERDATA:
		if (lua_touserdata(L, idx) == NULL) {
			Vmsnap_buf_adds(e->b, "null");
			return 0;
		}
		break;
	case LUA_TTABLE:
		return enc_table(e, idx, depth);
	default:
		break;
	}
	snprintf(e->err, sizeof e->err, "cannot encode a value of type %s", luaL_typename(L, idx));
	return -1;
}

/* json.encode(value [, {indent = "  " | n}]) -> text | nil, message, "JSON_ENCODE" */
static int json_encode(lua_State *L)
{
	Enc e;
	char ind[17];
	luaL_checkany(L, 1);
	e.L = L;
	e.indent = NULL;
	e.err[0] = 0;
	if (lua_istable(L, 2)) {
		lua_getfield(L, 2, "indent");
		if (lua_isinteger(L, -1)) {
			lua_Integer k = lua_tointeger(L, -1);
			luaL_argcheck(L, k >= 0 && k <= 16, 2, "indent must be 0..16");
			memset(ind, ' ', (size_t)k);
			ind[k] = 0;
			e.indent = ind;
		} else if (lua_isstring(L, -1)) {
			e.indent = lua_tostring(L, -1); /* anchored on the stack */
		} else if (!lua_isnil(L, -1)) {
			luaL_argerror(L, 2, "indent must be a string or a number");
		}
	} else if (!lua_isnoneornil(L, 2)) {
		luaL_typeerror(L, 2, "table");
	}
	e.b = Vmsnap_buf_new(L);
	int buf = lua_gettop(L);
	e.keys = NULL;
	lua_pushnil(L); /* the key stack's place, filled at the first object */
	e.keys_slot = lua_gettop(L);
	if (enc_value(&e, 1, 0)) {
		Vmsnap_buf_free(e.b);
		if (e.keys)
			Vmsnap_buf_free(e.keys);
		return Vmsnap_pushfail(L, "JSON_ENCODE", "json: %s", e.err);
	}
	lua_pushlstring(L, e.b->p, e.b->n);
	Vmsnap_buf_free(e.b);
	if (e.keys)
		Vmsnap_buf_free(e.keys);
	lua_remove(L, e.keys_slot);
	lua_remove(L, buf);
	return 1;
}

static int json_is_array(lua_State *L)
{
	lua_pushboolean(L, lua_istable(L, 1) && Vmsnap_is_array_mt(L, 1));
	return 1;
}

int luaopen_vmsnap_core_json(lua_State *L)
{
	luaL_newmetatable(L, ARRAY_MT); /* shared with yaml */
	lua_pop(L, 1);
	lua_newtable(L);
	luaopen_cjson(L);
	/* what decodes also encodes (and is fixed up): one depth limit for both */
	lua_getfield(L, -1, "decode_max_depth");
	lua_pushinteger(L, MAX_DEPTH);
	lua_call(L, 1, 0);
	/* JSON has no NaN, Infinity or hex numbers (cjson accepts them by
	** default; they would then fail to encode) */
	lua_getfield(L, -1, "decode_invalid_numbers");
	lua_pushboolean(L, 0);
	lua_call(L, 1, 0);
	lua_getfield(L, -1, "decode");
	lua_pushcclosure(L, json_decode, 1);
	lua_setfield(L, -3, "decode");
	lua_getfield(L, -1, "null");
	lua_setfield(L, -3, "null");
	lua_pop(L, 1);
	lua_pushcfunction(L, json_encode);
	lua_setfield(L, -2, "encode");
	lua_pushcfunction(L, json_is_array);
	lua_setfield(L, -2, "is_array");
	luaL_getmetatable(L, ARRAY_MT);
	lua_setfield(L, -2, "array_mt");
	return 1;
}
