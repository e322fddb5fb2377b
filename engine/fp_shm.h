/*
 * fp_shm.h - shared memory for one pool: anonymous MAP_SHARED mappings only.
 *
 * Nothing here has a name in /dev/shm or the file system, so nothing can
 * outlive the processes that map it (a SIGKILLed parent leaves nothing
 * behind).  Mappings are created by the parent before it forks the worker
 * that uses them; the kernel shares the pages between the two.
 */
#ifndef FP_SHM_H
#define FP_SHM_H

#include "fp_common.h"

/* Map len bytes (rounded up to the page size) of zeroed shared memory,
 * readable and writable.  noreserve: MAP_NORESERVE, for very large regions
 * of which only what is touched costs memory.  Returns FP_OK and *out, or
 * FP_ENOMEM. */
int fp_shm_map(size_t len, int noreserve, void **out);

/* Unmap a region made by fp_shm_map (same len).  NULL is a no-op. */
void fp_shm_unmap(void *p, size_t len);

/* Give the pages of [p, p+len) back to the kernel (MADV_REMOVE); the range
 * reads as zeros afterwards.  p must be page aligned; len is rounded down to
 * whole pages.  Errors are ignored: this only returns memory early. */
void fp_shm_discard(void *p, size_t len);

/* The size to use for a lane's big-record area: about the machine's RAM plus
 * swap, rounded up to a power of two, at least 1 GiB, at most 1 TiB.  A
 * record larger than this cannot be sent (FP_E2BIG). */
size_t fp_shm_big_size(void);

/* The page size. */
size_t fp_shm_page(void);

#endif
