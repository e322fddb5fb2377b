/*
 * test_ring.c - unit tests of lanes (fp_ring.c) and shared memory (fp_shm.c).
 *
 * Single-process tests drive both ends of a lane by hand: geometry, every
 * payload size, wrap-around with PAD records, full ring, the big area,
 * corrupted headers (crafted and fuzzed), accounting, and bounded waits.
 * Cross-process tests fork: a producer streams millions of records of
 * varying sizes (some through the big area) with sequence-derived lengths,
 * types and contents, both directions, each side sleeping on the futexes;
 * and a producer killed with SIGKILL mid-stream must leave only whole
 * records behind.
 *
 * Nothing here can hang: every wait has a timeout, consecutive timeouts fail
 * the test, children die with the parent (PR_SET_PDEATHSIG) and have their
 * own alarm(), children are always reaped, and main() arms alarm() as a
 * global watchdog.  Children report through shared memory and _exit().
 */
#include "fp_ring.h"
#include "fp_shm.h"
#include "fp_test.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)
#define WAIT_MS 2000        /* one bounded wait in the streaming tests */
#define MAX_TIMEOUTS 3      /* consecutive timeouts before giving up */
#define WATCHDOG_S 600      /* whole program */
#define CHILD_WATCHDOG_S 300

/* ---- helpers ---- */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static uint64_t xs_next(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

/* Deterministic bytes for a record: a function of (seed, offset). */
static void fill(unsigned char *p, size_t n, uint64_t seed) {
  uint64_t s = mix64(seed) | 1;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = xs_next(&s);
    memcpy(p + i, &v, 8);
  }
  if (i < n) {
    uint64_t v = xs_next(&s);
    memcpy(p + i, &v, n - i);
  }
}

/* 1 when p[0..n) is what fill(.., n, seed) wrote. */
static int same(const unsigned char *p, size_t n, uint64_t seed) {
  uint64_t s = mix64(seed) | 1;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = xs_next(&s);
    if (memcmp(p + i, &v, 8) != 0) return 0;
  }
  if (i < n) {
    uint64_t v = xs_next(&s);
    if (memcmp(p + i, &v, n - i) != 0) return 0;
  }
  return 1;
}

static uint64_t rec_bytes(size_t len) { return 8 + FP_ALIGN_UP(len, 8); }

static int count_fds(void) {
  int n = 0;
  for (int fd = 0; fd < 4096; fd++) n += fcntl(fd, F_GETFD) != -1;
  return n;
}

/* VmSize of this process, in bytes. */
static size_t vm_size(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  size_t kb = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmSize: %zu kB", &kb) == 1) break;
  fclose(f);
  return kb << 10;
}

/* Bytes of memory a file holds (allocated blocks, not its size). */
static uint64_t file_bytes(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return UINT64_MAX;
  return (uint64_t)st.st_blocks * 512;
}

static uint64_t file_size(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return UINT64_MAX;
  return (uint64_t)st.st_size;
}

/* Fork a child that runs fn(arg) and _exits with its result.  The child
 * dies with us and has its own watchdog. */
static pid_t spawn(int (*fn)(void *), void *arg) {
  fflush(stdout);
  fflush(stderr);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(99);
    alarm(CHILD_WATCHDOG_S);
    _exit(fn(arg));
  }
  return pid;
}

/* Reap pid within timeout_ms (polling), killing it if it overstays.
 * Returns the wait status, or -1. */
static int reap(pid_t pid, int timeout_ms) {
  int st = 0;
  uint64_t end = now_ns() + (uint64_t)timeout_ms * 1000000u;
  for (;;) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) return st;
    if (r < 0 && errno != EINTR) return -1;
    if (now_ns() > end) {
      kill(pid, SIGKILL);
      while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
      fprintf(stderr, "  child %d overstayed and was killed\n", (int)pid);
      return -1;
    }
    usleep(1000);
  }
}

static int exited_ok(int st) { return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0; }

static int no_children_left(void) {
  return waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD;
}

/* Send one record, retrying on FP_EFULL after consuming nothing (tests that
 * know there is room). */
static int send_now(fp_lane *l, uint32_t type, const void *p, size_t n) {
  int wake;
  return fp_lane_try_send(l, type, p, n, &wake);
}

/* Peek, check and release one record filled with `seed`. */
static int recv_check(fp_lane *l, uint32_t type, size_t n, uint64_t seed) {
  uint32_t t;
  const unsigned char *p;
  size_t len;
  int rc = fp_lane_peek(l, &t, &p, &len);
  if (rc != FP_OK) return rc;
  int ok = t == type && len == n && same(p, n, seed);
  fp_lane_release(l);
  return ok ? FP_OK : FP_ECORRUPT;
}

/* ---- shared memory ---- */

FP_TEST(test_shm_map) {
  FP_CHECK_EQ_INT(fp_shm_page(), sysconf(_SC_PAGESIZE));
  void *p = NULL;
  FP_CHECK_EQ_INT(fp_shm_map(100, 0, &p), FP_OK);
  FP_CHECK(p != NULL);
  if (!p) return;
  unsigned char *b = p;
  int zero = 1;
  for (size_t i = 0; i < fp_shm_page(); i++) zero &= b[i] == 0;
  FP_CHECK(zero);
  /* Shared with a child: it sees our byte and we see its reply. */
  b[0] = 42;
  pid_t pid = fork();
  if (pid == 0) {
    b[1] = (unsigned char)(b[0] + 1);
    _exit(0);
  }
  FP_CHECK(exited_ok(reap(pid, 10000)));
  FP_CHECK_EQ_INT(b[1], 43);
  fp_shm_unmap(p, 100);
  fp_shm_unmap(NULL, 100);  /* no-op */
  FP_CHECK_EQ_INT(fp_shm_map(0, 0, &p), FP_ENOMEM);
  FP_CHECK_EQ_INT(fp_shm_map(SIZE_MAX - 10, 0, &p), FP_ENOMEM);
  FP_CHECK(p == NULL);
}

FP_TEST(test_shm_big) {
  size_t big = fp_shm_big_size();
  FP_CHECK(big >= ((size_t)1 << 30));
  FP_CHECK(big <= ((size_t)1 << 40));
  FP_CHECK((big & (big - 1)) == 0);
  long pages = sysconf(_SC_PHYS_PAGES);
  if (pages > 0 && big < ((size_t)1 << 40))
    FP_CHECK(big >= (size_t)pages * fp_shm_page());
  /* discard: whole pages only, reads as zeros after. */
  void *p = NULL;
  size_t n = 64 * MIB;
  FP_CHECK_EQ_INT(fp_shm_map(n, 1, &p), FP_OK);
  if (!p) return;
  unsigned char *b = p;
  size_t pg = fp_shm_page();
  memset(b, 0xab, 4 * pg);
  b[n - 1] = 7;                       /* last page: costs one page only */
  FP_CHECK_EQ_INT(b[n - 1], 7);
  fp_shm_discard(b, 2 * pg + 100);    /* rounded down to 2 pages */
  FP_CHECK_EQ_INT(b[0], 0);
  FP_CHECK_EQ_INT(b[2 * pg - 1], 0);
  FP_CHECK_EQ_INT(b[2 * pg], 0xab);   /* third page kept */
  fp_shm_discard(NULL, 100);          /* ignored */
  fp_shm_unmap(p, n);
}

/* fp_shm_file: empty, unnamed, close-on-exec, shared with a child. */
FP_TEST(test_shm_file) {
  int fd = fp_shm_file();
  FP_CHECK(fd >= 0);
  if (fd < 0) return;
  FP_CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  FP_CHECK_EQ_INT(file_size(fd), 0);
  FP_CHECK_EQ_INT(pwrite(fd, "abc", 3, 0), 3);
  pid_t pid = fork();
  if (pid == 0) {
    char c[3];
    int ok = pread(fd, c, 3, 0) == 3 && memcmp(c, "abc", 3) == 0 && pwrite(fd, "x", 1, 1) == 1;
    _exit(ok ? 0 : 1);
  }
  FP_CHECK(exited_ok(reap(pid, 10000)));
  char c[3];
  FP_CHECK(pread(fd, c, 3, 0) == 3 && memcmp(c, "axc", 3) == 0);
  close(fd);
}

/* Sizes for FORKPOOL_SHARED_MEMORY. */
FP_TEST(test_shm_parse_size) {
  static const struct { const char *s; uint64_t v; } good[] = {
    {"0", 0}, {"4096", 4096}, {"1K", 1024}, {"1k", 1024}, {"16M", 16 * MIB},
    {"2G", (uint64_t)2 << 30}, {"1T", (uint64_t)1 << 40}, {"3GiB", (uint64_t)3 << 30},
    {"10MB", 10 * MIB}, {"7B", 7}, {"0012", 12},
  };
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    size_t v = 1;
    FP_CHECK_EQ_INT(fp_shm_parse_size(good[i].s, &v), FP_OK);
    FP_CHECK_EQ_INT(v, good[i].v);
  }
  static const char *const bad[] = {"", "x", "1X", "-1", "1.5G", " 1", "1 ", "1GG", "1Gx",
                                    "99999999999999999999", "20000000T", "G", "1iB"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    size_t v = 5;
    FP_CHECK_EQ_INT(fp_shm_parse_size(bad[i], &v), FP_ECORRUPT);
    FP_CHECK_EQ_INT(v, 5);
  }
  size_t v;
  FP_CHECK_EQ_INT(fp_shm_parse_size(NULL, &v), FP_ECORRUPT);
}

/* The arena, in a child (fp_arena_init works once per process): its
 * default size, a fixed size, blocks seen by a process forked after the
 * arena was made, freed blocks reading as zeros.  Returns the number of the
 * first failed check, 0 when all pass. */
#define ACHK(cond, n) do { if (!(cond)) return (n); } while (0)
static int child_arena(void *arg) {
  (void)arg;
  /* The default size follows RLIMIT_AS when it is finite: a quarter. */
  struct rlimit old, rl;
  ACHK(getrlimit(RLIMIT_AS, &old) == 0, 1);
  if (old.rlim_cur == RLIM_INFINITY) ACHK(fp_arena_default_size() == fp_shm_big_size(), 2);
  rl = old;
  rl.rlim_cur = (rlim_t)8 << 30;
  if (old.rlim_max == RLIM_INFINITY || old.rlim_max >= rl.rlim_cur) {
    ACHK(setrlimit(RLIMIT_AS, &rl) == 0, 3);
    size_t d = fp_arena_default_size();
    ACHK(setrlimit(RLIMIT_AS, &old) == 0, 4);
    ACHK(d == ((size_t)2 << 30) || (d == fp_shm_big_size() && d < ((size_t)2 << 30)), 5);
  }
  void *a1, *a2;
  ACHK(fp_arena_size() == 0, 6);
  ACHK(fp_arena_alloc(4096, &a1) == FP_ENOMEM, 7);  /* not made yet */
  ACHK(fp_arena_init(64 * MIB, 0) == FP_OK, 8);
  ACHK(fp_arena_init(128 * MIB, 0) == FP_OK && fp_arena_size() == 64 * MIB, 9);  /* once */
  ACHK(fp_arena_alloc(10000, &a1) == FP_OK, 10);
  ACHK(fp_arena_alloc(64 * MIB, &a2) == FP_ENOMEM, 11);  /* no room left */
  ACHK(fp_arena_contains(a1, 10000) && !fp_arena_contains(a1, 65 * MIB), 12);
  memset(a1, 0x5c, 10000);
  pid_t pid = fork();
  if (pid == 0) {
    unsigned char *q = a1;
    void *x;
    int r = q[0] == 0x5c && q[9999] == 0x5c && fp_arena_alloc(10, &x) == FP_ESYS;
    q[1] = 1;  /* seen by the parent */
    _exit(r ? 0 : 1);
  }
  int st = 0;
  ACHK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, 13);
  ACHK(((unsigned char *)a1)[1] == 1, 14);
  fp_arena_free(a1);
  ACHK(fp_arena_alloc(4096, &a2) == FP_OK && a2 == a1, 15);
  ACHK(((unsigned char *)a2)[0] == 0 && ((unsigned char *)a2)[1] == 0, 16);
  return 0;
}

FP_TEST(test_arena) {
  pid_t pid = spawn(child_arena, NULL);
  int st = reap(pid, 30000);
  if (!exited_ok(st))
    fprintf(stderr, "  child_arena: status %d (check %d failed)\n", st,
            WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  FP_CHECK(exited_ok(st));
}

/* ---- lanes, one process ---- */

static int count_maps(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return -1;
  int n = 0, c;
  while ((c = fgetc(f)) != EOF) n += c == '\n';
  fclose(f);
  return n;
}

FP_TEST(test_lane_geometry) {
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 4096, 0), FP_OK);
  FP_CHECK_EQ_INT(l.h->cap, 4096);
  FP_CHECK_EQ_INT(l.h->big_cap, 0);
  FP_CHECK(l.big_fd == -1 && l.pwin == NULL && l.cwin == NULL);
  FP_CHECK((uintptr_t)l.ring % 64 == 0);
  FP_CHECK(l.ring >= (unsigned char *)(l.h + 1));
  FP_CHECK_EQ_INT(atomic_load(&l.h->head), 0);
  FP_CHECK_EQ_INT(atomic_load(&l.h->tail), 0);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 0);
  /* head, tail and big_busy on separate cache lines. */
  FP_CHECK((uintptr_t)&l.h->head / 64 != (uintptr_t)&l.h->tail / 64);
  FP_CHECK((uintptr_t)&l.h->tail / 64 != (uintptr_t)&l.h->big_busy / 64);
  FP_CHECK((uintptr_t)&l.h->cons_waiting / 64 == (uintptr_t)&l.h->head / 64);
  FP_CHECK((uintptr_t)&l.h->prod_waiting / 64 == (uintptr_t)&l.h->tail / 64);
  l.ring[4095] = 1;  /* the whole ring is mapped */
  fp_lane_destroy(&l);
  FP_CHECK(l.h == NULL && l.ring == NULL);
  fp_lane_destroy(&l);  /* safe twice */

  size_t bad[] = {0, 1, 1000, 2048, 4095, 6144, 4097, (size_t)1 << 33};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    FP_CHECK_EQ_INT(fp_lane_create(&l, bad[i], 0), FP_ENOMEM);
    FP_CHECK(l.h == NULL);
  }
  FP_CHECK_EQ_INT(fp_lane_create(&l, 1 << 16, 8 * MIB), FP_OK);
  FP_CHECK_EQ_INT(l.h->big_cap, 8 * MIB);
  /* The big area is an empty file: nothing mapped until a record needs it. */
  FP_CHECK(l.big_fd >= 0 && l.pwin == NULL && l.cwin == NULL);
  FP_CHECK_EQ_INT(file_bytes(l.big_fd), 0);
  FP_CHECK_EQ_INT(FP_LANE_INLINE_MAX(l.h->cap), 16384);
  fp_lane_destroy(&l);

  /* No mapping or fd leaks, windows included. */
  int before = count_maps(), fds = count_fds();
  static unsigned char rec[3 * 1024 * 1024];
  fill(rec, sizeof rec, 7);
  for (int i = 0; i < 50; i++) {
    FP_CHECK_EQ_INT(fp_lane_create(&l, 1 << 14, 4 * MIB), FP_OK);
    if (i % 2) {
      FP_CHECK_EQ_INT(send_now(&l, 1, rec, sizeof rec), FP_OK);
      FP_CHECK_EQ_INT(recv_check(&l, 1, sizeof rec, 7), FP_OK);
      FP_CHECK(l.pwin != NULL && l.cwin != NULL);
    }
    fp_lane_destroy(&l);
    FP_CHECK(l.h == NULL && l.big_fd == -1 && l.pwin == NULL && l.cwin == NULL);
  }
  FP_CHECK_EQ_INT(count_maps(), before);
  FP_CHECK_EQ_INT(count_fds(), fds);
}

/* The address space a lane costs does not depend on big_cap: 64 lanes that
 * may each carry a record of RAM + swap (or 1 TiB) cost their rings and a
 * little more, not 64 times RAM. */
FP_TEST(test_lane_address_space) {
  enum { N = 64 };
  static fp_lane ls[N];
  size_t vm0 = vm_size();
  int ok = 0;
  for (int i = 0; i < N; i++) ok += fp_lane_create(&ls[i], 1 << 16, (size_t)1 << 40) == FP_OK;
  FP_CHECK_EQ_INT(ok, N);
  size_t grown = vm_size() - vm0;
  fprintf(stderr, "  %d lanes with a 1 TiB big_cap: VmSize +%zu KiB\n", N, grown >> 10);
  FP_CHECK(grown <= N * ((1 << 16) + 2 * fp_shm_page()) + 4 * MIB);
  FP_CHECK_EQ_INT(ls[0].big_cap, (uint64_t)1 << 40);
  for (int i = 0; i < N; i++) fp_lane_destroy(&ls[i]);
}

FP_TEST(test_lane_every_size) {
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 4096, 1 * MIB), FP_OK);
  unsigned char buf[4096];
  uint32_t t;
  const unsigned char *p;
  size_t len;
  FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_EEMPTY);
  FP_CHECK_EQ_INT(fp_lane_release(&l), 0);  /* nothing peeked: no-op */
  FP_CHECK_EQ_INT(atomic_load(&l.h->tail), 0);
  size_t imax = FP_LANE_INLINE_MAX(4096);
  int bad = 0;
  for (size_t n = 0; n <= imax + 40; n++) {
    fill(buf, n, n);
    uint64_t to_end = 4096 - atomic_load(&l.h->head) % 4096;
    uint64_t need = n <= imax ? rec_bytes(n) : 16;
    uint64_t pad = need > to_end ? to_end : 0;
    int wake = -1;
    int rc;
    if (n % 2) rc = fp_lane_try_send(&l, (uint32_t)n, buf, n, &wake);
    else rc = fp_lane_try_send2(&l, (uint32_t)n, buf, n / 3, buf + n / 3, n - n / 3, &wake);
    if (rc != FP_OK || wake != 0) bad++;
    if (fp_lane_used(&l) != pad + need) bad++;
    /* peek twice: same record */
    if (fp_lane_peek(&l, &t, &p, &len) != FP_OK || len != n) bad++;
    if (recv_check(&l, (uint32_t)n, n, n) != FP_OK) bad++;
    if (fp_lane_used(&l) != 0) bad++;
    if (n > imax && atomic_load(&l.h->big_busy) != 0) bad++;
  }
  FP_CHECK_EQ_INT(bad, 0);
  FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_EEMPTY);
  /* must_wake may be NULL. */
  FP_CHECK_EQ_INT(fp_lane_try_send(&l, 1, "x", 1, NULL), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_OK);
  FP_CHECK(t == 1 && len == 1 && p[0] == 'x');
  fp_lane_release(&l);
  fp_lane_destroy(&l);
}

FP_TEST(test_lane_used_and_pad) {
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 4096, 0), FP_OK);
  unsigned char buf[1024];
  fill(buf, sizeof buf, 1);
  /* 3 records of 1000 -> 3 * 1008 = 3024 bytes. */
  for (int i = 0; i < 3; i++) FP_CHECK_EQ_INT(send_now(&l, 5, buf, 1000), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 3024);
  /* 1072 bytes to the end: a 1020-byte record (1032) fits, a second not. */
  FP_CHECK_EQ_INT(send_now(&l, 5, buf, 1020), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 4056);
  FP_CHECK_EQ_INT(send_now(&l, 5, buf, 0), FP_OK);   /* 8 of the last 40 */
  FP_CHECK_EQ_INT(fp_lane_used(&l), 4064);
  FP_CHECK_EQ_INT(send_now(&l, 5, buf, 24), FP_OK);  /* 32: fills to the end */
  FP_CHECK_EQ_INT(fp_lane_used(&l), 4096);
  FP_CHECK_EQ_INT(send_now(&l, 5, buf, 0), FP_EFULL);
  /* Release two records (2016 bytes); a 100-byte record goes to offset 0
   * with no PAD, since the ring end was exactly reached.  (fill() output
   * for n bytes is a prefix of that for more, so buf checks any length.) */
  FP_CHECK_EQ_INT(recv_check(&l, 5, 1000, 1), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 4096 - 1008);
  uint32_t t;
  const unsigned char *p;
  size_t len;
  FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_OK);
  FP_CHECK(len == 1000 && memcmp(p, buf, 1000) == 0);
  fp_lane_release(&l);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 4096 - 2016);
  FP_CHECK_EQ_INT(send_now(&l, 6, buf, 100), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 4096 - 2016 + 112);
  /* Drain: 1000, 1020, 0, 24, then the 100 at offset 0. */
  size_t want[] = {1000, 1020, 0, 24, 100};
  for (int i = 0; i < 5; i++) {
    FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_OK);
    FP_CHECK_EQ_INT(len, want[i]);
    FP_CHECK(memcmp(p, buf, len) == 0);
    fp_lane_release(&l);
  }
  FP_CHECK_EQ_INT(fp_lane_used(&l), 0);
  /* Now a PAD: head at 112.  Fill to offset 4000, then send 200 bytes:
   * 96 bytes of PAD + 208 at offset 0. */
  FP_CHECK_EQ_INT(atomic_load(&l.h->head) % 4096, 112);
  FP_CHECK_EQ_INT(send_now(&l, 7, buf, 1000), FP_OK);  /* 1008 -> 1120 */
  FP_CHECK_EQ_INT(send_now(&l, 7, buf, 1000), FP_OK);  /* -> 2128 */
  FP_CHECK_EQ_INT(send_now(&l, 7, buf, 1000), FP_OK);  /* -> 3136 */
  FP_CHECK_EQ_INT(send_now(&l, 7, buf, 856), FP_OK);   /* 864 -> 4000 */
  FP_CHECK_EQ_INT(fp_lane_used(&l), 3888);
  FP_CHECK_EQ_INT(send_now(&l, 8, buf, 200), FP_EFULL);  /* 96 + 208 > 208 free */
  FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_OK);
  fp_lane_release(&l);                                  /* frees [112, 1120) */
  FP_CHECK_EQ_INT(send_now(&l, 8, buf, 200), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 3888 - 1008 + 96 + 208);
  for (int i = 0; i < 3; i++) {
    FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_OK);
    fp_lane_release(&l);
  }
  FP_CHECK_EQ_INT(fp_lane_used(&l), 96 + 208);
  FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_OK);  /* skips the PAD */
  FP_CHECK(t == 8 && len == 200 && p == l.ring + 8);
  FP_CHECK(memcmp(p, buf, 200) == 0);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 96 + 208);  /* peek removes nothing */
  fp_lane_release(&l);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 0);
  FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_EEMPTY);
  fp_lane_destroy(&l);
}

FP_TEST(test_lane_full) {
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 4096, 0), FP_OK);
  unsigned char buf[56];
  int sent = 0;
  for (int i = 0; i < 100; i++) {
    fill(buf, 56, (uint64_t)i);
    int rc = send_now(&l, 1, buf, 56);
    if (rc == FP_EFULL) break;
    FP_CHECK_EQ_INT(rc, FP_OK);
    sent++;
  }
  FP_CHECK_EQ_INT(sent, 64);  /* 64 * 64 bytes */
  FP_CHECK_EQ_INT(fp_lane_used(&l), 4096);
  FP_CHECK_EQ_INT(send_now(&l, 1, buf, 0), FP_EFULL);
  FP_CHECK_EQ_INT(recv_check(&l, 1, 56, 0), FP_OK);
  fill(buf, 56, 64);
  FP_CHECK_EQ_INT(send_now(&l, 1, buf, 56), FP_OK);
  FP_CHECK_EQ_INT(send_now(&l, 1, buf, 0), FP_EFULL);
  for (int i = 1; i <= 64; i++) FP_CHECK_EQ_INT(recv_check(&l, 1, 56, (uint64_t)i), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 0);
  fp_lane_destroy(&l);
}

/* Length of record i in test_lane_wrap: awkward sizes around 8-byte and
 * ring boundaries, or anything up to a little over the inline limit. */
static size_t wrap_size(uint64_t i, size_t imax) {
  static const size_t awkward[] = {0, 1, 7, 8, 9, 15, 17, 63, 65, 255, 257, 1000,
                                   1017, 1023, 1024, 1025, 3000};
  uint64_t r = mix64(i);
  if (r % 3) return awkward[r % (sizeof awkward / sizeof awkward[0])];
  return (size_t)(r >> 20) % (imax + 1);
}

/* Many records of awkward sizes through a small ring, the producer running
 * ahead until FP_EFULL, the consumer taking a random number; every byte is
 * checked and the ring wraps thousands of times. */
FP_TEST(test_lane_wrap) {
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 4096, 1 * MIB), FP_OK);
  size_t imax = FP_LANE_INLINE_MAX(4096);
  unsigned char *buf = malloc(4096);
  uint64_t rng = 12345, sent = 0, got = 0, fulls = 0, pads_seen = 0;
  int bad = 0;
  const uint64_t total = 300000;
  while (got < total && !bad) {
    while (sent < total) {
      size_t n = wrap_size(sent, imax);
      fill(buf, n, sent);
      int rc = fp_lane_try_send2(&l, (uint32_t)(sent & 0xffffff), buf, n / 2, buf + n / 2,
                                 n - n / 2, NULL);
      if (rc == FP_EFULL) { fulls++; break; }
      if (rc != FP_OK) { bad++; break; }
      sent++;
    }
    uint64_t k = 1 + xs_next(&rng) % 12;
    for (uint64_t i = 0; i < k && got < sent; i++) {
      size_t n = wrap_size(got, imax);
      uint64_t tail0 = atomic_load(&l.h->tail);
      if (recv_check(&l, (uint32_t)(got & 0xffffff), n, got) != FP_OK) { bad++; break; }
      uint64_t adv = atomic_load(&l.h->tail) - tail0;
      if (n <= imax ? adv != rec_bytes(n) : adv != 16) pads_seen++;
      got++;
    }
  }
  FP_CHECK_EQ_INT(bad, 0);
  FP_CHECK_EQ_INT(got, total);
  FP_CHECK(fulls > 1000);
  FP_CHECK(pads_seen > 1000);
  FP_CHECK(atomic_load(&l.h->head) > 1000 * 4096);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 0);
  free(buf);
  fp_lane_destroy(&l);
}

FP_TEST(test_lane_big) {
  fp_lane l;
  size_t big_cap = 80 * MIB;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 1 << 16, big_cap), FP_OK);
  size_t n = 64 * MIB;
  unsigned char *buf = malloc(big_cap + 16);
  FP_CHECK(buf != NULL);
  if (!buf) return;
  fill(buf, n, 64);
  int wake = -1;
  FP_CHECK_EQ_INT(fp_lane_try_send(&l, 3, buf, n, &wake), FP_OK);
  FP_CHECK_EQ_INT(wake, 0);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 16);
  FP_CHECK_EQ_INT(atomic_load(&l.h->big_busy), 1);
  FP_CHECK(l.pwin == NULL);  /* > KEEP: written with pwrite, no window */
  /* Big area busy: another big record waits, small ones still flow. */
  FP_CHECK_EQ_INT(send_now(&l, 4, buf, 20000), FP_EFULL);
  FP_CHECK_EQ_INT(send_now(&l, 5, buf, 100), FP_OK);
  uint32_t t;
  const unsigned char *p;
  size_t len;
  FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_OK);
  FP_CHECK(t == 3 && len == n && p == l.cwin && l.cwin_len >= n);
  FP_CHECK(same(p, n, 64));
  FP_CHECK_EQ_INT(fp_lane_release(&l), 0);
  FP_CHECK_EQ_INT(atomic_load(&l.h->big_busy), 0);
  /* > KEEP: the file keeps at most KEEP bytes, the window shrank back. */
  FP_CHECK(file_bytes(l.big_fd) <= FP_LANE_BIG_KEEP);
  FP_CHECK_EQ_INT(l.cwin_len, 0);
  FP_CHECK_EQ_INT(recv_check(&l, 5, 100, 64), FP_OK);

  /* Two pieces, 5 MiB (kept mapped on release), plus the odd tail. */
  size_t m = 5 * MIB + 3;
  fill(buf, m, 5);
  FP_CHECK_EQ_INT(fp_lane_try_send2(&l, 9, buf, 16, buf + 16, m - 16, NULL), FP_OK);
  FP_CHECK_EQ_INT(l.pwin_len, 8 * MIB);  /* a power of two */
  FP_CHECK_EQ_INT(recv_check(&l, 9, m, 5), FP_OK);
  FP_CHECK_EQ_INT(l.cwin_len, 8 * MIB);
  FP_CHECK(same(l.cwin, m, 5));  /* not discarded */
  /* Just above the inline limit goes big; at the limit stays inline. */
  size_t imax = FP_LANE_INLINE_MAX((size_t)1 << 16);
  FP_CHECK_EQ_INT(send_now(&l, 1, buf, imax), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_used(&l), rec_bytes(imax));
  FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_OK);
  FP_CHECK(p != l.cwin && len == imax);
  fp_lane_release(&l);
  FP_CHECK_EQ_INT(send_now(&l, 1, buf, imax + 1), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 16);
  FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_OK);
  FP_CHECK(p == l.cwin && len == imax + 1 && same(p, len, 5));
  fp_lane_release(&l);
  /* Exactly big_cap fits; one more byte does not. */
  FP_CHECK_EQ_INT(send_now(&l, 1, buf, 0), FP_OK);
  FP_CHECK_EQ_INT(recv_check(&l, 1, 0, 0), FP_OK);
  fill(buf, big_cap, 80);
  FP_CHECK_EQ_INT(send_now(&l, 2, buf, big_cap), FP_OK);
  FP_CHECK_EQ_INT(recv_check(&l, 2, big_cap, 80), FP_OK);
  FP_CHECK_EQ_INT(send_now(&l, 2, buf, big_cap + 1), FP_E2BIG);
  FP_CHECK_EQ_INT(fp_lane_try_send2(&l, 2, buf, SIZE_MAX, buf, 2, NULL), FP_E2BIG);
  /* Bad types. */
  FP_CHECK_EQ_INT(send_now(&l, FP_LANE_PAD, "x", 1), FP_ECORRUPT);
  FP_CHECK_EQ_INT(send_now(&l, FP_LANE_BIG | 1, "x", 1), FP_ECORRUPT);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 0);
  free(buf);
  fp_lane_destroy(&l);

  /* No big area: anything above the inline limit is too big. */
  FP_CHECK_EQ_INT(fp_lane_create(&l, 4096, 0), FP_OK);
  unsigned char small[2048] = {0};
  FP_CHECK_EQ_INT(send_now(&l, 1, small, 1024), FP_OK);
  FP_CHECK_EQ_INT(send_now(&l, 1, small, 1025), FP_E2BIG);
  fp_lane_destroy(&l);
}

/* Sizes around FP_LANE_BIG_KEEP, in an order that grows and shrinks the
 * windows: contents, window lengths and the memory the file keeps. */
FP_TEST(test_lane_big_keep) {
  fp_lane l;
  const size_t K = FP_LANE_BIG_KEEP, pg = fp_shm_page();
  FP_CHECK_EQ_INT(fp_lane_create(&l, 1 << 20, 3 * K), FP_OK);
  unsigned char *buf = malloc(3 * K);
  FP_CHECK(buf != NULL);
  if (!buf) return;
  const size_t sizes[] = {300 * 1024, 3 * MIB + 1, K - 1, K, K + 1, 1 * MIB, 2 * K + 12345,
                          K, 3 * K, 20 * MIB, K + pg, 300 * 1024};
  int bad = 0;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t n = sizes[i];
    fill(buf, n, 1000 + i);
    size_t pw = l.pwin_len, cw = l.cwin_len;
    int rc = fp_lane_try_send2(&l, 7, buf, n / 3, buf + n / 3, n - n / 3, NULL);
    if (rc != FP_OK) { fprintf(stderr, "  send %zu: rc %d\n", n, rc); bad++; continue; }
    /* The producer's window: never past KEEP, untouched by larger records. */
    if (l.pwin_len > K || (n > K && l.pwin_len != pw) || (n <= K && l.pwin_len < n)) bad++;
    uint32_t t;
    const unsigned char *p;
    size_t len;
    if (fp_lane_peek(&l, &t, &p, &len) != FP_OK || len != n || p != l.cwin || l.cwin_len < n ||
        !same(p, n, 1000 + i)) {
      fprintf(stderr, "  record %zu of %zu bytes: wrong\n", i, n);
      bad++;
    }
    fp_lane_release(&l);
    /* After the release: the consumer's window back to at most KEEP (and
     * never smaller than it was), the file holding at most KEEP bytes. */
    if (l.cwin_len > K || l.cwin_len < cw || (n <= K && l.cwin_len < n)) bad++;
    if (file_bytes(l.big_fd) > K) {
      fprintf(stderr, "  after %zu bytes the file holds %llu\n", n,
              (unsigned long long)file_bytes(l.big_fd));
      bad++;
    }
  }
  FP_CHECK_EQ_INT(bad, 0);
  FP_CHECK_EQ_INT(l.pwin_len, K);
  FP_CHECK_EQ_INT(l.cwin_len, K);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 0);
  free(buf);
  fp_lane_destroy(&l);
}

/* RLIMIT_FSIZE: the lane never writes past it (that would raise SIGXFSZ,
 * whose default action kills): records too large for it are FP_E2BIG, at
 * creation (big_cap lowered) and when the limit drops later.  In a child
 * whose SIGXFSZ has its default action. */
static int child_fsize(void *arg) {
  (void)arg;
  signal(SIGXFSZ, SIG_DFL);
  static unsigned char buf[8 * MIB];
  fill(buf, sizeof buf, 3);
  struct rlimit rl = {0, 0};
  getrlimit(RLIMIT_FSIZE, &rl);
  fp_lane a, b;
  if (fp_lane_create(&a, 1 << 16, 64 * MIB) != FP_OK) return 1;
  size_t lim = 4 * MIB + 100;  /* not a page multiple */
  rl.rlim_cur = lim;
  if (setrlimit(RLIMIT_FSIZE, &rl) != 0) return 2;
  if (fp_lane_create(&b, 1 << 16, 64 * MIB) != FP_OK || b.big_cap != lim) return 3;
  /* A region of a shared file: what is left of the limit past its start. */
  fp_lane c;
  int fd = fp_shm_file();
  if (fd < 0 || fp_lane_create_at(&c, 1 << 16, 64 * MIB, fd, 4 * MIB) != FP_OK || c.big_cap != 100)
    return 4;
  fp_lane_destroy(&c);
  if (fp_lane_create_at(&c, 1 << 16, 64 * MIB, fd, 8 * MIB) != FP_OK || c.big_cap != 0) return 5;
  fp_lane_destroy(&c);
  close(fd);
  fp_lane *ls[2] = {&a, &b};
  for (int k = 0; k < 2; k++) {
    fp_lane *l = ls[k];
    if (send_now(l, 1, buf, 8 * MIB) != FP_E2BIG) return 10 + k;
    if (send_now(l, 1, buf, lim + 1) != FP_E2BIG) return 12 + k;
    if (fp_lane_used(l) != 0 || atomic_load(&l->h->big_busy) != 0) return 14 + k;
    if (send_now(l, 1, buf, lim) != FP_OK || recv_check(l, 1, lim, 3) != FP_OK) return 16 + k;
    if (send_now(l, 1, buf, 2 * MIB) != FP_OK || recv_check(l, 1, 2 * MIB, 3) != FP_OK)
      return 18 + k;
  }
  fp_lane_destroy(&a);
  fp_lane_destroy(&b);
  return 0;
}

FP_TEST(test_lane_big_fsize) {
  pid_t pid = spawn(child_fsize, NULL);
  int st = reap(pid, 30000);
  if (!exited_ok(st))
    fprintf(stderr, "  child_fsize: %s %d\n", WIFSIGNALED(st) ? "signal" : "check",
            WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
  FP_CHECK(exited_ok(st));
}

/* No address space for a window (RLIMIT_AS): the producer gets FP_ENOMEM
 * and publishes nothing; the consumer gets FP_ENOMEM and the record waits
 * for it; both go on once the limit is raised.  In a child.  (Not under
 * AddressSanitizer, whose own allocations need address space.) */
#if !defined(__SANITIZE_ADDRESS__)
static int child_nomem(void *arg) {
  (void)arg;
  static unsigned char buf[16 * MIB];
  fill(buf, sizeof buf, 4);
  fp_lane l;
  if (fp_lane_create(&l, 1 << 16, 64 * MIB) != FP_OK) return 1;
  struct rlimit old, rl;
  getrlimit(RLIMIT_AS, &old);
  rl = old;
  rl.rlim_cur = vm_size() + 4 * MIB;
  if (setrlimit(RLIMIT_AS, &rl) != 0) return 2;
  int rc = send_now(&l, 1, buf, 16 * MIB);  /* a 16 MiB window: no room */
  int used = (int)fp_lane_used(&l), busy = (int)atomic_load(&l.h->big_busy);
  setrlimit(RLIMIT_AS, &old);
  if (rc != FP_ENOMEM || used != 0 || busy != 0) return 3;
  if (send_now(&l, 1, buf, 16 * MIB) != FP_OK) return 4;
  /* Now the consumer's window: its turn to find no room. */
  uint32_t t;
  const unsigned char *p;
  size_t len;
  rl.rlim_cur = vm_size() + 4 * MIB;
  if (setrlimit(RLIMIT_AS, &rl) != 0) return 5;
  rc = fp_lane_peek(&l, &t, &p, &len);
  setrlimit(RLIMIT_AS, &old);
  if (rc != FP_ENOMEM || fp_lane_used(&l) != 16) return 6;
  if (recv_check(&l, 1, 16 * MIB, 4) != FP_OK) return 7;
  fp_lane_destroy(&l);
  return 0;
}
#endif

FP_TEST(test_lane_big_nomem) {
#if defined(__SANITIZE_ADDRESS__)
  fprintf(stderr, "  (skipped under AddressSanitizer)\n");
#else
  pid_t pid = spawn(child_nomem, NULL);
  int st = reap(pid, 30000);
  if (!exited_ok(st))
    fprintf(stderr, "  child_nomem: %s %d\n", WIFSIGNALED(st) ? "signal" : "check",
            WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
  FP_CHECK(exited_ok(st));
#endif
}

/* Ring full and big area busy together: FP_EFULL, then success after the
 * consumer releases. */
FP_TEST(test_lane_big_full) {
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 4096, 1 * MIB), FP_OK);
  unsigned char buf[4096];
  fill(buf, sizeof buf, 9);
  int k = 0;
  while (send_now(&l, 1, buf, 1016) == FP_OK) k++;  /* 1024 each */
  FP_CHECK_EQ_INT(k, 4);
  FP_CHECK_EQ_INT(send_now(&l, 2, buf, 2000), FP_EFULL);  /* no ring room */
  FP_CHECK_EQ_INT(atomic_load(&l.h->big_busy), 0);        /* untouched */
  FP_CHECK_EQ_INT(recv_check(&l, 1, 1016, 9), FP_OK);
  FP_CHECK_EQ_INT(send_now(&l, 2, buf, 2000), FP_OK);
  FP_CHECK_EQ_INT(send_now(&l, 2, buf, 3000), FP_EFULL);  /* big busy */
  for (int i = 0; i < 3; i++) FP_CHECK_EQ_INT(recv_check(&l, 1, 1016, 9), FP_OK);
  FP_CHECK_EQ_INT(send_now(&l, 2, buf, 3000), FP_EFULL);  /* still busy */
  FP_CHECK_EQ_INT(recv_check(&l, 2, 2000, 9), FP_OK);
  FP_CHECK_EQ_INT(send_now(&l, 2, buf, 3000), FP_OK);
  FP_CHECK_EQ_INT(recv_check(&l, 2, 3000, 9), FP_OK);
  fp_lane_destroy(&l);
}

/* ---- corruption ---- */

/* Put raw bytes in the ring and set head/tail as a malicious producer
 * (and consumer) could, then peek. */
static void set_idx(fp_lane *l, uint64_t head, uint64_t tail) {
  atomic_store(&l->h->head, head);
  atomic_store(&l->h->tail, tail);
  l->head_cache = 0;
}

static void put_hdr(fp_lane *l, uint64_t off, uint32_t len, uint32_t type) {
  uint32_t v[2] = {len, type};
  memcpy(l->ring + (off & (l->cap - 1)), v, 8);
}

static void put_u64(fp_lane *l, uint64_t off, uint64_t v) {
  memcpy(l->ring + (off & (l->cap - 1)), &v, 8);
}

static int peek_rc(fp_lane *l) {
  uint32_t t;
  const unsigned char *p;
  size_t len;
  return fp_lane_peek(l, &t, &p, &len);
}

FP_TEST(test_lane_corrupt) {
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 4096, 1 * MIB), FP_OK);
  const uint64_t B = (uint64_t)1 << 40;  /* far from zero: free-running */

  set_idx(&l, B + 24, B);  put_hdr(&l, B, 16, 1);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_OK);
  put_hdr(&l, B, 17, 1);                       /* 8 + 24 > 24 published */
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  FP_CHECK_EQ_INT(fp_lane_release(&l), 0);     /* no-op after a failure */
  FP_CHECK_EQ_INT(atomic_load(&l.h->tail), B);
  put_hdr(&l, B, 0xffffffffu, 1);              /* huge len */
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  set_idx(&l, B + 4096, B);  put_hdr(&l, B, 2000, 1);  /* > inline max */
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  set_idx(&l, B + 4097, B);                    /* more than cap published */
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  set_idx(&l, B - 8, B);                       /* head behind tail */
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  set_idx(&l, B + 64, B + 3);                  /* misaligned tail */
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  /* A record crossing the end of the ring. */
  set_idx(&l, B + 4096 + 64, B + 4096 - 16);  put_hdr(&l, B - 16, 24, 1);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  /* PAD records: wrong length, nothing after, not followed by a record. */
  set_idx(&l, B + 4096 + 64, B + 4096 - 32);  put_hdr(&l, B - 32, 24, FP_LANE_PAD);
  put_hdr(&l, 0, 8, 1);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_OK);
  put_hdr(&l, B - 32, 16, FP_LANE_PAD);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  put_hdr(&l, B - 32, 24, FP_LANE_PAD);
  set_idx(&l, B + 4096, B + 4096 - 32);        /* the PAD only */
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  set_idx(&l, B + 4096 + 64, B + 4096 - 32);  put_hdr(&l, 0, 8, FP_LANE_PAD);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);   /* PAD after PAD */
  set_idx(&l, B + 4096, B);  put_hdr(&l, B, 4088, FP_LANE_PAD);  /* PAD of a whole ring */
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  /* Type PAD|BIG. */
  set_idx(&l, B + 16, B);  put_hdr(&l, B, 8, FP_LANE_PAD | FP_LANE_BIG);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  /* Big records: a length past the end of the (empty) file would fault
   * with SIGBUS if mapped: refused. */
  atomic_store(&l.h->big_busy, 1);
  put_hdr(&l, B, 8, FP_LANE_BIG | 2);  put_u64(&l, B + 8, 5000);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  FP_CHECK(l.cwin == NULL);
  /* A record sent and released grows the file (to whole pages); then a
   * consumer that sees it shorter (a fresh one: big_size unknown). */
  {
    static unsigned char one[1 * MIB];
    fill(one, sizeof one, 11);
    atomic_store(&l.h->big_busy, 0);
    set_idx(&l, B, B);
    l.tail_cache = B;
    FP_CHECK_EQ_INT(send_now(&l, 2, one, 1 * MIB - 8), FP_OK);
    FP_CHECK_EQ_INT(recv_check(&l, 2, 1 * MIB - 8, 11), FP_OK);
    FP_CHECK_EQ_INT(file_size(l.big_fd), 1 * MIB);
    FP_CHECK_EQ_INT(ftruncate(l.big_fd, 512 * 1024 + 3), 0);
    l.big_size = 0;
    l.tail_cache = 0;
    set_idx(&l, B + 16, B);
    atomic_store(&l.h->big_busy, 1);
    put_hdr(&l, B, 8, FP_LANE_BIG | 2);  put_u64(&l, B + 8, 512 * 1024 + 4);
    FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);  /* one byte past the end */
    put_u64(&l, B + 8, 512 * 1024 + 3);
    FP_CHECK_EQ_INT(peek_rc(&l), FP_OK);
    FP_CHECK_EQ_INT(ftruncate(l.big_fd, 1 * MIB), 0);
    l.big_size = 0;
  }
  /* Big records: good, then each field wrong. */
  put_u64(&l, B + 8, 5000);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_OK);
  put_u64(&l, B + 8, 1 * MIB + 1);             /* beyond the big area */
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  put_u64(&l, B + 8, UINT64_MAX);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  put_u64(&l, B + 8, 100);                     /* would have been inline */
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  put_u64(&l, B + 8, 1 * MIB);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_OK);
  atomic_store(&l.h->big_busy, 0);             /* not marked busy */
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  atomic_store(&l.h->big_busy, 1);
  put_hdr(&l, B, 16, FP_LANE_BIG | 2);         /* payload not {u64} */
  set_idx(&l, B + 24, B);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  /* Garbage in the shared cap/big_cap changes nothing: we use our copies. */
  l.h->cap = (uint64_t)1 << 50;
  l.h->big_cap = UINT64_MAX;
  put_hdr(&l, B, 8, FP_LANE_BIG | 2);  put_u64(&l, B + 8, 2 * MIB);
  set_idx(&l, B + 16, B);
  FP_CHECK_EQ_INT(peek_rc(&l), FP_ECORRUPT);
  /* The producer refuses to trust an impossible tail. */
  set_idx(&l, B, B + 64);
  FP_CHECK_EQ_INT(send_now(&l, 1, "abc", 3), FP_ECORRUPT);
  set_idx(&l, B + 8192, B);
  FP_CHECK_EQ_INT(send_now(&l, 1, "abc", 3), FP_ECORRUPT);
  l.h->cap = 4096;
  l.h->big_cap = 1 * MIB;
  fp_lane_destroy(&l);
}

/* Lanes sharing one file (fp_lane_create_at, as a pool's lanes do): each
 * stays in its region, destroy leaves the file alone, discard gives a
 * region's memory back, and a region is checked against the file's size
 * past its own start. */
FP_TEST(test_lane_shared_file) {
  const size_t K = FP_LANE_BIG_KEEP, R = (size_t)1 << 36;  /* 64 GiB apart */
  int fd = fp_shm_file();
  FP_CHECK(fd >= 0);
  if (fd < 0) return;
  fp_lane a, b;
  FP_CHECK_EQ_INT(fp_lane_create_at(&a, 1 << 16, 3 * K, fd, 0), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_create_at(&b, 1 << 16, 3 * K, fd, 5 * R), FP_OK);
  FP_CHECK(a.big_fd == fd && b.big_fd == fd && !a.own_fd && !b.own_fd);
  unsigned char *buf = malloc(2 * K);
  FP_CHECK(buf != NULL);
  if (!buf) return;
  /* b first: a's region (at 0) is below b's end, yet still empty. */
  fill(buf, 3 * MIB, 21);
  FP_CHECK_EQ_INT(send_now(&b, 1, buf, 3 * MIB), FP_OK);
  FP_CHECK(file_size(fd) >= 5 * R + 3 * MIB);
  fill(buf, 2 * K, 22);
  FP_CHECK_EQ_INT(send_now(&a, 2, buf, 2 * K), FP_OK);       /* pwrite */
  FP_CHECK_EQ_INT(recv_check(&b, 1, 3 * MIB, 21), FP_OK);   /* untouched by a */
  FP_CHECK_EQ_INT(recv_check(&a, 2, 2 * K, 22), FP_OK);
  fill(buf, 5 * MIB, 23);
  FP_CHECK_EQ_INT(send_now(&a, 3, buf, 5 * MIB), FP_OK);     /* window */
  FP_CHECK_EQ_INT(recv_check(&a, 3, 5 * MIB, 23), FP_OK);
  /* Memory: each region keeps what its records left (a: KEEP after the
   * punch, b: 3 MiB's pages). */
  uint64_t held = file_bytes(fd);
  FP_CHECK(held >= 3 * MIB && held <= K + 4 * MIB);
  fp_lane_discard_big(&b);
  FP_CHECK(file_bytes(fd) <= K + 4096);
  fp_lane_discard_big(&a);
  FP_CHECK_EQ_INT(file_bytes(fd), 0);
  fp_lane_destroy(&a);
  fp_lane_destroy(&b);
  FP_CHECK(fcntl(fd, F_GETFD) != -1);  /* not closed by the lanes */
  /* A garbage length checked against the file's end past the region's
   * start: a region at the very end of the file. */
  FP_CHECK_EQ_INT(fp_lane_create_at(&b, 1 << 16, 3 * K, fd, 7 * R), FP_OK);
  FP_CHECK_EQ_INT(ftruncate(fd, (off_t)(7 * R + 400 * 1024)), 0);
  atomic_store(&b.h->big_busy, 1);
  set_idx(&b, 16, 0);
  put_hdr(&b, 0, 8, FP_LANE_BIG | 2);
  put_u64(&b, 8, 400 * 1024 + 1);
  FP_CHECK_EQ_INT(peek_rc(&b), FP_ECORRUPT);
  put_u64(&b, 8, 400 * 1024);
  FP_CHECK_EQ_INT(peek_rc(&b), FP_OK);
  fp_lane_destroy(&b);
  /* Unaligned offsets are refused; no fd means no big area. */
  FP_CHECK_EQ_INT(fp_lane_create_at(&b, 1 << 16, K, fd, 100), FP_ENOMEM);
  FP_CHECK_EQ_INT(fp_lane_create_at(&b, 1 << 16, K, -1, 0), FP_OK);
  FP_CHECK(b.big_cap == 0 && b.big_fd == -1);
  fp_lane_destroy(&b);
  free(buf);
  close(fd);
}

/* Random garbage in the ring, indexes and big header: peek either fails
 * cleanly or returns a range inside the mappings. */
FP_TEST(test_lane_fuzz_headers) {
  fp_lane l;
  const uint64_t cap = 4096, big_cap = 64 * 1024;
  FP_CHECK_EQ_INT(fp_lane_create(&l, cap, big_cap), FP_OK);
  /* A file of big_cap - 512 bytes: lengths around its end and big_cap. */
  FP_CHECK_EQ_INT(ftruncate(l.big_fd, (off_t)(big_cap - 512)), 0);
  static const uint32_t types[] = {0, 1, 77, FP_LANE_PAD, FP_LANE_BIG, FP_LANE_BIG | 3,
                                   FP_LANE_BIG | FP_LANE_PAD, 0x7ffffffe, 0xffffffff};
  uint64_t ok = 0, corrupt = 0, empty = 0, outside = 0, other = 0;
  for (uint64_t i = 0; i < 300000; i++) {
    uint64_t s = mix64(i) | 1;
    uint64_t r = xs_next(&s);
    uint64_t tail = (r & 0xffffff) << (r >> 60 ? 3 : 0);   /* sometimes misaligned */
    if ((r >> 40) % 7 == 0) tail += UINT64_MAX - 0xffffff;  /* near wrap of u64 */
    uint64_t head = tail + xs_next(&s) % (cap + 32);
    if (xs_next(&s) % 16 == 0) head = xs_next(&s);
    for (int k = 0; k < 4; k++) {
      uint64_t off = k == 0 ? tail : k == 1 ? 0 : xs_next(&s) & ~(uint64_t)7;
      uint64_t v = xs_next(&s);
      uint32_t len;
      switch (v % 5) {
      case 0: len = (uint32_t)(v >> 8) % 64; break;
      case 1: len = (uint32_t)(v >> 8) % 2048; break;
      case 2: len = (uint32_t)(cap - ((off & ~(uint64_t)7) & (cap - 1)) - 8); break;
      case 3: len = 8; break;
      default: len = (uint32_t)(v >> 8); break;
      }
      put_hdr(&l, off & ~(uint64_t)7, len, types[(v >> 40) % (sizeof types / sizeof types[0])]);
      uint64_t bl;
      switch ((v >> 50) % 4) {
      case 0: bl = 1024 + (v >> 20) % (big_cap + 8); break;
      case 1: bl = big_cap; break;
      case 2: bl = v; break;
      default: bl = (v >> 30) % 2000; break;
      }
      put_u64(&l, (off & ~(uint64_t)7) + 8, bl);
    }
    atomic_store(&l.h->big_busy, (uint32_t)(xs_next(&s) % 3));
    set_idx(&l, head, tail);
    l.head_cache = xs_next(&s) % 4 ? 0 : head - (xs_next(&s) % 64);
    uint32_t t;
    const unsigned char *p;
    size_t len;
    int rc = fp_lane_peek(&l, &t, &p, &len);
    if (rc == FP_OK) {
      ok++;
      int in_ring = p >= l.ring && p + len <= l.ring + cap;
      int in_big = l.cwin && p == l.cwin && len <= l.cwin_len && len <= big_cap - 512;
      if (!in_ring && !in_big) outside++;
      volatile unsigned char sink = 0;
      for (size_t j = 0; j < len; j += 512) sink ^= p[j];
      if (len) sink ^= p[len - 1];
      (void)sink;
      fp_lane_release(&l);
      uint64_t nt = atomic_load(&l.h->tail);
      if (nt - tail > head - tail) outside++;  /* released past head */
    } else if (rc == FP_ECORRUPT) {
      corrupt++;
    } else if (rc == FP_EEMPTY) {
      empty++;
    } else {
      other++;
    }
  }
  FP_CHECK_EQ_INT(outside, 0);
  FP_CHECK_EQ_INT(other, 0);
  FP_CHECK(ok > 1000 && corrupt > 1000);
  fprintf(stderr, "  fuzz: %llu ok, %llu corrupt, %llu empty\n", (unsigned long long)ok,
          (unsigned long long)corrupt, (unsigned long long)empty);
  fp_lane_destroy(&l);
}

/* ---- bounded waits ---- */

FP_TEST(test_lane_wait_timeouts) {
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 4096, 1 * MIB), FP_OK);
  uint64_t t0 = now_ns();
  FP_CHECK_EQ_INT(fp_lane_wait_data(&l, 50), FP_ETIMEOUT);
  uint64_t ms = (now_ns() - t0) / 1000000;
  FP_CHECK(ms >= 45 && ms < 1000);
  FP_CHECK_EQ_INT(atomic_load(&l.h->cons_waiting), 0);
  t0 = now_ns();
  FP_CHECK_EQ_INT(fp_lane_wait_data(&l, 0), FP_ETIMEOUT);
  FP_CHECK((now_ns() - t0) / 1000000 < 100);
  /* Data present: no sleep. */
  int wake = -1;
  FP_CHECK_EQ_INT(fp_lane_try_send(&l, 1, "hi", 2, &wake), FP_OK);
  FP_CHECK_EQ_INT(wake, 0);
  t0 = now_ns();
  FP_CHECK_EQ_INT(fp_lane_wait_data(&l, 5000), FP_OK);
  FP_CHECK((now_ns() - t0) / 1000000 < 100);
  /* Full ring: wait_space times out; after a release it returns at once. */
  unsigned char buf[1016] = {0};
  while (send_now(&l, 1, buf, sizeof buf) == FP_OK) {}
  t0 = now_ns();
  FP_CHECK_EQ_INT(fp_lane_wait_space(&l, 50), FP_ETIMEOUT);
  ms = (now_ns() - t0) / 1000000;
  FP_CHECK(ms >= 45 && ms < 1000);
  FP_CHECK_EQ_INT(atomic_load(&l.h->prod_waiting), 0);
  uint32_t t;
  const unsigned char *p;
  size_t len;
  FP_CHECK_EQ_INT(fp_lane_peek(&l, &t, &p, &len), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_release(&l), 0);  /* nobody waiting */
  t0 = now_ns();
  FP_CHECK_EQ_INT(fp_lane_wait_space(&l, 5000), FP_OK);
  FP_CHECK((now_ns() - t0) / 1000000 < 100);
  /* Big area busy: the same. */
  while (fp_lane_peek(&l, &t, &p, &len) == FP_OK) fp_lane_release(&l);
  FP_CHECK_EQ_INT(send_now(&l, 2, buf, 1016), FP_OK);
  static unsigned char bigbuf[4096];
  FP_CHECK_EQ_INT(send_now(&l, 2, bigbuf, 4096), FP_OK);
  FP_CHECK_EQ_INT(send_now(&l, 2, bigbuf, 4096), FP_EFULL);
  t0 = now_ns();
  FP_CHECK_EQ_INT(fp_lane_wait_space(&l, 30), FP_ETIMEOUT);
  ms = (now_ns() - t0) / 1000000;
  FP_CHECK(ms >= 25 && ms < 1000);
  fp_lane_wake_consumer(&l);  /* no sleeper: harmless */
  fp_lane_wake_producer(&l);
  fp_lane_destroy(&l);
}

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1++; }

static int child_poke_parent(void *arg) {
  (void)arg;
  for (int i = 0; i < 200; i++) {  /* keep poking until killed */
    usleep(20000);
    kill(getppid(), SIGUSR1);
  }
  return 0;
}

/* A signal during a wait is reported as FP_EINTR (no SA_RESTART). */
FP_TEST(test_lane_wait_eintr) {
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 4096, 0), FP_OK);
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGUSR1, &sa, &old);
  pid_t pid = spawn(child_poke_parent, NULL);
  FP_CHECK(pid > 0);
  got_usr1 = 0;
  FP_CHECK_EQ_INT(fp_lane_wait_data(&l, 10000), FP_EINTR);
  FP_CHECK(got_usr1 > 0);
  FP_CHECK_EQ_INT(fp_lane_wait_data(&l, -1), FP_EINTR);
  unsigned char buf[1016] = {0};
  while (send_now(&l, 1, buf, sizeof buf) == FP_OK) {}
  FP_CHECK_EQ_INT(fp_lane_wait_space(&l, -1), FP_EINTR);
  kill(pid, SIGKILL);
  reap(pid, 10000);
  /* Ignore rather than default: a poke still in flight must not kill us. */
  sa.sa_handler = SIG_IGN;
  sigaction(SIGUSR1, &sa, NULL);
  FP_CHECK(no_children_left());
  fp_lane_destroy(&l);
}

/* ---- cross-process streaming ---- */

#define STREAM_BIG_SEQ_MOD 100000

/* Length of record `seq`: mostly small, some up to the inline limit, 0.5%
 * just over it (big area, often busy), every 100000th 1-5 MiB, and (for a
 * finite stream) one of 40 MiB in the middle, which is discarded on
 * release. */
static size_t size_for(uint64_t seq, size_t imax, uint64_t n) {
  uint64_t h = mix64(seq * 7 + 3);
  if (n != UINT64_MAX && seq == n / 2) return 40 * MIB;
  if (seq % STREAM_BIG_SEQ_MOD == 77777) return MIB + (size_t)(h % (4 * MIB));
  unsigned r = (unsigned)(h % 1000);
  h >>= 10;
  if (r < 600) return (size_t)(h % 64);
  if (r < 900) return (size_t)(h % 1024);
  if (r < 995) return (size_t)(h % (imax + 1));
  return imax + 1 + (size_t)(h % 4096);
}

typedef struct sres {
  uint64_t count;      /* records sent / verified */
  uint64_t bad_seq;    /* first record that failed verification + 1 */
  uint64_t waits;      /* sleeps (wait_data / wait_space calls) */
  uint64_t timeouts;   /* waits that ran out (each is a lost wake-up) */
  uint64_t lost;       /* timeouts after which data was there */
  uint64_t wakes;      /* FUTEX_WAKEs issued */
  int rc;              /* FP_OK, or the error that stopped the loop */
} sres;

typedef struct stream {
  fp_lane *l;
  uint64_t n;          /* records, UINT64_MAX: until killed */
  sres *res;           /* in shared memory when a child fills it */
  unsigned char *buf;  /* producer scratch */
} stream;

static void produce(stream *s) {
  fp_lane *l = s->l;
  sres *r = s->res;
  size_t imax = FP_LANE_INLINE_MAX(l->cap);
  int consecutive = 0;
  for (uint64_t seq = 0; seq < s->n; seq++) {
    size_t len = size_for(seq, imax, s->n);
    fill(s->buf, len, seq);
    /* Now and then pause past the consumer's polling, so that it really
     * sleeps on the futex and this side must wake it. */
    if (seq % 4096 == 4095) usleep(100);
    uint32_t type = (uint32_t)(seq & 0xffffff);
    for (;;) {
      int wake = 0, rc;
      if (seq % 3 == 1) {
        size_t cut = len ? (size_t)(mix64(seq) % (len + 1)) : 0;
        rc = fp_lane_try_send2(l, type, s->buf, cut, s->buf + cut, len - cut, &wake);
      } else {
        rc = fp_lane_try_send(l, type, s->buf, len, &wake);
      }
      if (rc == FP_OK) {
        if (wake) {
          fp_lane_wake_consumer(l);
          r->wakes++;
        }
        consecutive = 0;
        break;
      }
      if (rc != FP_EFULL) {
        r->rc = rc;
        return;
      }
      r->waits++;
      rc = fp_lane_wait_space(l, WAIT_MS);
      if (rc == FP_ETIMEOUT) {
        r->timeouts++;
        if (++consecutive >= MAX_TIMEOUTS) {
          r->rc = rc;
          return;
        }
      } else if (rc != FP_OK && rc != FP_EINTR) {
        r->rc = rc;
        return;
      }
    }
    r->count = seq + 1;
  }
  r->rc = FP_OK;
}

/* Verify record `seq` at the head of the lane and release it. */
static int consume_one(fp_lane *l, uint64_t seq, uint64_t n, sres *r) {
  uint32_t t;
  const unsigned char *p;
  size_t len;
  int rc = fp_lane_peek(l, &t, &p, &len);
  if (rc != FP_OK) return rc;
  size_t want = size_for(seq, FP_LANE_INLINE_MAX(l->cap), n);
  if (t != (uint32_t)(seq & 0xffffff) || len != want || !same(p, len, seq)) {
    if (!r->bad_seq) r->bad_seq = seq + 1;
    return FP_ECORRUPT;
  }
  if (fp_lane_release(l)) {
    fp_lane_wake_producer(l);
    r->wakes++;
  }
  return FP_OK;
}

static void consume(stream *s) {
  fp_lane *l = s->l;
  sres *r = s->res;
  int consecutive = 0;
  for (uint64_t seq = 0; seq < s->n;) {
    if (seq % 4099 == 4098) usleep(100);  /* let the producer sleep too */
    int rc = consume_one(l, seq, s->n, r);
    if (rc == FP_OK) {
      r->count = ++seq;
      consecutive = 0;
      continue;
    }
    if (rc != FP_EEMPTY) {
      r->rc = rc;
      return;
    }
    r->waits++;
    rc = fp_lane_wait_data(l, WAIT_MS);
    if (rc == FP_ETIMEOUT) {
      r->timeouts++;
      if (fp_lane_used(l)) r->lost++;
      if (++consecutive >= MAX_TIMEOUTS) {
        r->rc = rc;
        return;
      }
    } else if (rc != FP_OK && rc != FP_EINTR) {
      r->rc = rc;
      return;
    }
  }
  r->rc = FP_OK;
}

static int child_produce(void *arg) {
  produce(arg);
  return ((stream *)arg)->res->rc == FP_OK ? 0 : 1;
}

static int child_consume(void *arg) {
  stream *s = arg;
  consume(s);
  if (s->res->rc == FP_OK && fp_lane_used(s->l) != 0) s->res->rc = FP_ECORRUPT;
  return s->res->rc == FP_OK ? 0 : 1;
}

static void report(const char *who, const sres *r) {
  fprintf(stderr, "  %s: %llu records, %llu waits, %llu wakes, %llu timeouts, rc %d%s\n", who,
          (unsigned long long)r->count, (unsigned long long)r->waits,
          (unsigned long long)r->wakes, (unsigned long long)r->timeouts, r->rc,
          r->bad_seq ? " (bad record)" : "");
}

static void run_stream(int child_produces, uint64_t n) {
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 1 << 16, 64 * MIB), FP_OK);
  void *m = NULL;
  FP_CHECK_EQ_INT(fp_shm_map(sizeof(sres), 0, &m), FP_OK);
  if (!l.h || !m) return;
  sres *child_res = m, mine;
  memset(&mine, 0, sizeof mine);
  stream cs = {&l, n, child_res, NULL}, ps = {&l, n, &mine, NULL};
  unsigned char *buf = malloc(48 * MIB);
  FP_CHECK(buf != NULL);
  if (child_produces) cs.buf = buf;
  else ps.buf = buf;
  uint64_t t0 = now_ns();
  pid_t pid = spawn(child_produces ? child_produce : child_consume, &cs);
  FP_CHECK(pid > 0);
  if (child_produces) consume(&ps);
  else produce(&ps);
  int st = reap(pid, 30000);
  double secs = (double)(now_ns() - t0) / 1e9;
  FP_CHECK(exited_ok(st));
  report(child_produces ? "child producer" : "child consumer", child_res);
  report(child_produces ? "parent consumer" : "parent producer", &mine);
  fprintf(stderr, "  %.2f s, %.0f records/s\n", secs, (double)n / secs);
  FP_CHECK_EQ_INT(mine.rc, FP_OK);
  FP_CHECK_EQ_INT(child_res->rc, FP_OK);
  FP_CHECK_EQ_INT(mine.count, n);
  FP_CHECK_EQ_INT(child_res->count, n);
  FP_CHECK_EQ_INT(mine.bad_seq + child_res->bad_seq, 0);
  /* No lost wake-ups: no wait ever ran out while the peer was alive. */
  FP_CHECK_EQ_INT(mine.timeouts + child_res->timeouts, 0);
  FP_CHECK_EQ_INT(mine.lost + child_res->lost, 0);
  /* Both sleep paths ran: each side claimed and issued wake-ups. */
  FP_CHECK(mine.wakes > 0 && child_res->wakes > 0);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 0);
  FP_CHECK(no_children_left());
  free(buf);
  fp_shm_unmap(m, sizeof(sres));
  fp_lane_destroy(&l);
}

FP_TEST(test_xproc_child_to_parent) { run_stream(1, 2000000); }
FP_TEST(test_xproc_parent_to_child) { run_stream(0, 2000000); }

/* Ping-pong with unbounded waits on our side (the watchdog bounds it):
 * exercises wake-ups of a sleeper in both directions. */
typedef struct pp {
  fp_lane *a, *b;   /* a: parent -> child, b: child -> parent */
  uint64_t n;
} pp;

static int child_pong(void *arg) {
  pp *x = arg;
  int timeouts = 0;
  for (uint64_t i = 0; i < x->n;) {
    uint32_t t;
    const unsigned char *p;
    size_t len;
    int rc = fp_lane_peek(x->a, &t, &p, &len);
    if (rc == FP_EEMPTY) {
      if (fp_lane_wait_data(x->a, WAIT_MS) == FP_ETIMEOUT && ++timeouts >= MAX_TIMEOUTS) return 2;
      continue;
    }
    if (rc != FP_OK || len != 8) return 3;
    uint64_t v;
    memcpy(&v, p, 8);
    if (v != i) return 4;
    if (fp_lane_release(x->a)) fp_lane_wake_producer(x->a);
    if (i % 64 == 0) usleep(200);  /* the parent's unbounded wait sleeps */
    v = ~v;
    int wake = 0;
    if (fp_lane_try_send(x->b, 1, &v, 8, &wake) != FP_OK) return 5;
    if (wake) fp_lane_wake_consumer(x->b);
    i++;
  }
  return 0;
}

FP_TEST(test_xproc_pingpong) {
  fp_lane a, b;
  FP_CHECK_EQ_INT(fp_lane_create(&a, 4096, 0), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_create(&b, 4096, 0), FP_OK);
  pp x = {&a, &b, 20000};
  pid_t pid = spawn(child_pong, &x);
  int bad = 0;
  for (uint64_t i = 0; i < x.n && !bad; i++) {
    int wake = 0;
    if (fp_lane_try_send(&a, 1, &i, 8, &wake) != FP_OK) bad = 1;
    if (wake) fp_lane_wake_consumer(&a);
    for (;;) {
      uint32_t t;
      const unsigned char *p;
      size_t len;
      int rc = fp_lane_peek(&b, &t, &p, &len);
      if (rc == FP_OK) {
        uint64_t v;
        memcpy(&v, p, 8);
        if (v != ~i) bad = 2;
        fp_lane_release(&b);
        break;
      }
      if (rc != FP_EEMPTY || fp_lane_wait_data(&b, -1) != FP_OK) {
        bad = 3;
        break;
      }
    }
  }
  FP_CHECK_EQ_INT(bad, 0);
  FP_CHECK(exited_ok(reap(pid, 10000)));
  fp_lane_destroy(&a);
  fp_lane_destroy(&b);
}

/* ---- a producer killed mid-stream ---- */

static int child_produce_forever(void *arg) {
  produce(arg);
  return 1;  /* only SIGKILL should end it */
}

FP_TEST(test_xproc_killed_producer) {
  unsigned char *buf = malloc(8 * MIB);
  void *m = NULL;
  FP_CHECK_EQ_INT(fp_shm_map(sizeof(sres), 0, &m), FP_OK);
  if (!m || !buf) return;
  for (int round = 0; round < 6; round++) {
    fp_lane l;
    /* A small ring so the producer is mostly copying when it dies. */
    FP_CHECK_EQ_INT(fp_lane_create(&l, 1 << 15, 8 * MIB), FP_OK);
    memset(m, 0, sizeof(sres));
    stream cs = {&l, UINT64_MAX, m, buf};
    pid_t pid = spawn(child_produce_forever, &cs);
    sres mine;
    memset(&mine, 0, sizeof mine);
    /* Consume for a random while (and at least 100 records, however slowly
     * a loaded machine schedules the producer), then kill without warning. */
    uint64_t until = now_ns() + (uint64_t)(20 + 37 * round) * 1000000u;
    uint64_t hard = now_ns() + 10000000000u;
    uint64_t seq = 0;
    int rc = FP_OK, timeouts = 0;
    while ((now_ns() < until || seq <= 100) && now_ns() < hard && timeouts < MAX_TIMEOUTS) {
      rc = consume_one(&l, seq, UINT64_MAX, &mine);
      if (rc == FP_OK) seq++;
      else if (rc == FP_EEMPTY) timeouts += fp_lane_wait_data(&l, WAIT_MS) == FP_ETIMEOUT;
      else break;
    }
    FP_CHECK(rc == FP_OK || rc == FP_EEMPTY);
    kill(pid, SIGKILL);
    int st = reap(pid, 10000);
    FP_CHECK(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    /* Whatever is visible now is whole: drain and verify it all. */
    uint64_t before = seq;
    while ((rc = consume_one(&l, seq, UINT64_MAX, &mine)) == FP_OK) seq++;
    FP_CHECK_EQ_INT(rc, FP_EEMPTY);
    FP_CHECK_EQ_INT(mine.bad_seq, 0);
    FP_CHECK_EQ_INT(fp_lane_used(&l), 0);
    FP_CHECK(seq > 100);
    FP_CHECK(seq <= ((sres *)m)->count + 1);  /* published at most one past its count */
    if (round == 0)
      fprintf(stderr, "  round 0: %llu records, %llu drained after the kill\n",
              (unsigned long long)seq, (unsigned long long)(seq - before));
    fp_lane_destroy(&l);
  }
  FP_CHECK(no_children_left());
  fp_shm_unmap(m, sizeof(sres));
  free(buf);
}

/* A producer of big records killed at a random moment (often while it
 * copies into its window or pwrites into the file): only whole records are
 * ever visible, the last one published included. */
static size_t big_size_for(uint64_t seq) {
  switch (seq % 3) {
  case 0: return 3 * MIB + (size_t)(mix64(seq) % 1000);               /* window */
  case 1: return FP_LANE_BIG_KEEP + 8 * MIB + (size_t)(mix64(seq) % 5000);  /* pwrite */
  default: return 300 * 1024 + (size_t)(mix64(seq) % 100);
  }
}

typedef struct bigprod {
  fp_lane *l;
  unsigned char *buf;
  _Atomic uint64_t *sent;  /* shared: records published */
} bigprod;

static int child_produce_big_forever(void *arg) {
  bigprod *b = arg;
  for (uint64_t seq = 0;; seq++) {
    size_t n = big_size_for(seq);
    fill(b->buf, n, seq);
    for (;;) {
      int rc = fp_lane_try_send(b->l, (uint32_t)(seq & 0xffffff), b->buf, n, NULL);
      if (rc == FP_OK) break;
      if (rc != FP_EFULL) return 2;
      if (fp_lane_wait_space(b->l, WAIT_MS) == FP_ETIMEOUT) return 3;
    }
    atomic_store(b->sent, seq + 1);
  }
}

static int consume_big_any(fp_lane *l, uint64_t seq, size_t (*size_for_seq)(uint64_t)) {
  uint32_t t;
  const unsigned char *p;
  size_t len;
  int rc = fp_lane_peek(l, &t, &p, &len);
  if (rc != FP_OK) return rc;
  int ok = t == (uint32_t)(seq & 0xffffff) && len == size_for_seq(seq) && same(p, len, seq);
  if (fp_lane_release(l)) fp_lane_wake_producer(l);
  return ok ? FP_OK : FP_ECORRUPT;
}

static int consume_big(fp_lane *l, uint64_t seq) {
  return consume_big_any(l, seq, big_size_for);
}

FP_TEST(test_xproc_killed_big_producer) {
  size_t maxn = FP_LANE_BIG_KEEP + 8 * MIB + 5000;
  unsigned char *buf = malloc(maxn);
  void *m = NULL;
  FP_CHECK_EQ_INT(fp_shm_map(sizeof(uint64_t), 0, &m), FP_OK);
  if (!m || !buf) return;
  int fds = count_fds();
  uint64_t total = 0;
  for (int round = 0; round < 8; round++) {
    fp_lane l;
    FP_CHECK_EQ_INT(fp_lane_create(&l, 1 << 16, 64 * MIB), FP_OK);
    _Atomic uint64_t *sent = m;
    atomic_store(sent, 0);
    bigprod b = {&l, buf, sent};
    pid_t pid = spawn(child_produce_big_forever, &b);
    /* Consume for a while (at least 3 records), then kill. */
    uint64_t until = now_ns() + (uint64_t)(5 + 41 * round) * 1000000u;
    uint64_t hard = now_ns() + 20000000000u;
    uint64_t seq = 0;
    int rc = FP_OK, timeouts = 0;
    while ((now_ns() < until || seq < 3) && now_ns() < hard && timeouts < MAX_TIMEOUTS) {
      rc = consume_big(&l, seq);
      if (rc == FP_OK) seq++;
      else if (rc == FP_EEMPTY) timeouts += fp_lane_wait_data(&l, WAIT_MS) == FP_ETIMEOUT;
      else break;
    }
    FP_CHECK(rc == FP_OK || rc == FP_EEMPTY);
    /* Let it get into the next record, then kill it without warning. */
    usleep((useconds_t)(mix64((uint64_t)round) % 30000));
    kill(pid, SIGKILL);
    int st = reap(pid, 10000);
    FP_CHECK(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    while ((rc = consume_big(&l, seq)) == FP_OK) seq++;
    FP_CHECK_EQ_INT(rc, FP_EEMPTY);
    FP_CHECK(seq >= 3);
    FP_CHECK(seq <= atomic_load(sent) + 1);  /* published at most one past its count */
    FP_CHECK_EQ_INT(fp_lane_used(&l), 0);
    FP_CHECK(l.cwin_len <= FP_LANE_BIG_KEEP);
    total += seq;
    fp_lane_destroy(&l);
  }
  fprintf(stderr, "  %llu big records verified over 8 kills\n", (unsigned long long)total);
  FP_CHECK(no_children_left());
  FP_CHECK_EQ_INT(count_fds(), fds);
  fp_shm_unmap(m, sizeof(uint64_t));
  free(buf);
}

/* Trimming an idle lane gives its region's memory back, from either side;
 * the next records allocate again and arrive whole; a held record keeps
 * the area (the trim says "later"). */
FP_TEST(test_lane_trim) {
  fp_lane l;
  const size_t K = FP_LANE_BIG_KEEP;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 1 << 16, 2 * K), FP_OK);
  unsigned char *buf = malloc(K + 4 * MIB);
  FP_CHECK(buf != NULL);
  if (!buf) return;
  /* No big area used yet: nothing to give back, done. */
  FP_CHECK_EQ_INT(fp_lane_trim_consumer(&l), 1);
  FP_CHECK_EQ_INT(fp_lane_trim_producer(&l), 1);
  const size_t sizes[] = {5 * MIB + 7, K, K + 3 * MIB, 300 * 1024, 20 * MIB};
  for (int side = 0; side < 2; side++) {
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      size_t n = sizes[i];
      uint64_t seed = 100 * (uint64_t)side + i;
      fill(buf, n, seed);
      FP_CHECK_EQ_INT(send_now(&l, 4, buf, n), FP_OK);
      /* Published and unread: the area is held, a trim must wait. */
      uint64_t held = file_bytes(l.big_fd);
      FP_CHECK(held >= n);
      FP_CHECK_EQ_INT(side ? fp_lane_trim_producer(&l) : fp_lane_trim_consumer(&l), 0);
      FP_CHECK_EQ_INT(file_bytes(l.big_fd), held);
      FP_CHECK_EQ_INT(recv_check(&l, 4, n, seed), FP_OK);
      FP_CHECK(file_bytes(l.big_fd) > 0);
      FP_CHECK_EQ_INT(side ? fp_lane_trim_producer(&l) : fp_lane_trim_consumer(&l), 1);
      FP_CHECK_EQ_INT(file_bytes(l.big_fd), 0);
      FP_CHECK_EQ_INT(atomic_load(&l.h->big_busy), 0);
      /* Twice in a row is harmless. */
      FP_CHECK_EQ_INT(side ? fp_lane_trim_producer(&l) : fp_lane_trim_consumer(&l), 1);
    }
  }
  /* A record sent after a trim allocates its pages again (no SIGBUS from
   * the producer's window on a punched file) and arrives whole. */
  fill(buf, 3 * MIB, 77);
  FP_CHECK_EQ_INT(send_now(&l, 5, buf, 3 * MIB), FP_OK);
  FP_CHECK(file_bytes(l.big_fd) >= 3 * MIB);
  FP_CHECK_EQ_INT(recv_check(&l, 5, 3 * MIB, 77), FP_OK);
  FP_CHECK_EQ_INT(atomic_load(&l.h->big_trimmed), 0);
  FP_CHECK_EQ_INT(fp_lane_used(&l), 0);
  free(buf);
  fp_lane_destroy(&l);
  /* No big area at all. */
  FP_CHECK_EQ_INT(fp_lane_create(&l, 4096, 0), FP_OK);
  FP_CHECK_EQ_INT(fp_lane_trim_consumer(&l), 1);
  FP_CHECK_EQ_INT(fp_lane_trim_producer(&l), 1);
  fp_lane_destroy(&l);
}

/* A consumer that trims whenever the lane looks empty, racing a producer
 * in another process that sends big records (in its window and with
 * pwrite) with random pauses: every record arrives whole, and a producer
 * that found the area taken by a trim is woken (its waits are bounded: a
 * lost wake-up fails it). */
typedef struct trimprod {
  fp_lane *l;
  unsigned char *buf;
  uint64_t count;
} trimprod;

static size_t trim_size_for(uint64_t seq) {
  switch (seq % 4) {
  case 0: return 2 * MIB + (size_t)(mix64(seq) % 100000);
  case 1: return FP_LANE_BIG_KEEP + 2 * MIB + (size_t)(mix64(seq) % 5000);
  case 2: return 100 * 1024 + (size_t)(mix64(seq) % 100);
  default: return 64 * 1024 + 1 + (size_t)(mix64(seq) % 100);
  }
}

static int child_produce_for_trims(void *arg) {
  trimprod *t = arg;
  for (uint64_t seq = 0; seq < t->count; seq++) {
    size_t n = trim_size_for(seq);
    fill(t->buf, n, seq);
    int timeouts = 0;
    for (;;) {
      int rc = fp_lane_try_send(t->l, (uint32_t)(seq & 0xffffff), t->buf, n, NULL);
      if (rc == FP_OK) break;
      if (rc != FP_EFULL) return 2;
      if (fp_lane_wait_space(t->l, WAIT_MS) == FP_ETIMEOUT && ++timeouts >= MAX_TIMEOUTS)
        return 3;
    }
    if (mix64(seq) % 3 == 0) usleep((useconds_t)(mix64(seq + 7) % 2000));
  }
  return 0;
}

FP_TEST(test_xproc_trim_race) {
  const uint64_t count = 300;
  unsigned char *buf = malloc(FP_LANE_BIG_KEEP + 3 * MIB);
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 1 << 16, 64 * MIB), FP_OK);
  if (!buf || !l.h) return;
  trimprod t = {&l, buf, count};
  pid_t pid = spawn(child_produce_for_trims, &t);
  uint64_t seq = 0, trims = 0, hard = now_ns() + 60000000000u;
  int rc = FP_OK, timeouts = 0;
  while (seq < count && now_ns() < hard && timeouts < MAX_TIMEOUTS) {
    rc = consume_big_any(&l, seq, trim_size_for);
    if (rc == FP_OK) { seq++; timeouts = 0; continue; }
    if (rc != FP_EEMPTY) break;
    trims += (uint64_t)fp_lane_trim_consumer(&l);
    timeouts += fp_lane_wait_data(&l, WAIT_MS) == FP_ETIMEOUT;
  }
  FP_CHECK_EQ_INT(seq, count);
  int st = reap(pid, 10000);
  FP_CHECK(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
  FP_CHECK(trims > 10);
  fprintf(stderr, "  %llu records, %llu trims between them\n", (unsigned long long)seq,
          (unsigned long long)trims);
  FP_CHECK_EQ_INT(fp_lane_trim_consumer(&l), 1);
  FP_CHECK_EQ_INT(file_bytes(l.big_fd), 0);
  FP_CHECK(no_children_left());
  fp_lane_destroy(&l);
  free(buf);
}

/* A consumer killed mid-stream: the producer sees a bounded wait run out
 * (a return value), never a hang. */
static int child_consume_slowly(void *arg) {
  stream *s = arg;
  consume(s);
  return 1;
}

FP_TEST(test_xproc_killed_consumer) {
  fp_lane l;
  FP_CHECK_EQ_INT(fp_lane_create(&l, 1 << 14, 1 * MIB), FP_OK);
  void *m = NULL;
  FP_CHECK_EQ_INT(fp_shm_map(sizeof(sres), 0, &m), FP_OK);
  unsigned char *buf = malloc(8 * MIB);
  if (!m || !buf || !l.h) return;
  stream cs = {&l, UINT64_MAX, m, NULL};
  pid_t pid = spawn(child_consume_slowly, &cs);
  usleep(20000);
  kill(pid, SIGKILL);
  int st = reap(pid, 10000);
  FP_CHECK(st != -1 && WIFSIGNALED(st));
  size_t imax = FP_LANE_INLINE_MAX(l.cap);
  uint64_t seq = 0, t0 = now_ns();
  int rc;
  for (;;) {
    size_t len = size_for(seq, imax, UINT64_MAX);
    fill(buf, len, seq);
    rc = fp_lane_try_send(&l, (uint32_t)(seq & 0xffffff), buf, len, NULL);
    if (rc == FP_OK) { seq++; continue; }
    if (rc != FP_EFULL) break;
    rc = fp_lane_wait_space(&l, 100);
    break;
  }
  FP_CHECK_EQ_INT(rc, FP_ETIMEOUT);
  FP_CHECK((now_ns() - t0) / 1000000 < 5000);
  FP_CHECK(no_children_left());
  free(buf);
  fp_shm_unmap(m, sizeof(sres));
  fp_lane_destroy(&l);
}

int main(void) {
  alarm(WATCHDOG_S);  /* a hang fails the run (SIGALRM kills us) */
  FP_RUN(test_shm_map);
  FP_RUN(test_shm_big);
  FP_RUN(test_shm_file);
  FP_RUN(test_shm_parse_size);
  FP_RUN(test_arena);
  FP_RUN(test_lane_geometry);
  FP_RUN(test_lane_address_space);
  FP_RUN(test_lane_every_size);
  FP_RUN(test_lane_used_and_pad);
  FP_RUN(test_lane_full);
  FP_RUN(test_lane_wrap);
  FP_RUN(test_lane_big);
  FP_RUN(test_lane_big_keep);
  FP_RUN(test_lane_trim);
  FP_RUN(test_lane_shared_file);
  FP_RUN(test_lane_big_fsize);
  FP_RUN(test_lane_big_nomem);
  FP_RUN(test_lane_big_full);
  FP_RUN(test_lane_corrupt);
  FP_RUN(test_lane_fuzz_headers);
  FP_RUN(test_lane_wait_timeouts);
  FP_RUN(test_lane_wait_eintr);
  FP_RUN(test_xproc_pingpong);
  FP_RUN(test_xproc_child_to_parent);
  FP_RUN(test_xproc_parent_to_child);
  FP_RUN(test_xproc_killed_producer);
  FP_RUN(test_xproc_killed_big_producer);
  FP_RUN(test_xproc_trim_race);
  FP_RUN(test_xproc_killed_consumer);
  return fp_test_summary();
}
