/*
 * fp_errpath.h - the path of a value an encoder refused, built while it
 * unwinds: each nesting level prepends its own segment (".name", "[3]"),
 * so nothing is spent on paths until something fails.  Shared by the value
 * codec (fp_codec.c) and the JSON writer (fp_json.c); each writes its own
 * root ("items[2]", "$") in front when it finishes the message.
 *
 * Invariant: the tail's len bytes sit at the end of buf, just before its
 * last byte: buf[cap - 1 - len .. cap - 1).  When a segment would take it
 * past max bytes, the outer segments are dropped instead (trunc set: the
 * finished path shows "..."), keeping the innermost, which say the most.
 */
#ifndef FP_ERRPATH_H
#define FP_ERRPATH_H

#include "fp_common.h"
#include <stdio.h>
#include <string.h>

FP_HIDDEN_BEGIN

typedef struct fp_path_tail {
  char *buf;      /* the error's path buffer */
  size_t cap;     /* its size */
  size_t max;     /* most tail bytes kept (room left for the root) */
  size_t len;     /* tail bytes stored at the end of buf */
  int trunc;      /* outer segments were dropped */
} fp_path_tail;

static inline void fp_path_tail_init(fp_path_tail *t, char *buf, size_t cap, size_t max) {
  t->buf = buf;
  t->cap = cap;
  t->max = max < cap - 1 ? max : cap - 1;
  t->len = 0;
  t->trunc = 0;
}

__attribute__((cold, noinline)) static void fp_path_prepend(fp_path_tail *t, const char *s,
                                                            size_t n) {
  if (t->trunc) return;
  if (n > t->max - t->len) {
    t->trunc = 1;
    return;
  }
  t->len += n;
  memcpy(t->buf + t->cap - 1 - t->len, s, n);
}

__attribute__((cold, noinline)) static void fp_path_index(fp_path_tail *t, size_t i) {
  char seg[32];
  int n = snprintf(seg, sizeof seg, "[%zu]", i);
  fp_path_prepend(t, seg, (size_t)n);
}

/* A Lua identifier (then the segment is .name, not ["name"]). */
static inline int fp_is_identifier(const char *s, size_t n) {
  if (n == 0 || !(s[0] == '_' || (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
    return 0;
  for (size_t i = 1; i < n; i++) {
    char c = s[i];
    if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
      return 0;
  }
  return 1;
}

FP_HIDDEN_END

#endif
