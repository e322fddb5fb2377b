/*
 * fp_json.c - the JSON encoder of `forkpool map`: one Lua value -> JSON text
 * whose bytes depend only on the value, never on the process (string hash
 * seeds, table iteration order, locale).
 *
 * Rules (README "forkpool map" says the same to users):
 *  - Objects: keys sorted bytewise by their JSON text (memcmp order; on a
 *    common prefix the shorter key first).  Keys are strings or numbers; a
 *    number key is written as a string holding the number's text (below),
 *    as lua-cjson does.  A number key and a string key with the same text
 *    (t[1] and t["1"]) are both written, the number's first.  Any other key
 *    type is an error naming the table's path.
 *  - Arrays: a non-empty table whose keys are all positive integers is an
 *    array of length max-key; holes are written as null.  lua-cjson's
 *    sparse rule (encode_sparse_array(false, 2, 10)): max-key > 10 and
 *    max-key > 2 * count is an error ("excessively sparse array").  An empty
 *    table is {} (what lua-cjson 2.1.0 writes; [] decodes to an empty table).
 *  - Metatables are ignored: every read is raw, no Lua code ever runs.
 *  - Numbers: NaN and +-inf are errors.  An integral value below 2^53 in
 *    magnitude is plain integer digits (1e15 -> 1000000000000000; -0 ->
 *    -0).  Any other value: the shortest of %.15g, %.16g, %.17g that reads
 *    back (strtod) as the same double (0.1 + 0.2 -> 0.30000000000000004,
 *    1e21 -> 1e+21).  The text never depends on LC_NUMERIC: the fast path
 *    formats digits itself, and the printf path replaces the locale's
 *    decimal point (which may be several bytes) by "." after the read-back
 *    check (done in the same locale, so it is consistent).
 *  - Strings (and keys): must be UTF-8 (RFC 3629: no overlong forms, no
 *    surrogates, nothing above U+10FFFF, no truncated sequence); otherwise a
 *    "utf8" error naming the path and the byte offset (from 1) in the
 *    string.  Escaped: '"', '\' and bytes below 0x20 (\b \f \n \r \t, the
 *    others \u00XX); "/" is NOT escaped (lua-cjson writes "\/").
 *  - true/false; nil (top level, or an array hole) and a NULL lightuserdata
 *    (cjson.null) are null.  Functions, other userdata, cdata, threads are
 *    errors naming the type and the path.
 *  - Tables nested deeper than FP_JSON_MAX_DEPTH: an error (stops cycles).
 *
 * Invariants:
 *  - No Lua error is raised because of the data (only the allocator's
 *    "not enough memory" could escape from lua_createtable, on the path for
 *    big objects); no Lua code runs (raw access, no metamethods), so the
 *    value cannot change during the call and key strings stay alive (the
 *    table holds them; LuaJIT's collector does not move objects): pointers
 *    from lua_tolstring on string keys stay valid for the whole call.
 *  - The Lua stack: LuaJIT lets a C function use at most LUAI_MAXCSTACK
 *    (8000) slots.  A table with at most SMALL_MAX pairs keeps its pairs on
 *    the stack (no second lookup per key) while the frame stays below
 *    SLOT_BUDGET slots; otherwise ("big" tables, or deep nesting) a level
 *    costs at most 2 slots plus 2 while iterating, so 1000 levels fit.
 *  - No process-global mutable state: the output buffer and the scratch
 *    space belong to the caller (per Lua state); the tables here are const.
 *  - On error out->len and the stack height are restored at the top.
 */
#include "fp_json.h"
#include "fp_errpath.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
/* The fast number path relies on each double operation being rounded once
 * to double (SSE2, not x87's extended precision). */
#error "fp_json.c needs FLT_EVAL_METHOD == 0"
#endif

#define FP_COLD __attribute__((cold, noinline))

/* Pairs kept on the Lua stack for one table (see the invariants). */
#define SMALL_MAX 256
#define SLOT_BUDGET 4000
/* Strings are written in chunks of this many input bytes (each reserves
 * its worst case, 6 output bytes per input byte). */
#define STR_CHUNK 4096
/* Bytes of err->path the tail collected while unwinding may use. */
#define PATH_TAIL_MAX 200

/* One object member being written: its key text and where its value is. */
typedef struct fp_json_ent {
  const char *s;   /* key text (string keys: the Lua string's bytes) */
  size_t off;      /* number keys: offset of the text in scratch->keys */
  uint32_t len;    /* key text length */
  uint32_t num;    /* 1: a number key (text in scratch->keys) */
  int slot;        /* value: a stack slot (small) or a tmp table index (big) */
  double nkey;     /* number keys: the key, for error paths */
} ent;

typedef struct jenc {
  lua_State *L;
  fp_buf *b;
  fp_json_scratch *s;
  fp_json_err *err;
  size_t nents;    /* entries in use (a stack: each open object's) */
  int depth;       /* tables currently open */
  fp_path_tail pt;     /* the failing value's path, built while unwinding */
} jenc;

static int enc_value(jenc *e, int idx);

/* ------------------------------------------------------------------------
 * Errors: the message where it happens, the path while unwinding.
 * ------------------------------------------------------------------------ */

FP_COLD static int fail(jenc *e, const char *kind, const char *fmt, const char *a,
                        size_t n) {
  e->err->kind = kind;
  char num[32];
  snprintf(num, sizeof num, "%zu", n);
  /* fmt holds at most one %s, replaced by a (or by n when a is NULL) */
  const char *p = strstr(fmt, "%s");
  const char *ins = a ? a : num;
  if (!p)
    snprintf(e->err->msg, sizeof e->err->msg, "%s", fmt);
  else
    snprintf(e->err->msg, sizeof e->err->msg, "%.*s%s%s", (int)(p - fmt), fmt,
             ins, p + 2);
  return FP_EMARSHAL;
}

/* Segment of a string key: .name or ["other"] (at most 40 bytes shown;
 * bytes that would make the path unreadable become '?'). */
FP_COLD static void path_skey(jenc *e, const char *s, size_t len) {
  char buf[100];
  size_t n = 0;
  if (len <= 48 && fp_is_identifier(s, len)) {
    buf[n++] = '.';
    memcpy(buf + n, s, len);
    n += len;
  } else {
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
  }
  fp_path_prepend(&e->pt, buf, n);
}

/* Segment of a number key: [text]. */
FP_COLD static void path_nkey(jenc *e, double k) {
  char buf[FP_JSON_NUM_MAX + 2];
  buf[0] = '[';
  size_t n = 1 + fp_json_number(k, buf + 1);
  buf[n++] = ']';
  fp_path_prepend(&e->pt, buf, n);
}

static void path_finish(jenc *e) {
  char *p = e->err->path;
  size_t cap = sizeof e->err->path;
  size_t dots = e->pt.trunc ? 3 : 0;
  memmove(p + 1 + dots, p + cap - 1 - e->pt.len, e->pt.len);
  p[0] = '$';
  memcpy(p + 1, "...", dots);
  p[1 + dots + e->pt.len] = '\0';
}

/* ------------------------------------------------------------------------
 * Output: one capacity check per piece, growth out of line.
 * ------------------------------------------------------------------------ */

FP_COLD static int grow(jenc *e, size_t n) {
  if (fp_buf_reserve(e->b, n) != FP_OK) return FP_ENOMEM;
  return FP_OK;
}

static inline int need(jenc *e, size_t n) {
  return n <= e->b->cap - e->b->len ? FP_OK : grow(e, n);
}

static inline int put(jenc *e, const char *s, size_t n) {
  if (need(e, n)) return FP_ENOMEM;
  memcpy(e->b->p + e->b->len, s, n);
  e->b->len += n;
  return FP_OK;
}

/* ------------------------------------------------------------------------
 * Numbers
 * ------------------------------------------------------------------------ */

static const double p10[23] = {
  1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
  1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Decimal digits of u (u < 10^19) into o, most significant first. */
static size_t put_u64(uint64_t u, char *o) {
  char t[24];
  size_t n = 0;
  do {
    t[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  for (size_t i = 0; i < n; i++) o[i] = t[n - 1 - i];
  return n;
}

/* printf's %.Ng path.  Locale: glibc writes LC_NUMERIC's decimal point
 * (",", or several bytes such as U+066B), and strtod reads it back in the
 * same locale; then the point is replaced by ".".  %g writes nothing else
 * that depends on the locale (no grouping without the ' flag). */
static size_t fmt_printf(double v, int from, char *o) {
  char buf[64];
  int n = 0;
  for (int prec = from; prec <= 17; prec++) {
    n = snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (prec == 17 || strtod(buf, NULL) == v) break;
  }
  if (n < 0 || n >= (int)sizeof buf) n = 0; /* cannot happen for doubles */
  size_t i = 0, j = 0, k = 0;
  if (buf[i] == '-') o[k++] = buf[i++];
  while (i < (size_t)n && buf[i] >= '0' && buf[i] <= '9') o[k++] = buf[i++];
  if (i < (size_t)n && buf[i] != 'e') { /* the decimal point, any bytes */
    j = i;
    while (j < (size_t)n && !(buf[j] >= '0' && buf[j] <= '9')) j++;
    o[k++] = '.';
    i = j;
  }
  while (i < (size_t)n && k < FP_JSON_NUM_MAX - 1) o[k++] = buf[i++];
  o[k] = '\0';
  return k;
}

/* The fast path for decimals of at most 15 significant digits (1.5, 0.25,
 * 52.520008): the first k (1..22) for which M = round(|v| * 10^k) < 10^15
 * and M / 10^k == |v|.  10^k and M are exact doubles, and IEEE division is
 * correctly rounded, so that test is exactly "the decimal M e-k reads back
 * as v"; a decimal of at most 15 digits within half an ulp of v is what
 * %.15g prints (15-digit decimals are farther apart than an ulp), so the
 * text equals printf's.  Returns 0 when no such k exists.
 *
 * And when none exists for 1e-7 <= |v| < 1e15, %.15g does not read back
 * either (so fp_json_number starts printf at %.16g): a 15-digit decimal D
 * that reads back as such a v is M * 10^-k with M < 10^15 and 1 <= k <= 22
 * (k = 0 would make v an integer below 2^53, written before), and the loop
 * finds that k: |v * 10^k - M| stays below 0.5 (|v - D| is at most half an
 * ulp, about 1.1e-16 * M after scaling, plus the product's own rounding,
 * at most 0.0625 below 1e15), so nearbyint gives M. */
static size_t fmt_fast(double v, char *o) {
  double a = fabs(v);
  if (!(a >= 1e-7)) return 0;
  for (int k = 1; k <= 22; k++) {
    double t = a * p10[k];
    if (t >= 1e15) return 0;
    double m = nearbyint(t);
    if (m / p10[k] != a) continue;
    char d[24];
    size_t nd = put_u64((uint64_t)m, d);
    size_t nk = (size_t)k;
    while (nd > 1 && nk > 0 && d[nd - 1] == '0') { nd--; nk--; } /* (none expected) */
    size_t n = 0;
    if (v < 0) o[n++] = '-';
    int x = (int)nd - 1 - (int)nk; /* decimal exponent of the first digit */
    if (x >= -4) {                  /* %g's fixed notation */
      if (nd > nk) {
        memcpy(o + n, d, nd - nk);
        n += nd - nk;
        if (nk) {
          o[n++] = '.';
          memcpy(o + n, d + nd - nk, nk);
          n += nk;
        }
      } else {
        o[n++] = '0';
        o[n++] = '.';
        for (size_t z = nd; z < nk; z++) o[n++] = '0';
        memcpy(o + n, d, nd);
        n += nd;
      }
    } else { /* scientific: d.ddde-XX (x <= -5 here) */
      o[n++] = d[0];
      if (nd > 1) {
        o[n++] = '.';
        memcpy(o + n, d + 1, nd - 1);
        n += nd - 1;
      }
      o[n++] = 'e';
      o[n++] = '-';
      int ax = -x;
      if (ax < 10) o[n++] = '0';
      n += put_u64((uint64_t)ax, o + n);
    }
    o[n] = '\0';
    return n;
  }
  return 0;
}

size_t fp_json_number(double v, char *o) {
  if (fabs(v) < 9007199254740992.0 && v == trunc(v)) {
    size_t n = 0;
    if (signbit(v)) o[n++] = '-';
    n += put_u64((uint64_t)fabs(v), o + n);
    o[n] = '\0';
    return n;
  }
  size_t n = fmt_fast(v, o);
  if (n) return n;
  double a = fabs(v);
  return fmt_printf(v, a >= 1e-7 && a < 1e15 ? 16 : 15, o);
}

static int put_number(jenc *e, double v) {
  if (!isfinite(v))
    return fail(e, FP_JSON_KIND_ENCODE, "%s is not JSON",
                isnan(v) ? "NaN" : v > 0 ? "inf" : "-inf", 0);
  if (need(e, FP_JSON_NUM_MAX)) return FP_ENOMEM;
  e->b->len += fp_json_number(v, (char *)e->b->p + e->b->len);
  return FP_OK;
}

/* ------------------------------------------------------------------------
 * Strings: UTF-8 check and escaping in one pass.
 * ------------------------------------------------------------------------ */

/* Byte classes: 0 copied as is; 1 escaped; 2, 3, 4 the first byte of a
 * 2-, 3-, 4-byte sequence; 5 never valid as a first byte (80-C1, F5-FF). */
static const unsigned char cls[256] = {
  /* 00-1F */ 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
  /* 20-3F */ 0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  /* 40-5F */ 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,
  /* 60-7F */ 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  /* 80-BF */ 5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,
              5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,
  /* C0-DF */ 5,5,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
  /* E0-EF */ 3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,
  /* F0-FF */ 4,4,4,4,4,5,5,5,5,5,5,5,5,5,5,5};

/* Short escapes of bytes below 0x20 (0: use \u00XX). */
static const char short_esc[32] = {
  0, 0, 0, 0, 0, 0, 0, 0, 'b', 't', 'n', 0, 'f', 'r', 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0,   0,   0,   0, 0,   0,   0, 0};

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Nonzero when one of the 8 bytes of x is not copied as is (>= 0x80, < 0x20,
 * '"' or '\').  Exact when no byte has its high bit set, and that case is
 * caught by the first term anyway. */
static inline uint64_t swar_special(uint64_t x) {
  uint64_t q = x ^ (ONES * '"'), s = x ^ (ONES * '\\');
  return (x | ((x - ONES * 0x20) & ~x) | ((q - ONES) & ~q) | ((s - ONES) & ~s)) & HIGHS;
}

/* Length of the valid UTF-8 sequence starting at s[i] (first byte of class
 * c in 2..5), or 0 when it is invalid or cut by n. */
static inline size_t utf8_seq(const unsigned char *s, size_t i, size_t n, unsigned c) {
  unsigned char b0 = s[i], lo = 0x80, hi = 0xBF;
  size_t len = c; /* 2, 3 or 4 */
  if (c == 5) return 0;
  if (b0 == 0xE0) lo = 0xA0;        /* overlong */
  else if (b0 == 0xED) hi = 0x9F;   /* surrogates */
  else if (b0 == 0xF0) lo = 0x90;   /* overlong */
  else if (b0 == 0xF4) hi = 0x8F;   /* above U+10FFFF */
  if (len > n - i) return 0;
  if (s[i + 1] < lo || s[i + 1] > hi) return 0;
  for (size_t k = 2; k < len; k++)
    if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
  return len;
}

/* Write "s" escaped.  On invalid UTF-8: a "utf8" error; *bad gets the
 * 0-based offset. */
static int put_string(jenc *e, const char *str, size_t n, size_t *bad) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  if (need(e, 2 + (n < STR_CHUNK ? 6 * n : 6 * STR_CHUNK) + 8)) return FP_ENOMEM;
  unsigned char *w = e->b->p + e->b->len;
  *w++ = '"';
  while (i < n) {
    size_t lim = n - i > STR_CHUNK ? i + STR_CHUNK : n;
    if (i > 0) { /* a later chunk: room for its worst case */
      e->b->len = (size_t)(w - e->b->p);
      if (need(e, 6 * (lim - i) + 8)) return FP_ENOMEM;
      w = e->b->p + e->b->len;
    }
    while (i < lim) {
      while (i + 8 <= lim) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        if (swar_special(x)) break;
        memcpy(w, &x, 8);
        w += 8;
        i += 8;
      }
      if (i >= lim) break;
      unsigned char c = s[i];
      unsigned k = cls[c];
      if (k == 0) {
        *w++ = c;
        i++;
      } else if (k == 1) {
        *w++ = '\\';
        if (c == '"' || c == '\\') *w++ = c;
        else if (short_esc[c]) *w++ = (unsigned char)short_esc[c];
        else {
          static const char hex[] = "0123456789abcdef";
          *w++ = 'u'; *w++ = '0'; *w++ = '0';
          *w++ = (unsigned char)hex[c >> 4];
          *w++ = (unsigned char)hex[c & 15];
        }
        i++;
      } else {
        size_t len = utf8_seq(s, i, n, k);
        if (!len) {
          *bad = i;
          return FP_EMARSHAL;
        }
        memcpy(w, s + i, len); /* may pass lim by up to 3: the +8 above */
        w += len;
        i += len;
      }
    }
  }
  *w++ = '"';
  e->b->len = (size_t)(w - e->b->p);
  return FP_OK;
}

FP_COLD static int utf8_fail(jenc *e, size_t bad, const char *what) {
  e->err->kind = FP_JSON_KIND_UTF8;
  snprintf(e->err->msg, sizeof e->err->msg,
           "invalid UTF-8 at byte %zu of the %s", bad + 1, what);
  return FP_EMARSHAL;
}

/* ------------------------------------------------------------------------
 * Tables
 * ------------------------------------------------------------------------ */

static inline int ent_cmp(const ent *a, const ent *b) {
  size_t n = a->len < b->len ? a->len : b->len;
  int c = memcmp(a->s, b->s, n);
  if (c) return c;
  if (a->len != b->len) return a->len < b->len ? -1 : 1;
  return (int)b->num - (int)a->num; /* same text: the number key first */
}

static int ent_qcmp(const void *a, const void *b) {
  return ent_cmp((const ent *)a, (const ent *)b);
}

static void sort_ents(ent *v, size_t n) {
  if (n > 16) {
    qsort(v, n, sizeof *v, ent_qcmp);
    return;
  }
  for (size_t i = 1; i < n; i++) { /* insertion sort: small objects */
    ent x = v[i];
    size_t j = i;
    while (j > 0 && ent_cmp(&x, &v[j - 1]) < 0) {
      v[j] = v[j - 1];
      j--;
    }
    v[j] = x;
  }
}

/* Room for n more entries; returns the first. */
static ent *ents_push(jenc *e, size_t n) {
  fp_json_scratch *s = e->s;
  if (n > s->cap - e->nents) {
    size_t ncap = s->cap ? s->cap : 64;
    while (ncap - e->nents < n) {
      if (ncap > SIZE_MAX / 2 / sizeof(ent)) return NULL;
      ncap *= 2;
    }
    ent *p = realloc(s->ents, ncap * sizeof(ent));
    if (!p) return NULL;
    s->ents = p;
    s->cap = ncap;
  }
  ent *r = s->ents + e->nents;
  e->nents += n;
  return r;
}

/* Fill entry x from the key at stack slot k (a string or a number). */
static int ent_key(jenc *e, ent *x, int k) {
  lua_State *L = e->L;
  int kt = lua_type(L, k);
  if (kt == LUA_TSTRING) {
    size_t len;
    x->s = lua_tolstring(L, k, &len);
    if (len > UINT32_MAX) return fail(e, FP_JSON_KIND_ENCODE, "a key is too long", NULL, 0);
    x->len = (uint32_t)len;
    x->num = 0;
    return FP_OK;
  }
  if (kt == LUA_TNUMBER) {
    double d = lua_tonumber(L, k);
    if (!isfinite(d)) /* (NaN cannot be a key) */
      return fail(e, FP_JSON_KIND_ENCODE, "a key is %s (not JSON)",
                  d > 0 ? "inf" : "-inf", 0);
    fp_buf *kb = &e->s->keys;
    if (fp_buf_reserve(kb, FP_JSON_NUM_MAX)) return FP_ENOMEM;
    x->off = kb->len;
    x->len = (uint32_t)fp_json_number(d, (char *)kb->p + kb->len);
    kb->len += x->len;
    x->num = 1;
    x->nkey = d;
    return FP_OK;
  }
  return fail(e, FP_JSON_KIND_ENCODE, "a table key is a %s (keys must be strings or numbers)",
              lua_typename(L, kt), 0);
}

/* Write the sorted members v[0..n) (base: index of v[0] in s->ents, as
 * children may move the array); value i is at stack slot v[i].slot, or at
 * tmp[v[i].slot] when tmp != 0. */
static int put_members(jenc *e, size_t base, size_t n, int tmp) {
  lua_State *L = e->L;
  int rc;
  if (put(e, "{", 1)) return FP_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    ent *x = e->s->ents + base + i;
    const char *ks = x->num ? (const char *)e->s->keys.p + x->off : x->s;
    size_t bad;
    if (i && put(e, ",", 1)) return FP_ENOMEM;
    if ((rc = put_string(e, ks, x->len, &bad))) {
      if (rc != FP_EMARSHAL) return rc;
      path_skey(e, ks, x->len);
      return utf8_fail(e, bad, "key");
    }
    if (put(e, ":", 1)) return FP_ENOMEM;
    int slot = x->slot, num = (int)x->num;
    double nkey = x->nkey;
    const char *kstr = x->s;
    size_t klen = x->len;
    int vi = slot;
    if (tmp) {
      lua_rawgeti(L, tmp, slot);
      vi = lua_gettop(L);
    }
    rc = enc_value(e, vi);
    if (tmp) lua_settop(L, vi - 1);
    if (rc) {
      if (num) path_nkey(e, nkey);
      else path_skey(e, kstr, klen);
      return rc;
    }
  }
  return put(e, "}", 1);
}

/* Write array items 1..max read with rawgeti (holes are null). */
static int put_array_rawgeti(jenc *e, int t, size_t max) {
  lua_State *L = e->L;
  int rc;
  if (put(e, "[", 1)) return FP_ENOMEM;
  int slot = lua_gettop(L) + 1;
  for (size_t i = 1; i <= max; i++) {
    if (i > 1 && put(e, ",", 1)) return FP_ENOMEM;
    lua_rawgeti(L, t, (int)i);
    rc = enc_value(e, slot);
    lua_settop(L, slot - 1);
    if (rc) {
      fp_path_index(&e->pt, i);
      return rc;
    }
  }
  return put(e, "]", 1);
}

/* The array rule's verdict on count keys, all positive integers, the
 * largest max. */
static int check_array(jenc *e, double max, size_t count) {
  if (max > 10 && max > 2.0 * (double)count)
    return fail(e, FP_JSON_KIND_ENCODE, "excessively sparse array", NULL, 0);
  if (max > (double)INT_MAX) /* (rawgeti takes an int; cannot be dense) */
    return fail(e, FP_JSON_KIND_ENCODE, "array too large", NULL, 0);
  return FP_OK;
}

/* A positive integer key?  (lua-cjson's test: a number, floor(k) == k,
 * k >= 1.) */
static inline int arr_key(lua_State *L, int k, double *d) {
  if (lua_type(L, k) != LUA_TNUMBER) return 0;
  *d = lua_tonumber(L, k);
  return *d >= 1 && floor(*d) == *d;
}

/* A table with many pairs, or deep in the stack: O(1) stack slots.  Pass 1
 * decides array or object; an array is read back with rawgeti, an object's
 * values are kept in a fresh table tmp (index = entry) while its keys are
 * sorted. */
static int enc_table_big(jenc *e, int t) {
  lua_State *L = e->L;
  int top = lua_gettop(L), rc;
  if (!lua_checkstack(L, 6))
    return fail(e, FP_JSON_KIND_ENCODE, "nesting too deep for the Lua stack", NULL, 0);
  size_t count = 0;
  double max = 0, d;
  int isarr = 1;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    count++;
    if (isarr && arr_key(L, -2, &d)) {
      if (d > max) max = d;
    } else {
      isarr = 0;
    }
    lua_pop(L, 1);
  }
  if (count == 0) return put(e, "{}", 2);
  if (isarr) {
    if ((rc = check_array(e, max, count))) return rc;
    return put_array_rawgeti(e, t, (size_t)max);
  }
  size_t base = e->nents, kbase = e->s->keys.len;
  if (!ents_push(e, count)) return FP_ENOMEM;
  lua_createtable(L, (int)(count < INT_MAX ? count : INT_MAX), 0);
  int tmp = top + 1;
  size_t i = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    /* (A weak table may lose entries to a collection that lua_createtable
     * ran: never more pairs than counted, and only those seen are used.) */
    if (i == count) {
      lua_pop(L, 2);
      break;
    }
    ent *x = e->s->ents + base + i;
    if ((rc = ent_key(e, x, -2))) return rc;
    x->slot = (int)++i;
    lua_rawseti(L, tmp, x->slot);
  }
  count = i;
  ent *v = e->s->ents + base;
  for (size_t j = 0; j < count; j++)
    if (v[j].num) v[j].s = (const char *)e->s->keys.p + v[j].off;
  sort_ents(v, count);
  rc = put_members(e, base, count, tmp);
  lua_settop(L, top);
  e->nents = base;
  e->s->keys.len = kbase;
  return rc;
}

/* A table: pairs on the stack when they fit (see the invariants). */
static int enc_table(jenc *e, int t) {
  lua_State *L = e->L;
  int rc;
  if (e->depth >= FP_JSON_MAX_DEPTH)
    return fail(e, FP_JSON_KIND_ENCODE, "tables nested deeper than %s (a cycle?)",
                NULL, FP_JSON_MAX_DEPTH);
  e->depth++;
  int top = lua_gettop(L);
  size_t count = 0;
  double max = 0, d;
  int isarr = 1, inorder = 1;
  if (top + 2 * 16 + 4 > SLOT_BUDGET || !lua_checkstack(L, 2 * 16 + 4)) goto big;
  lua_pushnil(L);
  while (lua_next(L, t)) { /* stack: k1 v1 ... kn vn, the next key copied on top */
    count++;
    if (isarr) {
      if (arr_key(L, -2, &d)) {
        if (d > max) max = d;
        if (d != (double)count) inorder = 0;
      } else {
        isarr = 0;
      }
    }
    if (count % 16 == 0 &&
        (count >= SMALL_MAX || top + 2 * (int)count + 2 * 16 + 4 > SLOT_BUDGET ||
         !lua_checkstack(L, 2 * 16 + 4))) {
      lua_settop(L, top);
      goto big;
    }
    lua_pushvalue(L, -2);
  }
  if (count == 0) {
    rc = put(e, "{}", 2);
  } else if (isarr) {
    if ((rc = check_array(e, max, count))) return rc;
    if (inorder && (double)count == max) {
      if (put(e, "[", 1)) return FP_ENOMEM;
      for (size_t i = 0; i < count; i++) {
        if (i && put(e, ",", 1)) return FP_ENOMEM;
        if ((rc = enc_value(e, top + 2 + 2 * (int)i))) {
          fp_path_index(&e->pt, i + 1);
          return rc;
        }
      }
      rc = put(e, "]", 1);
    } else {
      rc = put_array_rawgeti(e, t, (size_t)max);
    }
  } else {
    size_t base = e->nents, kbase = e->s->keys.len;
    ent *v = ents_push(e, count);
    if (!v) return FP_ENOMEM;
    for (size_t i = 0; i < count; i++) {
      if ((rc = ent_key(e, v + i, top + 1 + 2 * (int)i))) return rc;
      v[i].slot = top + 2 + 2 * (int)i;
    }
    for (size_t i = 0; i < count; i++)
      if (v[i].num) v[i].s = (const char *)e->s->keys.p + v[i].off;
    sort_ents(v, count);
    rc = put_members(e, base, count, 0);
    e->nents = base;
    e->s->keys.len = kbase;
  }
  lua_settop(L, top);
  e->depth--;
  return rc;
big:
  rc = enc_table_big(e, t);
  e->depth--;
  return rc;
}

static int enc_value(jenc *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    return put(e, "null", 4);
  case LUA_TBOOLEAN:
    return lua_toboolean(L, idx) ? put(e, "true", 4) : put(e, "false", 5);
  case LUA_TNUMBER:
    return put_number(e, lua_tonumber(L, idx));
  case LUA_TSTRING: {
    size_t n, bad;
    const char *s = lua_tolstring(L, idx, &n);
    int rc = put_string(e, s, n, &bad);
    return rc == FP_EMARSHAL ? utf8_fail(e, bad, "string") : rc;
  }
  case LUA_TTABLE:
    return enc_table(e, idx);
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) return put(e, "null", 4); /* cjson.null */
    return fail(e, FP_JSON_KIND_ENCODE, "a lightuserdata is not JSON (only NULL, cjson.null, is)", NULL, 0);
  default:
    return fail(e, FP_JSON_KIND_ENCODE, "a %s is not JSON", lua_typename(L, lua_type(L, idx)), 0);
  }
}

int fp_json_encode(lua_State *L, int idx, fp_buf *out, fp_json_scratch *s,
                   fp_json_err *err) {
  int top = lua_gettop(L);
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = top + 1 + idx;
  jenc e = {.L = L, .b = out, .s = s, .err = err};
  fp_path_tail_init(&e.pt, err->path, sizeof err->path, PATH_TAIL_MAX);
  size_t len0 = out->len, kb0 = s->keys.len;
  int rc = enc_value(&e, idx);
  lua_settop(L, top);
  s->keys.len = kb0;
  if (rc) {
    out->len = len0;
    if (rc == FP_ENOMEM) {
      err->kind = FP_JSON_KIND_ENCODE;
      snprintf(err->msg, sizeof err->msg, "out of memory");
      fp_path_tail_init(&e.pt, err->path, sizeof err->path, PATH_TAIL_MAX);
    }
    path_finish(&e);
  }
  return rc;
}

void fp_json_scratch_free(fp_json_scratch *s) {
  free(s->ents);
  s->ents = NULL;
  s->cap = 0;
  fp_buf_free(&s->keys);
}
