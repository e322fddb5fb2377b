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

typedef struct fp_worker_io {
  fp_lane tasks;     /* this worker consumes */
  fp_lane results;   /* this worker produces */
  fp_wstat *st;
  fp_ctl *ctl;
  int doorbell;      /* the pool's eventfd: rung after publishing when the
                        parent sleeps */
  pid_t parent;
} fp_worker_io;

/*
 * Run the worker.  ctx_idx is the stack index of the context table built by
 * the Lua layer (lua/forkpool/init.lua, spawn_worker):
 *   wid, job, fn, items, init, exit, shared (or nil), use_state, pass_id,
 *   lifespan (or nil), make_runner (forkpool.worker.make_runner),
 *   cdata_kind, cdata_new (codec helpers).
 */
void fp_worker_main(lua_State *L, int ctx_idx, fp_worker_io *io)
    __attribute__((noreturn));

/* Test hook, set in the parent and inherited by workers forked afterwards:
 * a worker raises signal sig the after-th time it enters phase (an
 * enum fp_phase value).  sig 0 turns it off. */
void fp_worker_set_fault(uint32_t phase, int sig, int after);

FP_HIDDEN_END

#endif
