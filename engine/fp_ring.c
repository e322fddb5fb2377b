/*
 * fp_ring.c - lanes: single-producer single-consumer byte rings in shared
 * memory, with a big area (a memfd that grows on demand) for records too
 * large for the ring.  See fp_ring.h for the record layout, the big-record
 * policy and who writes each shared field.
 *
 * Invariants:
 *   - head and tail are free-running 64-bit byte counts; the ring offset is
 *     (x & (cap - 1)).  tail <= head <= tail + cap, both multiples of 8.
 *   - A record occupies 8 + ALIGN8(len) bytes and never wraps.  When it does
 *     not fit before the end, a PAD record fills the rest of the ring and the
 *     record starts at offset 0; PAD and record are published together, so
 *     a published PAD is always followed by a published record.
 *   - Inline payloads are <= FP_LANE_INLINE_MAX(cap); larger ones go to the
 *     big area (one at a time: big_busy), and the ring carries {u64 len}.
 *   - The big area is the region [big_off, big_off + big_cap) of the file
 *     big_fd; a record of n bytes is the region's [0, n).  big_busy says
 *     who may touch the region: FREE, the producer may claim it (HELD)
 *     to write a record, which the consumer then reads and punches past
 *     KEEP on release before setting FREE again; TRIM, one side punches
 *     all of it (fp_lane_trim_*, an idle lane).  Leaving FREE is a
 *     compare-exchange, so no two of these overlap.  Nothing here touches
 *     the file outside the region (lanes may share a file).
 *   - Windows are process-local: the producer's (read-write) and the
 *     consumer's (read-only) map the region's [0, len), len a page multiple,
 *     grown by mremap, which keeps the pages already mapped (a fresh mapping
 *     would fault every page again).  pwin_len <= FP_LANE_BIG_KEEP always;
 *     cwin_len <= KEEP except between the peek and the release of a record
 *     larger than KEEP.  A window may extend past the end of the region or
 *     of the file; no one reads or writes there (only [0, n <= big_cap)).
 *   - [0, big_resv) of the region is allocated (producer's knowledge): the
 *     producer fallocates before copying into its window, so running out of
 *     memory is FP_ENOMEM rather than SIGBUS.  The consumer punches below
 *     KEEP only in a trim, and then sets big_trimmed, which the producer
 *     reads (and clears, setting big_resv = 0) after every claim, before
 *     it writes; big_resv <= KEEP, so the knowledge stays true.
 *   - The consumer trusts nothing in shared memory: every header it reads is
 *     copied once into a local and bounds-checked against the published
 *     range, the ring and the big area before any pointer is formed; the
 *     sizes it checks against are the process-local copies l->cap and
 *     l->big_cap, and a big length must also end within the file (fstat;
 *     files never shrink: nothing truncates them, punching keeps the size).
 *     Garbage gives FP_ECORRUPT, never a read outside the mappings or past
 *     the end of the file.  The producer likewise only writes inside its
 *     ring and its region, whatever the consumer left in tail.
 *   - No locks: a process killed at any instruction leaves either the old or
 *     the new head/tail, so only whole records are ever visible.  A
 *     producer killed while writing a big record leaves bytes in the file
 *     and big_busy HELD with no record published: nothing anyone reads
 *     (and no trim).  Its lane dies with it (a slot's lanes are made anew for each
 *     process); the region's pages go with the lane's own file, or when the
 *     owner of a shared file discards the region (fp_lane_discard_big).
 *
 * Barriers (each names its partner):
 *   [B1] producer store-release of head after writing the record
 *        <-> [B2] consumer load-acquire of head before reading it.
 *   [B3] consumer store-release of tail after reading the record
 *        <-> [B4] producer load-acquire of tail before overwriting it.
 *   [B5] consumer (or a trimming side) store-release big_busy = FREE after
 *        reading the big area (and after punching it) <-> [B6] producer's
 *        acquire compare-exchange of big_busy FREE -> HELD before writing
 *        the big area.  The producer's pwrite and fallocate
 *        are its writes here like its memcpy: done before [B1]; the
 *        consumer's punch is done (the syscall has returned) before [B5].
 *   [D1] producer: seq_cst bump of head_seq, then seq_cst load of
 *        cons_waiting  <->  [D2] consumer: load-acquire of head_seq (w),
 *        re-check of head, seq_cst store cons_waiting = TAG(w), seq_cst
 *        load of head_seq compared with w.
 *   [D3] consumer: seq_cst bump of tail_seq, then seq_cst load of
 *        prod_waiting  <->  [D4] producer: seq_cst store prod_waiting =
 *        TAG(space_seq), seq_cst load of tail_seq compared with space_seq
 *        (the value read, [B8], before the send that found no room).
 *   [B7] the tail_seq bump is also a release (the tail and big_busy stores
 *        precede it) <-> [B8] producer load-acquire of tail_seq before it
 *        re-reads tail and big_busy on the way to FP_EFULL.  Likewise the
 *        head_seq bump releases head to [D2]'s load-acquire of head_seq.
 *
 * Sleeping (Dekker pattern with a tagged flag).  A sleeper reads the seq
 * word w, re-checks its condition, stores TAG(w) (= 1 + the low 31 bits of
 * w, never 0) in its waiting flag, reads the seq word again and only then
 * calls FUTEX_WAIT(w).  A waker bumps the seq word to s, then reads the
 * flag f; when f != 0 and f != TAG(s) the sleeper waits for a value the
 * word no longer has, so the waker claims the wake by compare-exchanging
 * f to 0 and (through its caller) issues one FUTEX_WAKE.  In the seq_cst
 * order either the sleeper's flag store comes first, and the waker sees it;
 * or the waker's bump comes first, and the sleeper's second read sees the
 * word moved and does not sleep.  FUTEX_WAIT re-compares the word in the
 * kernel, so a bump between that read and the syscall returns at once.
 * f == TAG(s) means the sleeper already saw this bump and waits for the
 * next one: no wake.  Claiming clears the flag, so one sleep costs at most
 * one FUTEX_WAKE however many records are sent meanwhile; the compare-
 * exchange only clears the exact tag it read, and a later sleep of the same
 * side has a different tag (its seq word has moved), so a late claim never
 * clears a newer sleep.  (Tags repeat after 2^31 bumps of the word.)
 * Each side is one function: bump_and_claim is the waker's ([D1], [D3]),
 * sleep_on the sleeper's from the flag store on ([D2], [D4] end in it).
 *
 * Before sleeping a waiter polls for up to FP_LANE_SPIN_NS: a peer that is
 * running answers within a microsecond, far below the cost of a futex sleep
 * and wake-up (10-15 us on a VM).  The futex ops are the shared (not
 * _PRIVATE) ones: the words live in memory shared between processes.
 * Waits are always bounded by the caller's timeout, so a dead peer shows up
 * as FP_ETIMEOUT, never as a hang.
 */
#include "fp_ring.h"
#include "fp_shm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define REC_HDR 8u
/* How long a waiter polls before it sleeps on the futex (0: never polls).
 * About the cost of a futex sleep + wake-up, the classic competitive bound:
 * a wait costs at most about twice what it would with perfect foresight. */
#ifndef FP_LANE_SPIN_NS
#define FP_LANE_SPIN_NS 10000
#endif
/* Windows grow to a power of two at least this large (fewer mremaps). */
#define WIN_MIN ((size_t)1 << 20)
/* The ring starts after the header, on its own cache line. */
#define RING_OFF FP_ALIGN_UP(sizeof(fp_lane_hdr), 64)

#define RLX memory_order_relaxed
#define ACQ memory_order_acquire
#define REL memory_order_release
#define SEQ memory_order_seq_cst

enum { BIG_FREE = 0, BIG_HELD = 1, BIG_TRIM = 2 };

/* ---- helpers ---- */

/* Record headers are read with memcpy into locals followed by a compiler
 * barrier, so each shared byte is read exactly once: a producer rewriting
 * the header after we validated it cannot change the bounds we use. */
static inline void rd_hdr(const unsigned char *p, uint32_t *len,
                          uint32_t *type) {
  uint32_t v[2];
  memcpy(v, p, sizeof v);
  atomic_signal_fence(SEQ);
  *len = v[0];
  *type = v[1];
}

static inline void wr_hdr(unsigned char *p, uint32_t len, uint32_t type) {
  uint32_t v[2] = {len, type};
  memcpy(p, v, sizeof v);
}

static inline uint64_t rd_u64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  atomic_signal_fence(SEQ);
  return v;
}

static inline uint64_t rec_size(uint64_t len) {
  return REC_HDR + ((len + 7) & ~(uint64_t)7);
}

static inline uint32_t tag(uint32_t w) { return (w & 0x7fffffffu) + 1; }

/* Waker side: the seq word was just bumped to s and the flag read as f.
 * Claim the wake if the sleeper waits on an older value. */
static inline int claim(_Atomic uint32_t *flag, uint32_t f, uint32_t s) {
  while (f != 0 && f != tag(s)) {
    if (atomic_compare_exchange_weak_explicit(flag, &f, 0, SEQ, RLX)) return 1;
  }
  return 0;
}

/* big_busy: BIG_FREE, BIG_HELD (the producer writes the area, or a
 * published big record holds it until the consumer releases it), or
 * BIG_TRIM (a side is punching the region).  Moving it away from BIG_FREE
 * is a compare-exchange, so the producer's writes and a trim exclude each
 * other; the acquire pairs with the release that set BIG_FREE ([B5]). */
static inline int claim_big(fp_lane_hdr *h, uint32_t to) {
  uint32_t f = BIG_FREE;
  return atomic_compare_exchange_strong_explicit(&h->big_busy, &f, to, ACQ, RLX);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Poll for up to FP_LANE_SPIN_NS until *word != val.  1 when it moved. */
static int spin_while_eq64(_Atomic uint64_t *word, uint64_t val) {
  if (FP_LANE_SPIN_NS == 0) return 0;
  uint64_t end = fp_now_ns() + FP_LANE_SPIN_NS;
  for (unsigned i = 1;; i++) {
    if (atomic_load_explicit(word, RLX) != val) return 1;
    cpu_relax();
    if ((i & 15) == 0 && fp_now_ns() >= end) return 0;
  }
}

static int spin_while_eq32(_Atomic uint32_t *word, uint32_t val) {
  if (FP_LANE_SPIN_NS == 0) return 0;
  uint64_t end = fp_now_ns() + FP_LANE_SPIN_NS;
  for (unsigned i = 1;; i++) {
    if (atomic_load_explicit(word, RLX) != val) return 1;
    cpu_relax();
    if ((i & 15) == 0 && fp_now_ns() >= end) return 0;
  }
}

static int futex_wait(_Atomic uint32_t *word, uint32_t val, int timeout_ms) {
  struct timespec ts, *tp = NULL;
  if (timeout_ms >= 0) {
    ts.tv_sec = timeout_ms / 1000;
    ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
    tp = &ts;
  }
  if (syscall(SYS_futex, (void *)word, FUTEX_WAIT, val, tp, NULL, 0) == 0)
    return FP_OK;
  switch (errno) {
  case EAGAIN:    return FP_OK;        /* the word had moved already */
  case ETIMEDOUT: return FP_ETIMEOUT;
  case EINTR:     return FP_EINTR;
  default:        return FP_ESYS;
  }
}

static void futex_wake(_Atomic uint32_t *word) {
  (void)syscall(SYS_futex, (void *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* The two halves of the sleeping protocol (see "Sleeping" above); the
 * callers name the barrier pair each use belongs to. */

/* Waker: bump the seq word, then read the sleeper's flag (both seq_cst)
 * and claim the wake.  1: the caller must FUTEX_WAKE seq. */
static inline int bump_and_claim(_Atomic uint32_t *seq, _Atomic uint32_t *flag) {
  uint32_t s = atomic_fetch_add_explicit(seq, 1, SEQ) + 1;
  uint32_t f = atomic_load_explicit(flag, SEQ);
  return f ? claim(flag, f, s) : 0;
}

/* Sleeper, after it read the seq word as w and found its condition still
 * unmet: store the flag TAG(w), read the word again (both seq_cst), sleep
 * only if it still is w, then clear the flag (relaxed: a waker that still
 * sees it only claims a wake that is no longer needed).  FP_OK (woken, or
 * the word moved), FP_ETIMEOUT, FP_EINTR or FP_ESYS. */
static int sleep_on(_Atomic uint32_t *seq, _Atomic uint32_t *flag, uint32_t w,
                    int timeout_ms) {
  atomic_store_explicit(flag, tag(w), SEQ);
  int rc = FP_OK;
  if (atomic_load_explicit(seq, SEQ) == w) rc = futex_wait(seq, w, timeout_ms);
  atomic_store_explicit(flag, 0, RLX);
  return rc;
}

/* ---- big area: the file and the windows ---- */

static size_t page_up(uint64_t n) {
  return FP_ALIGN_UP((size_t)n, fp_shm_page());
}

/* The window length for a record of n <= KEEP bytes: a power of two, at
 * least WIN_MIN, at most KEEP. */
static size_t win_len_for(uint64_t n) {
  size_t w = WIN_MIN;
  while (w < n && w < FP_LANE_BIG_KEEP) w <<= 1;
  return w < page_up(n) ? page_up(n) : w;
}

/* Make *win (of *len bytes, 0: none) map [off, off + want) of fd, keeping
 * the pages already mapped.  FP_OK or FP_ENOMEM (the window is unchanged). */
static int win_resize(int fd, uint64_t off, int prot, unsigned char **win,
                      size_t *len, size_t want) {
  void *p;
  if (want == *len) return FP_OK;
  if (want == 0) {
    munmap(*win, *len);
    p = NULL;
  } else if (*len == 0) {
    p = mmap(NULL, want, prot, MAP_SHARED, fd, (off_t)off);
  } else {
    /* Shrinking never moves; growing may, and keeps the pages mapped. */
    p = mremap(*win, *len, want, MREMAP_MAYMOVE);
  }
  if (p == MAP_FAILED) return FP_ENOMEM;
  *win = p;
  *len = want;
  return FP_OK;
}

/* The largest file size RLIMIT_FSIZE allows now (past it, writes raise
 * SIGXFSZ). */
static uint64_t fsize_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_FSIZE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
    return UINT64_MAX;
  return (uint64_t)rl.rlim_cur;
}

/* Allocate [off, off + len) of fd.  FP_OK or FP_ENOMEM. */
static int file_reserve(int fd, uint64_t off, uint64_t len) {
  for (;;) {
    if (fallocate(fd, 0, (off_t)off, (off_t)len) == 0) return FP_OK;
    if (errno == EINTR) continue;
    /* A file system without fallocate (not tmpfs): at least make the file
     * long enough that the window never maps past its end. */
    if (errno == EOPNOTSUPP) {
      struct stat st;
      if (fstat(fd, &st) == 0 && (uint64_t)st.st_size >= off + len) return FP_OK;
      if (ftruncate(fd, (off_t)(off + len)) == 0) return FP_OK;
    }
    return FP_ENOMEM;
  }
}

/* Write n bytes at off with pwrite, retrying short writes and EINTR. */
static int file_write(int fd, const unsigned char *p, size_t n, uint64_t off) {
  while (n) {
    ssize_t w = pwrite(fd, p, n, (off_t)off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno == EFBIG ? FP_E2BIG : FP_ENOMEM;
    }
    if (w == 0) return FP_ENOMEM;
    p += w;
    n -= (size_t)w;
    off += (uint64_t)w;
  }
  return FP_OK;
}

/* Producer: put a big record's n = alen + blen bytes at the start of the
 * lane's region of the file.  FP_OK, FP_ENOMEM or FP_E2BIG; nothing is
 * published either way. */
static int big_write(fp_lane *l, const void *a, size_t alen, const void *b,
                     size_t blen) {
  uint64_t n = (uint64_t)alen + blen, off = l->big_off;
  uint64_t lim = fsize_limit();
  int rc;
  if (lim < off || n > lim - off) return FP_E2BIG;
  lim -= off;  /* bytes the region may hold under RLIMIT_FSIZE */
  if (n > FP_LANE_BIG_KEEP) {
    /* Once-off: the kernel copies into fresh pages without faulting them
     * into a window of ours, and reports a lack of memory as an error. */
    if ((rc = file_write(l->big_fd, a, alen, off)) != FP_OK) return rc;
    if ((rc = file_write(l->big_fd, b, blen, off + alen)) != FP_OK) return rc;
    /* The consumer punches only beyond KEEP: [0, KEEP) stays allocated. */
    l->big_resv = FP_LANE_BIG_KEEP;
    return FP_OK;
  }
  if (n > l->pwin_len &&
      win_resize(l->big_fd, off, PROT_READ | PROT_WRITE, &l->pwin, &l->pwin_len,
                 win_len_for(n)) != FP_OK)
    return FP_ENOMEM;
  /* Whole pages, but never past RLIMIT_FSIZE (SIGXFSZ). */
  size_t need = page_up(n) < lim ? page_up(n) : (size_t)lim;
  if (need > l->big_resv) {
    if (file_reserve(l->big_fd, off + l->big_resv, need - l->big_resv) != FP_OK)
      return FP_ENOMEM;
    l->big_resv = need;
  }
  if (alen) memcpy(l->pwin, a, alen);
  if (blen) memcpy(l->pwin + alen, b, blen);
  return FP_OK;
}

/* Consumer: a window covering n validated bytes.  FP_OK or FP_ENOMEM. */
static int big_map(fp_lane *l, uint64_t n) {
  size_t want = n > FP_LANE_BIG_KEEP ? page_up(n) : win_len_for(n);
  if (want <= l->cwin_len) return FP_OK;
  unsigned char *w = (unsigned char *)l->cwin;
  if (win_resize(l->big_fd, l->big_off, PROT_READ, &w, &l->cwin_len, want) != FP_OK)
    return FP_ENOMEM;
  l->cwin = w;
  if (n <= FP_LANE_BIG_KEEP) l->cwin_keep = l->cwin_len;
  return FP_OK;
}

/* Consumer, releasing a record of n > KEEP bytes: give back the file's
 * pages past KEEP and the window past cwin_keep. */
static void big_unmap(fp_lane *l, uint64_t n) {
  (void)fallocate(l->big_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)(l->big_off + FP_LANE_BIG_KEEP),
                  (off_t)(page_up(n) - FP_LANE_BIG_KEEP));
  unsigned char *w = (unsigned char *)l->cwin;
  (void)win_resize(l->big_fd, l->big_off, PROT_READ, &w, &l->cwin_len, l->cwin_keep);
  l->cwin = w;
}

/* ---- create / destroy ---- */

static int lane_init(fp_lane *l, size_t ring_cap, size_t big_cap, int fd,
                     uint64_t off, int own_fd) {
  memset(l, 0, sizeof *l);
  l->big_fd = -1;
  if (ring_cap < 4096 || (ring_cap & (ring_cap - 1)) != 0 ||
      (uint64_t)ring_cap > ((uint64_t)1 << 32) || (off & (fp_shm_page() - 1)))
    return FP_ENOMEM;
  uint64_t fsz = fsize_limit();
  if (big_cap && off >= fsz) big_cap = 0;
  else if (big_cap > fsz - off) big_cap = (size_t)(fsz - off);
  void *base;
  if (fp_shm_map(RING_OFF + ring_cap, 0, &base) != FP_OK) return FP_ENOMEM;
  if (big_cap && own_fd && (fd = fp_shm_file()) < 0) {
    int e = errno;
    fp_shm_unmap(base, RING_OFF + ring_cap);
    errno = e;
    return FP_ENOMEM;
  }
  /* The mapping is zeroed: head = tail = seqs = flags = 0, big_busy FREE. */
  fp_lane_hdr *h = base;
  h->cap = ring_cap;
  h->big_cap = big_cap;
  l->cap = ring_cap;
  l->big_cap = big_cap;
  l->h = h;
  l->ring = (unsigned char *)base + RING_OFF;
  l->big_fd = big_cap ? fd : -1;
  l->big_off = off;
  l->own_fd = big_cap && own_fd;
  return FP_OK;
}

int fp_lane_create(fp_lane *l, size_t ring_cap, size_t big_cap) {
  return lane_init(l, ring_cap, big_cap, -1, 0, 1);
}

int fp_lane_create_at(fp_lane *l, size_t ring_cap, size_t big_cap, int fd,
                      uint64_t off) {
  if (fd < 0) big_cap = 0;
  return lane_init(l, ring_cap, big_cap, fd, off, 0);
}

void fp_lane_discard_big(fp_lane *l) {
  if (!l->h || l->big_fd < 0) return;
  (void)fallocate(l->big_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)l->big_off, (off_t)page_up(l->big_cap));
}

/* Either side, while the lane is idle: give the region's pages back.  The
 * records beyond KEEP were punched on release, so [0, KEEP) is all there
 * is.  Takes big_busy like a producer does, so no record is in the area
 * and no producer writes it meanwhile.  The producer learns of a
 * consumer's trim through big_trimmed (set before [B5]'s release, read
 * after its [B6] claim) and allocates again before writing; a producer
 * waiting on the claim is woken like by a release. */
static int trim(fp_lane *l, int producer) {
  fp_lane_hdr *h = l->h;
  if (!h || l->big_fd < 0) return 1;
  if (!claim_big(h, BIG_TRIM)) return 0;
  size_t n = FP_LANE_BIG_KEEP < l->big_cap ? FP_LANE_BIG_KEEP : page_up(l->big_cap);
  (void)fallocate(l->big_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)l->big_off, (off_t)n);
  if (producer) l->big_resv = 0;
  else atomic_store_explicit(&h->big_trimmed, 1, RLX);
  atomic_store_explicit(&h->big_busy, BIG_FREE, REL);  /* [B5] */
  /* [D3]/[B7] as in fp_lane_release: a producer that found the area
   * taken sleeps on tail_seq. */
  if (!producer && bump_and_claim(&h->tail_seq, &h->prod_waiting))
    futex_wake(&h->tail_seq);
  return 1;
}

int fp_lane_trim_producer(fp_lane *l) { return trim(l, 1); }
int fp_lane_trim_consumer(fp_lane *l) { return trim(l, 0); }

void fp_lane_unmap_ring(fp_lane *l) {
  if (l->h) fp_shm_unmap(l->h, RING_OFF + l->cap);
  l->h = NULL;
  l->ring = NULL;
}

void fp_lane_destroy(fp_lane *l) {
  if (l->h) {
    if (l->pwin) munmap(l->pwin, l->pwin_len);
    if (l->cwin) munmap((void *)l->cwin, l->cwin_len);
    if (l->own_fd) close(l->big_fd);
    fp_shm_unmap(l->h, RING_OFF + l->cap);
  }
  memset(l, 0, sizeof *l);
  l->big_fd = -1;
}

/* ---- producer ---- */

/* Room for `need` bytes at head (plus the PAD up to the end if `need` does
 * not fit there)?  Refreshes tail_cache only when the cached tail says no,
 * so a streaming producer rarely touches the consumer's cache line.  Sets
 * *pad.  FP_OK, FP_EFULL (space_seq recorded) or FP_ECORRUPT. */
static int reserve(fp_lane *l, uint64_t head, uint64_t need, uint64_t *pad) {
  uint64_t cap = l->cap;
  uint64_t to_end = cap - (head & (cap - 1));
  uint64_t p = need > to_end ? to_end : 0;
  *pad = p;
  if (head - l->tail_cache + p + need <= cap) return FP_OK;
  /* [B8] pairs with [B7]: a release we miss here bumps tail_seq past the
   * value saved for fp_lane_wait_space. */
  uint32_t s = atomic_load_explicit(&l->h->tail_seq, ACQ);
  /* [B4] pairs with [B3]. */
  uint64_t tail = atomic_load_explicit(&l->h->tail, ACQ);
  if (head - tail > cap || (tail & 7)) return FP_ECORRUPT;
  l->tail_cache = tail;
  if (head - tail + p + need <= cap) return FP_OK;
  l->space_seq = s;
  return FP_EFULL;
}

/* Make [head, head + n) visible and claim the consumer's wake-up if it
 * sleeps. */
static inline void publish(fp_lane_hdr *h, uint64_t head, int *must_wake) {
  /* [B1] pairs with [B2]: the record bytes are written before head moves. */
  atomic_store_explicit(&h->head, head, REL);
  /* [D1] pairs with [D2]. */
  int w = bump_and_claim(&h->head_seq, &h->cons_waiting);
  if (must_wake) *must_wake = w;
  else if (w) futex_wake(&h->head_seq);
}

static int send2(fp_lane *l, uint32_t type, const void *a, size_t alen,
                 const void *b, size_t blen, int *must_wake) {
  fp_lane_hdr *h = l->h;
  if (must_wake) *must_wake = 0;
  if (type >= FP_LANE_PAD) return FP_ECORRUPT;
  if (alen > SIZE_MAX - blen) return FP_E2BIG;
  uint64_t len = (uint64_t)alen + blen;
  uint64_t cap = l->cap;
  uint64_t head = atomic_load_explicit(&h->head, RLX);  /* ours */
  uint64_t pad;
  /* Ours, but in memory the consumer can write: misaligned, a PAD header
   * near the end of the ring would run past it (reserve checks the rest). */
  if (head & 7) return FP_ECORRUPT;
  int rc;

  if (len <= FP_LANE_INLINE_MAX(cap)) {
    uint64_t need = rec_size(len);
    if ((rc = reserve(l, head, need, &pad)) != FP_OK) return rc;
    unsigned char *p = l->ring + (head & (cap - 1));
    if (pad) {
      wr_hdr(p, (uint32_t)(pad - REC_HDR), FP_LANE_PAD);
      p = l->ring;
    }
    wr_hdr(p, (uint32_t)len, type);
    if (alen) memcpy(p + REC_HDR, a, alen);
    if (blen) memcpy(p + REC_HDR + alen, b, blen);
    publish(h, head + pad + need, must_wake);
    return FP_OK;
  }

  /* Big record: the bytes go to the big area, the ring carries {u64 len}. */
  if (len > l->big_cap) return FP_E2BIG;
  uint64_t need = REC_HDR + 8;
  if ((rc = reserve(l, head, need, &pad)) != FP_OK) return rc;
  /* [B6] pairs with [B5]: the consumer is done with the area (or has
   * trimmed it); claiming it keeps a trim out while we write. */
  if (!claim_big(h, BIG_HELD)) {
    uint32_t s = atomic_load_explicit(&h->tail_seq, ACQ);  /* [B8] */
    if (!claim_big(h, BIG_HELD)) {                         /* [B6] */
      l->space_seq = s;
      return FP_EFULL;
    }
  }
  if (atomic_load_explicit(&h->big_trimmed, RLX)) {
    /* The consumer punched the region: nothing of it is allocated. */
    atomic_store_explicit(&h->big_trimmed, 0, RLX);
    l->big_resv = 0;
  }
  if ((rc = big_write(l, a, alen, b, blen)) != FP_OK) {
    atomic_store_explicit(&h->big_busy, BIG_FREE, REL);  /* nothing written */
    return rc;
  }
  unsigned char *p = l->ring + (head & (cap - 1));
  if (pad) {
    wr_hdr(p, (uint32_t)(pad - REC_HDR), FP_LANE_PAD);
    p = l->ring;
  }
  wr_hdr(p, 8, type | FP_LANE_BIG);
  memcpy(p + REC_HDR, &len, 8);
  publish(h, head + pad + need, must_wake);
  return FP_OK;
}

int fp_lane_try_send(fp_lane *l, uint32_t type, const void *payload,
                     size_t len, int *must_wake) {
  return send2(l, type, payload, len, NULL, 0, must_wake);
}

int fp_lane_try_send2(fp_lane *l, uint32_t type, const void *a, size_t alen,
                      const void *b, size_t blen, int *must_wake) {
  return send2(l, type, a, alen, b, blen, must_wake);
}

int fp_lane_wait_space(fp_lane *l, int timeout_ms) {
  fp_lane_hdr *h = l->h;
  uint32_t w = l->space_seq;
  /* [B8] pairs with [B7]: anything released since the failed send? */
  if (atomic_load_explicit(&h->tail_seq, ACQ) != w) return FP_OK;
  if (timeout_ms != 0 && spin_while_eq32(&h->tail_seq, w)) return FP_OK;
  /* [D4] pairs with [D3]: the flag, then the seq word again. */
  return sleep_on(&h->tail_seq, &h->prod_waiting, w, timeout_ms);
}

void fp_lane_wake_consumer(fp_lane *l) {
  futex_wake(&l->h->head_seq);
}

/* ---- consumer ---- */

int fp_lane_peek(fp_lane *l, uint32_t *type, const unsigned char **payload,
                 size_t *len) {
  fp_lane_hdr *h = l->h;
  uint64_t cap = l->cap;
  uint64_t tail = atomic_load_explicit(&h->tail, RLX);  /* ours */
  uint64_t head = l->head_cache;
  l->peeked = 0;
  if (tail & 7) return FP_ECORRUPT;
  if (head - tail - 1 >= cap) {  /* cache says empty (or is stale): reload */
    /* [B2] pairs with [B1]. */
    head = atomic_load_explicit(&h->head, ACQ);
    l->head_cache = head;
    if (head == tail) return FP_EEMPTY;
    if (head - tail > cap) return FP_ECORRUPT;
  }
  uint64_t avail = head - tail;
  uint64_t pos = tail & (cap - 1);
  uint64_t skip = 0;
  uint32_t rlen, rtype;
  rd_hdr(l->ring + pos, &rlen, &rtype);
  if (rtype == FP_LANE_PAD) {
    skip = cap - pos;  /* a PAD runs to the end of the ring */
    if (rlen != skip - REC_HDR || avail < skip + REC_HDR) return FP_ECORRUPT;
    avail -= skip;
    pos = 0;
    rd_hdr(l->ring, &rlen, &rtype);
  }
  uint32_t t = rtype & ~FP_LANE_BIG;
  if (t >= FP_LANE_PAD) return FP_ECORRUPT;
  uint64_t size = rec_size(rlen);
  /* pos + size <= cap: records never wrap; size <= avail: published. */
  if (size > avail || size > cap - pos) return FP_ECORRUPT;
  const unsigned char *pl = l->ring + pos + REC_HDR;
  uint64_t n = rlen, big = 0;
  if (rtype & FP_LANE_BIG) {
    if (rlen != 8) return FP_ECORRUPT;
    n = rd_u64(pl);
    if (n <= FP_LANE_INLINE_MAX(cap) || n > l->big_cap ||
        atomic_load_explicit(&h->big_busy, RLX) != BIG_HELD)
      return FP_ECORRUPT;
    if (n > l->big_size) {
      /* Past the end of the file a window faults with SIGBUS. */
      struct stat st;
      if (fstat(l->big_fd, &st) != 0 || (uint64_t)st.st_size < l->big_off) return FP_ECORRUPT;
      l->big_size = (uint64_t)st.st_size - l->big_off;
      if (n > l->big_size) return FP_ECORRUPT;
    }
    if (big_map(l, n) != FP_OK) return FP_ENOMEM;
    pl = l->cwin;
    big = n;
  } else if (n > FP_LANE_INLINE_MAX(cap)) {
    return FP_ECORRUPT;
  }
  l->peek_next = tail + skip + size;
  l->peek_big = big;
  l->peeked = 1;
  *type = t;
  *payload = pl;
  *len = (size_t)n;
  return FP_OK;
}

int fp_lane_release(fp_lane *l) {
  fp_lane_hdr *h = l->h;
  if (!l->peeked) return 0;
  l->peeked = 0;
  if (l->peek_big) {
    if (l->peek_big > FP_LANE_BIG_KEEP) {
      /* Before [B5]: once big_busy is 0 the producer may write the file,
       * and the punch would zero its new bytes.  [0, KEEP) stays: the
       * producer counts on it (big_resv), and the next records reuse it. */
      big_unmap(l, l->peek_big);
    }
    /* [B5] pairs with [B6]: our reads of the area are done. */
    atomic_store_explicit(&h->big_busy, BIG_FREE, REL);
  }
  /* [B3] pairs with [B4]: our reads of the record are done. */
  atomic_store_explicit(&h->tail, l->peek_next, REL);
  /* [D3] pairs with [D4]; also [B7] (release) pairs with [B8]. */
  return bump_and_claim(&h->tail_seq, &h->prod_waiting);
}

int fp_lane_wait_data(fp_lane *l, int timeout_ms) {
  fp_lane_hdr *h = l->h;
  uint64_t tail = atomic_load_explicit(&h->tail, RLX);  /* ours */
  if (timeout_ms != 0 && spin_while_eq64(&h->head, tail)) return FP_OK;
  /* [D2] pairs with [D1]: the seq word, then the re-check, then (in
   * sleep_on) the flag, then the seq word again. */
  uint32_t w = atomic_load_explicit(&h->head_seq, ACQ);
  if (atomic_load_explicit(&h->head, ACQ) != tail) return FP_OK;  /* [B2] */
  return sleep_on(&h->head_seq, &h->cons_waiting, w, timeout_ms);
}

void fp_lane_wake_producer(fp_lane *l) {
  futex_wake(&l->h->tail_seq);
}

size_t fp_lane_used(const fp_lane *l) {
  uint64_t tail = atomic_load_explicit(&l->h->tail, ACQ);
  uint64_t head = atomic_load_explicit(&l->h->head, ACQ);
  return (size_t)(head - tail);
}
