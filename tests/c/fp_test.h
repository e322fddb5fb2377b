/*
 * fp_test.h - the C unit tests' harness: checks that count instead of
 * aborting, and one closing line "N passed, N failed" that .ci/run adds up.
 *
 *   FP_TEST(name) { ... FP_CHECK(cond); FP_CHECK_EQ_INT(a, b); ... }
 *   int main(void) { FP_RUN(name); ...; return fp_test_summary(); }
 *
 * A test counts as passed when none of its checks failed.
 */
#ifndef FP_TEST_H
#define FP_TEST_H

#include <stdio.h>
#include <string.h>

static int fp_t_passed, fp_t_failed, fp_t_cur_failed;

#define FP_TEST(name) static void name(void)

#define FP_CHECK(cond) do { if (!(cond)) { fp_t_cur_failed++; \
  fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)

#define FP_CHECK_EQ_INT(a, b) do { long long fp_a_ = (long long)(a), fp_b_ = (long long)(b); \
  if (fp_a_ != fp_b_) { fp_t_cur_failed++; fprintf(stderr, \
  "  %s:%d: %s == %s failed: %lld vs %lld\n", __FILE__, __LINE__, #a, #b, fp_a_, fp_b_); } } while (0)

#define FP_CHECK_STR(a, b) do { const char *fp_a_ = (a), *fp_b_ = (b); \
  if (!fp_a_ || !fp_b_ || strcmp(fp_a_, fp_b_) != 0) { fp_t_cur_failed++; fprintf(stderr, \
  "  %s:%d: %s == %s failed: \"%s\" vs \"%s\"\n", __FILE__, __LINE__, #a, #b, \
  fp_a_ ? fp_a_ : "(null)", fp_b_ ? fp_b_ : "(null)"); } } while (0)

#define FP_RUN(name) do { fp_t_cur_failed = 0; name(); \
  if (fp_t_cur_failed) { fp_t_failed++; fprintf(stderr, "FAIL %s\n", #name); } \
  else { fp_t_passed++; fprintf(stderr, "ok   %s\n", #name); } } while (0)

static int fp_test_summary(void) {
  printf("%d passed, %d failed\n", fp_t_passed, fp_t_failed);
  return fp_t_failed ? 1 : 0;
}

#endif
