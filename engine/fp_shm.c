/*
 * fp_shm.c - shared memory for one pool: anonymous MAP_SHARED mappings,
 * anonymous shared-memory files (memfds), and the shared arena.
 *
 * Invariants:
 *   - Every region is MAP_SHARED | MAP_ANONYMOUS or maps a memfd (or an
 *     unnamed O_TMPFILE file in /dev/shm): no name in /dev/shm, no file
 *     anyone can open, so nothing outlives the last process that maps it or
 *     holds its fd (a SIGKILLed parent leaves nothing behind).  Regions and
 *     files are made before fork and the kernel shares their pages with the
 *     children.
 *   - Lengths are rounded up to whole pages here, so callers unmap with the
 *     same length they mapped with.
 *   - Nothing here reserves address space in proportion to the machine's
 *     memory except the arena, which exists once per process (not per
 *     worker) and whose size the user can set (FORKPOOL_SHARED_MEMORY, read
 *     by the binding).  A lane's big area is a memfd that grows on demand
 *     (fp_ring.c); fp_shm_big_size() only bounds the size of one record.
 *
 * The arena maps a memfd rather than MAP_SHARED | MAP_ANONYMOUS |
 * MAP_NORESERVE: under strict overcommit (vm.overcommit_memory = 2) the
 * kernel ignores MAP_NORESERVE and would charge the whole anonymous region
 * up front, while a shared file mapping is charged per page as pages are
 * allocated.  The fd is closed once mapped: the mapping keeps the file.
 */
#include "fp_shm.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#define FP_GIB ((uint64_t)1 << 30)
#define FP_BIG_MIN FP_GIB
#define FP_BIG_MAX (FP_GIB << 10)  /* 1 TiB */
#define FP_MIB ((uint64_t)1 << 20)
/* fp_arena_init(..., shrink) stops halving below this. */
#define FP_ARENA_MIN (16 * FP_MIB)

/* Cached page size; 0 until first asked.  Relaxed is enough: every thread
 * computes the same value. */
static _Atomic size_t fp_page_size;

size_t fp_shm_page(void) {
  size_t pg = atomic_load_explicit(&fp_page_size, memory_order_relaxed);
  if (pg == 0) {
    long v = sysconf(_SC_PAGESIZE);
    pg = v > 0 ? (size_t)v : 4096;
    atomic_store_explicit(&fp_page_size, pg, memory_order_relaxed);
  }
  return pg;
}

/* len rounded up to whole pages, or 0 when that overflows. */
static size_t page_round(size_t len) {
  size_t pg = fp_shm_page();
  if (len > SIZE_MAX - (pg - 1)) return 0;
  return FP_ALIGN_UP(len, pg);
}

int fp_shm_map(size_t len, int noreserve, void **out) {
  *out = NULL;
  size_t n = page_round(len);
  if (n == 0) return FP_ENOMEM;
  int flags = MAP_SHARED | MAP_ANONYMOUS;
  if (noreserve) flags |= MAP_NORESERVE;
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) return FP_ENOMEM;
  *out = p;
  return FP_OK;
}

void fp_shm_unmap(void *p, size_t len) {
  if (!p) return;
  size_t n = page_round(len);
  if (n) (void)munmap(p, n);
}

int fp_shm_file(void) {
#ifdef SYS_memfd_create
  /* The raw syscall: glibc < 2.27 has no wrapper.  MFD_CLOEXEC = 1. */
  int fd = (int)syscall(SYS_memfd_create, "forkpool", 1u);
  if (fd >= 0) return fd;
  if (errno != ENOSYS && errno != EPERM) return -1;
#endif
  /* No memfd (an old kernel, or a seccomp filter): an unnamed file on the
   * tmpfs, which likewise disappears with its last fd and mapping. */
#ifdef O_TMPFILE
  return open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#else
  errno = ENOSYS;
  return -1;
#endif
}

void fp_shm_discard(void *p, size_t len) {
  size_t n = len & ~(fp_shm_page() - 1);
  /* MADV_REMOVE frees the shmem pages behind both processes' mappings; the
   * range reads as zeros afterwards.  Failure only means the memory is
   * returned later, at unmap. */
  if (p && n) (void)madvise(p, n, MADV_REMOVE);
}

size_t fp_shm_big_size(void) {
  struct sysinfo si;
  uint64_t total = 0;
  if (sysinfo(&si) == 0) {
    uint64_t unit = si.mem_unit ? si.mem_unit : 1;
    uint64_t units = (uint64_t)si.totalram + (uint64_t)si.totalswap;
    /* Anything past 1 TiB is clamped anyway: avoid the multiply overflowing. */
    total = units > FP_BIG_MAX / unit ? FP_BIG_MAX : units * unit;
  }
  uint64_t size = FP_BIG_MIN;
  while (size < total && size < FP_BIG_MAX) size <<= 1;
  return (size_t)size;
}

size_t fp_shm_region_size(size_t n) {
  size_t size = fp_shm_big_size();
  struct rlimit rl;
  if (n && getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    uint64_t share = ((uint64_t)rl.rlim_cur / n) & ~((uint64_t)fp_shm_page() - 1);
    if (share < size) size = (size_t)share;
  }
  return size;
}

/* ---- the shared arena ----
 *
 * Invariants (owner process only): blocks[] lists the allocated blocks
 * sorted by offset, free_ is derived from the gaps between them; every
 * offset and length is a multiple of the page size.  Workers see the
 * mapping but never touch this bookkeeping (owner check).
 *
 * One arena per process, shared by every Lua state in it (a host may run
 * one per thread): arena_lock guards the bookkeeping and init.  base, size
 * and owner are written once, by the first init, under the lock, and every
 * state runs init (luaopen) before it can allocate, so they are read
 * without it afterwards.  A child of forkpool's never takes the lock (the
 * owner check comes first); every fork in the process takes it
 * (pthread_atfork) and the child re-initialises it, so a child the host
 * forks itself never finds it held by a thread fork did not copy either.
 */

typedef struct arena_block { size_t off, len; } arena_block;

static unsigned char *arena_base;
static size_t arena_size;
static pid_t arena_owner;
static int arena_made;   /* fp_arena_init ran (arena_base may still be NULL: size 0) */
static arena_block *arena_blocks;
static size_t arena_n, arena_cap;
static pthread_mutex_t arena_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;

static void arena_fork_prepare(void) { pthread_mutex_lock(&arena_lock); }
static void arena_fork_parent(void) { pthread_mutex_unlock(&arena_lock); }
/* The child's only thread is not the owner the parent's thread was:
 * initialise afresh rather than unlock. */
static void arena_fork_child(void) { pthread_mutex_init(&arena_lock, NULL); }
static void arena_atfork(void) {
  (void)pthread_atfork(arena_fork_prepare, arena_fork_parent, arena_fork_child);
}

size_t fp_arena_default_size(void) {
  uint64_t size = fp_shm_big_size();
  struct rlimit rl;
  if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    uint64_t q = ((uint64_t)rl.rlim_cur / 4) & ~(FP_MIB - 1);
    if (q < size) size = q;
  }
  return (size_t)size;
}

int fp_shm_parse_size(const char *s, size_t *out) {
  uint64_t v = 0;
  const char *p = s;
  if (!s || *p < '0' || *p > '9') return FP_ECORRUPT;
  for (; *p >= '0' && *p <= '9'; p++) {
    if (v > (UINT64_MAX - 9) / 10) return FP_ECORRUPT;
    v = v * 10 + (uint64_t)(*p - '0');
  }
  unsigned shift = 0;
  switch (*p) {
  case 'k': case 'K': shift = 10; break;
  case 'm': case 'M': shift = 20; break;
  case 'g': case 'G': shift = 30; break;
  case 't': case 'T': shift = 40; break;
  default: break;
  }
  if (shift) {
    p++;
    if (*p == 'i') p++;
    if (*p == 'B' || *p == 'b') p++;
  } else if (*p == 'B' || *p == 'b') {
    p++;
  }
  if (*p != 0) return FP_ECORRUPT;
  if (shift && v > (UINT64_MAX >> shift)) return FP_ECORRUPT;
  v <<= shift;
  if (v > SIZE_MAX) return FP_ECORRUPT;
  *out = (size_t)v;
  return FP_OK;
}

/* Map `size` bytes of a fresh memfd, shared.  FP_OK or FP_ENOMEM. */
static int arena_map(size_t size, void **out) {
  int fd = fp_shm_file();
  if (fd < 0) return FP_ENOMEM;
  int rc = FP_ENOMEM;
  if (ftruncate(fd, (off_t)size) == 0) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      *out = p;
      rc = FP_OK;
    }
  }
  int e = errno;
  close(fd);  /* the mapping keeps the file */
  errno = e;
  return rc;
}

int fp_arena_init(size_t size, int shrink) {
  pthread_once(&arena_once, arena_atfork);
  pthread_mutex_lock(&arena_lock);
  if (arena_made) {
    pthread_mutex_unlock(&arena_lock);
    return FP_OK;
  }
  void *p = NULL;
  size = page_round(size);
  if (size) {
    int rc;
    while ((rc = arena_map(size, &p)) != FP_OK && shrink && size / 2 >= FP_ARENA_MIN)
      size = page_round(size / 2);
    if (rc != FP_OK) {
      int e = errno;
      pthread_mutex_unlock(&arena_lock);
      errno = e;
      return FP_ENOMEM;
    }
  }
  arena_base = p;
  arena_size = size;
  arena_owner = getpid();
  arena_made = 1;
  pthread_mutex_unlock(&arena_lock);
  return FP_OK;
}

size_t fp_arena_size(void) { return arena_size; }

static int arena_alloc_locked(size_t len, void **out);

int fp_arena_alloc(size_t len, void **out) {
  if (!arena_base || len == 0 || len > arena_size) return FP_ENOMEM;
  if (getpid() != arena_owner) return FP_ESYS;
  len = FP_ALIGN_UP(len, fp_shm_page());
  pthread_mutex_lock(&arena_lock);
  int rc = arena_alloc_locked(len, out);
  pthread_mutex_unlock(&arena_lock);
  return rc;
}

static int arena_alloc_locked(size_t len, void **out) {
  if (arena_n == arena_cap) {
    size_t ncap = arena_cap ? arena_cap * 2 : 32;
    arena_block *nb = realloc(arena_blocks, ncap * sizeof *nb);
    if (!nb) return FP_ENOMEM;
    arena_blocks = nb;
    arena_cap = ncap;
  }
  /* First fit over the gaps between blocks (sorted by offset). */
  size_t prev_end = 0, at = arena_n;
  for (size_t i = 0; i <= arena_n; i++) {
    size_t next = i < arena_n ? arena_blocks[i].off : arena_size;
    if (next - prev_end >= len) {
      at = i;
      break;
    }
    if (i < arena_n) prev_end = arena_blocks[i].off + arena_blocks[i].len;
    if (i == arena_n) return FP_ENOMEM;
  }
  memmove(arena_blocks + at + 1, arena_blocks + at, (arena_n - at) * sizeof *arena_blocks);
  arena_blocks[at].off = prev_end;
  arena_blocks[at].len = len;
  arena_n++;
  *out = arena_base + prev_end;
  return FP_OK;
}

void fp_arena_free(void *p) {
  if (!arena_base || getpid() != arena_owner) return;
  unsigned char *q = p;
  if (q < arena_base || q >= arena_base + arena_size) return;
  size_t off = (size_t)(q - arena_base);
  pthread_mutex_lock(&arena_lock);
  for (size_t i = 0; i < arena_n; i++) {
    if (arena_blocks[i].off == off) {
      /* Zero and release the pages for the next user of this range. */
      fp_shm_discard(q, arena_blocks[i].len);
      memmove(arena_blocks + i, arena_blocks + i + 1, (arena_n - i - 1) * sizeof *arena_blocks);
      arena_n--;
      break;
    }
  }
  pthread_mutex_unlock(&arena_lock);
}

int fp_arena_contains(const void *p, size_t len) {
  const unsigned char *q = p;
  return arena_base && q >= arena_base && len <= arena_size &&
         (size_t)(q - arena_base) <= arena_size - len;
}
