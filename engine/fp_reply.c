/*
 * fp_reply.c - checking a worker's record headers against the chunks the
 * parent sent (see fp_reply.h).
 */
#include "fp_reply.h"

#include <stdlib.h>
#include <string.h>

int fp_sentq_reserve(fp_sentq *s) {
  if (s->n < s->cap) return FP_OK;
  size_t cap = s->cap ? 2 * s->cap : 16;
  fp_sent *q = malloc(cap * sizeof *q);
  if (!q) return FP_ENOMEM;
  /* Unwrap the ring into the new array. */
  for (size_t i = 0; i < s->n; i++) q[i] = s->q[(s->head + i) % s->cap];
  free(s->q);
  s->q = q;
  s->cap = cap;
  s->head = 0;
  return FP_OK;
}

void fp_sentq_push(fp_sentq *s, const fp_chunk_hdr *h) {
  fp_sent *e = &s->q[(s->head + s->n++) % s->cap];
  e->job = h->job;
  e->start = h->start;
  e->count = h->count;
}

void fp_sentq_clear(fp_sentq *s) {
  s->head = s->n = 0;
}

void fp_sentq_free(fp_sentq *s) {
  free(s->q);
  memset(s, 0, sizeof *s);
}

static int corrupt(const char **why, const char *msg) {
  *why = msg;
  return FP_ECORRUPT;
}

int fp_reply_parse(fp_sentq *q, uint32_t type, const unsigned char *d, size_t len,
                   fp_chunk_hdr *h, size_t *pos, const char **why) {
  memset(h, 0, sizeof *h);
  *pos = 0;
  switch (type) {
  case FP_M_RESULTS:
  case FP_M_CHUNK_ERROR:
  case FP_M_CANCELLED:
  case FP_M_SETUP_ERROR:
    if (len < sizeof *h) return corrupt(why, "record shorter than its header");
    memcpy(h, d, sizeof *h);
    *pos = sizeof *h;
    break;
  case FP_M_BYE:
    if (len < sizeof(fp_bye)) return corrupt(why, "record shorter than its header");
    return FP_OK;
  case FP_M_INIT_ERROR:
  case FP_M_EXIT_RESULT:
  case FP_M_EXIT_ERROR:
  case FP_M_READY:
    return FP_OK;
  default:
    return corrupt(why, "unknown record type");
  }
  if (type == FP_M_SETUP_ERROR) return FP_OK;  /* answers a SETUP: names its job only */
  if (!q->n) return corrupt(why, "a reply to no chunk");
  const fp_sent *e = &q->q[q->head];
  if (e->job != h->job || e->start != h->start || e->count != h->count)
    return corrupt(why, "a reply that does not answer the chunk sent");
  /* (a reduced chunk carries one value whatever its count) */
  uint32_t nvals = h->index == FP_RESULTS_REDUCED ? 1 : h->count;
  if (type == FP_M_RESULTS && !(h->flags & FP_CHUNK_PACKED) && nvals > len - *pos)
    return corrupt(why, "more results than bytes");
  if (type == FP_M_RESULTS && h->index == FP_RESULTS_REDUCED && (h->flags & FP_CHUNK_PACKED))
    return corrupt(why, "a reduced chunk is never packed");
  q->head = (q->head + 1) % q->cap;
  q->n--;
  return FP_OK;
}
