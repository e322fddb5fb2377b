/*
 * fp_codec.c - the value codec: Lua values <-> the wire format of fp_wire.h
 * (grammar and limits in docs/wire-format.md).
 *
 * Invariants (both directions):
 *  - Reference ids are handed out identically on both sides: the next id goes
 *    to every TABLE and FUNC record at its tag, in byte-stream order
 *    (depth first; array part, then hash pairs, a key before its value; a
 *    function's id before its upvalues).  MODREF/MODFIELD get no id.
 *  - No Lua error is raised because of the data: failures come back as
 *    FP_EMARSHAL / FP_ECORRUPT with err filled.  The only Lua errors that can
 *    escape are the allocator's "not enough memory".  Calls into helper
 *    functions (cdata_idx, require_idx, cdata_new_idx) go through lua_pcall.
 *  - On return the Lua stack has its entry height (plus the one decoded value
 *    after a successful decode); after an encode error out->len is back at
 *    its entry value.
 *  - The decoder never reads outside [p, p+len): every read is preceded by a
 *    NEED() check against the end pointer.
 *  - Recursion is bounded by FP_CODEC_MAX_DEPTH tables/functions in both
 *    directions; each level costs two small C frames and a fixed number of
 *    Lua stack slots, reserved once every STACK_CHECK_EVERY levels (never
 *    per element).
 *
 * Speed: the codec can only reach Lua values through the public C API, so
 * what costs is the number of API calls per item.  Hot paths (arrays of
 * numbers, small records, chunks of scalar items) make the fewest calls the
 * API allows: one lua_next pass per table, no repeated lua_type, one buffer
 * capacity check per record; the encoder's "seen" table and the decoder's
 * reference table only exist for values with more than ENC_FAST_SEEN /
 * DEC_STACK_REFS tables and functions.  tests/c/bench_codec.c measures it.
 */
#include "fp_codec.h"
#include "fp_errpath.h"
#include "fp_wire.h"

#include <lauxlib.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || !defined(__ORDER_LITTLE_ENDIAN__)
#error "fp_codec.c needs __BYTE_ORDER__ to check the byte order"
#elif __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the wire format is little-endian and copies integers with memcpy"
#endif

#define FP_COLD __attribute__((cold, noinline))
#define FP_STR_(x) #x
#define FP_STR(x) FP_STR_(x)

/* ------------------------------------------------------------------------
 * Error messages: the one table.  "%s" is replaced by fmt_msg() (not printf,
 * so the table can stay data without -Wformat-nonliteral complaints).
 * ------------------------------------------------------------------------ */
enum msg_id {
  /* encoder */
  EM_NOMEM,
  EM_USERDATA,
  EM_COROUTINE,
  EM_CFUNCTION,
  EM_FUNCTION,
  EM_CDATA,
  EM_CDATA_TYPE,
  EM_CDATA_CHECK,
  EM_TYPE,
  EM_DEEP,
  EM_LSTACK,
  EM_STRLEN,
  EM_BIGTABLE,
  EM_DUMP,
  EM_NUPVALS,
  EM_NREFS,
  /* decoder */
  EM_TRUNC,
  EM_TAG,
  EM_SIZES,
  EM_REF,
  EM_KEYNIL,
  EM_KEYNAN,
  EM_NOFUNC,
  EM_NOTBC,
  EM_BCLOAD,
  EM_UPVMISMATCH,
  EM_NOREQUIRE,
  EM_MODNAME,
  EM_MODLOAD,
  EM_MODTYPE,
  EM_MODFIELD,
  EM_NOCDATA,
  EM_CDATANEW,
  EM_LIGHTUD,
  EM__COUNT
};

static const char *const msg_text[EM__COUNT] = {
  [EM_NOMEM]       = "out of memory",
  [EM_USERDATA]    = "cannot send userdata",
  [EM_COROUTINE]   = "cannot send coroutine",
  [EM_CFUNCTION]   = "cannot send C function",
  [EM_FUNCTION]    = "cannot send function",
  [EM_CDATA]       = "cannot send cdata",
  [EM_CDATA_TYPE]  = "cannot send cdata<%s>",
  [EM_CDATA_CHECK] = "cannot send cdata (type check failed: %s)",
  [EM_TYPE]        = "cannot send %s",
  [EM_DEEP]        = "too deep (more than " FP_STR(FP_CODEC_MAX_DEPTH) " levels)",
  [EM_LSTACK]      = "too deep (Lua stack exhausted)",
  [EM_STRLEN]      = "cannot send string of 4 GiB or more",
  [EM_BIGTABLE]    = "cannot send table with more than 2^31 array items",
  [EM_DUMP]        = "cannot dump function bytecode",
  [EM_NUPVALS]     = "cannot send function with more than 255 upvalues",
  [EM_NREFS]       = "cannot send more than 2^31 tables and functions",
  [EM_TRUNC]       = "truncated record",
  [EM_TAG]         = "unknown tag 0x%s",
  [EM_SIZES]       = "table sizes exceed the record",
  [EM_REF]         = "reference to an unknown table/function",
  [EM_KEYNIL]      = "nil table key",
  [EM_KEYNAN]      = "NaN table key",
  [EM_NOFUNC]      = "function record not allowed here",
  [EM_NOTBC]       = "function record is not LuaJIT bytecode",
  [EM_BCLOAD]      = "cannot load function bytecode: %s",
  [EM_UPVMISMATCH] = "function record has the wrong number of upvalues",
  [EM_NOREQUIRE]   = "module reference but no require function",
  [EM_MODNAME]     = "module reference without a string name",
  [EM_MODLOAD]     = "cannot load module '%s': %s",
  [EM_MODTYPE]     = "module '%s' is not a table",
  [EM_MODFIELD]    = "module '%s' has no field '%s'",
  [EM_NOCDATA]     = "int64 record but no cdata constructor",
  [EM_CDATANEW]    = "cannot create cdata: %s",
  [EM_LIGHTUD]     = "bad light userdata pointer",
};

/* Copy msg_text[id] into dst, replacing the first "%s" by a and the second
 * by b (NULL prints "?").  Always NUL-terminates; truncates silently. */
static void fmt_msg(char *dst, size_t cap, enum msg_id id, const char *a,
                    const char *b) {
  const char *f = msg_text[id];
  size_t n = 0;
  int argn = 0;
  while (*f && n + 1 < cap) {
    if (f[0] == '%' && f[1] == 's') {
      const char *s = argn++ == 0 ? a : b;
      if (!s) s = "?";
      while (*s && n + 1 < cap) dst[n++] = *s++;
      f += 2;
    } else {
      dst[n++] = *f++;
    }
  }
  dst[n] = '\0';
}

/* Default options for callers passing NULL. */
static const fp_enc_opts enc_opts_none = {0, 0, 0};
static const fp_dec_opts dec_opts_none = {0, 0, 0};

static inline uint32_t rd_u32(const unsigned char *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* Absolute stack index (pseudo-indexes pass through unchanged). */
static int abs_index(lua_State *L, int idx) {
  return (idx < 0 && idx > LUA_REGISTRYINDEX) ? lua_gettop(L) + idx + 1 : idx;
}

/* Lua stack room is reserved once every STACK_CHECK_EVERY nesting levels,
 * for the next STACK_CHECK_EVERY levels plus a margin, instead of once per
 * table: lua_checkstack is a call, and small records are mostly calls. */
#define STACK_CHECK_EVERY 16
#define STACK_ROOM(per_level) ((STACK_CHECK_EVERY + 2) * (per_level))

/* ========================================================================
 * Encoder
 * ======================================================================== */

/* Tables/functions whose ids are remembered by address in enc.fast before a
 * Lua "seen" table is created: small records never allocate one.  Addresses
 * are stable (LuaJIT's GC does not move objects) and unique while the value
 * is reachable from the root, which holds for the whole call because the
 * helpers we call (cdata_idx) must not modify the value being encoded. */
#define ENC_FAST_SEEN 8

/* Lua stack slots one table level needs on top of its own slot: key, value,
 * an array item fetched with rawgeti, and 3 for a lookup (modmap/seen) or a
 * helper call (function + argument + result) made by a scalar at this level. */
#define ENC_SLOTS 6

/* Path tail (segments collected while unwinding) gets at most this many
 * bytes of err->path; the rest is kept for the root. */
#define PATH_TAIL_MAX 192

typedef struct enc {
  lua_State *L;
  fp_buf *b;
  const fp_enc_opts *o;
  fp_codec_err *err;
  int seen_slot;       /* stack slot reserved for the seen table (nil until needed) */
  int depth;           /* tables/functions currently open */
  uint32_t nref;       /* ids handed out so far */
  fp_path_tail pt;     /* the failing value's path, built while unwinding */
  int dump_oom;        /* dump_writer ran out of memory (err->msg is set) */
  const void *fast[ENC_FAST_SEEN]; /* objects with ids 0 .. ENC_FAST_SEEN-1 */
} enc;

/* ---- error reporting: the message at the failure site, the path while
 * unwinding (each level prepends its own segment; nothing on success). */

FP_COLD static int enc_fail(enc *e, int code, enum msg_id id, const char *a) {
  fmt_msg(e->err->msg, sizeof e->err->msg, id, a, NULL);
  return code;
}

/* Segment for the value stored under the key at stack slot `key`:
 * .name, ["other string"], [3], [1.5], [true], or [<type>] (e.g. [table]). */
FP_COLD static void path_key(enc *e, int key) {
  lua_State *L = e->L;
  char buf[96];
  size_t n = 0;
  switch (lua_type(L, key)) {
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, key, &len);
    if (len <= 48 && fp_is_identifier(s, len)) {
      buf[n++] = '.';
      memcpy(buf + n, s, len);
      n += len;
      break;
    }
    /* Quoted, at most 40 source bytes; bytes that would make the path
     * unreadable (controls, non-ASCII) become '?'. */
    buf[n++] = '[';
    buf[n++] = '"';
    for (size_t i = 0; i < len && i < 40; i++) {
      unsigned char c = (unsigned char)s[i];
      if (c == '"' || c == '\\') buf[n++] = '\\';
      buf[n++] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    if (len > 40) { memcpy(buf + n, "...", 3); n += 3; }
    buf[n++] = '"';
    buf[n++] = ']';
    break;
  }
  case LUA_TNUMBER: {
    double d = lua_tonumber(L, key);
    int k;
    if (d == floor(d) && fabs(d) < 9007199254740992.0)
      k = snprintf(buf, sizeof buf, "[%lld]", (long long)d);
    else
      k = snprintf(buf, sizeof buf, "[%.17g]", d);
    n = (size_t)k;
    break;
  }
  case LUA_TBOOLEAN:
    n = (size_t)snprintf(buf, sizeof buf, "[%s]",
                         lua_toboolean(L, key) ? "true" : "false");
    break;
  default:
    n = (size_t)snprintf(buf, sizeof buf, "[%s]",
                         lua_typename(L, lua_type(L, key)));
    break;
  }
  fp_path_prepend(&e->pt, buf, n);
}

FP_COLD static void path_upvalue(enc *e, const char *name, int i) {
  char buf[96];
  int n = name && *name
            ? snprintf(buf, sizeof buf, "<upvalue '%.60s'>", name)
            : snprintf(buf, sizeof buf, "<upvalue #%d>", i);
  fp_path_prepend(&e->pt, buf, (size_t)n);
}

/* Turn the collected tail into "root" + tail (or root + "..." + tail). */
static void path_finish(enc *e, const char *root) {
  char *p = e->err->path;
  size_t cap = sizeof e->err->path;
  size_t dots = e->pt.trunc ? 3 : 0;
  size_t rlen = root ? strlen(root) : 0;
  if (rlen > cap - 1 - dots - e->pt.len) rlen = cap - 1 - dots - e->pt.len;
  memmove(p + rlen + dots, p + cap - 1 - e->pt.len, e->pt.len);
  if (rlen) memcpy(p, root, rlen);
  memcpy(p + rlen, "...", dots);
  p[rlen + dots + e->pt.len] = '\0';
}

/* ---- output buffer: one capacity check per record, growth out of line */

FP_COLD static int wr_grow(enc *e, size_t n) {
  if (fp_buf_reserve(e->b, n) != FP_OK)
    return enc_fail(e, FP_ENOMEM, EM_NOMEM, NULL);
  return FP_OK;
}

static inline int wr_need(enc *e, size_t n) {
  if (n <= e->b->cap - e->b->len) return FP_OK;
  return wr_grow(e, n);
}

static inline int put_tag(enc *e, unsigned tag) {
  if (wr_need(e, 1)) return FP_ENOMEM;
  e->b->p[e->b->len++] = (unsigned char)tag;
  return FP_OK;
}

static inline int put_tag_u32(enc *e, unsigned tag, uint32_t v) {
  if (wr_need(e, 5)) return FP_ENOMEM;
  unsigned char *w = e->b->p + e->b->len;
  w[0] = (unsigned char)tag;
  memcpy(w + 1, &v, 4);
  e->b->len += 5;
  return FP_OK;
}

static inline int put_tag_u64(enc *e, unsigned tag, const void *src8) {
  if (wr_need(e, 9)) return FP_ENOMEM;
  unsigned char *w = e->b->p + e->b->len;
  w[0] = (unsigned char)tag;
  memcpy(w + 1, src8, 8);
  e->b->len += 9;
  return FP_OK;
}

/* INT32 only for integral values in int32 range that are not -0.0 (the range
 * test comes first: converting an out-of-range double to int is undefined);
 * every other number as its raw IEEE bits, so NaN/inf/-0.0 survive. */
static inline int put_number(enc *e, double d) {
  if (d >= -2147483648.0 && d <= 2147483647.0) {
    int32_t i = (int32_t)d;
    if ((double)i == d && (i != 0 || !signbit(d)))
      return put_tag_u32(e, FP_T_INT32, (uint32_t)i);
  }
  return put_tag_u64(e, FP_T_DOUBLE, &d);
}

static inline int put_string(enc *e, const char *s, size_t n) {
  unsigned char *w;
  if (n < 256) {
    if (wr_need(e, 2 + n)) return FP_ENOMEM;
    w = e->b->p + e->b->len;
    w[0] = FP_T_STR8;
    w[1] = (unsigned char)n;
    memcpy(w + 2, s, n);
    e->b->len += 2 + n;
    return FP_OK;
  }
  if (n > UINT32_MAX) return enc_fail(e, FP_EMARSHAL, EM_STRLEN, NULL);
  if (wr_need(e, 5 + n)) return FP_ENOMEM;
  w = e->b->p + e->b->len;
  w[0] = FP_T_STR32;
  uint32_t n32 = (uint32_t)n;
  memcpy(w + 1, &n32, 4);
  memcpy(w + 5, s, n);
  e->b->len += 5 + n;
  return FP_OK;
}

/* ---- identity: ids of tables/functions already sent in this value */

/* Id of the object at idx (address ptr) if it was sent before, else -1. */
static int64_t seen_get(enc *e, int idx, const void *ptr) {
  uint32_t nfast = e->nref < ENC_FAST_SEEN ? e->nref : ENC_FAST_SEEN;
  for (uint32_t i = 0; i < nfast; i++)
    if (e->fast[i] == ptr) return (int64_t)i;
  if (e->nref <= ENC_FAST_SEEN) return -1; /* no seen table yet */
  lua_State *L = e->L;
  int64_t id = -1;
  lua_pushvalue(L, idx);
  lua_rawget(L, e->seen_slot);
  if (lua_type(L, -1) == LUA_TNUMBER) id = (int64_t)lua_tonumber(L, -1);
  lua_pop(L, 1);
  return id;
}

/* Give the object at idx the next id. */
static int seen_add(enc *e, int idx, const void *ptr) {
  uint32_t id = e->nref;
  if (id >= (uint32_t)INT32_MAX) return enc_fail(e, FP_EMARSHAL, EM_NREFS, NULL);
  e->nref++;
  if (id < ENC_FAST_SEEN) {
    e->fast[id] = ptr;
    return FP_OK;
  }
  lua_State *L = e->L;
  if (id == ENC_FAST_SEEN) { /* first overflow: now the Lua table pays off */
    lua_createtable(L, 0, 16);
    lua_replace(L, e->seen_slot);
  }
  lua_pushvalue(L, idx);
  lua_pushnumber(L, (lua_Number)id);
  lua_rawset(L, e->seen_slot);
  return FP_OK;
}

/* ---- values */

static int enc_value(enc *e, int idx);
static int enc_typed(enc *e, int idx, int type);

/* Room on the Lua stack for the level about to open (see STACK_ROOM). */
static inline int enc_level_room(enc *e) {
  return (e->depth + 1) % STACK_CHECK_EVERY != 0 ||
         lua_checkstack(e->L, STACK_ROOM(ENC_SLOTS));
}

/* If modmap[value at idx] is a string, send MODREF/MODFIELD and return 1;
 * 0 when the value is not in the modmap; a negative code on error.
 * "mod" -> MODREF mod; "mod\0field" -> MODFIELD mod field (module names
 * may contain dots, so NUL is the separator). */
static int enc_modref(enc *e, int idx) {
  lua_State *L = e->L;
  lua_pushvalue(L, idx);
  lua_rawget(L, e->o->modmap_idx);
  if (lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    return 0;
  }
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  const char *z = memchr(s, '\0', n);
  int rc;
  if (!z) {
    rc = put_tag(e, FP_T_MODREF);
    if (!rc) rc = put_string(e, s, n);
  } else {
    size_t m = (size_t)(z - s);
    rc = put_tag(e, FP_T_MODFIELD);
    if (!rc) rc = put_string(e, s, m);
    if (!rc) rc = put_string(e, z + 1, n - m - 1);
  }
  lua_pop(L, 1);
  return rc ? rc : 1;
}

/* Flush array items *next .. upto with rawgeti (holes become NIL). */
static int enc_array_upto(enc *e, int t, size_t *next, size_t upto) {
  lua_State *L = e->L;
  int slot = lua_gettop(L) + 1;
  for (size_t j = *next; j <= upto; j++) {
    lua_rawgeti(L, t, (int)j);
    int rc = enc_value(e, slot);
    if (rc) {
      fp_path_index(&e->pt, j);
      return rc;
    }
    lua_settop(L, slot - 1);
  }
  *next = upto + 1;
  return FP_OK;
}

/*
 * TABLE body.  One lua_next pass does both parts: LuaJIT visits the array
 * part first, in index order, so keys 1, 2, 3... normally arrive exactly in
 * the order the array section needs them and are written as they come.  Any
 * gap (a hole, or an item living in the hash part) is filled with rawgeti;
 * before the first hash pair the rest of 1..narr is flushed the same way, and
 * integer keys in [1, narr] met afterwards are skipped as already sent.  So
 * each t[1..narr] is written once, in order, and big arrays are walked once.
 */
static int enc_table_body(enc *e, int t, const void *ptr) {
  lua_State *L = e->L;
  int rc;
  if (e->depth >= FP_CODEC_MAX_DEPTH)
    return enc_fail(e, FP_EMARSHAL, EM_DEEP, NULL);
  if (!enc_level_room(e))
    return enc_fail(e, FP_EMARSHAL, EM_LSTACK, NULL);
  size_t narr = lua_objlen(L, t);
  if (narr > (size_t)INT_MAX) /* rawgeti takes an int */
    return enc_fail(e, FP_EMARSHAL, EM_BIGTABLE, NULL);
  if ((rc = seen_add(e, t, ptr))) return rc;
  if (wr_need(e, 9)) return FP_ENOMEM;
  size_t hdr = e->b->len;
  unsigned char *w = e->b->p + hdr;
  uint32_t narr32 = (uint32_t)narr, nhash = 0;
  w[0] = FP_T_TABLE;
  memcpy(w + 1, &narr32, 4);
  memset(w + 5, 0, 4); /* nhash, patched at the end */
  e->b->len += 9;
  e->depth++;

  const int key = lua_gettop(L) + 1, val = key + 1;
  size_t next = 1; /* next array index to write */
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int kt = lua_type(L, key);
    if (kt == LUA_TNUMBER) {
      double k = lua_tonumber(L, key);
      if (k == (double)next && next <= narr) { /* the common case */
        if ((rc = enc_value(e, val))) {
          fp_path_index(&e->pt, next);
          return rc;
        }
        next++;
        lua_settop(L, key);
        continue;
      }
      if (k >= 1.0 && k <= (double)narr && k == (double)(size_t)k) {
        size_t ki = (size_t)k;
        if (ki > next) { /* out of order: fill the gap, then this one */
          if ((rc = enc_array_upto(e, t, &next, ki - 1))) return rc;
          if ((rc = enc_value(e, val))) {
            fp_path_index(&e->pt, ki);
            return rc;
          }
          next = ki + 1;
        } /* else: sent already */
        lua_settop(L, key);
        continue;
      }
    }
    /* A hash pair: the array section must be complete first. */
    if (next <= narr && (rc = enc_array_upto(e, t, &next, narr))) return rc;
    if ((rc = enc_typed(e, key, kt))) {
      fp_path_prepend(&e->pt, "<key>", 5);
      return rc;
    }
    if ((rc = enc_value(e, val))) {
      path_key(e, key);
      return rc;
    }
    nhash++;
    lua_settop(L, key);
  }
  if (next <= narr && (rc = enc_array_upto(e, t, &next, narr))) return rc;
  memcpy(e->b->p + hdr + 5, &nhash, 4);
  e->depth--;
  return FP_OK;
}

static int enc_table(enc *e, int idx) {
  if (e->o->modmap_idx) {
    int rc = enc_modref(e, idx);
    if (rc) return rc < 0 ? rc : FP_OK;
  }
  const void *ptr = lua_topointer(e->L, idx);
  int64_t id = seen_get(e, idx, ptr);
  if (id >= 0) return put_tag_u32(e, FP_T_REF, (uint32_t)id);
  return enc_table_body(e, idx, ptr);
}

/* lua_dump writer: appends to the output; 1 stops the dump on OOM. */
static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L;
  enc *e = ud;
  if (wr_need(e, sz)) {
    e->dump_oom = 1;
    return 1;
  }
  memcpy(e->b->p + e->b->len, p, sz);
  e->b->len += sz;
  return 0;
}

/* FUNC: bytecode with debug info (upvalue names), then upvalues by value. */
static int enc_function(enc *e, int idx) {
  lua_State *L = e->L;
  int rc;
  if (e->o->modmap_idx && (rc = enc_modref(e, idx))) return rc < 0 ? rc : FP_OK;
  if (lua_iscfunction(L, idx))
    return enc_fail(e, FP_EMARSHAL, EM_CFUNCTION, NULL);
  if (!(e->o->flags & FP_ENC_FUNCTIONS))
    return enc_fail(e, FP_EMARSHAL, EM_FUNCTION, NULL);
  const void *ptr = lua_topointer(L, idx);
  int64_t id = seen_get(e, idx, ptr);
  if (id >= 0) return put_tag_u32(e, FP_T_REF, (uint32_t)id);
  if (e->depth >= FP_CODEC_MAX_DEPTH)
    return enc_fail(e, FP_EMARSHAL, EM_DEEP, NULL);
  if (!enc_level_room(e))
    return enc_fail(e, FP_EMARSHAL, EM_LSTACK, NULL);
  if ((rc = seen_add(e, idx, ptr))) return rc;
  if ((rc = put_tag_u32(e, FP_T_FUNC, 0))) return rc;
  size_t lenpos = e->b->len - 4, start = e->b->len;
  lua_pushvalue(L, idx); /* lua_dump dumps the function on top */
  int st = lua_dump(L, dump_writer, e);
  lua_pop(L, 1);
  if (e->dump_oom) return FP_ENOMEM;
  if (st) return enc_fail(e, FP_EMARSHAL, EM_DUMP, NULL);
  size_t bclen = e->b->len - start;
  if (bclen > UINT32_MAX) return enc_fail(e, FP_EMARSHAL, EM_DUMP, NULL);
  uint32_t bc32 = (uint32_t)bclen;
  memcpy(e->b->p + lenpos, &bc32, 4);
  if ((rc = put_tag(e, 0))) return rc; /* nups, patched below */
  size_t nupspos = e->b->len - 1;
  e->depth++;
  int i;
  for (i = 1;; i++) {
    const char *name = lua_getupvalue(L, idx, i);
    if (!name) break;
    if (i > 255) return enc_fail(e, FP_EMARSHAL, EM_NUPVALS, NULL);
    int slot = lua_gettop(L);
    if ((rc = enc_value(e, slot))) {
      path_upvalue(e, name, i);
      return rc;
    }
    lua_settop(L, slot - 1);
  }
  e->b->p[nupspos] = (unsigned char)(i - 1);
  e->depth--;
  return FP_OK;
}

/* cdata: ask the cdata_idx helper what it is; boxed 64-bit integers go by
 * value (their 8 payload bytes, read through lua_topointer). */
static int enc_cdata(enc *e, int idx) {
  lua_State *L = e->L;
  if (!e->o->cdata_idx) return enc_fail(e, FP_EMARSHAL, EM_CDATA, NULL);
  lua_pushvalue(L, e->o->cdata_idx);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0)) {
    int rc = enc_fail(e, FP_EMARSHAL, EM_CDATA_CHECK, lua_tostring(L, -1));
    lua_pop(L, 1);
    return rc;
  }
  int rc;
  const char *kind = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  if (kind && (strcmp(kind, "i64") == 0 || strcmp(kind, "u64") == 0)) {
    const void *payload = lua_topointer(L, idx);
    rc = put_tag_u64(e, kind[0] == 'i' ? FP_T_INT64 : FP_T_UINT64, payload);
  } else if (kind && strncmp(kind, "shptr:", 6) == 0) {
    /* A pointer into the shared arena: its value, then its C type. */
    const void *payload = lua_topointer(L, idx);
    rc = put_tag_u64(e, FP_T_SHPTR, payload);
    if (rc == FP_OK) rc = put_string(e, kind + 6, strlen(kind + 6));
  } else if (kind) {
    rc = enc_fail(e, FP_EMARSHAL, EM_CDATA_TYPE, kind);
  } else {
    rc = enc_fail(e, FP_EMARSHAL, EM_CDATA, NULL);
  }
  lua_pop(L, 1);
  return rc;
}

/* Everything that is not a plain scalar, a table or a function. */
FP_COLD static int enc_other(enc *e, int idx, int type) {
  lua_State *L = e->L;
  switch (type) {
  case LUA_TLIGHTUSERDATA: {
    uint64_t v = (uint64_t)(uintptr_t)lua_touserdata(L, idx);
    return put_tag_u64(e, FP_T_LIGHTUD, &v);
  }
  case LUA_TUSERDATA:
    if (e->o->modmap_idx) {
      int rc = enc_modref(e, idx);
      if (rc) return rc < 0 ? rc : FP_OK;
    }
    return enc_fail(e, FP_EMARSHAL, EM_USERDATA, NULL);
  case LUA_TTHREAD:
    return enc_fail(e, FP_EMARSHAL, EM_COROUTINE, NULL);
  case FP_LUA_TCDATA:
    return enc_cdata(e, idx);
  default:
    return enc_fail(e, FP_EMARSHAL, EM_TYPE, lua_typename(L, type));
  }
}

/* The value at idx, whose lua_type is already known. */
static int enc_typed(enc *e, int idx, int type) {
  lua_State *L = e->L;
  switch (type) {
  case LUA_TNUMBER:
    return put_number(e, lua_tonumber(L, idx));
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    return put_string(e, s, n);
  }
  case LUA_TBOOLEAN:
    return put_tag(e, lua_toboolean(L, idx) ? FP_T_TRUE : FP_T_FALSE);
  case LUA_TNIL:
    return put_tag(e, FP_T_NIL);
  case LUA_TTABLE:
    return enc_table(e, idx);
  case LUA_TFUNCTION:
    return enc_function(e, idx);
  default:
    return enc_other(e, idx, type);
  }
}

static int enc_value(enc *e, int idx) {
  return enc_typed(e, idx, lua_type(e->L, idx));
}

static void enc_init(enc *e, lua_State *L, fp_buf *out, const fp_enc_opts *o,
                     fp_codec_err *err) {
  e->L = L;
  e->b = out;
  e->o = o ? o : &enc_opts_none;
  e->err = err;
  e->seen_slot = 0;
  e->depth = 0;
  e->nref = 0;
  fp_path_tail_init(&e->pt, e->err->path, sizeof e->err->path, PATH_TAIL_MAX);
  e->dump_oom = 0;
}

/* One top-level value: fresh ids; the seen slot is reserved only when the
 * value can contain references.  The caller has made STACK_ROOM(ENC_SLOTS)
 * + 1 slots of room.  Leaves the stack as it found it.  On error the path
 * tail is in e (the caller finishes it with its root). */
static int enc_root(enc *e, int idx) {
  lua_State *L = e->L;
  int type = lua_type(L, idx);
  e->depth = 0;
  e->nref = 0;
  fp_path_tail_init(&e->pt, e->err->path, sizeof e->err->path, PATH_TAIL_MAX);
  e->dump_oom = 0;
  if (type != LUA_TTABLE && type != LUA_TFUNCTION) {
    e->seen_slot = 0; /* never used: nothing inside can be a table */
    return enc_typed(e, idx, type); /* scalars leave the stack balanced */
  }
  int top = lua_gettop(L);
  lua_pushnil(L);
  e->seen_slot = top + 1;
  int rc = enc_typed(e, idx, type);
  lua_settop(L, top);
  return rc;
}

int fp_encode_value(lua_State *L, int idx, fp_buf *out, const fp_enc_opts *o,
                    const char *root, fp_codec_err *err) {
  enc e;
  size_t len0 = out->len;
  int rc;
  enc_init(&e, L, out, o, err);
  if (!lua_checkstack(L, STACK_ROOM(ENC_SLOTS) + 1))
    rc = enc_fail(&e, FP_EMARSHAL, EM_LSTACK, NULL);
  else
    rc = enc_root(&e, abs_index(L, idx));
  if (rc) {
    out->len = len0;
    path_finish(&e, root);
  }
  return rc;
}

int fp_encode_range(lua_State *L, int tidx, int64_t first, size_t n,
                    fp_buf *out, const fp_enc_opts *o, const char *root,
                    int64_t label_base, fp_codec_err *err) {
  enc e;
  size_t len0 = out->len;
  int top = lua_gettop(L);
  enc_init(&e, L, out, o, err);
  tidx = abs_index(L, tidx);
  if (!lua_checkstack(L, STACK_ROOM(ENC_SLOTS) + 2)) {
    enc_fail(&e, FP_EMARSHAL, EM_LSTACK, NULL);
    path_finish(&e, root);
    return FP_EMARSHAL;
  }
  for (size_t k = 0; k < n; k++) {
    /* Unsigned arithmetic: wraps instead of overflowing (no UB). */
    int64_t i = (int64_t)((uint64_t)first + k);
    if (i >= INT_MIN && i <= INT_MAX) {
      lua_rawgeti(L, tidx, (int)i);
    } else {
      lua_pushnumber(L, (lua_Number)i);
      lua_rawget(L, tidx);
    }
    int rc = enc_root(&e, top + 1);
    lua_settop(L, top);
    if (rc) {
      char label[160];
      snprintf(label, sizeof label, "%.120s[%lld]", root ? root : "",
               (long long)(int64_t)((uint64_t)label_base + k));
      path_finish(&e, label);
      out->len = len0;
      return rc;
    }
  }
  return FP_OK;
}

/* ========================================================================
 * Decoder
 * ======================================================================== */

/* Reference ids below this live on the Lua stack: id 0 (always the
 * top-level table/function itself) in its own slot, ids 1 .. DEC_STACK_REFS-1
 * in slots reserved right above it with one lua_settop; higher ids go to a
 * Lua table created on demand in one more reserved slot. */
#define DEC_STACK_REFS 8

/* Lua stack slots one table/function level needs: key, value, and 3 for a
 * helper call (function + argument + result) or a module field lookup. */
#define DEC_SLOTS 5

/* Room on the Lua stack for the level about to open (see STACK_ROOM). */
#define DEC_LEVEL_ROOM(d) \
  (((d)->depth + 1) % STACK_CHECK_EVERY != 0 || lua_checkstack((d)->L, STACK_ROOM(DEC_SLOTS)))

/* Size hints for lua_createtable are capped: they are only hints, and a
 * too-big one would make LuaJIT raise "table overflow". */
#define DEC_HINT_ARR (1u << 24)
#define DEC_HINT_HASH (1u << 22)

typedef struct dec {
  lua_State *L;
  const unsigned char *p;     /* next byte to read */
  const unsigned char *end;   /* one past the last readable byte */
  const unsigned char *start; /* the caller's p: offsets in messages */
  const fp_dec_opts *o;
  fp_codec_err *err;
  int depth;
  uint32_t nref;
  int refslot; /* slot of id 0 (the root), 0 until the root gets its id */
} dec;

FP_COLD static int dec_fail(dec *d, int code, enum msg_id id, const char *a,
                            const char *b) {
  fmt_msg(d->err->msg, sizeof d->err->msg, id, a, b);
  size_t n = strlen(d->err->msg);
  snprintf(d->err->msg + n, sizeof d->err->msg - n, " (at byte %zu)",
           (size_t)(d->p - d->start));
  d->err->path[0] = '\0';
  return code;
}

FP_COLD static int dec_corrupt(dec *d, enum msg_id id) {
  return dec_fail(d, FP_ECORRUPT, id, NULL, NULL);
}

#define NEED(d, n) \
  do { if ((size_t)((d)->end - (d)->p) < (size_t)(n)) return dec_corrupt((d), EM_TRUNC); } while (0)

static int dec_value(dec *d);

/* Remember the object at idx as the next reference id. */
static int dec_addref(dec *d, int idx) {
  lua_State *L = d->L;
  uint32_t id = d->nref;
  if (id >= (uint32_t)INT32_MAX) return dec_corrupt(d, EM_REF);
  d->nref++;
  if (id == 0) {
    /* The first table/function of a value is the value itself (nothing
     * else can contain one), in its final slot: reserve the others above. */
    d->refslot = idx;
    lua_settop(L, idx + DEC_STACK_REFS);
    return FP_OK;
  }
  if (id < DEC_STACK_REFS) {
    lua_pushvalue(L, idx);
    lua_replace(L, d->refslot + (int)id);
    return FP_OK;
  }
  int tab = d->refslot + DEC_STACK_REFS;
  if (id == DEC_STACK_REFS) {
    lua_createtable(L, 16, 0);
    lua_replace(L, tab);
  }
  lua_pushvalue(L, idx);
  lua_rawseti(L, tab, (int)(id - DEC_STACK_REFS + 1));
  return FP_OK;
}

static int dec_ref(dec *d) {
  NEED(d, 4);
  uint32_t id = rd_u32(d->p);
  if (id >= d->nref) return dec_corrupt(d, EM_REF);
  d->p += 4;
  if (id < DEC_STACK_REFS)
    lua_pushvalue(d->L, d->refslot + (int)id);
  else
    lua_rawgeti(d->L, d->refslot + DEC_STACK_REFS, (int)(id - DEC_STACK_REFS + 1));
  return FP_OK;
}

static int dec_table(dec *d) {
  lua_State *L = d->L;
  NEED(d, 8);
  uint32_t narr = rd_u32(d->p), nhash = rd_u32(d->p + 4);
  d->p += 8;
  /* Every value takes at least one byte and every pair two: sizes the rest
   * of the record cannot hold are corrupt (and never turn into huge
   * allocations). */
  size_t rest = (size_t)(d->end - d->p);
  if (narr > rest || nhash > (rest - narr) / 2 || narr > (uint32_t)INT_MAX)
    return dec_corrupt(d, EM_SIZES);
  if (d->depth >= FP_CODEC_MAX_DEPTH) return dec_corrupt(d, EM_DEEP);
  if (!DEC_LEVEL_ROOM(d)) return dec_corrupt(d, EM_LSTACK);
  d->depth++;
  lua_createtable(L, (int)(narr < DEC_HINT_ARR ? narr : DEC_HINT_ARR),
                  (int)(nhash < DEC_HINT_HASH ? nhash : DEC_HINT_HASH));
  const int t = lua_gettop(L);
  int rc;
  if ((rc = dec_addref(d, t))) return rc;
  for (uint32_t i = 1; i <= narr; i++) {
    /* Inline the common scalars; anything else goes through dec_value. */
    NEED(d, 1);
    switch (*d->p) {
    case FP_T_NIL: /* a hole */
      d->p++;
      continue;
    case FP_T_DOUBLE: {
      double v;
      NEED(d, 9);
      memcpy(&v, d->p + 1, 8);
      d->p += 9;
      lua_pushnumber(L, v);
      break;
    }
    case FP_T_INT32: {
      NEED(d, 5);
      int32_t v = (int32_t)rd_u32(d->p + 1);
      d->p += 5;
      lua_pushnumber(L, (lua_Number)v);
      break;
    }
    default:
      if ((rc = dec_value(d))) return rc;
      break;
    }
    lua_rawseti(L, t, (int)i);
  }
  for (uint32_t i = 0; i < nhash; i++) {
    /* nil and NaN keys would make lua_rawset raise.  The tag tells, except
     * for module references, which resolve to whatever require gives. */
    NEED(d, 1);
    unsigned ktag = *d->p;
    if (ktag == FP_T_NIL) return dec_corrupt(d, EM_KEYNIL);
    if (ktag == FP_T_DOUBLE) {
      double k;
      NEED(d, 9);
      memcpy(&k, d->p + 1, 8);
      if (k != k) return dec_corrupt(d, EM_KEYNAN);
    }
    if ((rc = dec_value(d))) return rc;
    if (ktag == FP_T_MODREF || ktag == FP_T_MODFIELD) {
      if (lua_isnil(L, -1)) return dec_corrupt(d, EM_KEYNIL);
      if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) != lua_tonumber(L, -1))
        return dec_corrupt(d, EM_KEYNAN);
    }
    if ((rc = dec_value(d))) return rc;
    lua_rawset(L, t);
  }
  d->depth--;
  return FP_OK;
}

/* A STR8/STR32 value inside a MODREF/MODFIELD record, pushed. */
static int dec_name(dec *d) {
  NEED(d, 1);
  unsigned tag = *d->p;
  size_t n;
  if (tag == FP_T_STR8) {
    NEED(d, 2);
    n = d->p[1];
    d->p += 2;
  } else if (tag == FP_T_STR32) {
    NEED(d, 5);
    n = rd_u32(d->p + 1);
    d->p += 5;
  } else {
    return dec_corrupt(d, EM_MODNAME);
  }
  NEED(d, n);
  lua_pushlstring(d->L, (const char *)d->p, n);
  d->p += n;
  return FP_OK;
}

/* MODREF name -> require(name); MODFIELD name field -> require(name)[field]
 * (rawget: no metamethods run on the receiver's side). */
static int dec_modref(dec *d, unsigned tag) {
  lua_State *L = d->L;
  int rc;
  if (!d->o->require_idx) return dec_corrupt(d, EM_NOREQUIRE);
  if (!lua_checkstack(L, DEC_SLOTS)) return dec_corrupt(d, EM_LSTACK);
  int name = lua_gettop(L) + 1;
  if ((rc = dec_name(d))) return rc;
  if (tag == FP_T_MODFIELD && (rc = dec_name(d))) return rc;
  /* stack: name [field] */
  lua_pushvalue(L, d->o->require_idx);
  lua_pushvalue(L, name);
  if (lua_pcall(L, 1, 1, 0)) {
    const char *why = lua_tostring(L, -1);
    return dec_fail(d, FP_EMARSHAL, EM_MODLOAD, lua_tostring(L, name),
                    why ? why : "error object is not a string");
  }
  /* stack: name [field] module */
  if (tag == FP_T_MODFIELD) {
    if (lua_type(L, -1) != LUA_TTABLE)
      return dec_fail(d, FP_EMARSHAL, EM_MODTYPE, lua_tostring(L, name), NULL);
    lua_pushvalue(L, name + 1);
    lua_rawget(L, -2);
    if (lua_isnil(L, -1))
      return dec_fail(d, FP_EMARSHAL, EM_MODFIELD, lua_tostring(L, name),
                      lua_tostring(L, name + 1));
  }
  lua_replace(L, name);
  lua_settop(L, name);
  return FP_OK;
}

static int dec_function(dec *d) {
  lua_State *L = d->L;
  int rc;
  if (!(d->o->flags & FP_DEC_FUNCTIONS)) return dec_corrupt(d, EM_NOFUNC);
  NEED(d, 4);
  uint32_t bclen = rd_u32(d->p);
  d->p += 4;
  NEED(d, bclen);
  /* Text chunks would compile arbitrary source: only accept bytecode (the
   * bytecode itself is trusted: only workers, fed by their parent, load it). */
  if (bclen < 4 || memcmp(d->p, "\x1bLJ", 3) != 0) return dec_corrupt(d, EM_NOTBC);
  if (d->depth >= FP_CODEC_MAX_DEPTH) return dec_corrupt(d, EM_DEEP);
  if (!DEC_LEVEL_ROOM(d)) return dec_corrupt(d, EM_LSTACK);
  if (luaL_loadbufferx(L, (const char *)d->p, bclen, "=forkpool", "b")) {
    return dec_fail(d, FP_ECORRUPT, EM_BCLOAD, lua_tostring(L, -1), NULL);
  }
  d->p += bclen;
  const int f = lua_gettop(L);
  /* The id comes before the upvalues: a recursive function's upvalue is a
   * REF to the function itself. */
  if ((rc = dec_addref(d, f))) return rc;
  NEED(d, 1);
  unsigned nups = *d->p++;
  lua_Debug ar;
  lua_pushvalue(L, f);
  lua_getinfo(L, ">u", &ar);
  if ((unsigned)ar.nups != nups) return dec_corrupt(d, EM_UPVMISMATCH);
  d->depth++;
  for (unsigned i = 1; i <= nups; i++) {
    if ((rc = dec_value(d))) return rc;
    if (!lua_setupvalue(L, f, (int)i)) return dec_corrupt(d, EM_UPVMISMATCH);
  }
  d->depth--;
  return FP_OK;
}

static int dec_int64(dec *d, unsigned tag) {
  lua_State *L = d->L;
  NEED(d, 8);
  if (!d->o->cdata_new_idx) return dec_corrupt(d, EM_NOCDATA);
  lua_pushvalue(L, d->o->cdata_new_idx);
  lua_pushstring(L, tag == FP_T_INT64 ? "i64" : "u64");
  if (lua_pcall(L, 1, 1, 0))
    return dec_fail(d, FP_EMARSHAL, EM_CDATANEW, lua_tostring(L, -1), NULL);
  void *dst = (void *)(uintptr_t)lua_topointer(L, -1);
  if (lua_type(L, -1) != FP_LUA_TCDATA || !dst)
    return dec_fail(d, FP_EMARSHAL, EM_CDATANEW, "constructor returned no cdata", NULL);
  memcpy(dst, d->p, 8);
  d->p += 8;
  return FP_OK;
}

/* SHPTR: the cdata helper makes a NULL pointer of the named type (and
 * refuses addresses outside the shared arena); the 8 bytes are its value. */
static int dec_shptr(dec *d) {
  lua_State *L = d->L;
  int rc;
  NEED(d, 8);
  if (!d->o->cdata_new_idx) return dec_corrupt(d, EM_NOCDATA);
  if (!lua_checkstack(L, DEC_SLOTS)) return dec_corrupt(d, EM_LSTACK);
  /* Read once: the bytes may be in memory a worker can still write, and
   * the value the helper checks must be the value stored. */
  unsigned char addr[8];
  memcpy(addr, d->p, 8);
  d->p += 8;
  int name = lua_gettop(L) + 1;
  if ((rc = dec_name(d))) return rc;
  lua_pushvalue(L, d->o->cdata_new_idx);
  lua_pushliteral(L, "shptr");
  lua_pushvalue(L, name);
  lua_pushlstring(L, (const char *)addr, 8);
  if (lua_pcall(L, 3, 1, 0))
    return dec_fail(d, FP_EMARSHAL, EM_CDATANEW, lua_tostring(L, -1), NULL);
  void *dst = (void *)(uintptr_t)lua_topointer(L, -1);
  if (lua_type(L, -1) != FP_LUA_TCDATA || !dst)
    return dec_fail(d, FP_EMARSHAL, EM_CDATANEW, "constructor returned no cdata", NULL);
  memcpy(dst, addr, 8);
  lua_replace(L, name);
  lua_settop(L, name);
  return FP_OK;
}

/* Runs under lua_pcall: some LuaJIT builds raise on light userdata pointers
 * they cannot represent, and the decoder must not raise on bad input. */
static int push_lightud(lua_State *L) {
  uint64_t v = (uint64_t)lua_tonumber(L, 1);
  lua_pushlightuserdata(L, (void *)(uintptr_t)v);
  return 1;
}

static int dec_lightud(dec *d) {
  lua_State *L = d->L;
  uint64_t v;
  NEED(d, 8);
  memcpy(&v, d->p, 8);
  /* User-space pointers have at most 47 significant bits on the 64-bit
   * targets LuaJIT supports (and then fit a double exactly). */
  if (v >> 47) return dec_corrupt(d, EM_LIGHTUD);
  lua_pushcfunction(L, push_lightud);
  lua_pushnumber(L, (lua_Number)v);
  if (lua_pcall(L, 1, 1, 0)) {
    lua_pop(L, 1);
    return dec_corrupt(d, EM_LIGHTUD);
  }
  d->p += 8;
  return FP_OK;
}

FP_COLD static int dec_bad_tag(dec *d, unsigned tag) {
  char hex[8];
  d->p--; /* point the offset at the tag */
  snprintf(hex, sizeof hex, "%02x", tag);
  return dec_fail(d, FP_ECORRUPT, EM_TAG, hex, NULL);
}

static int dec_value(dec *d) {
  lua_State *L = d->L;
  NEED(d, 1);
  unsigned tag = *d->p++;
  switch (tag) {
  case FP_T_NIL:
    lua_pushnil(L);
    return FP_OK;
  case FP_T_FALSE:
    lua_pushboolean(L, 0);
    return FP_OK;
  case FP_T_TRUE:
    lua_pushboolean(L, 1);
    return FP_OK;
  case FP_T_INT32:
    NEED(d, 4);
    lua_pushnumber(L, (lua_Number)(int32_t)rd_u32(d->p));
    d->p += 4;
    return FP_OK;
  case FP_T_DOUBLE: {
    double v;
    NEED(d, 8);
    memcpy(&v, d->p, 8);
    d->p += 8;
    lua_pushnumber(L, v); /* LuaJIT canonicalizes NaNs it is handed */
    return FP_OK;
  }
  case FP_T_STR8: {
    NEED(d, 1);
    size_t n = *d->p;
    NEED(d, 1 + n);
    lua_pushlstring(L, (const char *)d->p + 1, n);
    d->p += 1 + n;
    return FP_OK;
  }
  case FP_T_STR32: {
    NEED(d, 4);
    size_t n = rd_u32(d->p);
    NEED(d, 4 + n);
    lua_pushlstring(L, (const char *)d->p + 4, n);
    d->p += 4 + n;
    return FP_OK;
  }
  case FP_T_TABLE:
    return dec_table(d);
  case FP_T_REF:
    return dec_ref(d);
  case FP_T_FUNC:
    return dec_function(d);
  case FP_T_MODREF:
  case FP_T_MODFIELD:
    return dec_modref(d, tag);
  case FP_T_INT64:
  case FP_T_UINT64:
    return dec_int64(d, tag);
  case FP_T_LIGHTUD:
    return dec_lightud(d);
  case FP_T_SHPTR:
    return dec_shptr(d);
  default:
    return dec_bad_tag(d, tag);
  }
}

int fp_decode_value(lua_State *L, const unsigned char *p, size_t len,
                    size_t *pos, const fp_dec_opts *o, fp_codec_err *err) {
  dec d;
  d.L = L;
  d.start = p;
  d.p = p + (*pos < len ? *pos : len);
  d.end = p + len;
  d.o = o ? o : &dec_opts_none;
  d.err = err;
  d.depth = 0;
  d.nref = 0;
  d.refslot = 0;
  int top = lua_gettop(L);
  if (!lua_checkstack(L, DEC_STACK_REFS + 1 + STACK_ROOM(DEC_SLOTS)))
    return dec_corrupt(&d, EM_LSTACK);
  int rc = dec_value(&d);
  if (rc) {
    lua_settop(L, top);
    return rc;
  }
  if (d.refslot) lua_settop(L, top + 1); /* drop the reserved ref slots */
  *pos = (size_t)(d.p - p);
  return FP_OK;
}

int fp_decode_range(lua_State *L, int tidx, int64_t first, size_t n,
                    const unsigned char *p, size_t len, size_t *pos,
                    const fp_dec_opts *o, fp_codec_err *err) {
  tidx = abs_index(L, tidx);
  if (!lua_checkstack(L, 3)) {
    dec d = {.L = L, .p = p + (*pos < len ? *pos : len), .end = p + len,
             .start = p, .o = o, .err = err};
    return dec_corrupt(&d, EM_LSTACK);
  }
  for (size_t k = 0; k < n; k++) {
    /* Scalars (what most chunks carry) are read here directly; everything
     * else, and every malformed record, goes through fp_decode_value. */
    size_t at = *pos, rest = at < len ? len - at : 0;
    unsigned tag = rest ? p[at] : FP_T__COUNT;
    if (tag == FP_T_DOUBLE && rest >= 9) {
      double v;
      memcpy(&v, p + at + 1, 8);
      lua_pushnumber(L, v);
      *pos = at + 9;
    } else if (tag == FP_T_INT32 && rest >= 5) {
      lua_pushnumber(L, (lua_Number)(int32_t)rd_u32(p + at + 1));
      *pos = at + 5;
    } else if (tag == FP_T_STR8 && rest >= 2 && rest - 2 >= p[at + 1]) {
      lua_pushlstring(L, (const char *)p + at + 2, p[at + 1]);
      *pos = at + 2 + p[at + 1];
    } else if (tag == FP_T_NIL) {
      *pos = at + 1; /* leave a hole */
      continue;
    } else {
      int rc = fp_decode_value(L, p, len, pos, o, err);
      if (rc) return rc;
      if (lua_type(L, -1) == LUA_TNIL) { /* a module reference can be nil */
        lua_pop(L, 1);
        continue;
      }
    }
    int64_t i = (int64_t)((uint64_t)first + k);
    if (i >= INT_MIN && i <= INT_MAX) {
      lua_rawseti(L, tidx, (int)i);
    } else {
      lua_pushnumber(L, (lua_Number)i);
      lua_insert(L, -2);
      lua_rawset(L, tidx);
    }
  }
  return FP_OK;
}
