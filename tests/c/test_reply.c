/*
 * test_reply.c - fp_reply_parse, the parent's check of a chunk reply's
 * header against the chunks it sent: a reply answers the oldest chunk
 * sent, its count of values fits in its bytes (one value for a reduced
 * chunk, whatever its count), a reduced chunk is never packed, and a
 * refused record leaves the queue as it was.
 */
#include "fp_reply.h"
#include "fp_test.h"

#include <string.h>

static fp_sentq q;

static void sent(uint64_t job, int64_t start, uint32_t count) {
  fp_chunk_hdr h = {.job = job, .fn = job, .start = start, .index = 0, .count = count, .flags = 0};
  FP_CHECK_EQ_INT(fp_sentq_reserve(&q), FP_OK);
  fp_sentq_push(&q, &h);
}

/* A RESULTS record: the header, then body_len bytes of body. */
static size_t record(unsigned char *buf, uint64_t job, int64_t start, uint32_t count, int64_t index,
                     uint32_t flags, size_t body_len) {
  fp_chunk_hdr h = {.job = job, .fn = job, .start = start, .index = index, .count = count,
                    .flags = flags};
  memcpy(buf, &h, sizeof h);
  memset(buf + sizeof h, 0 /* FP_T_NIL */, body_len);
  return sizeof h + body_len;
}

static int parse(const unsigned char *buf, size_t len, const char **why) {
  fp_chunk_hdr h;
  size_t pos;
  *why = NULL;
  return fp_reply_parse(&q, FP_M_RESULTS, buf, len, &h, &pos, why);
}

FP_TEST(results_count_must_fit_in_the_bytes) {
  unsigned char buf[256];
  const char *why;
  fp_sentq_clear(&q);
  sent(1, 1, 100);
  FP_CHECK_EQ_INT(parse(buf, record(buf, 1, 1, 100, 0, 0, 99), &why), FP_ECORRUPT);
  FP_CHECK_STR(why, "more results than bytes");
  FP_CHECK_EQ_INT(q.n, 1); /* refused: still waiting for its answer */
  FP_CHECK_EQ_INT(parse(buf, record(buf, 1, 1, 100, 0, 0, 100), &why), FP_OK);
  FP_CHECK_EQ_INT(q.n, 0);
}

FP_TEST(a_reduced_chunk_carries_one_value_whatever_its_count) {
  unsigned char buf[256];
  const char *why;
  fp_sentq_clear(&q);
  sent(2, 1, 100000);
  sent(2, 100001, 7);
  /* no byte at all: not even the one value */
  FP_CHECK_EQ_INT(parse(buf, record(buf, 2, 1, 100000, FP_RESULTS_REDUCED, 0, 0), &why), FP_ECORRUPT);
  FP_CHECK_STR(why, "more results than bytes");
  /* packed: never, for a reduced chunk */
  FP_CHECK_EQ_INT(parse(buf, record(buf, 2, 1, 100000, FP_RESULTS_REDUCED, FP_CHUNK_PACKED, 16), &why),
                  FP_ECORRUPT);
  FP_CHECK_STR(why, "a reduced chunk is never packed");
  FP_CHECK_EQ_INT(q.n, 2);
  /* one value for 100,000 items */
  FP_CHECK_EQ_INT(parse(buf, record(buf, 2, 1, 100000, FP_RESULTS_REDUCED, 0, 1), &why), FP_OK);
  /* the next one answers the next chunk, and still must answer it */
  FP_CHECK_EQ_INT(parse(buf, record(buf, 2, 1, 7, FP_RESULTS_REDUCED, 0, 1), &why), FP_ECORRUPT);
  FP_CHECK_STR(why, "a reply that does not answer the chunk sent");
  FP_CHECK_EQ_INT(parse(buf, record(buf, 2, 100001, 7, FP_RESULTS_REDUCED, 0, 1), &why), FP_OK);
  FP_CHECK_EQ_INT(q.n, 0);
}

FP_TEST(a_tagged_chunk_still_carries_count_values) {
  unsigned char buf[256];
  const char *why;
  fp_sentq_clear(&q);
  sent(3, 5, 10);
  FP_CHECK_EQ_INT(parse(buf, record(buf, 3, 5, 10, FP_RESULTS_TAGGED, 0, 1), &why), FP_ECORRUPT);
  FP_CHECK_EQ_INT(parse(buf, record(buf, 3, 5, 10, FP_RESULTS_TAGGED, 0, 10), &why), FP_OK);
}

int main(void) {
  FP_RUN(results_count_must_fit_in_the_bytes);
  FP_RUN(a_reduced_chunk_carries_one_value_whatever_its_count);
  FP_RUN(a_tagged_chunk_still_carries_count_values);
  fp_sentq_free(&q);
  return fp_test_summary();
}
