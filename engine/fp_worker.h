/*
 * fp_worker.h - the worker loop, run in a forked child.
 *
 * The child is a copy of the parent at the moment of fork, inside a C call
 * made from Lua: fp_worker_main takes over from there and never returns
 * (the parent's Lua frames below it must never run again in the child: every
 * error is caught inside, and the process leaves with _exit).
 */
#ifndef FP_WORKER_H
#define FP_WORKER_H

#include "fp_proto.h"
#include "fp_ring.h"
#include "fp_luajit.h"
#include <sys/types.h>

FP_HIDDEN_BEGIN

/*
 * Exit codes of a worker that leaves without a BYE record, because no
 * record can say why (one that says goodbye exits 0; os.exit in a task
 * leaves with the task's own code).  The parent reports every exit code
 * the same way ("exited with code N"): these only tell a reader of that
 * message where to look.  70 and 69 are taken by fp_proc.h
 * (FP_EXIT_ORPHANED: a child whose parent died before it became a worker;
 * FP_EXIT_FORK_LOCKED: a child that found the unwinder locked).
 */
enum fp_worker_exit {
  /* The parent is gone: this process was reparented, or the parent
   * exec()ed another program (its lifeline closed).  Nobody would read a
   * record. */
  FP_EXIT_PARENT_GONE = 71,
  /* A lane is unusable: a task record from the parent is malformed (short
   * header, unknown type, a bad ring), or this worker's own result lane's
   * shared header was scribbled on (by user code), so nothing it sends can
   * reach the parent.  The parent learns the rest from the lane. */
  FP_EXIT_CORRUPT = 72,
  /* An error report could not be encoded even stripped down to strings:
   * only a lack of memory does that. */
  FP_EXIT_ENCODE = 73,
  /* A Lua error escaped the worker loop outside any task (out of memory,
   * or a bug in forkpool): its message went to stderr. */
  FP_EXIT_INTERNAL = 74
};

typedef struct fp_worker_io {
  fp_lane tasks;     /* this worker consumes */
  fp_lane results;   /* this worker produces */
  fp_wstat *st;      /* this worker's status block (fp_proto.h) */
  fp_ctl *ctl;       /* the pool's control block (parent_sleeping) */
  int doorbell;      /* the pool's eventfd: rung after publishing when the
                        parent sleeps */
  pid_t parent;      /* the parent's pid before fork: a different getppid()
                        means it died */
} fp_worker_io;

/*
 * Run the worker.  ctx_idx is the stack index of the context table the Lua
 * layer builds when it spawns a worker.  The worker reads these fields (and
 * no others), once, at start:
 *   job          id of the job the worker is forked for (its fn, items and
 *                exit need no shipping)
 *   fn, items    that job's function and items table (array sources)
 *   init, exit   worker_init / worker_exit of that job (or nil)
 *   opts         that job's options for the runner (a table; shipped
 *                jobs bring theirs in SETUP's {fn=, exit=, opts=})
 *   pass_id, wid         pass the worker id (wid) as the first argument
 *   has_shared, shared   pass the shared objects next
 *   use_state            pass the worker-state table next
 *   lifespan     leave after this many items (or nil: never)
 *   idle_timeout leave after this many idle seconds (or nil: never)
 *   make_runner  builds the chunk runner (forkpool.run.make_runner)
 *   pack_results, unpack   the packed-chunk helpers (forkpool.pack)
 *   cdata_kind, cdata_new  the codec's cdata helpers (fp_codec.h's
 *                cdata_idx and cdata_new_idx)
 * (The binding that forks reads others, such as cpus, itself.)
 */
void fp_worker_main(lua_State *L, int ctx_idx, fp_worker_io *io)
    __attribute__((noreturn));

/* Test hook, set in the parent and inherited by workers forked afterwards:
 * a worker raises signal sig the after-th time it enters phase (an
 * enum fp_phase value).  sig 0 turns it off. */
void fp_worker_set_fault(uint32_t phase, int sig, int after);

FP_HIDDEN_END

#endif
