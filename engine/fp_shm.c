/*
 * fp_shm.c - shared memory for one pool: anonymous MAP_SHARED mappings.
 *
 * Invariants:
 *   - Every region is MAP_SHARED | MAP_ANONYMOUS: no name in /dev/shm, no
 *     file, so nothing outlives the last process that maps it (a SIGKILLed
 *     parent leaves nothing behind).  Regions are made before fork and the
 *     kernel shares their pages with the children.
 *   - Lengths are rounded up to whole pages here, so callers unmap with the
 *     same length they mapped with.
 *   - Very large regions (a lane's big area) use MAP_NORESERVE: only the
 *     pages actually written cost memory, and fp_shm_discard (MADV_REMOVE)
 *     gives them back after a big record has been consumed.
 *
 * Sizing the big area: fp_shm_big_size() returns RAM + swap rounded up to a
 * power of two, clamped to [1 GiB, 1 TiB].  Under strict overcommit
 * (vm.overcommit_memory = 2) the kernel ignores MAP_NORESERVE and may refuse
 * a mapping that large; fp_shm_map then returns FP_ENOMEM and the caller may
 * retry with a smaller size (halving down to what it needs at least).  A
 * smaller big area only lowers the largest record that can be sent.
 */
#include "fp_shm.h"

#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#define FP_GIB ((uint64_t)1 << 30)
#define FP_BIG_MIN FP_GIB
#define FP_BIG_MAX (FP_GIB << 10)  /* 1 TiB */

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
