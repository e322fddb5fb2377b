/*
 * fuzz_reply.c - libFuzzer target for fp_reply_parse: the headers of the
 * records a worker sends (chunk replies with job/start/count, BYE, the
 * others), checked against the chunks the parent sent.
 *
 * Input: a byte n (mod 9) of chunks "sent", each 20 bytes (u64 job, i64
 * start, u32 count); then records, each u32 type, u16 len and len bytes.
 * Every record is parsed from an exact-size heap copy (ASan sees any read
 * past it).  Properties: pos <= len; a chunk reply that passed equals the
 * oldest chunk sent, which it removed; an unpacked RESULTS that passed has
 * no more results than bytes (one result for a reduced chunk, which is
 * never packed); a refused record leaves the queue as it was.
 */
#include "fp_reply.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static fp_sentq q; /* reused; reachable, so never a leak */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fp_sentq_clear(&q);
  if (size < 1) return 0;
  unsigned n = data[0] % 9;
  data++;
  size--;
  for (unsigned i = 0; i < n && size >= 20; i++) {
    fp_chunk_hdr h;
    memset(&h, 0, sizeof h);
    memcpy(&h.job, data, 8);
    memcpy(&h.start, data + 8, 8);
    memcpy(&h.count, data + 16, 4);
    if (fp_sentq_reserve(&q) != FP_OK) abort();
    fp_sentq_push(&q, &h);
    data += 20;
    size -= 20;
  }
  while (size >= 6) {
    uint32_t type;
    uint16_t len;
    memcpy(&type, data, 4);
    memcpy(&len, data + 4, 2);
    data += 6;
    size -= 6;
    if (len > size) len = (uint16_t)size;
    unsigned char *rec = malloc(len ? len : 1);
    if (!rec) abort();
    memcpy(rec, data, len);
    data += len;
    size -= len;
    size_t before = q.n;
    fp_sent oldest;
    memset(&oldest, 0, sizeof oldest);
    if (q.n) oldest = q.q[q.head];
    fp_chunk_hdr h;
    size_t pos;
    const char *why = NULL;
    int rc = fp_reply_parse(&q, type, rec, len, &h, &pos, &why);
    if (rc == FP_OK) {
      if (pos > len) abort();
      int chunk = type == FP_M_RESULTS || type == FP_M_CHUNK_ERROR || type == FP_M_CANCELLED;
      if (chunk) {
        if (before == 0 || q.n != before - 1) abort();
        if (h.job != oldest.job || h.start != oldest.start || h.count != oldest.count) abort();
        /* (a reduced chunk's body is one value, whatever its count, and
         * never packed) */
        uint32_t nvals = h.index == FP_RESULTS_REDUCED ? 1 : h.count;
        if (type == FP_M_RESULTS && !(h.flags & FP_CHUNK_PACKED) && nvals > len - pos)
          abort();
        if (type == FP_M_RESULTS && h.index == FP_RESULTS_REDUCED && (h.flags & FP_CHUNK_PACKED))
          abort();
      } else if (q.n != before) {
        abort();
      }
    } else {
      if (rc != FP_ECORRUPT || !why || q.n != before) abort();
    }
    free(rec);
  }
  return 0;
}
