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

FP_HIDDEN_BEGIN

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

/*
 * The shared arena: one large MAP_NORESERVE shared mapping per process,
 * made when forkpool is loaded, so every worker forked afterwards maps it at
 * the same address.  Memory allocated from it later (forkpool.shared_array)
 * is therefore visible, without copies, in the parent and in every worker,
 * kept-alive ones included.  Only the process that made the arena allocates
 * and frees; a freed block's pages go back to the kernel (MADV_REMOVE), so
 * a new block always reads as zeros.  Blocks are whole pages.
 */
/* Make the arena (once per process; later calls do nothing).  FP_OK or
 * FP_ENOMEM. */
int fp_arena_init(size_t size);
/* Allocate len bytes (rounded up to pages), zeroed.  FP_OK and *out,
 * FP_ENOMEM (arena full or not made), FP_ESYS (not the arena's owner). */
int fp_arena_alloc(size_t len, void **out);
/* Free a block from fp_arena_alloc.  Does nothing in another process or for
 * an unknown pointer. */
void fp_arena_free(void *p);
/* Whether [p, p+len) lies inside the arena. */
int fp_arena_contains(const void *p, size_t len);

/* The size to use for a lane's big-record area: about the machine's RAM plus
 * swap, rounded up to a power of two, at least 1 GiB, at most 1 TiB.  A
 * record larger than this cannot be sent (FP_E2BIG). */
size_t fp_shm_big_size(void);

/* The page size. */
size_t fp_shm_page(void);

FP_HIDDEN_END

#endif
