/*
 * fp_common.c - error strings, the growable byte buffer, the clock.
 */
#include "fp_common.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *fp_strerror(int code) {
  switch (code) {
  case FP_OK:       return "success";
  case FP_ENOMEM:   return "out of memory";
  case FP_ESYS:     return "system call failed";
  case FP_EMARSHAL: return "value cannot be sent";
  case FP_ECORRUPT: return "corrupted record";
  case FP_EFULL:    return "channel full";
  case FP_EEMPTY:   return "channel empty";
  case FP_ETIMEOUT: return "timed out";
  case FP_EINTR:    return "interrupted";
  case FP_E2BIG:    return "record too large";
  default:          return "unknown error";
  }
}

int fp_buf_reserve(fp_buf *b, size_t extra) {
  if (extra <= b->cap - b->len) return FP_OK;
  if (extra > SIZE_MAX / 2 - b->len) return FP_ENOMEM;
  size_t need = b->len + extra;
  /* Grow geometrically so that appending n bytes one at a time is O(n). */
  size_t ncap = b->cap ? b->cap : 256;
  while (ncap < need) ncap *= 2;
  unsigned char *np = realloc(b->p, ncap);
  if (!np) return FP_ENOMEM;
  b->p = np;
  b->cap = ncap;
  return FP_OK;
}

int fp_buf_append(fp_buf *b, const void *src, size_t n) {
  int rc = fp_buf_reserve(b, n);
  if (rc) return rc;
  if (n) memcpy(b->p + b->len, src, n);
  b->len += n;
  return FP_OK;
}

void fp_buf_free(fp_buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

uint64_t fp_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
