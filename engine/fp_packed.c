/*
 * fp_packed.c - copy a worker's packed result body out of shared memory and
 * check it before any Lua code decodes it (see fp_packed.h for the accepted
 * subset and why).
 *
 * The string.buffer checker follows LuaJIT 2.1's serialization format
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
 * One linear pass; nothing is read twice, and every count is checked against
 * the bytes left before anything is sized by it.
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

typedef struct rd {
  const unsigned char *p, *e;
  const char *why;
  uint64_t *top, *nested;  /* room for the top-level table's set and for a
                              nested table's (reused by each) */
} rd;

static int bad(rd *r, const char *why) {
  r->why = why;
  return 0;
}

static int ru124(rd *r, uint32_t *v) {
  if (r->p >= r->e) return bad(r, "sbuf body: truncated");
  uint32_t x = *r->p++;
  if (x >= 0xe0) {
    if (x != 0xff) {
      if (r->p >= r->e) return bad(r, "sbuf body: truncated");
      x = ((x & 0x1f) << 8) + *r->p++ + 0xe0;
    } else {
      if (r->e - r->p < 4) return bad(r, "sbuf body: truncated");
      memcpy(&x, r->p, 4);
      r->p += 4;
    }
  }
  *v = x;
  return 1;
}

static int skip(rd *r, size_t n) {
  if ((size_t)(r->e - r->p) < n) return bad(r, "sbuf body: truncated");
  r->p += n;
  return 1;
}

static int table(rd *r, uint32_t tp, int top, uint32_t count);

/* One value.  top: inside the top-level table (a value may be a flat
 * array; nil is allowed when in_array). */
static int value(rd *r, int top, int in_array) {
  uint32_t tp;
  if (!ru124(r, &tp)) return 0;
  if (tp >= SB_STR) return skip(r, tp - SB_STR);
  switch (tp) {
  case SB_NIL:
    return top && in_array ? 1 : bad(r, "sbuf body: nil inside an array of values");
  case SB_FALSE:
  case SB_TRUE: return 1;
  case SB_INT: return skip(r, 4);
  case SB_NUM: return skip(r, 8);
  case SB_TAB:
  case SB_TAB_H:
  case SB_TAB_A:
  case SB_TAB_AH:
    if (!top) return bad(r, "sbuf body: tables nested too deep");
    return table(r, tp, 0, 0);
  default: return bad(r, "sbuf body: a kind of value forkpool does not pack");
  }
}

/* Room for a set of n keys: a power of two above 2n. */
static size_t kset_size(uint64_t n) {
  size_t sz = 4;
  while (sz < 2 * n + 2) sz <<= 1;
  return sz;
}

/* A hash key: a whole number in [lo, hi], not in ks before. */
static int key(rd *r, uint64_t lo, uint64_t hi, kset *ks) {
  uint32_t tp;
  double d;
  if (!ru124(r, &tp)) return 0;
  if (tp == SB_INT) {
    int32_t i;
    if ((size_t)(r->e - r->p) < 4) return bad(r, "sbuf body: truncated");
    memcpy(&i, r->p, 4);
    r->p += 4;
    d = (double)i;
  } else if (tp == SB_NUM) {
    if ((size_t)(r->e - r->p) < 8) return bad(r, "sbuf body: truncated");
    memcpy(&d, r->p, 8);
    r->p += 8;
  } else {
    return bad(r, "sbuf body: a key that is not an index");
  }
  if (!(d >= (double)lo && d <= (double)hi) || d != floor(d))
    return bad(r, "sbuf body: an index out of range");
  uint64_t k = (uint64_t)d + 1;
  size_t i = (size_t)((k * UINT64_C(0x9e3779b97f4a7c15)) >> 20) & ks->mask;
  while (ks->slot[i]) {
    if (ks->slot[i] == k) return bad(r, "sbuf body: an index twice");
    i = (i + 1) & ks->mask;
  }
  ks->slot[i] = k;
  return 1;
}

/* A table with tag tp: the top-level one (count results) or a flat array. */
static int table(rd *r, uint32_t tp, int top, uint32_t count) {
  uint32_t narray = 0, nhash = 0;
  if (tp != SB_TAB && tp != SB_TAB_H && tp != SB_TAB_A && tp != SB_TAB_AH)
    return bad(r, "sbuf body: not an array");
  if (tp >= SB_TAB_A && !ru124(r, &narray)) return 0;
  if ((tp & 1) && !ru124(r, &nhash)) return 0;
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
  for (uint64_t i = 0; i < na; i++)
    if (!value(r, top, 1)) return 0;
  if (nhash) {
    kset ks = {.slot = top ? r->top : r->nested, .mask = kset_size(nhash) - 1};
    memset(ks.slot, 0, (ks.mask + 1) * sizeof *ks.slot);
    for (uint32_t i = 0; i < nhash; i++) {
      if (!key(r, lo, hi, &ks)) return 0;
      if (!value(r, top, 0)) return 0;
    }
  }
  return 1;
}

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
  /* Key sets: any table's nhash is at most len / 6 (checked before its
   * set is used), the top level's and a nested one's side by side. */
  size_t half = kset_size(len / 6) * sizeof(uint64_t);
  scratch->len = 0;
  if (fp_buf_reserve(scratch, 2 * half) != FP_OK) return FP_ENOMEM;
  rd r = {.p = p + FP_PACKED_TAG_LEN, .e = p + len, .why = NULL,
          .top = (uint64_t *)(void *)scratch->p,
          .nested = (uint64_t *)(void *)(scratch->p + half)};
  uint32_t tp;
  if (!ru124(&r, &tp) || !table(&r, tp, 1, count)) {
    *why = r.why;
    return FP_ECORRUPT;
  }
  if (r.p != r.e) {
    *why = "sbuf body: trailing bytes";
    return FP_ECORRUPT;
  }
  return FP_OK;
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

/* ---- decoding a string.buffer body straight from the worker's memory ----
 *
 * The same grammar as the checker above, read in one pass from the shared
 * bytes themselves: every structural byte (tags, counts, keys) is loaded
 * once, through a volatile pointer, so the compiler cannot fetch it again
 * after it was checked; string bytes go straight into Lua strings (one
 * copy, as string.buffer's own decoder makes).  No copy of the body, and no
 * decoder that could crash: only the Lua C API. */

typedef struct dd {
  const volatile unsigned char *p, *e;
  lua_State *L;
  const char *why;
} dd;

static int dfail(dd *r, const char *why) {
  r->why = why;
  return 0;
}

static int d_take(dd *r, void *out, size_t n) {
  if ((size_t)(r->e - r->p) < n) return dfail(r, "sbuf body: truncated");
  unsigned char *o = out;
  for (size_t i = 0; i < n; i++) o[i] = r->p[i];
  r->p += n;
  return 1;
}

static int d_u124(dd *r, uint32_t *v) {
  unsigned char b;
  if (!d_take(r, &b, 1)) return 0;
  uint32_t x = b;
  if (x >= 0xe0) {
    if (x != 0xff) {
      if (!d_take(r, &b, 1)) return 0;
      x = ((x & 0x1f) << 8) + b + 0xe0;
    } else if (!d_take(r, &x, 4)) {
      return 0;
    }
  }
  *v = x;
  return 1;
}

/* Table header: narray, nhash, each bounded by the bytes left. */
static int d_tab_hdr(dd *r, uint32_t tp, uint32_t *narray, uint32_t *nhash) {
  *narray = *nhash = 0;
  if (tp != SB_TAB && tp != SB_TAB_H && tp != SB_TAB_A && tp != SB_TAB_AH)
    return dfail(r, "sbuf body: not an array");
  if (tp >= SB_TAB_A && !d_u124(r, narray)) return 0;
  if ((tp & 1) && !d_u124(r, nhash)) return 0;
  size_t left = (size_t)(r->e - r->p);
  if ((uint64_t)*narray > (uint64_t)left + 1 || *nhash > left / 6)
    return dfail(r, "sbuf body: a table larger than its bytes");
  return 1;
}

/* A hash key: a whole number in [lo, hi]. */
static int d_key(dd *r, uint64_t lo, uint64_t hi, uint64_t *k) {
  uint32_t tp;
  double d;
  if (!d_u124(r, &tp)) return 0;
  if (tp == SB_INT) {
    int32_t i;
    if (!d_take(r, &i, 4)) return 0;
    d = (double)i;
  } else if (tp == SB_NUM) {
    if (!d_take(r, &d, 8)) return 0;
  } else {
    return dfail(r, "sbuf body: a key that is not an index");
  }
  if (!(d >= (double)lo && d <= (double)hi) || d != floor(d))
    return dfail(r, "sbuf body: an index out of range");
  *k = (uint64_t)d;
  return 1;
}

static int d_value(dd *r, int top, int in_array);

/* A flat array of scalars (a value of the top-level table): pushes it. */
static int d_flat(dd *r, uint32_t tp) {
  lua_State *L = r->L;
  uint32_t narray, nhash;
  if (!d_tab_hdr(r, tp, &narray, &nhash)) return 0;
  uint32_t na = narray ? narray - 1 : 0;
  uint64_t lo = narray ? narray : 1, hi = (uint64_t)na + nhash;
  lua_createtable(L, (int)na, (int)nhash);
  for (uint32_t i = 1; i <= na; i++) {
    if (!d_value(r, 0, 1)) goto fail;
    lua_rawseti(L, -2, (int)i);
  }
  for (uint32_t i = 0; i < nhash; i++) {
    uint64_t k;
    if (!d_key(r, lo, hi, &k) || !d_value(r, 0, 0)) goto fail;
    lua_rawseti(L, -2, (int)k);  /* k <= na + nhash < 2^31: bounded by the bytes */
  }
  return 1;
fail:
  lua_pop(L, 1);
  return 0;
}

/* One value, pushed (nil too).  top: an element of the top-level table (it
 * may be a flat array; nil only in its array part: in_array). */
static int d_value(dd *r, int top, int in_array) {
  lua_State *L = r->L;
  uint32_t tp;
  if (!d_u124(r, &tp)) return 0;
  if (tp >= SB_STR) {
    size_t n = tp - SB_STR;
    if ((size_t)(r->e - r->p) < n) return dfail(r, "sbuf body: truncated");
    lua_pushlstring(L, (const char *)(uintptr_t)r->p, n);
    r->p += n;
    return 1;
  }
  switch (tp) {
  case SB_NIL:
    if (!(top && in_array)) return dfail(r, "sbuf body: nil inside an array of values");
    lua_pushnil(L);
    return 1;
  case SB_FALSE:
  case SB_TRUE: lua_pushboolean(L, tp == SB_TRUE); return 1;
  case SB_INT: {
    int32_t i;
    if (!d_take(r, &i, 4)) return 0;
    lua_pushnumber(L, (lua_Number)i);
    return 1;
  }
  case SB_NUM: {
    double d;
    if (!d_take(r, &d, 8)) return 0;
    lua_pushnumber(L, d);  /* canonicalises NaNs */
    return 1;
  }
  case SB_TAB:
  case SB_TAB_H:
  case SB_TAB_A:
  case SB_TAB_AH:
    if (!top) return dfail(r, "sbuf body: tables nested too deep");
    return d_flat(r, tp);
  default: return dfail(r, "sbuf body: a kind of value forkpool does not pack");
  }
}

/* dst[at + i - 1] = v (the value on top, popped). */
static void d_store(lua_State *L, int tidx, int64_t at, uint64_t i) {
  int64_t k = at + (int64_t)i - 1;
  if (k >= INT_MIN && k <= INT_MAX) {
    lua_rawseti(L, tidx, (int)k);
  } else {
    lua_pushnumber(L, (lua_Number)k);
    lua_insert(L, -2);
    lua_rawset(L, tidx);
  }
}

int fp_packed_decode_sbuf(lua_State *L, int tidx, int64_t at, uint32_t count,
                          const unsigned char *p, size_t len, const char **why) {
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 8)) {
    *why = "out of Lua stack";
    return FP_ENOMEM;
  }
  *why = "packed body: unknown tag";
  if (len < FP_PACKED_TAG_LEN || memcmp(p, "fp.sbuf\0", 8) != 0) return FP_ECORRUPT;
  dd r = {.p = p + FP_PACKED_TAG_LEN, .e = p + len, .L = L, .why = NULL};
  uint32_t tp, narray, nhash;
  if (!d_u124(&r, &tp) || !d_tab_hdr(&r, tp, &narray, &nhash)) goto fail;
  uint32_t na = narray ? narray - 1 : 0;
  if (na > count) {
    r.why = "sbuf body: more results than the chunk has";
    goto fail;
  }
  uint64_t lo = narray ? narray : 1;
  if (nhash && (count < lo || count - lo + 1 < nhash)) {
    r.why = "sbuf body: more indexes than fit";
    goto fail;
  }
  for (uint32_t i = 1; i <= na; i++) {
    if (!d_value(&r, 1, 1)) goto fail;
    d_store(L, tidx, at, i);
  }
  for (uint32_t i = 0; i < nhash; i++) {
    uint64_t k;
    if (!d_key(&r, lo, count, &k) || !d_value(&r, 1, 0)) goto fail;
    d_store(L, tidx, at, k);
  }
  if (r.p != r.e) {
    r.why = "sbuf body: trailing bytes";
    goto fail;
  }
  return FP_OK;
fail:
  lua_settop(L, top);
  *why = r.why;
  return FP_ECORRUPT;
}
