/*
 * fp_proto.h - what travels between the parent and a worker: message types,
 * their fixed headers, and the shared status blocks.
 *
 * Every CHUNK the parent sends gets exactly one reply (RESULTS, CHUNK_ERROR
 * or CANCELLED) carrying the same (job, start, count), so the
 * parent always knows how many chunks each worker still holds.
 */
#ifndef FP_PROTO_H
#define FP_PROTO_H

#include <stdatomic.h>
#include <stdint.h>

enum fp_msg {
  /* parent -> worker */
  FP_M_SETUP   = 1,  /* fp_setup_hdr, then an encoded table {fn=, exit=, opts=} */
  FP_M_CHUNK   = 2,  /* fp_chunk_hdr, then count encoded items unless FP_CHUNK_INHERITED */
  FP_M_STOP    = 3,  /* leave: run worker_exit (if it ran a task), send BYE, exit */

  /* worker -> parent */
  FP_M_RESULTS       = 10, /* fp_chunk_hdr, then count encoded results */
  FP_M_CHUNK_ERROR   = 11, /* fp_chunk_hdr (index = the failing item), encoded error table
                              {kind=, message=, ...}: kind names the forkpool error
                              ("task": the task raised, with traceback= and value=;
                              "marshal": an item or result cannot travel, with path=).
                              (12 was MARSHAL_ERROR, now a kind.) */
  FP_M_CANCELLED     = 13, /* fp_chunk_hdr: chunk not run (its job was cancelled) */
  FP_M_INIT_ERROR    = 14, /* encoded error table from worker_init */
  FP_M_EXIT_RESULT   = 15, /* encoded value returned by worker_exit */
  FP_M_EXIT_ERROR    = 16, /* encoded error table from worker_exit */
  FP_M_BYE           = 17, /* fp_bye: the worker exits right after this */
  FP_M_SETUP_ERROR   = 18, /* fp_chunk_hdr (job), encoded {message=} : a SETUP could not be decoded */
  FP_M_READY         = 19  /* worker_init (if any) finished: the worker takes chunks now */
};

#define FP_CHUNK_INHERITED 0x1u /* items are in the worker's memory (forked during this job) */
/* 0x2 and 0x4 were TIMED and STAR: per-job options now travel with the
 * job's function (SETUP's opts, the fork context's opts). */
#define FP_CHUNK_PACKED    0x8u /* CHUNK items / RESULTS values are packed by Lua (raw
                                   doubles, or a string.buffer encoding of an array of
                                   scalars): lua/forkpool/pack.lua */
#define FP_CHUNK_LINES     0x10u /* CHUNK items are count lines of text, each ending in
                                    "\n" except perhaps the last: read from a file by
                                    the parent without making a string per line
                                    (lua/forkpool/lines.lua); the worker cuts them */

/* RESULTS index of a chunk run item by item with its errors caught (the
 * runner's per-item mode, lua/forkpool/run.lua: batched apply_async calls)
 * when some item failed: every result is tagged, {value} or {e = error}. */
#define FP_RESULTS_TAGGED (-1)
/* RESULTS index of a chunk of a map_reduce job (the runner's reduce mode,
 * lua/forkpool/run.lua): the body holds one value, the chunk's results
 * folded by the job's reducer in item order, not count of them. */
#define FP_RESULTS_REDUCED (-2)

/* Header of CHUNK and of every chunk reply.  start/index are 1-based item
 * indexes of the job's input.  fn names the function to run: the job id
 * the worker was forked for (its function came through fork), or an id
 * installed by a SETUP. */
typedef struct fp_chunk_hdr {
  uint64_t job;
  uint64_t fn;
  int64_t start;
  int64_t index;   /* replies: the item an error is about; 0 otherwise, or
                      FP_RESULTS_TAGGED or FP_RESULTS_REDUCED on a RESULTS
                      record */
  uint32_t count;
  uint32_t flags;
} fp_chunk_hdr;

/* Header of SETUP: install the encoded {fn=, exit=} under id; forget the
 * function installed under drop (0: none).  A chunk naming id runs fn, and
 * makes exit the worker_exit this worker runs when it stops. */
typedef struct fp_setup_hdr {
  uint64_t id;
  uint64_t drop;
} fp_setup_hdr;

enum fp_bye_reason { FP_BYE_STOP = 1, FP_BYE_LIFESPAN = 2, FP_BYE_INIT_FAILED = 3 };
typedef struct fp_bye { uint32_t reason; uint32_t pad; } fp_bye;

/* What a worker is doing, for error reports (and later timeouts/insights). */
enum fp_phase {
  FP_PH_START = 0, FP_PH_INIT = 1, FP_PH_IDLE = 2, FP_PH_DECODE = 3,
  FP_PH_TASK = 4, FP_PH_ENCODE = 5, FP_PH_EXIT = 6
};

/*
 * Per-pool control block, shared by the parent and all its workers.
 *   parent_sleeping: parent sets 1 (seq_cst) before it re-checks the result
 *     lanes and sleeps in poll(); a worker that publishes a result reads it
 *     (seq_cst) and, when 1, writes the pool's doorbell eventfd.  Either the
 *     parent sees the new record or the worker sees the flag.
 */
typedef struct fp_ctl {
  _Alignas(64) _Atomic uint32_t parent_sleeping;
} fp_ctl;

/*
 * Per-worker status block.  Written by the worker unless noted; the parent
 * reads it after the worker died (what it was doing) and while it runs.
 *   cur_index: 1-based input index of the item being run, 0 when none.  The
 *     worker's Lua chunk runner stores it through the FFI before each item.
 *   phase_ns: monotonic time the current phase began (timeouts of
 *     worker_init / worker_exit).
 *   item_ns: monotonic time the current item began; stamped by the runner
 *     only for jobs whose options say timed (task_timeout, insights).
 *   fatal_signal / exit_code: last words, for hosts that reap our children
 *     themselves (SIGCHLD ignored): the worker's fatal-signal handler stores
 *     the signal just before dying, os.exit stores its code just before
 *     _exit.  0 / -1 when unset.
 *   cancel_job: written by the parent; the runner stops before the next item
 *     when it equals the running chunk's job.
 */
typedef struct fp_wstat {
  _Alignas(64) _Atomic int64_t cur_index;
  _Atomic uint64_t cur_job;
  _Atomic uint32_t phase;
  _Atomic uint64_t items_done;
  _Atomic uint64_t phase_ns;
  _Atomic uint64_t item_ns;
  _Atomic int32_t fatal_signal;
  _Atomic int32_t exit_code;
  _Alignas(64) _Atomic uint64_t cancel_job;
  /* Insights (written by the worker; start_ns by the parent at spawn):
   * durations in ns, slow[] the five slowest items of timed chunks,
   * slowest first (index 0 = unused). */
  _Alignas(64) _Atomic uint64_t start_ns;
  _Atomic uint64_t ready_ns, init_ns, exit_ns, wait_ns, work_ns;
  struct fp_slow {
    _Atomic int64_t index;
    _Atomic uint64_t job, dur_ns;
  } slow[5];
} fp_wstat;

#endif
