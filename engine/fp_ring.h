/*
 * fp_ring.h - a lane: one direction of a parent<->worker channel, in shared
 * memory.  Single producer, single consumer, no locks (a process that dies
 * mid-operation cannot leave a lock held).
 *
 * A lane is a byte ring of power-of-two capacity carrying records, plus a
 * "big area" that carries one record too large for the ring at a time.  The
 * big area is a region of a memfd (fp_shm_file): a file of its own made
 * with the lane (fp_lane_create), or a region of a file the caller shares
 * between lanes (fp_lane_create_at; a pool uses one file for all its
 * lanes, one fd in all).  Either way the file is made before fork, so both
 * sides hold it; the region starts empty and grows with the records it
 * carries.  Neither side reserves address space for it up front: each maps
 * a window on the start of the region, grown (mremap) to the records it has
 * seen, never past FP_LANE_BIG_KEEP except while it holds a larger record.
 *
 * Record layout in the ring: an 8-byte header {u32 len; u32 type} then len
 * payload bytes, padded to 8.  Records never wrap: when the contiguous space
 * before the end of the ring is too small, the producer writes a PAD record
 * to the end and starts again at offset 0.  A big record is a ring record
 * with FP_LANE_BIG set in type whose payload is {u64 len} and whose bytes
 * are at the start of the lane's region of the big area's file.
 *
 * Big records, by size n (FP_LANE_BIG_KEEP = 32 MiB):
 *   n <= KEEP  the producer reserves the region's pages (fallocate, so a
 *              full tmpfs or a strict overcommit limit is an error, not
 *              SIGBUS) and copies into its window; the pages stay allocated
 *              and mapped on both sides for the next record (no page
 *              faults, which cost ~10 us per 4 KiB page on some VMs).
 *   n > KEEP   the producer writes with pwrite (the kernel allocates the
 *              pages and reports ENOSPC/ENOMEM as an error), the consumer
 *              maps a window of n bytes while it holds the record; on
 *              release it punches the region beyond KEEP
 *              (FALLOC_FL_PUNCH_HOLE) and shrinks its window back.
 * So a lane keeps at most KEEP bytes of memory and of address space per
 * side, whatever it carried, and none once trimmed (fp_lane_trim_*: a
 * worker trims both its lanes after a second without work).
 *
 * Visibility: a record becomes visible to the consumer only when head moves
 * past it (store-release of head after the payload is written), so a process
 * that dies while writing never exposes a partial record.
 *
 * Shared fields, who writes them, and the barriers:
 *   head      producer; store-release after the record bytes; the consumer's
 *             load-acquire of head pairs with it.
 *   tail      consumer; store-release after it has finished reading; the
 *             producer's load-acquire of tail pairs with it (the producer
 *             never overwrites bytes the consumer may still read).
 *   head_seq  producer; bumped after every publish: futex word the consumer
 *             sleeps on.
 *   tail_seq  consumer; bumped after every release and every trim of its
 *             own: futex word the producer sleeps on when the ring or the
 *             big area is full.
 *   cons_waiting / prod_waiting: set by a side before it sleeps, cleared
 *             after; seq_cst so that either the sleeper sees the new
 *             head/tail or the other side sees the flag and wakes it
 *             (Dekker pattern).  The flag holds a tag of the seq value the
 *             sleeper waits on; the waker claims the wake-up by
 *             compare-exchanging it to 0, so one sleep costs at most one
 *             FUTEX_WAKE (fp_ring.c explains why no wake-up is lost).
 *   big_busy  FREE (0), HELD (1) or TRIM (2).  The producer moves it FREE
 *             -> HELD (compare-exchange) before writing a big record; the
 *             consumer sets FREE when it releases that record (after
 *             punching the region, if it does).  An idle lane's region is
 *             given back by either side moving FREE -> TRIM, punching, and
 *             setting FREE (fp_lane_trim_producer/_consumer).  While HELD
 *             after the record's publication only the consumer touches the
 *             region.
 *   big_trimmed  consumer sets 1 when its trim punched the region; the
 *             producer reads and clears it after its claim (big_busy's
 *             acquire/release orders both), and allocates again.
 *   cap, big_cap: written once by fp_lane_create before fork, read-only
 *             after; each side bounds-checks against its private copies in
 *             fp_lane, never against these.
 * The big area's file is not shared memory the consumer trusts either: it
 * checks a big record's length against its own big_cap and against the
 * file's size (fstat), so a garbage length can neither read outside its
 * window nor fault past the end of the file.
 */
#ifndef FP_RING_H
#define FP_RING_H

#include "fp_common.h"
#include <stdatomic.h>

FP_HIDDEN_BEGIN

#define FP_LANE_BIG   0x80000000u  /* type bit: payload lives in the big area */
#define FP_LANE_PAD   0x7fffffffu  /* internal filler record type */

/* Big records up to this size keep their pages and windows for the next
 * one; larger ones are written with pwrite and given back on release.  A
 * multiple of any page size. */
#define FP_LANE_BIG_KEEP ((size_t)32 << 20)

typedef struct fp_lane_hdr {
  _Alignas(64) _Atomic uint64_t head;
  _Atomic uint32_t head_seq;
  _Atomic uint32_t cons_waiting;
  _Alignas(64) _Atomic uint64_t tail;
  _Atomic uint32_t tail_seq;
  _Atomic uint32_t prod_waiting;
  _Alignas(64) _Atomic uint32_t big_busy;
  _Atomic uint32_t big_trimmed;
  uint64_t cap;       /* ring bytes, power of two */
  uint64_t big_cap;   /* big area bytes */
} fp_lane_hdr;

/* A process-local handle on a lane: pointers into the shared mappings and
 * the big area's fd.  Each side keeps its own copy (the ring pointers are
 * the same in both, since that mapping is made before fork; the windows are
 * each process's own). */
typedef struct fp_lane {
  fp_lane_hdr *h;
  unsigned char *ring;   /* h->cap bytes */
  int big_fd;            /* the big area's file, -1 when big_cap is 0 */
  int own_fd;            /* big_fd is the lane's own (closed by destroy) */
  uint64_t big_off;      /* where the lane's region starts in the file */
  /* Process-local state, never shared; each side touches only its own.
   * head/tail only grow, so a stale cache copied by fork is merely
   * pessimistic.  (A lane is reset only by destroy + create.) */
  uint64_t cap;          /* copies of h->cap and h->big_cap: garbage in the */
  uint64_t big_cap;      /* shared header cannot move the bounds we check */
  /* producer */
  uint64_t tail_cache;   /* last tail read */
  uint32_t space_seq;    /* tail_seq read before the last FP_EFULL */
  unsigned char *pwin;   /* read-write window on the region's [0, pwin_len) */
  size_t pwin_len;       /* page multiple, <= FP_LANE_BIG_KEEP; 0: none */
  size_t big_resv;       /* [0, big_resv) of the region is allocated */
  /* consumer */
  uint32_t peeked;       /* a peeked record awaits release */
  uint64_t head_cache;   /* last head read */
  uint64_t peek_next;    /* tail after the peeked record */
  uint64_t peek_big;     /* its big-area length, 0 if inline */
  const unsigned char *cwin;  /* read-only window on the region's [0, cwin_len) */
  size_t cwin_len;       /* page multiple; > cwin_keep only while a record */
  size_t cwin_keep;      /* larger than FP_LANE_BIG_KEEP is held */
  uint64_t big_size;     /* file size past big_off at the last fstat */
} fp_lane;

/* Largest payload that travels inline in a ring of capacity cap; larger
 * payloads use the big area. */
#define FP_LANE_INLINE_MAX(cap) ((cap) / 4)

/* Create a lane: header + ring in one shared mapping, and (when big_cap >
 * 0) an empty memfd for the big area.  big_cap is the largest record the
 * lane carries; it costs nothing until records use it, and is lowered to
 * RLIMIT_FSIZE when that is smaller.  ring_cap must be a power of two in
 * [4096, 2^32].  FP_OK or FP_ENOMEM (also for an invalid ring_cap; errno
 * tells a failed mmap or memfd_create). */
int fp_lane_create(fp_lane *l, size_t ring_cap, size_t big_cap);
/* The same with the big area at [off, off + big_cap) of the caller's file
 * fd (a memfd; off a page multiple), which the lane neither closes nor
 * punches: lanes sharing a file need disjoint regions, and the caller
 * gives a dead lane's memory back with fp_lane_discard_big.  big_cap is
 * lowered so that the region ends below RLIMIT_FSIZE; fd < 0: no big
 * area. */
int fp_lane_create_at(fp_lane *l, size_t ring_cap, size_t big_cap, int fd,
                      uint64_t off);
/* Punch the lane's whole region of its file: its memory goes back to the
 * kernel.  Only once neither side uses the lane any more (the worker is
 * dead), from one process.  For lanes made by fp_lane_create_at. */
void fp_lane_discard_big(fp_lane *l);
/* Give back the memory of the lane's region while the lane is idle (a
 * later big record allocates it again).  Call from the producer's or the
 * consumer's side, from the thread that sends or receives.  Returns 1 when
 * done (or there is no big area), 0 when a big record holds the area now
 * (try again later).  The windows stay mapped, without pages. */
int fp_lane_trim_producer(fp_lane *l);
int fp_lane_trim_consumer(fp_lane *l);
/* Unmap the ring and this process's windows, close the big area's fd if it
 * is the lane's own; the handle is zeroed with big_fd = -1.  Safe on a
 * zeroed or destroyed handle. */
void fp_lane_destroy(fp_lane *l);
/* Unmap only the header and ring (mapped once, by create), leaving the
 * windows and the fd alone: for a forked child dropping a lane whose
 * windows another thread of the parent may have been resizing at the
 * fork.  The handle is left unusable (h = NULL). */
void fp_lane_unmap_ring(fp_lane *l);

/* ---- producer side ---- */

/* Try to send one record without blocking.  Returns FP_OK, FP_EFULL (no
 * room in the ring, or the big area is still held by the consumer: call
 * again later), or FP_E2BIG (len > big_cap, or over RLIMIT_FSIZE now).
 * type must be < FP_LANE_PAD.  FP_ENOMEM: a big record found no memory
 * (tmpfs full, commit limit, or no address space for the window); nothing
 * was published and the lane stays usable.  FP_ECORRUPT: type is invalid,
 * or the shared tail is impossible (the consumer wrote garbage).
 * After FP_OK, *must_wake says whether the consumer is sleeping on head_seq
 * and this call claimed its wake-up: the caller must then call
 * fp_lane_wake_consumer (no later send will report it again).  With
 * must_wake NULL the call wakes the consumer itself. */
int fp_lane_try_send(fp_lane *l, uint32_t type, const void *payload,
                     size_t len, int *must_wake);

/* Same, but a payload given as two pieces (a small header and a body), so a
 * caller can prepend a fixed header to an encoded buffer without copying. */
int fp_lane_try_send2(fp_lane *l, uint32_t type, const void *a, size_t alen,
                      const void *b, size_t blen, int *must_wake);

/* Sleep until the consumer releases something (tail_seq moves) or
 * timeout_ms passes (-1: no limit).  FP_OK (woken or spurious: retry the
 * send), FP_ETIMEOUT, FP_EINTR, or FP_ESYS (the futex call failed
 * otherwise).  Call it after a send returned
 * FP_EFULL: it returns at once if anything was released since then. */
int fp_lane_wait_space(fp_lane *l, int timeout_ms);

/* FUTEX_WAKE the consumer. */
void fp_lane_wake_consumer(fp_lane *l);

/* ---- consumer side ---- */

/* Look at the oldest record without removing it.  FP_OK with *type (the
 * FP_LANE_BIG bit cleared), *payload and *len (pointing into the ring or
 * this process's read-only window on the big area, valid until
 * fp_lane_release), or FP_EEMPTY, or FP_ECORRUPT (the header is impossible:
 * the producer wrote garbage), or FP_ENOMEM (a big record cannot be mapped:
 * no address space; it stays in the lane). */
int fp_lane_peek(fp_lane *l, uint32_t *type, const unsigned char **payload,
                 size_t *len);

/* Remove the record returned by the last fp_lane_peek.  Returns whether the
 * producer is sleeping and this call claimed its wake-up: the caller must
 * then call fp_lane_wake_producer. */
int fp_lane_release(fp_lane *l);

/* Sleep until a record is published (head_seq moves) or timeout_ms passes
 * (-1: no limit).  FP_OK, FP_ETIMEOUT, FP_EINTR or FP_ESYS.  Both waits poll for a
 * few microseconds before they sleep (FP_LANE_SPIN_NS in fp_ring.c). */
int fp_lane_wait_data(fp_lane *l, int timeout_ms);

/* FUTEX_WAKE the producer. */
void fp_lane_wake_producer(fp_lane *l);

/* Bytes published and not yet released (for tests and insights). */
size_t fp_lane_used(const fp_lane *l);

FP_HIDDEN_END

#endif
