/*
** values.h -- how Lua values map to JSON/YAML shapes; shared by the json
** and yaml modules so both agree on arrays, key order and number text.
*/
#ifndef VMSNAP_VALUES_H
#define VMSNAP_VALUES_H

#include <stddef.h>

#include <lua.h>

#define VMSNAP_ARRAY_MT "vmsnap.array_mt"

/* Does the table at idx carry the shared array metatable? */
int Vmsnap_is_array_mt(lua_State *L, int idx);
/* n if the table at idx is a non-empty sequence 1..n, else 0. */
lua_Integer Vmsnap_seq_len(lua_State *L, int idx);

/* A table key as text (numbers written as Lua writes them). */
typedef struct Vmsnap_key {
	const char *s;
	size_t n;
} Vmsnap_key;

/* qsort's order of two Vmsnap_key: bytewise, a prefix first. */
int Vmsnap_key_cmp(const void *a, const void *b);

/* The keys of the table at idx as text, sorted bytewise (NULs included).
** Pushes two values: a table from each text to its original key, and the
** array returned (a userdata; *count entries).  Keys must be strings or
** numbers (or booleans with allow_bool); two keys of one text (1 and "1")
** are refused: NULL, a message in err, and the two values pushed are
** whatever was reached (the caller is failing anyway). */
Vmsnap_key *Vmsnap_sorted_keys(lua_State *L, int idx, int allow_bool, size_t *count, char *err,
                               size_t errlen);
/* The shortest %g text of a finite d that reads back as d. */
void Vmsnap_fmt_double(char *buf, size_t n, double d);
/* Is s[0..n) well-formed UTF-8 (no overlong forms, surrogates or code
** points past U+10FFFF)? */
int Vmsnap_utf8_valid(const char *s, size_t n);
/* Push s[0..n) with every ill-formed sequence replaced by U+FFFD (one per
** maximal invalid subpart, as Unicode recommends and Go's decoders do). */
void Vmsnap_utf8_push_fixed(lua_State *L, const char *s, size_t n);

/* Push a deep copy of the value at idx: tables are copied (raw, keys
** shared, metatables kept), anything else pushed as is.  Raises past 1000
** levels of nesting. */
void Vmsnap_deep_copy(lua_State *L, int idx);
/* Do the values at a and b hold the same data (raw access, tables compared
** key by key)?  Raises past 1000 levels of nesting. */
int Vmsnap_deep_equal(lua_State *L, int a, int b);

#endif
