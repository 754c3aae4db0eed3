/*
** json.c -- `vmsnap.core.json`: JSON for Kubernetes objects.
**
** Decoding is our own, as strict as RFC 8259 (and Go's encoding/json):
** an integer's text becomes a Lua integer, exactly, while it fits in 64
** bits, and so does an integral value written otherwise (1.0, 1e3); other
** numbers are floats; `[]` becomes an empty table with the shared array
** metatable (vmsnap.array_mt), so that `[]` and `{}` survive a round trip;
** `null` is vmsnap.null (a NULL light userdata, as cjson's); half a
** surrogate pair in a \u escape is U+FFFD, as Go reads it.  It runs under
** the memory limits (a value too large for them is NOMEM).
**
** Encoding is our own too: cjson 2.1.0 has no empty-array marker and emits
** keys in table order.  We emit object keys sorted (stable output), arrays
** for sequences and array_mt tables, `null` for vmsnap.null (cjson.null,
** a NULL light userdata), and the shortest float text that reads back the
** same.  Failures return nil, message, code (JSON_DECODE, JSON_ENCODE).
*/
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/buf.h"
#include "../core/loader.h"
#include "../core/runtime.h"
#include "../core/values.h"

#include <lauxlib.h>

#define ARRAY_MT VMSNAP_ARRAY_MT
#define MAX_DEPTH 200

/* ---------------------------------------------------------------- decode */

typedef struct Dec {
	lua_State *L;
	const char *s, *p, *end;
	Vmsnap_buf *tmp; /* a string with escapes, unescaped (made at the first) */
	int tmp_slot;
	char err[200];
	size_t at; /* where the error is: a byte offset */
} Dec;

/* what stands at p, for a message: "'x'", "byte 0xNN" or "the end" */
static void found(const Dec *d, const char *p, char *out, size_t n)
{
	unsigned char c;
	if (p >= d->end) {
		snprintf(out, n, "the end");
		return;
	}
	c = (unsigned char)*p;
	if (c > 0x20 && c < 0x7f)
		snprintf(out, n, "'%c'", c);
	else
		snprintf(out, n, "byte 0x%02x", c);
}

static int dec_fail(Dec *d, const char *p, const char *expected)
{
	char f[24];
	found(d, p, f, sizeof f);
	snprintf(d->err, sizeof d->err, "expected %s but found %s", expected, f);
	d->at = (size_t)(p - d->s);
	return -1;
}

static void skip_ws(Dec *d)
{
	const char *p = d->p;
	while (p < d->end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
		p++;
	d->p = p;
}

/* after white space, c? (taken when it is) */
static int eat(Dec *d, char c)
{
	skip_ws(d);
	if (d->p < d->end && *d->p == c) {
		d->p++;
		return 1;
	}
	return 0;
}

static int hex4(const char *p, const char *end, unsigned *out)
{
	unsigned v = 0;
	int i;
	if (end - p < 4)
		return -1;
	for (i = 0; i < 4; i++) {
		char c = p[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

static void add_utf8(Vmsnap_buf *b, unsigned cp)
{
	char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xC0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3F));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xE0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[2] = (char)(0x80 | (cp & 0x3F));
		n = 3;
	} else {
		u[0] = (char)(0xF0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[3] = (char)(0x80 | (cp & 0x3F));
		n = 4;
	}
	Vmsnap_buf_add(b, u, n);
}

/* the string at d->p (its opening quote), pushed */
static int dec_string(Dec *d)
{
	const char *p = d->p + 1, *start = p, *end = d->end;
	/* nearly every string has no escape: pushed as it stands */
	while (p < end && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20)
		p++;
	if (p < end && *p == '"') {
		lua_pushlstring(d->L, start, (size_t)(p - start));
		d->p = p + 1;
		return 0;
	}
	if (!d->tmp) {
		d->tmp = Vmsnap_buf_new(d->L);
		lua_replace(d->L, d->tmp_slot);
	}
	Vmsnap_buf *b = d->tmp;
	b->n = 0;
	Vmsnap_buf_add(b, start, (size_t)(p - start));
	for (;;) {
		if (p >= end)
			return dec_fail(d, p, "'\"' (the string's end)");
		unsigned char c = (unsigned char)*p;
		if (c == '"')
			break;
		if (c < 0x20)
			return dec_fail(d, p, "a character of the string (control characters are escaped in JSON)");
		if (c != '\\') {
			const char *q = p;
			while (q < end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
				q++;
			Vmsnap_buf_add(b, p, (size_t)(q - p));
			p = q;
			continue;
		}
		if (p + 1 >= end)
			return dec_fail(d, p + 1, "an escape");
		switch (p[1]) {
		case '"': Vmsnap_buf_addc(b, '"'); break;
		case '\\': Vmsnap_buf_addc(b, '\\'); break;
		case '/': Vmsnap_buf_addc(b, '/'); break;
		case 'b': Vmsnap_buf_addc(b, '\b'); break;
		case 'f': Vmsnap_buf_addc(b, '\f'); break;
		case 'n': Vmsnap_buf_addc(b, '\n'); break;
		case 'r': Vmsnap_buf_addc(b, '\r'); break;
		case 't': Vmsnap_buf_addc(b, '\t'); break;
		case 'u': {
			unsigned cp, lo;
			if (hex4(p + 2, end, &cp))
				return dec_fail(d, p, "four hex digits after \\u");
			p += 6;
			if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 6 && p[0] == '\\' && p[1] == 'u' &&
			    !hex4(p + 2, end, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
				cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
				p += 6;
			} else if (cp >= 0xD800 && cp <= 0xDFFF) {
				cp = 0xFFFD; /* half a surrogate pair: as Go reads it */
			}
			add_utf8(b, cp);
			continue;
		}
		default:
			return dec_fail(d, p + 1, "an escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)");
		}
		p += 2;
	}
	lua_pushlstring(d->L, b->p, b->n);
	d->p = p + 1;
	return 0;
}

/* the number at d->p, pushed: an integer when its text is one that fits,
** or when its value is integral and fits (1.0, 1e3), else a float */
static int dec_number(Dec *d)
{
	const char *p = d->p, *start = p, *end = d->end;
	int neg = 0, plain = 1;
	if (p < end && *p == '-') {
		neg = 1;
		p++;
	}
	if (p >= end || *p < '0' || *p > '9')
		return dec_fail(d, start, "a number");
	if (*p == '0') {
		p++;
		if (p < end && *p >= '0' && *p <= '9')
			return dec_fail(d, start, "a number (no leading zeros)");
	} else {
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	}
	const char *int_end = p;
	if (p < end && *p == '.') {
		plain = 0;
		p++;
		if (p >= end || *p < '0' || *p > '9')
			return dec_fail(d, p, "a digit after the decimal point");
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		plain = 0;
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (p >= end || *p < '0' || *p > '9')
			return dec_fail(d, p, "a digit of the exponent");
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	}
	d->p = p;
	if (plain) {
		/* exact, while it fits: -9223372036854775808 .. 9223372036854775807 */
		unsigned long long v = 0, lim = neg ? 9223372036854775808ULL : 9223372036854775807ULL;
		const char *q = neg ? start + 1 : start;
		int fits = 1;
		for (; q < int_end; q++) {
			unsigned dig = (unsigned)(*q - '0');
			if (v > (lim - dig) / 10) {
				fits = 0;
				break;
			}
			v = v * 10 + dig;
		}
		if (fits) {
			lua_pushinteger(d->L, neg ? (lua_Integer)(0 - v) : (lua_Integer)v);
			return 0;
		}
	}
	/* strtod reads the locale's decimal point: the text is copied with it */
	char tmp[64], *num = tmp;
	size_t n = (size_t)(p - start);
	int held = 0;
	if (n >= sizeof tmp) {
		num = (char *)lua_newuserdatauv(d->L, n + 1, 0); /* on the stack until the end */
		held = 1;
	}
	memcpy(num, start, n);
	num[n] = 0;
	const char *dp = localeconv()->decimal_point;
	if (dp && dp[0] && dp[0] != '.' && !dp[1]) {
		char *dot = strchr(num, '.');
		if (dot)
			*dot = dp[0];
	}
	double x = strtod(num, NULL);
	if (held)
		lua_pop(d->L, 1);
	if (!isfinite(x)) {
		snprintf(d->err, sizeof d->err, "a number is out of range");
		d->at = (size_t)(start - d->s);
		return -1;
	}
	if (x == floor(x) && fabs(x) < 9223372036854775808.0)
		lua_pushinteger(d->L, (lua_Integer)x);
	else
		lua_pushnumber(d->L, x);
	return 0;
}

static int dec_value(Dec *d, int depth);

static int dec_nested(Dec *d, int depth, const char *open)
{
	if (depth > MAX_DEPTH) {
		snprintf(d->err, sizeof d->err, "too many nested data structures (%d)", depth);
		d->at = (size_t)(open - d->s);
		return -1;
	}
	luaL_checkstack(d->L, 4, "json: nesting too deep");
	return 0;
}

static int dec_array(Dec *d, int depth)
{
	lua_State *L = d->L;
	lua_Integer i = 0;
	if (dec_nested(d, depth, d->p))
		return -1;
	d->p++;
	lua_newtable(L);
	if (eat(d, ']')) {
		luaL_setmetatable(L, ARRAY_MT); /* [] stays an array, not {} */
		return 0;
	}
	do {
		if (dec_value(d, depth))
			return -1;
		lua_rawseti(L, -2, ++i);
	} while (eat(d, ','));
	return eat(d, ']') ? 0 : dec_fail(d, d->p, "',' or ']'");
}

static int dec_object(Dec *d, int depth)
{
	lua_State *L = d->L;
	if (dec_nested(d, depth, d->p))
		return -1;
	d->p++;
	lua_createtable(L, 0, 4); /* (most objects have a few keys: fewer rehashes) */
	if (eat(d, '}'))
		return 0;
	do {
		skip_ws(d);
		if (d->p >= d->end || *d->p != '"')
			return dec_fail(d, d->p, "a key (a string)");
		if (dec_string(d))
			return -1;
		if (!eat(d, ':'))
			return dec_fail(d, d->p, "':'");
		if (dec_value(d, depth))
			return -1;
		lua_rawset(L, -3); /* the last of two equal keys wins, as in Go */
	} while (eat(d, ','));
	return eat(d, '}') ? 0 : dec_fail(d, d->p, "',' or '}'");
}

static int literal(Dec *d, const char *word, size_t n)
{
	if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0)
		return dec_fail(d, d->p, "a value");
	d->p += n;
	return 0;
}

static int dec_value(Dec *d, int depth)
{
	skip_ws(d);
	if (d->p >= d->end)
		return dec_fail(d, d->p, "a value");
	switch (*d->p) {
	case '{': return dec_object(d, depth + 1);
	case '[': return dec_array(d, depth + 1);
	case '"': return dec_string(d);
	case 't':
		if (literal(d, "true", 4))
			return -1;
		lua_pushboolean(d->L, 1);
		return 0;
	case 'f':
		if (literal(d, "false", 5))
			return -1;
		lua_pushboolean(d->L, 0);
		return 0;
	case 'n':
		if (literal(d, "null", 4))
			return -1;
		lua_pushlightuserdata(d->L, NULL); /* vmsnap.json.null */
		return 0;
	default:
		if (*d->p == '-' || (*d->p >= '0' && *d->p <= '9'))
			return dec_number(d);
		return dec_fail(d, d->p, "a value");
	}
}

/* (protected) text -> value | nil, message */
static int decode_run(lua_State *L)
{
	Dec d;
	size_t n;
	d.L = L;
	d.s = d.p = lua_tolstring(L, 1, &n);
	d.end = d.s + n;
	d.tmp = NULL;
	d.err[0] = 0;
	d.at = 0;
	lua_pushnil(L); /* the unescaping buffer's place */
	d.tmp_slot = lua_gettop(L);
	int bad = dec_value(&d, 0);
	if (!bad) {
		skip_ws(&d);
		if (d.p < d.end)
			bad = dec_fail(&d, d.p, "the end of the text");
	}
	if (d.tmp)
		Vmsnap_buf_free(d.tmp);
	if (!bad)
		return 1;
	/* the place as a line and a column (and the byte, 1-based) */
	long line = 1, col = 1;
	size_t i;
	for (i = 0; i < d.at && i < n; i++) {
		if (d.s[i] == '\n') {
			line++;
			col = 1;
		} else {
			col++;
		}
	}
	lua_pushnil(L);
	lua_pushfstring(L, "json: %s at character %d (line %d column %d)", d.err, (int)(d.at + 1), (int)line,
	                (int)col);
	return 2;
}

/* json.decode(text) -> value | nil, message, "JSON_DECODE" | nil, message, "NOMEM" */
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
	}
	lua_pushcfunction(L, decode_run);
	lua_pushvalue(L, 1);
	int st = lua_pcall(L, 1, 2, 0);
	if (st == LUA_ERRMEM)
		return Vmsnap_pushfail(L, "NOMEM", "json: the decoded value exceeds the memory limit");
	if (st != LUA_OK)
		return Vmsnap_pushfail(L, "JSON_DECODE", "json: %s", lua_tostring(L, -1));
	if (lua_isnil(L, -2)) {
		lua_pushliteral(L, "JSON_DECODE");
		return 3;
	}
	lua_pop(L, 1);
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

/* The j-th member of the object at idx, key k: its value read by the key's
** text, or, with keys (the stack index of Vmsnap_sorted_keys' table), by
** the original key of that text. */
static int enc_member(Enc *e, int idx, int depth, size_t j, Vmsnap_key k, int keys)
{
	lua_State *L = e->L;
	if (j > 0)
		Vmsnap_buf_addc(e->b, ',');
	newline(e, depth + 1);
	enc_string(e, k.s, k.n);
	Vmsnap_buf_adds(e->b, e->indent ? ": " : ":");
	lua_pushlstring(L, k.s, k.n);
	if (keys)
		lua_rawget(L, keys);
	lua_rawget(L, idx);
	if (enc_value(e, lua_gettop(L), depth + 1))
		return -1;
	lua_pop(L, 1);
	return 0;
}

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
		if (enc_member(e, idx, depth, j, ((Vmsnap_key *)(void *)e->keys->p)[base + j], 0))
			return -1;
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
		if (enc_member(e, idx, depth, j, ks[j], keys))
			return -1;
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
	lua_pushcfunction(L, json_decode);
	lua_setfield(L, -2, "decode");
	lua_pushlightuserdata(L, NULL); /* cjson.null too */
	lua_setfield(L, -2, "null");
	lua_pushcfunction(L, json_encode);
	lua_setfield(L, -2, "encode");
	lua_pushcfunction(L, json_is_array);
	lua_setfield(L, -2, "is_array");
	luaL_getmetatable(L, ARRAY_MT);
	lua_setfield(L, -2, "array_mt");
	return 1;
}
