/*
 * fp_reply.h - the parent's first look at a record from a worker's result
 * lane: its fixed header, checked against what the parent sent, before
 * anything is decoded or sized by it.
 *
 * A worker answers the chunks it was sent in order, each exactly once,
 * echoing (job, start, count) (fp_proto.h).  The parent keeps the chunks it
 * sent and not yet saw answered (fp_sentq, one per worker process); a chunk
 * reply that does not answer the oldest of them is corrupt, so no count the
 * parent did not choose itself reaches an allocation or a loop.
 */
#ifndef FP_REPLY_H
#define FP_REPLY_H

#include "fp_common.h"
#include "fp_proto.h"

FP_HIDDEN_BEGIN

typedef struct fp_sent {
  uint64_t job;
  int64_t start;
  uint32_t count;
} fp_sent;

/* Chunks sent and not answered, oldest first: a ring of cap entries from
 * head.  Zeroed = empty. */
typedef struct fp_sentq {
  fp_sent *q;
  size_t head, n, cap;
} fp_sentq;

/* Room for one more entry (before sending, so a send that succeeded is
 * always remembered).  FP_OK or FP_ENOMEM. */
int fp_sentq_reserve(fp_sentq *s);
/* Remember a chunk just sent (after fp_sentq_reserve). */
void fp_sentq_push(fp_sentq *s, const fp_chunk_hdr *h);
/* Forget every entry (the process is gone); keeps the memory. */
void fp_sentq_clear(fp_sentq *s);
void fp_sentq_free(fp_sentq *s);

/* Read the fixed part of a record of the given type (d, len as peeked, in
 * memory the worker may still write: every field is read once, into *h).
 * Sets *h (zeroed for records without a chunk header) and *pos (where the
 * rest begins).  A chunk reply (RESULTS, CHUNK_ERROR,
 * CANCELLED) must answer the oldest chunk in q, which it then leaves; the
 * values of an unpacked RESULTS take a byte each at least, so its count
 * must fit in the bytes after the header (packed bodies: fp_packed.h).
 * FP_OK, or FP_ECORRUPT with *why (a static string); q is unchanged then. */
int fp_reply_parse(fp_sentq *q, uint32_t type, const unsigned char *d, size_t len,
                   fp_chunk_hdr *h, size_t *pos, const char **why);

FP_HIDDEN_END

#endif
