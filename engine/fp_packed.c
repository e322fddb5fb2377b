/*
 * fp_packed.c - packed result bodies a worker sent: raw doubles copied out
 * of shared memory and checked before Lua reads them, string.buffer bodies
 * decoded in C (see fp_packed.h for the accepted subset and why).
 *
 * The string.buffer parser follows LuaJIT 2.1's serialization format
 * (lj_serialize.c): a value is a tag, a "U124" number: one byte below 0xe0;
 * 0xe0..0xfe and one more byte, ((b0 & 0x1f) << 8) + b1 + 0xe0; 0xff and a
 * little-endian u32.  Tags used here:
 *   0x00 nil  0x01 false  0x02 true
 *   0x06 int  (4 bytes)   0x07 num (8 bytes)
 *   0x08 + (nhash ? 1 : 0) + (narray ? 4 : 0)  a table whose index 0 is
 *        empty: U124 narray (slots 0..narray-1, slot 0 not written) when
 *        narray, U124 nhash when nhash, narray-1 values, nhash key/value pairs
 *   0x20 + len  a string of len bytes
 * Everything else (tables with index 0, metatable and string dictionaries,
 * light userdata, cdata, the reserved tags) is refused.
 *
 * One parser, two modes: decoding (values go into Lua, read straight from
 * memory the worker may still write) and checking only (no Lua state: what
 * fp_packed_check does with a private copy).  One linear pass; nothing is
 * read twice, and every count is checked against the bytes left before
 * anything is sized by it.
 */
#include "fp_packed.h"

#include <limits.h>
#include <math.h>
#include <string.h>

/* LuaJIT's canonical NaN (setnanV). */
#define CANON_NAN UINT64_C(0xfff8000000000000)

enum {
  SB_NIL = 0x00, SB_FALSE = 0x01, SB_TRUE = 0x02, SB_INT = 0x06, SB_NUM = 0x07,
  SB_TAB = 0x08, SB_TAB_H = 0x09, SB_TAB_A = 0x0c, SB_TAB_AH = 0x0d, SB_STR = 0x20
};

/* The hash keys of one table seen so far: an open-addressing set of
 * key + 1 (0: empty), sized from the table's nhash, so from its bytes
 * (never from a count the worker wrote). */
typedef struct kset {
  uint64_t *slot;
  size_t mask;
} kset;

/* The parser's state.  Every structural byte (tags, counts, keys) is
 * loaded once, through a volatile pointer, so the compiler cannot fetch it
 * again after it was checked; string bytes go straight into Lua strings
 * (one copy, as string.buffer's own decoder makes). */
typedef struct sb {
  const volatile unsigned char *p, *e;
  lua_State *L;       /* decoding: values are pushed and stored; NULL: check only */
  int ud;             /* decoding: stack slots ud, ud + 1 anchor the key sets */
  fp_buf *scratch;    /* checking: the key sets' memory */
  kset set[2];        /* 0: the top-level table's hash keys, 1: a flat
                         array's (reused by each) */
  size_t room[2];     /* slots allocated for each set */
  int rc;             /* why the parse failed: FP_ECORRUPT or FP_ENOMEM */
  const char *why;
} sb;

static int bad(sb *r, const char *why) {
  r->why = why;
  r->rc = FP_ECORRUPT;
  return 0;
}

/* Room for a set of n keys: a power of two above 2n. */
static size_t kset_size(uint64_t n) {
  size_t sz = 4;
  while (sz < 2 * n + 2) sz <<= 1;
  return sz;
}

/* An empty set s for n keys.  Decoding, its memory is a userdata anchored
 * on the stack (like luaL_Buffer's box: a Lua error raised by a later
 * allocation leaks nothing).  Checking, it comes from scratch: set 0 first,
 * set 1 after it (set 0 is made once, at the top-level table's header,
 * before any set 1). */
static int kset_start(sb *r, int s, uint32_t n) {
  size_t want = kset_size(n);
  if (want > r->room[s]) {
    if (r->L) {
      r->set[s].slot = lua_newuserdata(r->L, want * sizeof(uint64_t));
      lua_replace(r->L, r->ud + s);
    } else {
      size_t at = s ? r->room[0] : 0;
      if (fp_buf_reserve(r->scratch, (at + want) * sizeof(uint64_t)) != FP_OK) {
        r->why = "out of memory";
        r->rc = FP_ENOMEM;
        return 0;
      }
      r->set[0].slot = (uint64_t *)(void *)r->scratch->p;
      r->set[1].slot = r->set[0].slot + r->room[0];
    }
    r->room[s] = want;
  }
  r->set[s].mask = want - 1;
  memset(r->set[s].slot, 0, want * sizeof(uint64_t));
  return 1;
}

static int take(sb *r, void *out, size_t n) {
  if ((size_t)(r->e - r->p) < n) return bad(r, "sbuf body: truncated");
  unsigned char *o = out;
  for (size_t i = 0; i < n; i++) o[i] = r->p[i];
  r->p += n;
  return 1;
}

static int u124(sb *r, uint32_t *v) {
  unsigned char b;
  if (!take(r, &b, 1)) return 0;
  uint32_t x = b;
  if (x >= 0xe0) {
    if (x != 0xff) {
      if (!take(r, &b, 1)) return 0;
      x = ((x & 0x1f) << 8) + b + 0xe0;
    } else if (!take(r, &x, 4)) {
      return 0;
    }
  }
  *v = x;
  return 1;
}

/* A hash key: a whole number in [lo, hi], not in ks before (string.buffer
 * refuses a key twice: "duplicate table key"). */
static int key(sb *r, uint64_t lo, uint64_t hi, kset *ks, uint64_t *k) {
  uint32_t tp;
  double d;
  if (!u124(r, &tp)) return 0;
  if (tp == SB_INT) {
    int32_t i;
    if (!take(r, &i, 4)) return 0;
    d = (double)i;
  } else if (tp == SB_NUM) {
    if (!take(r, &d, 8)) return 0;
  } else {
    return bad(r, "sbuf body: a key that is not an index");
  }
  if (!(d >= (double)lo && d <= (double)hi) || d != floor(d))
    return bad(r, "sbuf body: an index out of range");
  *k = (uint64_t)d;
  uint64_t v = *k + 1;
  size_t i = (size_t)((v * UINT64_C(0x9e3779b97f4a7c15)) >> 20) & ks->mask;
  while (ks->slot[i]) {
    if (ks->slot[i] == v) return bad(r, "sbuf body: an index twice");
    i = (i + 1) & ks->mask;
  }
  ks->slot[i] = v;
  return 1;
}

/* Decoding: t[at + i - 1] = the value on top (popped).  Checking: nothing. */
static void store(sb *r, int tidx, int64_t at, uint64_t i) {
  lua_State *L = r->L;
  if (!L) return;
  int64_t k = at + (int64_t)i - 1;
  if (k >= INT_MIN && k <= INT_MAX) {
    lua_rawseti(L, tidx, (int)k);
  } else {
    lua_pushnumber(L, (lua_Number)k);
    lua_insert(L, -2);
    lua_rawset(L, tidx);
  }
}

static int table(sb *r, uint32_t tp, int top, uint32_t count, int tidx, int64_t at);

/* One value (decoding: pushed, nil too).  top: an element of the top-level
 * table (it may be a flat array; nil only in its array part: in_array). */
static int value(sb *r, int top, int in_array) {
  lua_State *L = r->L;
  uint32_t tp;
  if (!u124(r, &tp)) return 0;
  if (tp >= SB_STR) {
    size_t n = tp - SB_STR;
    if ((size_t)(r->e - r->p) < n) return bad(r, "sbuf body: truncated");
    if (L) lua_pushlstring(L, (const char *)(uintptr_t)r->p, n);
    r->p += n;
    return 1;
  }
  switch (tp) {
  case SB_NIL:
    if (!(top && in_array)) return bad(r, "sbuf body: nil inside an array of values");
    if (L) lua_pushnil(L);
    return 1;
  case SB_FALSE:
  case SB_TRUE:
    if (L) lua_pushboolean(L, tp == SB_TRUE);
    return 1;
  case SB_INT: {
    int32_t i;
    if (!take(r, &i, 4)) return 0;
    if (L) lua_pushnumber(L, (lua_Number)i);
    return 1;
  }
  case SB_NUM: {
    double d;
    if (!take(r, &d, 8)) return 0;
    if (L) lua_pushnumber(L, d);  /* canonicalises NaNs */
    return 1;
  }
  case SB_TAB:
  case SB_TAB_H:
  case SB_TAB_A:
  case SB_TAB_AH:
    if (!top) return bad(r, "sbuf body: tables nested too deep");
    return table(r, tp, 0, 0, 0, 1);
  default: return bad(r, "sbuf body: a kind of value forkpool does not pack");
  }
}

/* A table with tag tp: the top-level one (count results, stored at
 * t[at ..], t at stack index tidx) or, !top, a flat array of scalars
 * (decoding: a fresh table, pushed). */
static int table(sb *r, uint32_t tp, int top, uint32_t count, int tidx, int64_t at) {
  uint32_t narray = 0, nhash = 0;
  if (tp != SB_TAB && tp != SB_TAB_H && tp != SB_TAB_A && tp != SB_TAB_AH)
    return bad(r, "sbuf body: not an array");
  if (tp >= SB_TAB_A && !u124(r, &narray)) return 0;
  if ((tp & 1) && !u124(r, &nhash)) return 0;
  size_t left = (size_t)(r->e - r->p);
  /* An array entry takes a byte at least, a hash entry six (int key, value):
   * no count can make the decoder allocate more than the bytes justify. */
  if ((uint64_t)narray > (uint64_t)left + 1 || nhash > left / 6)
    return bad(r, "sbuf body: a table larger than its bytes");
  uint64_t na = narray ? narray - 1 : 0;  /* entries 1..narray-1 */
  /* LuaJIT keeps every index below the array part's size in the array
   * part: hash keys start at narray. */
  uint64_t lo = narray ? narray : 1, hi;
  if (top) {
    if (na > count) return bad(r, "sbuf body: more results than the chunk has");
    hi = count;
  } else {
    hi = na + nhash;  /* a flat array: keys 1..m, each once */
  }
  if (nhash && (hi < lo || hi - lo + 1 < nhash))
    return bad(r, "sbuf body: more indexes than fit");
  kset *ks = &r->set[top ? 0 : 1];
  if (nhash && !kset_start(r, top ? 0 : 1, nhash)) return 0;
  if (!top && r->L) {
    /* na + nhash < 2^31: bounded by the bytes */
    lua_createtable(r->L, (int)na, (int)nhash);
    tidx = lua_gettop(r->L);
  }
  for (uint64_t i = 1; i <= na; i++) {
    if (!value(r, top, 1)) return 0;
    store(r, tidx, at, i);
  }
  for (uint32_t i = 0; i < nhash; i++) {
    uint64_t k;
    if (!key(r, lo, hi, ks, &k) || !value(r, top, 0)) return 0;
    store(r, tidx, at, k);
  }
  return 1;
}

/* A whole "fp.sbuf" body after its tag: the top-level table, nothing
 * after it.  FP_OK, or r->rc with *why. */
static int sbuf_body(sb *r, uint32_t count, int tidx, int64_t at, const char **why) {
  uint32_t tp;
  if (!u124(r, &tp) || !table(r, tp, 1, count, tidx, at)) {
    *why = r->why;
    return r->rc;
  }
  if (r->p != r->e) {
    *why = "sbuf body: trailing bytes";
    return FP_ECORRUPT;
  }
  return FP_OK;
}

/* ---- raw doubles ---- */

static void canon_nans(unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint64_t u;
    memcpy(&u, p + 8 * i, 8);
    if ((u & UINT64_C(0x7ff0000000000000)) == UINT64_C(0x7ff0000000000000) &&
        (u & UINT64_C(0x000fffffffffffff)) && u != CANON_NAN) {
      u = CANON_NAN;
      memcpy(p + 8 * i, &u, 8);
    }
  }
}

static double rd_f64(const unsigned char *p, size_t i) {
  double d;
  memcpy(&d, p + 8 * i, 8);
  return d;
}

static int check_f64a(unsigned char *p, size_t len, uint32_t count, const char **why) {
  size_t slots = len / 8 - 1, pos = 2;
  if (slots < 1 || rd_f64(p, 1) != (double)count) {
    *why = "f64a body: wrong number of results";
    return FP_ECORRUPT;
  }
  for (uint32_t i = 0; i < count; i++) {
    double m = pos <= slots ? rd_f64(p, pos) : -1;
    if (!(m >= 0 && m <= (double)(slots - pos)) || m != floor(m)) {
      *why = "f64a body: bad length";
      return FP_ECORRUPT;
    }
    canon_nans(p + 8 * (pos + 1), (size_t)m);
    pos += 1 + (size_t)m;
  }
  if (pos != slots + 1) {
    *why = "f64a body: trailing bytes";
    return FP_ECORRUPT;
  }
  return FP_OK;
}

int fp_packed_check(unsigned char *p, size_t len, uint32_t count, fp_buf *scratch,
                    const char **why) {
  *why = "packed body: unknown tag";
  if (len < FP_PACKED_TAG_LEN) return FP_ECORRUPT;
  if (!memcmp(p, "fp.f64\0\0", 8) || !memcmp(p, "fp.f64a\0", 8)) {
    if (len % 8 != 0) {
      *why = "f64 body: not whole doubles";
      return FP_ECORRUPT;
    }
    if (p[6] == 'a') return check_f64a(p, len, count, why);
    if (len / 8 - 1 != count) {
      *why = "f64 body: wrong number of results";
      return FP_ECORRUPT;
    }
    canon_nans(p + 8, count);
    return FP_OK;
  }
  if (memcmp(p, "fp.sbuf\0", 8) != 0) return FP_ECORRUPT;
  /* The decoder without a Lua state: it only checks. */
  scratch->len = 0;
  sb r = {.p = p + FP_PACKED_TAG_LEN, .e = p + len, .L = NULL, .scratch = scratch};
  return sbuf_body(&r, count, 0, 0, why);
}

int fp_packed_copy(fp_buf *out, const unsigned char *src, size_t len, uint32_t count,
                   fp_buf *scratch, const char **why) {
  out->len = 0;
  if (fp_buf_reserve(out, len) != FP_OK) {
    *why = "out of memory";
    return FP_ENOMEM;
  }
  /* The one read of the worker's bytes. */
  memcpy(out->p, src, len);
  out->len = len;
  int rc = fp_packed_check(out->p, len, count, scratch, why);
  if (rc == FP_ENOMEM) *why = "out of memory";
  return rc;
}

/* ---- string.buffer bodies, decoded straight from the worker's memory ---- */

int fp_packed_decode_sbuf(lua_State *L, int tidx, int64_t at, uint32_t count,
                          const unsigned char *p, size_t len, const char **why) {
  int top = lua_gettop(L);
  if (tidx < 0 && tidx > LUA_REGISTRYINDEX) tidx = top + tidx + 1;
  /* the key sets' two slots, a flat array, a value, a key */
  if (!lua_checkstack(L, 8)) {
    *why = "out of Lua stack";
    return FP_ENOMEM;
  }
  *why = "packed body: unknown tag";
  if (len < FP_PACKED_TAG_LEN || memcmp(p, "fp.sbuf\0", 8) != 0) return FP_ECORRUPT;
  sb r = {.p = p + FP_PACKED_TAG_LEN, .e = p + len, .L = L, .ud = top + 1};
  lua_pushnil(L);
  lua_pushnil(L);
  int rc = sbuf_body(&r, count, tidx, at, why);
  lua_settop(L, top);
  return rc;
}
