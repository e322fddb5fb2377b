/*
 * fp_shm.h - shared memory for one pool: anonymous MAP_SHARED mappings and
 * anonymous shared-memory files (memfds), nothing else.
 *
 * Nothing here has a name in /dev/shm or the file system, so nothing can
 * outlive the processes that map it (a SIGKILLed parent leaves nothing
 * behind).  Mappings and files are created by the parent before it forks
 * the worker that uses them; the kernel shares the pages between the two.
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

/* An anonymous shared-memory file: memfd_create(MFD_CLOEXEC), or where that
 * is missing an unnamed O_TMPFILE file in /dev/shm.  It has no name, is
 * empty, and its pages are charged only as they are allocated (no commit
 * charge for mapping it, even under vm.overcommit_memory = 2).  Returns the
 * fd (close-on-exec) or -1 with errno set. */
int fp_shm_file(void);

/* Give the pages of [p, p+len) back to the kernel (MADV_REMOVE); the range
 * reads as zeros afterwards.  p must be page aligned; len is rounded down to
 * whole pages.  Errors are ignored: this only returns memory early. */
void fp_shm_discard(void *p, size_t len);

/*
 * The shared arena: one MAP_SHARED mapping of a memfd per process, made when
 * forkpool is loaded, so every worker forked afterwards maps it at the same
 * address.  Memory allocated from it later (forkpool.shared_array) is
 * therefore visible, without copies, in the parent and in every worker,
 * kept-alive ones included.  Only the process that made the arena allocates
 * and frees; a freed block's pages go back to the kernel (MADV_REMOVE), so
 * a new block always reads as zeros.  Blocks are whole pages.
 *
 * Its size is fixed at load: it costs address space (VmSize, RLIMIT_AS) in
 * the parent and in every worker, but memory only for pages written, and no
 * commit charge (a shared file mapping).  See fp_arena_default_size.
 */
/* Make the arena (once per process; later calls do nothing).  size 0 makes
 * no arena (every allocation fails).  With shrink, a size the kernel refuses
 * is halved until it is accepted or below 16 MiB.  FP_OK or FP_ENOMEM. */
int fp_arena_init(size_t size, int shrink);
/* The arena's size in bytes (0: none). */
size_t fp_arena_size(void);
/* The size used when the user sets none: RAM + swap (fp_shm_big_size), but
 * at most a quarter of RLIMIT_AS when that is finite (rounded down to whole
 * MiB), so that the rest of the limit stays for the heap and for records. */
size_t fp_arena_default_size(void);
/* Parse a size: decimal digits, optionally followed by one of K, M, G, T
 * (powers of 1024, either case, optionally followed by "B" or "iB").  FP_OK
 * and *out, or FP_ECORRUPT for anything else (or an overflow). */
int fp_shm_parse_size(const char *s, size_t *out);
/* Allocate len bytes (rounded up to pages), zeroed.  FP_OK and *out,
 * FP_ENOMEM (arena full or not made), FP_ESYS (not the arena's owner). */
int fp_arena_alloc(size_t len, void **out);
/* Free a block from fp_arena_alloc.  Does nothing in another process or for
 * an unknown pointer. */
void fp_arena_free(void *p);
/* Whether [p, p+len) lies inside the arena. */
int fp_arena_contains(const void *p, size_t len);

/* RAM plus swap, rounded up to a power of two, at least 1 GiB, at most
 * 1 TiB: the largest record a lane carries (a number, not a mapping: a
 * lane's big area grows on demand, see fp_ring.h) and the arena's default
 * size where address space is not limited. */
size_t fp_shm_big_size(void);

/* The size of each of n equal regions of one file (a pool's lanes' big
 * areas): fp_shm_big_size(), lowered (to whole pages) so that n regions
 * end below RLIMIT_FSIZE when that is finite. */
size_t fp_shm_region_size(size_t n);

/* The page size. */
size_t fp_shm_page(void);

FP_HIDDEN_END

#endif
