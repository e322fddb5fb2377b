/*
 * fuzz_ring.c - libFuzzer target for fp_lane_peek / fp_lane_release as the
 * parent runs them on a result lane whose shared bytes a worker wrote: the
 * fuzzer writes head, tail, big_busy and the ring's bytes, then the parent
 * side reads records until the lane is empty or corrupt.
 *
 * Properties: no read outside the ring; every record returned lies inside
 * the ring, within the inline limit, with a type below FP_LANE_PAD; peek
 * says only OK, EMPTY or CORRUPT (the lane has no big area).
 *
 * Then the other direction (the parent producing on a task lane whose
 * header the worker wrote): with head and tail from the input again, sends
 * of a few sizes say only OK, FULL or CORRUPT, and never write outside the
 * ring (checked on the mapping's slack after the ring: the header comes
 * first, so the mapping's last page runs on past the ring's end).
 */
#include "fp_ring.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAP 4096u

static fp_lane lane, pristine;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!pristine.h) {
    if (fp_lane_create(&pristine, CAP, 0) != FP_OK) abort();
  }
  if (size < 20) return 0;
  lane = pristine;
  uint64_t head, tail;
  uint32_t busy;
  memcpy(&head, data, 8);
  memcpy(&tail, data + 8, 8);
  memcpy(&busy, data + 16, 4);
  data += 20;
  size -= 20;
  memset(lane.ring, 0, CAP);
  memcpy(lane.ring, data, size < CAP ? size : CAP);
  atomic_store(&lane.h->head, head);
  atomic_store(&lane.h->tail, tail);
  atomic_store(&lane.h->big_busy, busy);
  for (int i = 0; i < 64; i++) {
    uint32_t type;
    const unsigned char *pl;
    size_t len;
    int rc = fp_lane_peek(&lane, &type, &pl, &len);
    if (rc == FP_EEMPTY || rc == FP_ECORRUPT) break;
    if (rc != FP_OK) abort();
    if (type >= FP_LANE_PAD || len > FP_LANE_INLINE_MAX(CAP)) abort();
    if (pl < lane.ring || pl + len > lane.ring + CAP) abort();
    volatile unsigned char sink = 0;
    for (size_t k = 0; k < len; k++) sink ^= pl[k];
    (void)sink;
    fp_lane_release(&lane);
  }
  lane = pristine;
  unsigned char *end = lane.ring + CAP;
  size_t slack = (size_t)(-(uintptr_t)end & 4095);
  memset(end, 0, slack);
  atomic_store(&lane.h->head, head);
  atomic_store(&lane.h->tail, tail);
  static const size_t sizes[] = {0, 5, 8, 100, FP_LANE_INLINE_MAX(CAP)};
  static unsigned char payload[FP_LANE_INLINE_MAX(CAP)];
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    int wake;
    int rc = fp_lane_try_send(&lane, 10, payload, sizes[i], &wake);
    if (rc != FP_OK && rc != FP_EFULL && rc != FP_ECORRUPT) abort();
    if (rc == FP_ECORRUPT) break;
  }
  for (size_t i = 0; i < slack; i++)
    if (end[i]) abort();
  return 0;
}
