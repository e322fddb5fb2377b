/*
 * fp_pool.h - the engine side of a pool, as the parent holds it: the
 * structs fp_lua.c (the userdata), fp_events.c (what poll reports) and
 * fp_proc.c (the pool's worker processes) share, and the operations on a
 * pool's processes and memory (defined in fp_proc.c).
 *
 * A pool owns, in the parent:
 *   ctl        one shared page (fp_ctl) seen by every worker;
 *   stats      one shared array of fp_wstat, one per worker slot;
 *   doorbell   an eventfd workers write when they publish while the parent
 *              sleeps;
 *   bigfd      one memfd holding every lane's big area, each lane its own
 *              region (fp_lane_create_at): lane 2i + d of slot i, d = 0 for
 *              tasks and 1 for results, starts at (2i + d) * big_cap.  One
 *              fd for the pool, not one per lane (RLIMIT_NOFILE);
 *   slots[i]   per worker: pid, pidfd, and two lanes (tasks, results) that
 *              are created anew for every process spawned into the slot.
 */
#ifndef FP_POOL_H
#define FP_POOL_H

#include "fp_common.h"
#include "fp_proto.h"
#include "fp_reply.h"
#include "fp_ring.h"
#include <poll.h>
#include <sched.h>
#include <sys/types.h>

FP_HIDDEN_BEGIN

/*
 * One worker slot.  Invariant: pid != 0 means a live or not-yet-reaped
 * process with an open pidfd, and mapped lanes; pid == 0 means pidfd == -1,
 * dead == corrupt == 0 and an empty sent queue (fp_slot_forget).  Lanes may
 * stay mapped after the process is forgotten (poll may still drain them);
 * the next spawn into the slot remaps them.
 */
typedef struct fp_slot {
  pid_t pid;
  int pidfd;
  int dead;          /* pidfd became readable: report once its lane is drained */
  int corrupt;       /* its result lane or a record was corrupted: the process
                        was killed, its lane is never read again; poll
                        reports only its exit */
  fp_lane tasks, results;
  fp_sentq sent;     /* chunks sent to the process, not answered yet
                        (fp_reply.h); emptied when it is forgotten */
} fp_slot;

/*
 * A pool.  Created closed (closed = 1, fds -1), then opened; closed again
 * by fp_pool_release, which works on a half-built pool.  Only the process
 * that created it (owner) may act on it: a worker holds a copy of the
 * struct and must never drive it (its owner is set to 0 in the worker).
 * Every fd it opens (doorbell, bigfd, pidfds) is tracked (fp_proc.h), so a
 * worker of another pool never holds it.
 */
typedef struct fp_pool {
  pid_t owner;
  uintptr_t vm;              /* the Lua state (its registry's address) that
                                made it: pools of one state are driven by one
                                thread at a time (pools_forget) */
  int closed;
  int n;                     /* worker slots */
  fp_ctl *ctl;
  fp_wstat *stats;
  size_t stats_len;
  int doorbell;
  fp_slot *slots;
  struct pollfd *pfds;       /* poll's scratch: n + 1 entries (the doorbell, */
  int *pfd_slot;             /* then one pidfd per live slot: its index, -1) */
  fp_buf enc;                /* encoding scratch for the records sent */
  size_t ring_cap, big_cap;  /* big_cap: also the stride of the regions */
  int bigfd;
  int rr;                    /* the slot poll looks at first (round robin) */
  fp_buf dec, dec_scratch;   /* private copies of packed result bodies (fp_packed.h) */
  struct fp_pool *next_live; /* the registry of live pools (fp_pools_add) */
  int close_fds;             /* close_fds option: close inherited fds in workers */
  int *keep_fds, nkeep_fds;  /* ... but these (the option's list; room for 3
                                more, the engine's own, so a child need not
                                allocate) */
} fp_pool;

/* ---- the registry of this process's live pools (fp_proc.c) ----
 * A worker is forked with every mapping of its process: without the
 * registry, a worker of pool B would keep pool A's lanes, control page and
 * stats mapped (A's memory outlives A:close() while B lives, and B's
 * workers could write into A's lanes).  The child unmaps every pool but its
 * own (fp_pool_child_setup), and the last pool removed closes the lifeline
 * (fp_proc.h). */
void fp_pools_add(fp_pool *p);
void fp_pools_remove(fp_pool *p);

/* ---- slots ---- */

/* The slot's process is gone (reaped) or never was: close its pidfd and
 * forget its chunks.  The lanes stay mapped. */
void fp_slot_forget(fp_slot *s);
/* Unmap a slot's lanes.  discard: also give their big areas' memory back
 * (the owner, once the slot's process is gone; never a worker, for which
 * the other slots' lanes are live). */
void fp_slot_unmap(fp_slot *s, int discard);

/* Before a spawn into empty slot w: fresh lanes and zeroed stats.  FP_OK,
 * or an error (errno set) with the slot's lanes unmapped. */
int fp_pool_slot_open(fp_pool *p, int w);

/*
 * Fork the process of slot w (after fp_pool_slot_open).  pin: the CPUs to
 * pin it to, or NULL.
 * Parent: FP_OK with *pid > 0, the slot holding pid and pidfd, the child
 *   pinned already (so it is by the time spawn returns, whichever process
 *   the scheduler runs first); or an error (FP_ESYS with errno) with no
 *   child and the slot's lanes unmapped.
 * Child: FP_OK with *pid == 0, signals still blocked: call
 *   fp_pool_child_setup next, then run the worker loop, never Lua code of
 *   the parent's.
 */
int fp_pool_fork(fp_pool *p, int w, const cpu_set_t *pin, pid_t *pid);

/*
 * In the child of fp_pool_fork, slot w: drop the other slots' lanes and
 * every other pool (fp_pools_add); of forkpool's fds keep only this pool's
 * doorbell and big-area file, and with the close_fds option close every
 * inherited fd but 0-2 and the listed ones; reset signals
 * (fp_proc_child_init), record last words in the slot's stats, pin to pin
 * (NULL: no pinning).  parent: the parent's pid, read before fork.  This
 * copy of the pool is not the child's to drive: its owner becomes 0.
 * FP_OK, or FP_ESYS (errno ESRCH) when the parent died before the child was
 * set up: the caller leaves with _exit(FP_EXIT_ORPHANED).
 */
int fp_pool_child_setup(fp_pool *p, int w, pid_t parent, const cpu_set_t *pin);

/* Kill and reap every live worker, unmap and close everything.  Idempotent;
 * safe on a half-built pool. */
void fp_pool_release(fp_pool *p);

FP_HIDDEN_END

#endif
