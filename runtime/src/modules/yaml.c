/*
** yaml.c -- `vmsnap.core.yaml`: YAML load and dump with libyaml.
**
** Loading resolves plain scalars the way Kubernetes' YAML reader does
** (YAML 1.1 booleans such as yes/no/on/off, null/~/empty, decimal, hex and
** octal integers, floats, .inf/.nan); quoted and !!str scalars stay
** strings.  Anchors and aliases are supported, and so are merge keys
** (`<<`).  Mapping keys are always strings (as in JSON).  Empty sequences get the shared array metatable, null is
** vmsnap.null: the same conventions as vmsnap.json.
**
** Dumping emits block style, keys sorted, strings with newlines as literal
** block scalars, and quotes every string that would otherwise read back as
** another type.  Failures return nil, message, "YAML_PARSE" (with line and
** column) or "YAML_EMIT".
**
** The libyaml parser/emitter and the current event live in a userdata
** whose __gc releases them, so a Lua error cannot leak them.
*/
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "../core/buf.h"
#include "../core/loader.h"
#include "../core/runtime.h"
#include "../core/values.h"

#define ARRAY_MT VMSNAP_ARRAY_MT
#define PARSER_MT "vmsnap.yaml.Parser"
#define EMITTER_MT "vmsnap.yaml.Emitter"
#define MAX_DEPTH 200

/* ================================================================ load */

typedef struct Parser {
	yaml_parser_t parser;
	yaml_event_t event;
	int has_parser, has_event;
	lua_State *L;
	int anchors; /* stack index of the anchors table */
	int sizes;   /* stack index of anchor -> the node count of its value (-1: not complete yet) */
	long long literal, aliased; /* nodes written out, and nodes that aliases repeat */
	char err[512];
} Parser;

static void parser_release(Parser *p)
{
	if (p->has_event) {
		p->has_event = 0;
		yaml_event_delete(&p->event);
	}
	if (p->has_parser) {
		p->has_parser = 0;
		yaml_parser_delete(&p->parser);
	}
}

static int parser_gc(lua_State *L)
{
	parser_release((Parser *)luaL_checkudata(L, 1, PARSER_MT));
	return 0;
}

static int next_event(Parser *p)
{
	if (p->has_event) {
		yaml_event_delete(&p->event);
		p->has_event = 0;
	}
	if (!yaml_parser_parse(&p->parser, &p->event)) {
		const char *problem = p->parser.problem ? p->parser.problem : "syntax error";
		if (p->parser.context)
			snprintf(p->err, sizeof p->err, "yaml: line %lu column %lu: %s %s",
			         (unsigned long)p->parser.problem_mark.line + 1,
			         (unsigned long)p->parser.problem_mark.column + 1, problem,
			         p->parser.context);
		else
			snprintf(p->err, sizeof p->err, "yaml: line %lu column %lu: %s",
			         (unsigned long)p->parser.problem_mark.line + 1,
			         (unsigned long)p->parser.problem_mark.column + 1, problem);
		return -1;
	}
	p->has_event = 1;
	return 0;
}

static int set_err(Parser *p, const char *what)
{
	snprintf(p->err, sizeof p->err, "yaml: line %lu column %lu: %s",
	         (unsigned long)p->event.start_mark.line + 1,
	         (unsigned long)p->event.start_mark.column + 1, what);
	return -1;
}

static int eq_any(const char *s, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(s, *list) == 0)
			return 1;
	return 0;
}

static const char *const null_words[] = {"", "~", "null", "Null", "NULL", NULL};
static const char *const true_words[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on",
                                         "On", "ON", "y", "Y", NULL};
static const char *const false_words[] = {"false", "False", "FALSE", "no", "No", "NO", "off",
                                          "Off", "OFF", "n", "N", NULL};

/* Push the value a plain scalar stands for.  Returns 1 if it pushed a
** non-string; 0 if the text is a string (nothing pushed). */
static int resolve_plain(lua_State *L, const char *s, size_t n)
{
	char *end;
	if (n > 64)
		return 0;
	if (eq_any(s, null_words)) {
		lua_pushlightuserdata(L, NULL);
		return 1;
	}
	if (eq_any(s, true_words)) {
		lua_pushboolean(L, 1);
		return 1;
	}
	if (eq_any(s, false_words)) {
		lua_pushboolean(L, 0);
		return 1;
	}
	{
		const char *q = s;
		int neg = 0;
		if (*q == '-' || *q == '+')
			neg = (*q++ == '-');
		if (q[0] == '0' && (q[1] == 'x' || q[1] == 'X') && q[2]) {
			errno = 0;
			unsigned long long v = strtoull(q + 2, &end, 16);
			if (*end == 0 && errno == 0) {
				lua_pushinteger(L, neg ? -(lua_Integer)v : (lua_Integer)v);
				return 1;
			}
		} else if (q[0] == '0' && (q[1] == 'o' || q[1] == 'O') && q[2]) {
			errno = 0;
			unsigned long long v = strtoull(q + 2, &end, 8);
			if (*end == 0 && errno == 0) {
				lua_pushinteger(L, neg ? -(lua_Integer)v : (lua_Integer)v);
				return 1;
			}
		} else if (*q >= '0' && *q <= '9') {
			const char *d = q;
			while (*d >= '0' && *d <= '9')
				d++;
			if (*d == 0) {
				errno = 0;
				long long v = strtoll(s, &end, (q[0] == '0' && q[1]) ? 8 : 10);
				if (*end == 0 && errno == 0) {
					lua_pushinteger(L, (lua_Integer)v);
					return 1;
				}
				if (q[0] == '0' && q[1])
					return 0; /* like 089: a string */
			}
		}
	}
	if (strcmp(s, ".inf") == 0 || strcmp(s, ".Inf") == 0 || strcmp(s, ".INF") == 0 ||
	    strcmp(s, "+.inf") == 0) {
		lua_pushnumber(L, HUGE_VAL);
		return 1;
	}
	if (strcmp(s, "-.inf") == 0 || strcmp(s, "-.Inf") == 0 || strcmp(s, "-.INF") == 0) {
		lua_pushnumber(L, -HUGE_VAL);
		return 1;
	}
	if (strcmp(s, ".nan") == 0 || strcmp(s, ".NaN") == 0 || strcmp(s, ".NAN") == 0) {
		lua_pushnumber(L, (lua_Number)NAN);
		return 1;
	}
	{
		/* [-+]? ( digits [. digits*] | . digits ) ([eE][-+]?digits)? */
		const char *q = s;
		int digits = 0;
		if (*q == '-' || *q == '+')
			q++;
		while (*q >= '0' && *q <= '9') {
			q++;
			digits++;
		}
		if (*q == '.') {
			q++;
			while (*q >= '0' && *q <= '9') {
				q++;
				digits++;
			}
		}
		if (digits && (*q == 'e' || *q == 'E')) {
			q++;
			if (*q == '-' || *q == '+')
				q++;
			if (!(*q >= '0' && *q <= '9'))
				return 0;
			while (*q >= '0' && *q <= '9')
				q++;
		}
		if (digits && *q == 0) {
			lua_pushnumber(L, strtod(s, NULL));
			return 1;
		}
	}
	return 0;
}

static int parse_node(Parser *p, int depth, long long *size);

/* Aliases repeat a node without its text: an alias of an alias of ... of a
** list is a document of billions of nodes in a few hundred bytes (every
** reader of the value walks them all).  As Kubernetes' reader does, such a
** document is refused: past ALIAS_FLOOR repeated nodes, aliases may repeat
** at most ALIAS_RATIO times what the text holds. */
#define ALIAS_FLOOR 100000
#define ALIAS_RATIO 10

static void save_anchor(Parser *p, const yaml_char_t *anchor, long long size)
{
	if (anchor) {
		lua_pushstring(p->L, (const char *)anchor);
		lua_pushvalue(p->L, -2);
		lua_rawset(p->L, p->anchors);
		lua_pushstring(p->L, (const char *)anchor);
		lua_pushinteger(p->L, (lua_Integer)size);
		lua_rawset(p->L, p->sizes);
	}
}

/* the node count of a complete anchored collection */
static void complete_anchor(Parser *p, const yaml_char_t *anchor, long long size)
{
	if (anchor) {
		lua_pushstring(p->L, (const char *)anchor);
		lua_pushinteger(p->L, (lua_Integer)size);
		lua_rawset(p->L, p->sizes);
	}
}

static void merge_into(lua_State *L, int dst, int src)
{
	lua_pushnil(L);
	while (lua_next(L, src)) {
		lua_pushvalue(L, -2);
		lua_rawget(L, dst);
		if (lua_isnil(L, -1)) {
			lua_pop(L, 1);
			lua_pushvalue(L, -2);
			lua_insert(L, -2);
			lua_rawset(L, dst);
		} else {
			lua_pop(L, 2);
		}
	}
}

/* The current event starts a node; push its value. */
static int parse_node(Parser *p, int depth, long long *size)
{
	lua_State *L = p->L;
	yaml_event_t *ev = &p->event;
	if (depth > MAX_DEPTH)
		return set_err(p, "nesting too deep");
	luaL_checkstack(L, 6, NULL);
	switch (ev->type) {
	case YAML_ALIAS_EVENT: {
		long long n;
		lua_pushstring(L, (const char *)ev->data.alias.anchor);
		lua_rawget(L, p->sizes);
		n = (long long)lua_tointeger(L, -1);
		lua_pop(L, 1);
		if (n < 0)
			return set_err(p, "an alias inside the node it names (a recursive document)");
		p->aliased += n;
		if (p->aliased > ALIAS_FLOOR && p->aliased > ALIAS_RATIO * p->literal)
			return set_err(p, "document contains excessive aliasing");
		lua_pushstring(L, (const char *)ev->data.alias.anchor);
		if (lua_rawget(L, p->anchors) == LUA_TNIL) {
			lua_pop(L, 1);
			return set_err(p, "unknown alias");
		}
		*size = n;
		return 0;
	}
	case YAML_SCALAR_EVENT: {
		const char *s = (const char *)ev->data.scalar.value;
		size_t n = ev->data.scalar.length;
		const char *tag = (const char *)ev->data.scalar.tag;
		int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
		if (tag && strcmp(tag, YAML_STR_TAG) == 0)
			lua_pushlstring(L, s, n);
		else if (tag && (strcmp(tag, YAML_INT_TAG) == 0 || strcmp(tag, YAML_FLOAT_TAG) == 0 ||
		                 strcmp(tag, YAML_BOOL_TAG) == 0 || strcmp(tag, YAML_NULL_TAG) == 0)) {
			if (!resolve_plain(L, s, n))
				return set_err(p, "value does not match its tag");
		} else if (!(plain && !tag && strlen(s) == n && resolve_plain(L, s, n)))
			lua_pushlstring(L, s, n);
		save_anchor(p, ev->data.scalar.anchor, 1);
		p->literal++;
		*size = 1;
		return 0;
	}
	case YAML_SEQUENCE_START_EVENT: {
		lua_Integer i = 0;
		long long total = 1, sub;
		yaml_char_t *anchor = ev->data.sequence_start.anchor;
		char *name = anchor ? strdup((const char *)anchor) : NULL;
		lua_newtable(L);
		int t = lua_gettop(L);
		save_anchor(p, anchor, -1);
		p->literal++;
		for (;;) {
			if (next_event(p)) {
				free(name);
				return -1;
			}
			/* looked at before the item is parsed: after a nested
			** sequence, the current event is that sequence's end */
			if (p->event.type == YAML_SEQUENCE_END_EVENT)
				break;
			if (parse_node(p, depth + 1, &sub)) {
				free(name);
				return -1;
			}
			total += sub;
			lua_rawseti(L, t, ++i);
		}
		if (i == 0)
			luaL_setmetatable(L, ARRAY_MT);
		complete_anchor(p, (const yaml_char_t *)name, total);
		free(name);
		*size = total;
		return 0;
	}
	case YAML_MAPPING_START_EVENT: {
		long long total = 1, sub;
		yaml_char_t *anchor = ev->data.mapping_start.anchor;
		char *name = anchor ? strdup((const char *)anchor) : NULL;
		int rc = -1;
		lua_newtable(L);
		int t = lua_gettop(L);
		save_anchor(p, anchor, -1);
		p->literal++;
		for (;;) {
			int merge;
			if (next_event(p))
				goto map_done;
			if (p->event.type == YAML_MAPPING_END_EVENT)
				break;
			merge = p->event.type == YAML_SCALAR_EVENT &&
			        p->event.data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
			        strcmp((const char *)p->event.data.scalar.value, "<<") == 0;
			if (p->event.type == YAML_SCALAR_EVENT) {
				/* keys are text, as in the JSON form of an object */
				lua_pushlstring(L, (const char *)p->event.data.scalar.value,
				                p->event.data.scalar.length);
				save_anchor(p, p->event.data.scalar.anchor, 1);
				p->literal++;
				sub = 1;
			} else if (parse_node(p, depth + 1, &sub)) {
				goto map_done;
			}
			total += sub;
			if (lua_type(L, -1) != LUA_TSTRING) {
				set_err(p, "mapping keys must be scalars");
				goto map_done;
			}
			if (next_event(p) || parse_node(p, depth + 1, &sub))
				goto map_done;
			total += sub;
			if (merge && lua_istable(L, -1)) {
				int src = lua_gettop(L);
				if (lua_rawlen(L, src) > 0) { /* a list of maps */
					lua_Integer k, nn = (lua_Integer)lua_rawlen(L, src);
					for (k = 1; k <= nn; k++) {
						lua_rawgeti(L, src, k);
						if (lua_istable(L, -1))
							merge_into(L, t, lua_gettop(L));
						lua_pop(L, 1);
					}
				} else {
					merge_into(L, t, src);
				}
				lua_pop(L, 2);
			} else {
				lua_rawset(L, t);
			}
		}
		complete_anchor(p, (const yaml_char_t *)name, total);
		*size = total;
		rc = 0;
	map_done:
		free(name);
		return rc;
	}
	default:
		return set_err(p, "unexpected event");
	}
}

/* Parse every document; push a list of them.  Empty documents are kept
** as vmsnap.null when keep_empty, skipped otherwise. */
static int load_docs(lua_State *L, int keep_empty)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	Parser *p = (Parser *)lua_newuserdatauv(L, sizeof(Parser), 0);
	memset(p, 0, sizeof *p);
	luaL_setmetatable(L, PARSER_MT);
	if (!yaml_parser_initialize(&p->parser))
		return Vmsnap_pushfail(L, "NOMEM", "yaml: cannot create a parser");
	p->has_parser = 1;
	p->L = L;
	yaml_parser_set_input_string(&p->parser, (const unsigned char *)s, n);
	lua_newtable(L); /* docs */
	int docs = lua_gettop(L);
	lua_Integer nd = 0;
	for (;;) {
		if (next_event(p))
			goto fail;
		if (p->event.type == YAML_STREAM_END_EVENT)
			break;
		if (p->event.type != YAML_DOCUMENT_START_EVENT)
			continue; /* STREAM_START, DOCUMENT_END */
		long long size;
		lua_newtable(L);
		p->anchors = lua_gettop(L);
		lua_newtable(L);
		p->sizes = lua_gettop(L);
		if (next_event(p) || parse_node(p, 0, &size))
			goto fail;
		lua_remove(L, p->sizes);
		lua_remove(L, p->anchors);
		if (lua_type(L, -1) == LUA_TLIGHTUSERDATA && !keep_empty)
			lua_pop(L, 1);
		else
			lua_rawseti(L, docs, ++nd);
	}
	parser_release(p);
	return 1;
fail:
	parser_release(p);
	lua_pushnil(L);
	lua_pushstring(L, p->err);
	lua_pushliteral(L, "YAML_PARSE");
	return 3;
}

/* yaml.load(text) -> value of the first document (nil when there is none)
**                  | nil, message, "YAML_PARSE" */
static int yaml_load(lua_State *L)
{
	lua_settop(L, 1);
	int r = load_docs(L, 1);
	if (r == 3)
		return 3;
	lua_rawgeti(L, -1, 1);
	return 1;
}

/* yaml.load_all(text) -> list of the documents (empty ones skipped) */
static int yaml_load_all(lua_State *L)
{
	lua_settop(L, 1);
	return load_docs(L, 0);
}

/* ================================================================ dump */

typedef struct Emitter {
	yaml_emitter_t em;
	yaml_event_t ev;
	int has_em;
	Vmsnap_buf *out;
	lua_State *L;
	char err[256];
} Emitter;

static int emitter_gc(lua_State *L)
{
	Emitter *e = (Emitter *)luaL_checkudata(L, 1, EMITTER_MT);
	if (e->has_em) {
		e->has_em = 0;
		yaml_emitter_delete(&e->em);
	}
	return 0;
}

static int write_handler(void *data, unsigned char *buffer, size_t size)
{
	Emitter *e = (Emitter *)data;
	/* may raise on memory; the emitter is anchored by its userdata */
	Vmsnap_buf_add(e->out, (const char *)buffer, size);
	return 1;
}

static int emit(Emitter *e)
{
	if (!yaml_emitter_emit(&e->em, &e->ev)) {
		snprintf(e->err, sizeof e->err, "yaml: %s",
		         e->em.problem ? e->em.problem : "emitter error");
		return -1;
	}
	return 0;
}

static int emit_scalar(Emitter *e, const char *s, size_t n, yaml_scalar_style_t style,
                       int plain_implicit)
{
	int r, fixed = 0;
	if (!Vmsnap_utf8_valid(s, n)) {
		/* libyaml refuses ill-formed UTF-8 (and its emitter then frees an
		** event twice): write U+FFFD for each bad sequence, as Go's
		** encoders do; the text is copied into the event */
		Vmsnap_utf8_push_fixed(e->L, s, n);
		s = lua_tolstring(e->L, -1, &n);
		fixed = 1;
		if (style == YAML_ANY_SCALAR_STYLE || style == YAML_PLAIN_SCALAR_STYLE) {
			style = YAML_DOUBLE_QUOTED_SCALAR_STYLE;
			plain_implicit = 0;
		}
	}
	if (n > INT_MAX) {
		snprintf(e->err, sizeof e->err, "yaml: a scalar of %zu bytes is too long", n);
		r = -1;
	} else {
		yaml_scalar_event_initialize(&e->ev, NULL, NULL, (yaml_char_t *)s, (int)n, plain_implicit,
		                             !plain_implicit, style);
		r = emit(e);
	}
	if (fixed)
		lua_pop(e->L, 1);
	return r;
}

static int needs_quotes(lua_State *L, const char *s, size_t n)
{
	int r;
	if (n == 0 || strlen(s) != n)
		return 1;
	r = resolve_plain(L, s, n);
	if (r)
		lua_pop(L, 1);
	return r;
}

static int dump_value(Emitter *e, int idx, int depth);

static int dump_table(Emitter *e, int idx, int depth)
{
	lua_State *L = e->L;
	lua_Integer n, i;
	if (depth > MAX_DEPTH) {
		snprintf(e->err, sizeof e->err, "yaml: nesting deeper than %d (a cycle?)", MAX_DEPTH);
		return -1;
	}
	luaL_checkstack(L, 8, NULL);
	int arr = Vmsnap_is_array_mt(L, idx);
	n = arr ? (lua_Integer)lua_rawlen(L, idx) : Vmsnap_seq_len(L, idx);
	if (arr || n > 0) {
		yaml_sequence_start_event_initialize(&e->ev, NULL, NULL, 1,
		                                     n == 0 ? YAML_FLOW_SEQUENCE_STYLE
		                                            : YAML_BLOCK_SEQUENCE_STYLE);
		if (emit(e))
			return -1;
		for (i = 1; i <= n; i++) {
			lua_rawgeti(L, idx, i);
			if (dump_value(e, lua_gettop(L), depth + 1))
				return -1;
			lua_pop(L, 1);
		}
		yaml_sequence_end_event_initialize(&e->ev);
		return emit(e);
	}
	/* mapping; keys as text, sorted */
	size_t nk, j;
	char kerr[200];
	Vmsnap_key *ks = Vmsnap_sorted_keys(L, idx, 1, &nk, kerr, sizeof kerr);
	if (!ks) {
		snprintf(e->err, sizeof e->err, "yaml: %s", kerr);
		return -1;
	}
	int keys = lua_gettop(L) - 1;
	yaml_mapping_start_event_initialize(&e->ev, NULL, NULL, 1,
	                                    nk == 0 ? YAML_FLOW_MAPPING_STYLE
	                                            : YAML_BLOCK_MAPPING_STYLE);
	if (emit(e))
		return -1;
	for (j = 0; j < nk; j++) {
		lua_pushlstring(L, ks[j].s, ks[j].n);
		lua_rawget(L, keys); /* original key */
		if (dump_value(e, lua_gettop(L), depth + 1))
			return -1;
		lua_rawget(L, idx);
		if (dump_value(e, lua_gettop(L), depth + 1))
			return -1;
		lua_pop(L, 1);
	}
	lua_pop(L, 2); /* the key array, keys */
	yaml_mapping_end_event_initialize(&e->ev);
	return emit(e);
}

static int dump_value(Emitter *e, int idx, int depth)
{
	lua_State *L = e->L;
	char tmp[64];
	size_t n;
	const char *s;
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		return emit_scalar(e, "null", 4, YAML_PLAIN_SCALAR_STYLE, 1);
	case LUA_TLIGHTUSERDATA:
		if (lua_touserdata(L, idx) == NULL)
			return emit_scalar(e, "null", 4, YAML_PLAIN_SCALAR_STYLE, 1);
		break;
	case LUA_TBOOLEAN:
		return lua_toboolean(L, idx) ? emit_scalar(e, "true", 4, YAML_PLAIN_SCALAR_STYLE, 1)
		                             : emit_scalar(e, "false", 5, YAML_PLAIN_SCALAR_STYLE, 1);
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx)) {
			snprintf(tmp, sizeof tmp, "%lld", (long long)lua_tointeger(L, idx));
		} else {
			double d = lua_tonumber(L, idx);
			if (isnan(d))
				strcpy(tmp, ".nan");
			else if (isinf(d))
				strcpy(tmp, d > 0 ? ".inf" : "-.inf");
			else if (d == 0 && signbit(d))
				strcpy(tmp, "-0.0"); /* "-0" would read back as the integer 0 */
			else
				Vmsnap_fmt_double(tmp, sizeof tmp, d);
		}
		return emit_scalar(e, tmp, strlen(tmp), YAML_PLAIN_SCALAR_STYLE, 1);
	case LUA_TSTRING:
		s = lua_tolstring(L, idx, &n);
		if (memchr(s, '\n', n))
			return emit_scalar(e, s, n, YAML_LITERAL_SCALAR_STYLE, 0);
		if (needs_quotes(L, s, n))
			return emit_scalar(e, s, n, YAML_DOUBLE_QUOTED_SCALAR_STYLE, 0);
		return emit_scalar(e, s, n, YAML_ANY_SCALAR_STYLE, 1);
	case LUA_TTABLE:
		return dump_table(e, idx, depth);
	default:
		break;
	}
	snprintf(e->err, sizeof e->err, "yaml: cannot dump a value of type %s",
	         luaL_typename(L, idx));
	return -1;
}

/* Dump the values docs[1..n] (or the single value at 1) as documents. */
static int dump_docs(lua_State *L, int multi)
{
	int indent = 2;
	luaL_checkany(L, 1);
	if (lua_istable(L, 2)) {
		lua_getfield(L, 2, "indent");
		if (!lua_isnil(L, -1))
			indent = (int)luaL_checkinteger(L, -1);
		lua_pop(L, 1);
		luaL_argcheck(L, indent >= 2 && indent <= 9, 2, "indent must be 2..9");
	} else if (!lua_isnoneornil(L, 2)) {
		luaL_typeerror(L, 2, "table");
	}
	if (multi)
		luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	Emitter *e = (Emitter *)lua_newuserdatauv(L, sizeof(Emitter), 0);
	memset(e, 0, sizeof *e);
	luaL_setmetatable(L, EMITTER_MT);
	e->L = L;
	e->out = Vmsnap_buf_new(L);
	if (!yaml_emitter_initialize(&e->em))
		return Vmsnap_pushfail(L, "NOMEM", "yaml: cannot create an emitter");
	e->has_em = 1;
	yaml_emitter_set_output(&e->em, write_handler, e);
	yaml_emitter_set_unicode(&e->em, 1);
	yaml_emitter_set_width(&e->em, -1);
	yaml_emitter_set_indent(&e->em, indent);

	lua_Integer ndocs = multi ? (lua_Integer)lua_rawlen(L, 1) : 1, k;
	yaml_stream_start_event_initialize(&e->ev, YAML_UTF8_ENCODING);
	if (emit(e))
		goto fail;
	for (k = 1; k <= ndocs; k++) {
		yaml_document_start_event_initialize(&e->ev, NULL, NULL, NULL, multi ? 0 : 1);
		if (emit(e))
			goto fail;
		if (multi)
			lua_rawgeti(L, 1, k);
		else
			lua_pushvalue(L, 1);
		if (dump_value(e, lua_gettop(L), 0))
			goto fail;
		lua_pop(L, 1);
		yaml_document_end_event_initialize(&e->ev, 1);
		if (emit(e))
			goto fail;
	}
	yaml_stream_end_event_initialize(&e->ev);
	if (emit(e) || !yaml_emitter_flush(&e->em))
		goto fail;
	lua_pushlstring(L, e->out->p, e->out->n);
	return 1;
fail:
	return Vmsnap_pushfail(L, "YAML_EMIT", "%s", e->err[0] ? e->err : "yaml: emitter error");
}

/* yaml.dump(value [, {indent = 2}]) -> text | nil, message, "YAML_EMIT" */
static int yaml_dump(lua_State *L)
{
	return dump_docs(L, 0);
}

/* yaml.dump_all(list [, opts]) -> text with one document per element */
static int yaml_dump_all(lua_State *L)
{
	return dump_docs(L, 1);
}

static const luaL_Reg yaml_funcs[] = {{"load", yaml_load},
                                      {"load_all", yaml_load_all},
                                      {"dump", yaml_dump},
                                      {"dump_all", yaml_dump_all},
                                      {NULL, NULL}};

int luaopen_vmsnap_core_yaml(lua_State *L)
{
	luaL_newmetatable(L, ARRAY_MT);
	lua_pop(L, 1);
	if (luaL_newmetatable(L, PARSER_MT)) {
		lua_pushcfunction(L, parser_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	if (luaL_newmetatable(L, EMITTER_MT)) {
		lua_pushcfunction(L, emitter_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	luaL_newlib(L, yaml_funcs);
	lua_pushstring(L, yaml_get_version_string());
	lua_setfield(L, -2, "libyaml_version");
	return 1;
}
