/*
 * fp_events.h - what a pool's poll reports: the records of the workers'
 * result lanes and the deaths of their processes, turned into events (Lua
 * values on the stack).  The event tuples are listed above l_poll in
 * fp_lua.c, the Lua-facing contract.
 */
#ifndef FP_EVENTS_H
#define FP_EVENTS_H

#include "fp_pool.h"
#include "fp_luajit.h"

FP_HIDDEN_BEGIN

/* Values pushed for an event about a worker: kind, wid, job, start, count,
 * index, value (see l_poll in fp_lua.c for each kind's value). */
#define FP_EVENT_VALUES 7

/*
 * Wait up to timeout seconds (negative: no limit; 0: only look) for the
 * next event of pool p and push it.  pool_idx: the pool's userdata (its
 * environment holds the codec helpers); jobs_idx: the table job id ->
 * a results table, or true for a fresh array per chunk.  Returns the number of values pushed (>= 1; "timeout",
 * "interrupted" and "eintr" are events too), or FP_ESYS (errno set) with
 * nothing pushed when poll() failed.
 */
int fp_events_poll(lua_State *L, fp_pool *p, int pool_idx, int jobs_idx, double timeout);

/* "start", "worker_init", "idle", "decode", "task", "encode", "worker_exit"
 * for an enum fp_phase value ("unknown" otherwise); static storage. */
const char *fp_phase_name(uint32_t phase);

FP_HIDDEN_END

#endif
