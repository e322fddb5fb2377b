/*
 * bench_ring.c - micro-benchmarks of lanes across two processes.
 *
 *   ping-pong   one 8-byte record each way per round trip; both sides wait
 *               with fp_lane_wait_data when their lane is empty (which polls
 *               for up to FP_LANE_SPIN_NS, then sleeps on the futex), and,
 *               for reference, the same with busy polling only
 *   stream-64   a child streams 64-byte records, the parent reads each one
 *   stream-16M  a child streams 16 MiB records (big area), the parent copies
 *               each one out to private memory
 *
 * Not a test (make ctest does not run it).  Build and run:
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -g -Iengine -Itests/c tests/c/bench_ring.c \
 *       engine/fp_ring.c engine/fp_shm.c engine/fp_common.c -o build/bench_ring
 *   build/bench_ring [scale]       (scale 1 = default sizes; 0.1 for a quick run)
 * Add -DFP_LANE_SPIN_NS=0 to measure waits that always sleep.  "sleeps" are
 * voluntary context switches (getrusage), i.e. futex sleeps that happened.
 *
 * Every wait is bounded; a stuck peer makes the benchmark fail, not hang.
 */
#include "fp_ring.h"
#include "fp_shm.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)
#define WAIT_MS 5000

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_ring: %s: %s\n", what, fp_strerror(rc));
  exit(1);
}

/* Counters a side keeps; the child's live in shared memory. */
typedef struct counts {
  uint64_t waits, wakes, bad, csw;
} counts;

/* Voluntary context switches of this process so far. */
static uint64_t vcsw(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (uint64_t)ru.ru_nvcsw;
}

static pid_t spawn_child(void) {
  fflush(stdout);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) die("fork", FP_ESYS);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(99);
    alarm(600);
  }
  return pid;
}

static void reap(pid_t pid) {
  int st;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "bench_ring: child failed (status %d)\n", st);
    exit(1);
  }
}

/* Send, sleeping while full.  spin: poll instead of sleeping. */
static int send_blocking(fp_lane *l, uint32_t type, const void *p, size_t n, int spin,
                         counts *c) {
  for (;;) {
    int wake = 0;
    int rc = fp_lane_try_send(l, type, p, n, &wake);
    if (rc == FP_OK) {
      if (wake) {
        fp_lane_wake_consumer(l);
        c->wakes++;
      }
      return FP_OK;
    }
    if (rc != FP_EFULL) return rc;
    if (spin) continue;
    c->waits++;
    rc = fp_lane_wait_space(l, WAIT_MS);
    if (rc == FP_ETIMEOUT) return rc;
  }
}

/* Peek, sleeping while empty. */
static int recv_blocking(fp_lane *l, uint32_t *t, const unsigned char **p, size_t *n, int spin,
                         counts *c) {
  for (;;) {
    int rc = fp_lane_peek(l, t, p, n);
    if (rc != FP_EEMPTY) return rc;
    if (spin) continue;
    c->waits++;
    rc = fp_lane_wait_data(l, WAIT_MS);
    if (rc == FP_ETIMEOUT) return rc;
  }
}

static void release(fp_lane *l, counts *c) {
  if (fp_lane_release(l)) {
    fp_lane_wake_producer(l);
    c->wakes++;
  }
}

/* ---- ping-pong ---- */

static void pingpong(uint64_t n, int spin, counts *shared) {
  fp_lane a, b;
  int rc;
  if ((rc = fp_lane_create(&a, 1 << 16, 0)) || (rc = fp_lane_create(&b, 1 << 16, 0)))
    die("fp_lane_create", rc);
  memset(shared, 0, sizeof *shared);
  pid_t pid = spawn_child();
  if (pid == 0) {
    counts *c = shared;
    for (uint64_t i = 0; i < n + 1000; i++) {
      if (i == 1000) c->csw = vcsw();
      uint32_t t;
      const unsigned char *p;
      size_t len;
      uint64_t v;
      if ((rc = recv_blocking(&a, &t, &p, &len, spin, c)) != FP_OK) _exit(2);
      memcpy(&v, p, 8);
      release(&a, c);
      if (v != i) c->bad++;
      if (send_blocking(&b, 1, &v, 8, spin, c) != FP_OK) _exit(3);
    }
    c->csw = vcsw() - c->csw;
    _exit(0);
  }
  counts mine = {0, 0, 0, 0};
  uint64_t t0 = 0;
  for (uint64_t i = 0; i < n + 1000; i++) {
    if (i == 1000) {  /* warm-up done */
      t0 = now_ns();
      mine = (counts){0, 0, 0, vcsw()};
    }
    uint32_t t;
    const unsigned char *p;
    size_t len;
    uint64_t v;
    if ((rc = send_blocking(&a, 1, &i, 8, spin, &mine)) != FP_OK) die("send", rc);
    if ((rc = recv_blocking(&b, &t, &p, &len, spin, &mine)) != FP_OK) die("recv", rc);
    memcpy(&v, p, 8);
    release(&b, &mine);
    if (v != i) mine.bad++;
  }
  double us = (double)(now_ns() - t0) / 1e3 / (double)n;
  mine.csw = vcsw() - mine.csw;
  reap(pid);
  printf("ping-pong %-10s %7.2f us/round trip  (%llu round trips; futex sleeps per round "
         "trip: parent %.2f, child %.2f)%s\n",
         spin ? "busy-poll" : "lane waits", us, (unsigned long long)n,
         (double)mine.csw / (double)n, (double)shared->csw / (double)n,
         mine.bad + shared->bad ? "  BAD DATA" : "");
  fp_lane_destroy(&a);
  fp_lane_destroy(&b);
}

/* ---- streaming ---- */

static void stream(size_t ring, size_t rec, uint64_t n, counts *shared) {
  fp_lane l;
  int rc;
  size_t big = rec > FP_LANE_INLINE_MAX(ring) ? fp_shm_big_size() : 0;
  while ((rc = fp_lane_create(&l, ring, big)) != FP_OK && big > 2 * rec) big /= 2;
  if (rc) die("fp_lane_create", rc);
  unsigned char *src = malloc(rec), *dst = malloc(rec);
  if (!src || !dst) die("malloc", FP_ENOMEM);
  memset(src, 0x5a, rec);  /* touch: no page faults while timing */
  memset(dst, 0xa5, rec);
  memset(shared, 0, sizeof *shared);
  pid_t pid = spawn_child();
  if (pid == 0) {
    shared->csw = vcsw();
    for (uint64_t i = 0; i < n; i++) {
      memcpy(src, &i, 8);
      if (send_blocking(&l, 1, src, rec, 0, shared) != FP_OK) _exit(2);
    }
    shared->csw = vcsw() - shared->csw;
    _exit(0);
  }
  counts mine = {0, 0, 0, vcsw()};
  uint64_t t0 = now_ns(), sum = 0;
  for (uint64_t i = 0; i < n; i++) {
    uint32_t t;
    const unsigned char *p;
    size_t len;
    uint64_t v;
    if ((rc = recv_blocking(&l, &t, &p, &len, 0, &mine)) != FP_OK) die("recv", rc);
    if (rec >= MIB) {
      memcpy(dst, p, len);  /* what a decoder reading all of it costs */
      sum += dst[len - 1];
    }
    memcpy(&v, p, 8);
    if (v != i || len != rec) mine.bad++;
    release(&l, &mine);
  }
  double secs = (double)(now_ns() - t0) / 1e9;
  mine.csw = vcsw() - mine.csw;
  reap(pid);
  double bytes = (double)rec * (double)n;
  printf("stream %8zu B records, ring %7zu: %9.0f records/s %6.2f GB/s  (waits: consumer "
         "%llu, producer %llu; futex sleeps %llu+%llu; wakes %llu+%llu)%s\n",
         rec, ring, (double)n / secs, bytes / secs / 1e9, (unsigned long long)mine.waits,
         (unsigned long long)shared->waits, (unsigned long long)mine.csw,
         (unsigned long long)shared->csw, (unsigned long long)mine.wakes,
         (unsigned long long)shared->wakes, mine.bad ? "  BAD DATA" : "");
  (void)sum;
  free(src);
  free(dst);
  fp_lane_destroy(&l);
}

int main(int argc, char **argv) {
  double scale = argc > 1 ? atof(argv[1]) : 1.0;
  if (scale <= 0) scale = 1.0;
  alarm(900);
  void *m;
  int rc = fp_shm_map(sizeof(counts), 0, &m);
  if (rc) die("fp_shm_map", rc);
  counts *shared = m;
  pingpong((uint64_t)(200000 * scale), 0, shared);
  pingpong((uint64_t)(200000 * scale), 1, shared);
  stream(1 << 16, 64, (uint64_t)(20000000 * scale), shared);
  stream(1 << 20, 64, (uint64_t)(20000000 * scale), shared);
  stream(1 << 20, 16 * MIB, (uint64_t)(400 * scale) + 1, shared);
  fp_shm_unmap(m, sizeof(counts));
  return 0;
}
