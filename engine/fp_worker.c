/*
 * fp_worker.c - the worker loop, run in a forked child.
 *
 * The child continues from inside the C call that forked it, on top of a
 * copy of the parent's Lua stack.  It switches to a fresh Lua thread (so
 * tracebacks start at the task, not at the parent's frames), runs everything
 * inside lua_cpcall (so no error can unwind into the parent's frames), and
 * leaves with _exit (so the parent's atexit handlers and copied stdio
 * buffers are never run or flushed here).
 *
 * Loop: wait for a record on the task lane; SETUP installs a shipped
 * function for a job; CHUNK runs the job's function over a slice of items
 * through the Lua chunk runner (lua/forkpool/run.lua) and replies with
 * exactly one record; STOP runs worker_exit and leaves.  A chunk goes
 * through one step per concern (w_chunk): function lookup, item decoding,
 * running, replying, lifespan.
 *
 * A worker that cannot report in a record why it leaves exits with one of
 * the FP_EXIT_* codes of fp_worker.h.
 */
#include "fp_worker.h"

#include "fp_codec.h"
#include "fp_proc.h"
#include "fp_luajit.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Stack slots of the worker thread (W->L), fixed for the worker's life. */
#define S_CTX      1  /* context table from the Lua layer */
#define S_JOBS     2  /* job id -> {fn, exit, opts} shipped with SETUP */
#define S_STATE    3  /* worker_state table */
#define S_RUNNER   4  /* chunk runner made by forkpool.run.make_runner */
#define S_MSGH     5  /* error handler building {message, traceback, value} */
#define S_CKIND    6  /* codec helper: cdata kind */
#define S_CNEW     7  /* codec helper: new boxed integer or shared pointer */
#define S_REQUIRE  8  /* require, for module references */
#define S_FN       9  /* the function of the job the worker was forked for */
#define S_ITEMS   10  /* that job's items (inherited through fork) */
#define S_INIT    11  /* that job's worker_init */
#define S_EXIT    12  /* the worker_exit that runs when this worker leaves */
#define S_BEXIT   13  /* the worker_exit of the job we were forked for */
#define S_PACK    14  /* forkpool.pack.results (packed chunks) */
#define S_UNPACK  15  /* forkpool.pack.unpack */
#define S_OPTS    16  /* the running job's options for the runner ({} when none) */
#define S_LEAD1   17  /* leading arguments: worker id, shared objects, state */
#define S_NSLOTS  19

/* How long one wait sleeps before re-checking that the parent lives (the
 * parent-death signal normally kills us first). */
#define FP_WORKER_WAIT_MS 1000

typedef struct W {
  lua_State *L;
  fp_worker_io *io;
  fp_buf enc;            /* encode buffer, reused */
  uint64_t born_job;     /* items and function of this job are in our memory */
  int nlead;
  double lifespan;       /* 0: unlimited */
  double idle_s;         /* idle_timeout: leave after this long idle; 0: never */
  uint64_t items_done;   /* items run (success or not) */
  /* The identities of the doorbell and the big-area file at start: a task
   * may close every fd >= 3 (and open files that get their numbers).
   * Checked after user code runs; once lost, the worker never touches
   * those fds again (no doorbell write into a user's file, no big record),
   * sends what fits inline and retires: its exit wakes the parent through
   * the pidfd, so nothing waits for a doorbell that cannot ring.  (All
   * eventfds share one anonymous inode: an eventfd of the task's own at
   * the doorbell's number passes the check; a file, pipe or socket does
   * not.) */
  fp_fd_id bell_id, big_id;
  int fds_lost;
  /* Results encoded as they come (w_put): the running chunk's first item
   * index and size, how many of its results out[1..enc_done] are already
   * in enc, and the first that could not be encoded (enc_rc != FP_OK: item
   * enc_bad, enc_err; nothing more is encoded for the chunk after it). */
  int64_t chunk_start;
  uint32_t chunk_count, enc_done;
  int enc_rc;
  int64_t enc_bad;
  fp_codec_err enc_err;
} W;

static fp_wstat *w_stat; /* for os.exit's last words */

/* Fault injection for tests (see fp_worker_set_fault). */
static uint32_t fault_phase;
static int fault_sig, fault_after;

void fp_worker_set_fault(uint32_t phase, int sig, int after) {
  fault_phase = phase;
  fault_sig = sig;
  fault_after = after;
}

/* The item stamped last (timed chunks), to time it when the next begins. */
static int64_t stamp_idx;
static uint64_t stamp_job, stamp_ns;

/* Keep the five slowest items, slowest first (insights). */
static void w_note_duration(int64_t index, uint64_t job, uint64_t dur) {
  struct fp_slow *s = w_stat->slow;
  if (dur <= atomic_load_explicit(&s[4].dur_ns, memory_order_relaxed) &&
      atomic_load_explicit(&s[4].index, memory_order_relaxed))
    return;
  int at = 4;
  while (at > 0 && (!atomic_load(&s[at - 1].index) || atomic_load(&s[at - 1].dur_ns) < dur)) at--;
  for (int i = 4; i > at; i--) {
    atomic_store(&s[i].index, atomic_load(&s[i - 1].index));
    atomic_store(&s[i].job, atomic_load(&s[i - 1].job));
    atomic_store(&s[i].dur_ns, atomic_load(&s[i - 1].dur_ns));
  }
  atomic_store(&s[at].index, index);
  atomic_store(&s[at].job, job);
  atomic_store(&s[at].dur_ns, dur);
}

/* Close the timing of the item stamped last (at a stamp or a chunk's end). */
static void w_stamp_close(uint64_t now) {
  if (stamp_idx) w_note_duration(stamp_idx, stamp_job, now - stamp_ns);
  stamp_idx = 0;
}

/* Called by the chunk runner through the FFI before each item of a timed
 * chunk (task_timeout or insights): when this item began. */
static void w_stamp_item(void) {
  uint64_t now = fp_now_ns();
  w_stamp_close(now);
  stamp_idx = atomic_load_explicit(&w_stat->cur_index, memory_order_relaxed);
  stamp_job = atomic_load_explicit(&w_stat->cur_job, memory_order_relaxed);
  stamp_ns = now;
  atomic_store_explicit(&w_stat->item_ns, now, memory_order_relaxed);
}

/* Test hook: die by the armed signal on the armed entry into phase ph. */
static void w_fault(uint32_t ph) {
  if (fault_sig && ph == fault_phase && --fault_after == 0) raise(fault_sig);
}

/* Enter a phase, stamping when it began (the parent's timeouts read it). */
static void w_phase(W *w, uint32_t ph) {
  atomic_store(&w->io->st->phase_ns, fp_now_ns());
  atomic_store(&w->io->st->phase, ph);
  w_fault(ph);
}

/* Free the task record just read; wake the parent if it claimed a sleep
 * (it never sleeps on this lane today, but the lane's contract says so). */
static void w_release_task(fp_worker_io *io) {
  if (fp_lane_release(&io->tasks)) fp_lane_wake_producer(&io->tasks);
}


/* ---- leaving and sending ---- */

static void w_exit_now(int code) __attribute__((noreturn));
static void w_exit_now(int code) {
  fflush(NULL);
  _exit(code);
}

/* After user code: are the doorbell and the big-area file still ours? */
static void w_check_fds(W *w) {
  if (w->fds_lost) return;
  if (fp_fd_id_same(w->io->doorbell, &w->bell_id) &&
      (w->io->results.big_fd < 0 || fp_fd_id_same(w->io->results.big_fd, &w->big_id)))
    return;
  w->fds_lost = 1;
  fprintf(stderr, "forkpool worker %d: user code closed or replaced forkpool's file "
                  "descriptors; the worker retires\n", (int)getpid());
}

/* Leave when the parent is gone: died (reparented) or exec()ed another
 * program (its lifeline's write end closed on exec).  Without flushing:
 * whoever reads our output may be gone with it. */
static void w_check_parent(W *w) {
  if (getppid() != w->io->parent || fp_proc_parent_gone()) _exit(FP_EXIT_PARENT_GONE);
}

/* Publish a record on the result lane, sleeping while it is full.  Returns
 * FP_OK or FP_E2BIG (the record can never fit). */
static int w_send2(W *w, uint32_t type, const void *a, size_t alen,
                   const void *b, size_t blen) {
  fp_worker_io *io = w->io;
  if (w->fds_lost && alen + blen > FP_LANE_INLINE_MAX(io->results.cap)) {
    errno = EBADF; /* it would need the big area's file */
    return FP_ESYS;
  }
  for (;;) {
    int wake = 0;
    int rc = fp_lane_try_send2(&io->results, type, a, alen, b, blen, &wake);
    if (rc == FP_OK) {
      if (wake) fp_lane_wake_consumer(&io->results);
      /* Pairs with the parent's fence between setting parent_sleeping and
       * re-checking the lanes: either it sees our record or we see its flag. */
      atomic_thread_fence(memory_order_seq_cst);
      if (!w->fds_lost &&
          atomic_load_explicit(&io->ctl->parent_sleeping, memory_order_relaxed)) {
        uint64_t one = 1;
        ssize_t n = write(io->doorbell, &one, sizeof one);
        (void)n; /* EAGAIN means the counter is already non-zero: awake */
      }
      return FP_OK;
    }
    /* Our own lane's shared header is garbage (user code scribbled on
     * it): nothing we send can reach the parent, which learns of it from
     * our exit (and, reading the lane, reports the corruption). */
    if (rc == FP_ECORRUPT) w_exit_now(FP_EXIT_CORRUPT);
    if (rc != FP_EFULL) return rc;
    w_check_parent(w);
    fp_lane_wait_space(&io->results, FP_WORKER_WAIT_MS);
  }
}

/* ---- Lua helpers ---- */

/* Message handler: turns any error value into {message=, traceback=, value=}. */
static int w_msgh(lua_State *L) {
  lua_settop(L, 1);
  lua_createtable(L, 0, 3);                      /* 2: error table */
  lua_pushvalue(L, 1);
  lua_setfield(L, 2, "value");
  if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) {
    lua_pushvalue(L, 1);
    lua_tostring(L, -1);
  } else if (!luaL_callmeta(L, 1, "__tostring") || !lua_isstring(L, -1)) {
    lua_settop(L, 2);
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }                                              /* 3: message */
  lua_pushvalue(L, 3);
  lua_setfield(L, 2, "message");
  luaL_traceback(L, L, NULL, 1);
  lua_setfield(L, 2, "traceback");
  lua_settop(L, 2);
  return 1;
}

/* os.exit in a worker: flush the worker's own output, skip atexit handlers. */
static int w_os_exit(lua_State *L) {
  int code;
  if (lua_isnoneornil(L, 1)) code = EXIT_SUCCESS;
  else if (lua_isboolean(L, 1)) code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else code = (int)luaL_checkinteger(L, 1);
  if (w_stat) atomic_store(&w_stat->exit_code, code & 0xff);
  w_exit_now(code);
}

/* Workers send no functions (FP_ENC_FUNCTIONS unset) and no module
 * references (no modmap); cdata go through the cdata_kind helper. */
static void w_enc_opts(fp_enc_opts *o) {
  o->flags = 0;
  o->modmap_idx = 0;
  o->cdata_idx = S_CKIND;
}

/* Encode the value on top of the stack into w->enc (reset first); on a
 * marshal error, encode {message=<path: msg>} instead and return FP_EMARSHAL.
 * Pops the value. */
static int w_encode_top(W *w, const char *root) {
  lua_State *L = w->L;
  fp_enc_opts o;
  fp_codec_err err;
  w_enc_opts(&o);
  w->enc.len = 0;
  int rc = fp_encode_value(L, lua_gettop(L), &w->enc, &o, root, &err);
  lua_pop(L, 1);
  if (rc == FP_OK) return FP_OK;
  lua_createtable(L, 0, 2);
  if (rc == FP_EMARSHAL) {
    lua_pushfstring(L, "%s: %s", err.path, err.msg);
    lua_setfield(L, -2, "message");
    lua_pushstring(L, err.path);
    lua_setfield(L, -2, "path");
  } else {
    lua_pushfstring(L, "%s: %s", root, fp_strerror(rc));
    lua_setfield(L, -2, "message");
  }
  w->enc.len = 0;
  if (fp_encode_value(L, lua_gettop(L), &w->enc, &o, "error", &err) != FP_OK)
    w_exit_now(FP_EXIT_ENCODE); /* a table of two strings always encodes */
  lua_pop(L, 1);
  return FP_EMARSHAL;
}

/* Encode an error table (top of stack, from w_msgh, or a message string)
 * and pop it; kind (a forkpool error kind, e.g. "task", "marshal"; NULL:
 * none) is stored in it as kind=, which the parent raises for a
 * CHUNK_ERROR.  An error value that cannot travel is replaced by its
 * message. */
static void w_encode_error(W *w, const char *kind) {
  lua_State *L = w->L;
  fp_enc_opts o;
  fp_codec_err err;
  w_enc_opts(&o);
  w->enc.len = 0;
  int top = lua_gettop(L);
  if (!lua_istable(L, top)) {
    lua_createtable(L, 0, 1);
    lua_insert(L, top);
    lua_setfield(L, top, "message");
  }
  if (kind) {
    lua_pushstring(L, kind);
    lua_setfield(L, top, "kind");
  }
  if (fp_encode_value(L, top, &w->enc, &o, "error", &err) != FP_OK) {
    lua_pushnil(L);
    lua_setfield(L, top, "value");
    w->enc.len = 0;
    if (fp_encode_value(L, top, &w->enc, &o, "error", &err) != FP_OK)
      w_exit_now(FP_EXIT_ENCODE);
  }
  lua_settop(L, top - 1);
}

/* Push the leading arguments (worker id, shared objects, worker state as
 * enabled) and return how many. */
static int w_push_lead(W *w) {
  for (int i = 0; i < w->nlead; i++) lua_pushvalue(w->L, S_LEAD1 + i);
  return w->nlead;
}

/* ---- leaving ---- */

/* Run worker_exit (if this worker ran anything and has one), send its
 * result or error, say BYE with reason, exit 0. */
static void w_finish(W *w, uint32_t reason) __attribute__((noreturn));
static void w_finish(W *w, uint32_t reason) {
  lua_State *L = w->L;
  if (w->items_done > 0 && !lua_isnil(L, S_EXIT)) {
    w_phase(w, FP_PH_EXIT);
    lua_pushvalue(L, S_EXIT);
    int n = w_push_lead(w);
    uint64_t t0 = fp_now_ns();
    int st = lua_pcall(L, n, 1, S_MSGH);
    atomic_store(&w->io->st->exit_ns, fp_now_ns() - t0);
    w_check_fds(w);
    if (st == 0) {
      int rc = w_encode_top(w, "exit result");
      w_send2(w, rc == FP_OK ? FP_M_EXIT_RESULT : FP_M_EXIT_ERROR, NULL, 0,
              w->enc.p, w->enc.len);
    } else {
      w_encode_error(w, NULL);
      w_send2(w, FP_M_EXIT_ERROR, NULL, 0, w->enc.p, w->enc.len);
    }
  }
  fp_bye bye = {.reason = reason, .pad = 0};
  w_send2(w, FP_M_BYE, &bye, sizeof bye, NULL, 0);
  w_exit_now(0);
}

/* ---- replying to a chunk ---- */

/* Send the reply record of chunk h: its header with index and flags set,
 * then body.  A body that cannot be sent becomes a "marshal" CHUNK_ERROR
 * saying why. */
static void w_reply_raw(W *w, uint32_t type, const fp_chunk_hdr *h, int64_t index,
                        uint32_t flags, const void *body, size_t blen) {
  fp_chunk_hdr r = *h;
  r.index = index;
  r.flags = flags;
  int rc = w_send2(w, type, &r, sizeof r, body, blen);
  if (rc != FP_OK) {
    r.flags = 0;
    /* The encoded results exceed even the big area (E2BIG), or no memory
     * could hold them (ENOMEM: tmpfs or commit limit): say so instead. */
    lua_createtable(w->L, 0, 1);
    lua_pushfstring(w->L, "result of item %d: %s (%f bytes)", (int)h->start,
                    rc == FP_E2BIG    ? "too large to send"
                    : rc == FP_ENOMEM ? "cannot be sent: out of shared memory"
                    : w->fds_lost     ? "cannot be sent: the task closed forkpool's file "
                                        "descriptors (see the close_fds option)"
                                      : "cannot be sent",
                    (double)blen);
    lua_setfield(w->L, -2, "message");
    w_encode_error(w, "marshal");
    w_send2(w, FP_M_CHUNK_ERROR, &r, sizeof r, w->enc.p, w->enc.len);
  }
}

/* Reply with what w->enc holds. */
static void w_reply(W *w, uint32_t type, const fp_chunk_hdr *h, int64_t index) {
  w_reply_raw(w, type, h, index, 0, w->enc.p, w->enc.len);
}

/* A chunk that could not run: a CHUNK_ERROR of that kind with {message =
 * <the string on top>}, at the chunk's first item; the stack goes back to
 * base. */
static void w_reply_failure(W *w, const char *kind, const fp_chunk_hdr *h, int base) {
  lua_State *L = w->L;
  lua_createtable(L, 0, 1);
  lua_insert(L, -2);
  lua_setfield(L, -2, "message");
  lua_replace(L, base + 1);
  lua_settop(L, base + 1);
  w_encode_error(w, kind);
  w_reply(w, FP_M_CHUNK_ERROR, h, h->start);
}

/* Results of a chunk that are all scalars: one string.buffer encoding made
 * by forkpool.pack.results.  Returns 1 when sent that way. */
static int w_reply_packed(W *w, const fp_chunk_hdr *h, int out_idx, int64_t index) {
  lua_State *L = w->L;
  lua_pushvalue(L, S_PACK);
  lua_pushvalue(L, out_idx);
  lua_pushinteger(L, (lua_Integer)h->count);
  if (lua_pcall(L, 2, 2, 0) != 0 || !lua_isnumber(L, -2)) {
    lua_pop(L, lua_gettop(L) >= 2 ? 2 : 1);
    return 0;
  }
  const void *body = (const void *)(uintptr_t)lua_tonumber(L, -2);
  size_t blen = (size_t)lua_tonumber(L, -1);
  lua_pop(L, 2);
  w_reply_raw(w, FP_M_RESULTS, h, index, FP_CHUNK_PACKED, body, blen);
  return 1;
}

/* Append the encodings of out[from..to] (out at stack index out_idx) to
 * w->enc, with the codec options o, and count them in w->enc_done.  The
 * first that cannot be encoded is recorded (w->enc_rc, enc_bad, enc_err)
 * and ends the encoding; returns its code or FP_OK. */
static int w_encode_results(W *w, lua_State *L, int out_idx, uint32_t from, uint32_t to,
                            const fp_enc_opts *o) {
  fp_wstat *st = w->io->st;
  for (uint32_t k = from; k <= to; k++) {
    /* A death while encoding is reported against the item encoded. */
    atomic_store_explicit(&st->cur_index, w->chunk_start + (int64_t)k - 1,
                          memory_order_relaxed);
    lua_rawgeti(L, out_idx, (int)k);
    int rc = fp_encode_value(L, lua_gettop(L), &w->enc, o, "", &w->enc_err);
    lua_pop(L, 1);
    if (rc != FP_OK) {
      w->enc_rc = rc;
      w->enc_bad = w->chunk_start + (int64_t)k - 1;
      return rc;
    }
    w->enc_done = k;
  }
  return FP_OK;
}

/* put(out, k), called by the chunk runner (forkpool.run) right after the
 * task of out[k] returned a table: encode out[enc_done+1 .. k] now (the
 * scalars stored since the last put, then that table), so that a later
 * task of the chunk changing the table cannot change the result.  Encoding
 * when the task returns is what the runner's copies (forkpool.run's
 * snapshot) did before, without the copies.  After a failure it does
 * nothing: the chunk runs on, and w_reply_results reports the failure as
 * it would have found it encoding after the chunk.
 * Upvalues: the W (light userdata), the codec's cdata_kind helper. */
static int w_put(lua_State *L) {
  W *w = (W *)lua_touserdata(L, lua_upvalueindex(1));
  if (w->enc_rc != FP_OK) return 0;
  lua_Integer k = lua_tointeger(L, 2);
  if (k <= (lua_Integer)w->enc_done) return 0;
  if (!lua_istable(L, 1) || k > (lua_Integer)w->chunk_count)
    return luaL_error(L, "forkpool internal error: put(out, %d) out of the chunk",
                      (int)k);
  /* This function's stack frame is not the worker's (S_CKIND is not the
   * helper here): the codec reaches the helper by its upvalue index (it
   * only pushes it). */
  fp_enc_opts o;
  w_enc_opts(&o);
  o.cdata_idx = lua_upvalueindex(2);
  fp_wstat *st = w->io->st;
  /* Encoding, not running a task: a death here says "encode" (as after
   * the chunk), and no task_timeout runs meanwhile.  Plain stores: the
   * parent reads them while we run or after we died; the phase's start
   * (phase_ns) only matters for worker_init/worker_exit. */
  atomic_store_explicit(&st->phase, FP_PH_ENCODE, memory_order_relaxed);
  w_fault(FP_PH_ENCODE);
  /* Timed chunks: the encoding does not count in the item's time (its
   * task_timeout, the insights' slowest items), as after the chunk. */
  uint64_t t0 = stamp_idx ? fp_now_ns() : 0;
  w_encode_results(w, L, 1, w->enc_done + 1, (uint32_t)k, &o);
  if (t0) {
    uint64_t d = fp_now_ns() - t0;
    stamp_ns += d;
    atomic_fetch_add_explicit(&st->item_ns, d, memory_order_relaxed);
  }
  atomic_store_explicit(&st->cur_index, w->chunk_start + (int64_t)k - 1,
                        memory_order_relaxed);
  atomic_store_explicit(&st->phase, FP_PH_TASK, memory_order_relaxed);
  return 0;
}

/* The results out[1..count] of a chunk that ran to its end: packed when
 * they all are scalars, else through the codec, appended to what w_put
 * already encoded (out[1..enc_done]); a result that cannot be sent fails
 * the chunk with a "marshal" CHUNK_ERROR naming it (the first one, w_put's
 * included).  index goes into the RESULTS header: 0, FP_RESULTS_TAGGED, or
 * FP_RESULTS_REDUCED (out[1] alone is sent: the chunk's folded value). */
static void w_reply_results(W *w, const fp_chunk_hdr *h, int out_idx, int64_t index) {
  lua_State *L = w->L;
  fp_worker_io *io = w->io;
  atomic_store(&io->st->cur_index, h->start);
  w_phase(w, FP_PH_ENCODE);
  fp_enc_opts o;
  w_enc_opts(&o);
  /* Results already encoded are in w->enc and rule out the packed form
   * (they are not all scalars anyway: w_put runs only for tables). */
  int reduced = index == FP_RESULTS_REDUCED;
  if (w->enc_done == 0 && w->enc_rc == FP_OK) {
    w->enc.len = 0;
    if (!reduced && w_reply_packed(w, h, out_idx, index)) return;
  }
  int rc = w->enc_rc;
  if (rc == FP_OK)
    rc = w_encode_results(w, L, out_idx, w->enc_done + 1, reduced ? 1 : h->count, &o);
  if (rc == FP_OK) {
    w_reply(w, FP_M_RESULTS, h, index);
    return;
  }
  const fp_codec_err *err = &w->enc_err;
  int64_t bad = w->enc_bad;
  lua_createtable(L, 0, 2);
  if (rc == FP_EMARSHAL && reduced) {
    lua_pushfstring(L, "the reduced value of items %d..%d%s: %s", (int)h->start,
                    (int)(h->start + h->count - 1), err->path, err->msg);
    lua_setfield(L, -2, "message");
    lua_pushfstring(L, "reduced%s", err->path);
    lua_setfield(L, -2, "path");
  } else if (rc == FP_EMARSHAL) {
    lua_pushfstring(L, "result[%d]%s: %s", (int)bad, err->path, err->msg);
    lua_setfield(L, -2, "message");
    lua_pushfstring(L, "result[%d]%s", (int)bad, err->path);
    lua_setfield(L, -2, "path");
  } else {
    lua_pushfstring(L, "result[%d]: %s", (int)bad, fp_strerror(rc));
    lua_setfield(L, -2, "message");
  }
  if (index == FP_RESULTS_TAGGED) {
    /* the path runs through the tag ({value}: "[1]" after the index) */
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "tagged");
  }
  w_encode_error(w, "marshal");
  w_reply(w, FP_M_CHUNK_ERROR, h, bad);
}

/* ---- a chunk, step by step ---- */

/* Which items the runner walks: items[first..last], item index = i + off. */
typedef struct w_range { int64_t first, last, off; } w_range;

/* Function lookup: push the chunk's function, inherited for the job we
 * were forked in, else shipped by SETUP (nil when neither).  Its
 * worker_exit becomes the one this worker runs when it stops, its job's
 * options (the table the Lua layer ships with the function: forkpool.job's
 * wopts) the ones the runner gets. */
static void w_push_fn(W *w, uint64_t fn) {
  lua_State *L = w->L;
  if (fn == w->born_job) {
    lua_pushvalue(L, S_BEXIT);
    lua_replace(L, S_EXIT);
    lua_getfield(L, S_CTX, "opts");
    lua_replace(L, S_OPTS);
    lua_pushvalue(L, S_FN);
    return;
  }
  lua_pushnumber(L, (lua_Number)fn);
  lua_rawget(L, S_JOBS);
  if (lua_istable(L, -1)) {
    lua_rawgeti(L, -1, 2);
    lua_replace(L, S_EXIT);
    lua_rawgeti(L, -1, 3);
    lua_replace(L, S_OPTS);
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
  }
}

/* Item decoding: push the chunk's items table and say which of them to
 * run: inherited through fork, or decoded from the task record (packed by
 * forkpool.pack, or by the codec).  Releases the task record either way.
 * FP_OK, or a failure with its message pushed instead. */
/* The items of a FP_CHUNK_LINES chunk: the count lines of text[0..n),
 * without their "\n", pushed as a new array.  Every line but the last
 * must end in "\n" and the text must hold exactly count lines; anything
 * else is FP_ECORRUPT. */
static int w_push_lines(lua_State *L, uint32_t count, const unsigned char *text, size_t n,
                        fp_codec_err *err) {
  /* (every line takes at least one byte: a bigger count is corrupt and
   * must not size the table) */
  lua_createtable(L, (int)(count <= n ? count : 0), 0);
  const unsigned char *s = text, *end = text + n;
  for (uint32_t k = 1; k <= count; k++) {
    const unsigned char *nl = s < end ? memchr(s, '\n', (size_t)(end - s)) : NULL;
    const unsigned char *stop = nl ? nl : end;
    if (!nl && (k < count || s == end)) break; /* too few lines */
    lua_pushlstring(L, (const char *)s, (size_t)(stop - s));
    lua_rawseti(L, -2, (int)k);
    s = nl ? nl + 1 : end;
    if (k == count) {
      if (s == end) return FP_OK;
      break; /* bytes after the last line */
    }
  }
  lua_pop(L, 1);
  snprintf(err->msg, sizeof err->msg, "a block of text does not hold %u lines", (unsigned)count);
  err->path[0] = 0;
  return FP_ECORRUPT;
}

static int w_push_items(W *w, const fp_chunk_hdr *h, const unsigned char *p, size_t len,
                        w_range *rg) {
  lua_State *L = w->L;
  fp_worker_io *io = w->io;
  if (h->flags & FP_CHUNK_INHERITED) {
    lua_pushvalue(L, S_ITEMS);
    rg->first = h->start;
    rg->last = h->start + (int64_t)h->count - 1;
    rg->off = 0;
    w_release_task(io);
    return FP_OK;
  }
  /* A death while decoding is reported against the chunk's first item. */
  atomic_store(&io->st->cur_index, h->start);
  w_phase(w, FP_PH_DECODE);
  fp_dec_opts o = {.flags = FP_DEC_FUNCTIONS, .require_idx = S_REQUIRE,
                   .cdata_new_idx = S_CNEW};
  fp_codec_err err;
  int rc;
  if (h->flags & FP_CHUNK_PACKED) {
    lua_pushvalue(L, S_UNPACK);
    lua_pushnumber(L, (lua_Number)(uintptr_t)(p + sizeof *h));
    lua_pushnumber(L, (lua_Number)(len - sizeof *h));
    rc = lua_pcall(L, 2, 1, 0) == 0 && lua_istable(L, -1) ? FP_OK : FP_ECORRUPT;
    if (rc != FP_OK) {
      snprintf(err.msg, sizeof err.msg, "bad packed chunk: %s",
               lua_isstring(L, -1) ? lua_tostring(L, -1) : "not a table");
      err.path[0] = 0;
    }
  } else if (h->flags & FP_CHUNK_LINES) {
    rc = w_push_lines(L, h->count, p + sizeof *h, len - sizeof *h, &err);
  } else {
    lua_createtable(L, (int)h->count, 0);
    size_t pos = sizeof *h;
    rc = fp_decode_range(L, lua_gettop(L), 1, h->count, p, len, &pos, &o, &err);
  }
  w_release_task(io);
  if (rc != FP_OK) {
    lua_pushfstring(L, "items of chunk at %d: %s%s%s", (int)h->start, err.path,
                    err.path[0] ? ": " : "", err.msg);
    return rc;
  }
  rg->first = 1;
  rg->last = h->count;
  rg->off = h->start - 1;
  return FP_OK;
}

/* Running: call the runner on the function at base + 1 and the items at
 * base + 2, results into a fresh table it pushes at base + 3, and count
 * the items that ran.  Leaves the runner's result (true: all ran, false:
 * cancelled) or its error table on top; returns the lua_pcall status and,
 * in *cur, the index of the item it stopped at. */
static int w_run(W *w, const fp_chunk_hdr *h, int base, const w_range *rg, int64_t *cur) {
  lua_State *L = w->L;
  fp_worker_io *io = w->io;
  /* runner(fn, items, first, last, off, job, out, opts, nlead, lead...) */
  lua_createtable(L, (int)h->count, 0);
  lua_pushvalue(L, S_RUNNER);
  lua_pushvalue(L, base + 1);
  lua_pushvalue(L, base + 2);
  lua_pushnumber(L, (lua_Number)rg->first);
  lua_pushnumber(L, (lua_Number)rg->last);
  lua_pushnumber(L, (lua_Number)rg->off);
  lua_pushnumber(L, (lua_Number)h->job);
  lua_pushvalue(L, base + 3);
  lua_pushvalue(L, S_OPTS);
  lua_pushinteger(L, w->nlead);
  int n = 9 + w_push_lead(w);
  atomic_store(&io->st->cur_job, h->job);
  /* Until the runner stamps the first item, the chunk's start counts. */
  atomic_store(&io->st->cur_index, h->start);
  atomic_store(&io->st->item_ns, fp_now_ns());
  w_phase(w, FP_PH_TASK);
  uint64_t t_run = fp_now_ns();
  int st = lua_pcall(L, n, 1, S_MSGH);
  uint64_t t_end = fp_now_ns();
  w_check_fds(w);
  atomic_fetch_add(&io->st->work_ns, t_end - t_run);
  w_stamp_close(t_end);
  *cur = atomic_load(&io->st->cur_index);
  atomic_store(&io->st->cur_index, 0);
  /* Items that ran, success or not (the lifespan counts them). */
  if (st != 0) {
    w->items_done += (uint64_t)(*cur - h->start + 1);
  } else if (!lua_toboolean(L, -1)) {
    if (*cur > h->start) w->items_done += (uint64_t)(*cur - h->start);
  } else {
    w->items_done += h->count;
    atomic_fetch_add(&io->st->items_done, h->count);
  }
  return st;
}

/* Lifespan: leave once this worker has run its share of items. */
static void w_check_lifespan(W *w) {
  if (w->lifespan > 0 && (double)w->items_done >= w->lifespan)
    w_finish(w, FP_BYE_LIFESPAN);
}

/* CHUNK: fp_chunk_hdr, then the items (unless inherited).  Exactly one
 * reply, whatever happens. */
static void w_chunk(W *w, const unsigned char *p, size_t len) {
  lua_State *L = w->L;
  fp_worker_io *io = w->io;
  fp_chunk_hdr h;
  if (len < sizeof h) w_exit_now(FP_EXIT_CORRUPT);
  memcpy(&h, p, sizeof h);
  w->enc.len = 0;
  w->chunk_start = h.start;
  w->chunk_count = h.count;
  w->enc_done = 0;
  w->enc_rc = FP_OK;

  /* From here until the reply is sent, deaths are charged to this job. */
  atomic_store(&io->st->cur_job, h.job);
  if (h.job == atomic_load(&io->st->cancel_job)) {
    w_release_task(io);
    w_reply(w, FP_M_CANCELLED, &h, 0);
    return;
  }
  const int base = lua_gettop(L);
  const char *fail; /* the error kind of a chunk that could not run */
  w_push_fn(w, h.fn);                                  /* base + 1 */
  w_range rg;
  if (w_push_items(w, &h, p, len, &rg) != FP_OK) {     /* base + 2 */
    fail = "marshal";
    goto failed;
  }
  if (lua_isnil(L, base + 1) || !lua_istable(L, S_OPTS)) {
    lua_pushfstring(L, "internal error: no function for job %d", (int)h.job);
    fail = "task";
    goto failed;
  }
  int64_t cur;
  int st = w_run(w, &h, base, &rg, &cur);              /* out: base + 3 */
  if (st != 0) {
    w_encode_error(w, "task");
    w_reply(w, FP_M_CHUNK_ERROR, &h, cur);
  } else if (!lua_toboolean(L, -1)) {
    /* Cancelled between items. */
    lua_pop(L, 1);
    w->enc.len = 0;
    w_reply(w, FP_M_CANCELLED, &h, 0);
  } else {
    /* A number instead of true: the runner caught that many task errors
     * itself (its per-item mode, forkpool.run) and tagged every result
     * ({value} or {e = error}); a string: it folded the chunk's results
     * into out[1] (its reduce mode).  The reply says so. */
    int rt = lua_type(L, -1);
    int64_t index = rt == LUA_TNUMBER ? FP_RESULTS_TAGGED
                    : rt == LUA_TSTRING ? FP_RESULTS_REDUCED : 0;
    lua_pop(L, 1);
    w_reply_results(w, &h, base + 3, index);
  }
  /* Only now, with the reply sent, does the worker hold no item. */
  atomic_store(&io->st->cur_index, 0);
  lua_settop(L, base);
  w_phase(w, FP_PH_IDLE);
  w_check_lifespan(w);
  return;

failed:
  w_reply_failure(w, fail, &h, base);
}

/* SETUP: fp_setup_hdr, then {fn=, exit=, opts=} with functions shipped by
 * value.  Stored as jobs[id] = {fn, exit, opts}. */
static void w_setup(W *w, const unsigned char *p, size_t len) {
  lua_State *L = w->L;
  fp_setup_hdr sh;
  fp_dec_opts o = {.flags = FP_DEC_FUNCTIONS, .require_idx = S_REQUIRE,
                   .cdata_new_idx = S_CNEW};
  fp_codec_err err;
  size_t pos = sizeof sh;
  if (len < sizeof sh) w_exit_now(FP_EXIT_CORRUPT);
  memcpy(&sh, p, sizeof sh);
  w_phase(w, FP_PH_DECODE);
  int rc = fp_decode_value(L, p, len, &pos, &o, &err);
  w_release_task(w->io);
  if (sh.drop) {
    lua_pushnumber(L, (lua_Number)sh.drop);
    lua_pushnil(L);
    lua_rawset(L, S_JOBS);
  }
  if (rc != FP_OK || !lua_istable(L, -1)) {
    fp_chunk_hdr h;
    memset(&h, 0, sizeof h);
    h.job = sh.id; /* the job that shipped it */
    h.fn = sh.id;
    if (rc == FP_OK) lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushfstring(L, "%s%s%s", err.path, err.path[0] ? ": " : "", err.msg);
    lua_setfield(L, -2, "message");
    w_encode_error(w, NULL);
    w_send2(w, FP_M_SETUP_ERROR, &h, sizeof h, w->enc.p, w->enc.len);
    return;
  }
  int t = lua_gettop(L);
  lua_pushnumber(L, (lua_Number)sh.id);
  lua_createtable(L, 3, 0);
  lua_getfield(L, t, "fn");
  lua_rawseti(L, -2, 1);
  lua_getfield(L, t, "exit");
  lua_rawseti(L, -2, 2);
  lua_getfield(L, t, "opts");
  lua_rawseti(L, -2, 3);
  lua_rawset(L, S_JOBS);
  lua_settop(L, t - 1);
}

/* ---- main ---- */

/* worker_init (or after_fork_child) failed, its error table on top: report
 * it, say goodbye and leave. */
static _Noreturn void w_init_failed(W *w) {
  w_encode_error(w, NULL);
  w_send2(w, FP_M_INIT_ERROR, NULL, 0, w->enc.p, w->enc.len);
  fp_bye bye = {.reason = FP_BYE_INIT_FAILED, .pad = 0};
  w_send2(w, FP_M_BYE, &bye, sizeof bye, NULL, 0);
  w_exit_now(0);
}

typedef struct boot { fp_worker_io *io; } boot;

static int w_body(lua_State *L) {
  boot *b = (boot *)lua_touserdata(L, 1);
  W w;
  memset(&w, 0, sizeof w);
  w.L = L;
  w.io = b->io;
  w_stat = w.io->st;
  fp_fd_id_get(w.io->doorbell, &w.bell_id);
  if (w.io->results.big_fd >= 0) fp_fd_id_get(w.io->results.big_fd, &w.big_id);
  lua_settop(L, 0);
  /* The context table was left in the registry by fp_worker_main. */
  lua_pushlightuserdata(L, (void *)&fp_worker_main);
  lua_rawget(L, LUA_REGISTRYINDEX);                       /* S_CTX */
  lua_newtable(L);                                        /* S_JOBS */
  lua_newtable(L);                                        /* S_STATE */
  lua_getfield(L, S_CTX, "make_runner");
  lua_pushlightuserdata(L, (void *)&w.io->st->cur_index);
  lua_pushlightuserdata(L, (void *)&w.io->st->cancel_job);
  /* POSIX guarantees function pointers fit in a void *. */
  void (*stamp)(void) = w_stamp_item;
  void *stamp_p;
  memcpy(&stamp_p, &stamp, sizeof stamp_p);
  lua_pushlightuserdata(L, stamp_p);
  lua_pushcfunction(L, w_msgh); /* per-item errors: the same tables as a chunk's */
  /* put: encodes a chunk's results as its tasks return them.  (w lives
   * as long as the worker: w_body never returns but through an error.) */
  lua_pushlightuserdata(L, &w);
  lua_getfield(L, S_CTX, "cdata_kind");
  lua_pushcclosure(L, w_put, 2);
  lua_call(L, 5, 1);                                      /* S_RUNNER */
  lua_pushcfunction(L, w_msgh);                           /* S_MSGH */
  lua_getfield(L, S_CTX, "cdata_kind");                   /* S_CKIND */
  lua_getfield(L, S_CTX, "cdata_new");                    /* S_CNEW */
  lua_getglobal(L, "require");                            /* S_REQUIRE */
  lua_getfield(L, S_CTX, "fn");                           /* S_FN */
  lua_getfield(L, S_CTX, "items");                        /* S_ITEMS */
  lua_getfield(L, S_CTX, "init");                         /* S_INIT */
  lua_getfield(L, S_CTX, "exit");                         /* S_EXIT */
  lua_pushvalue(L, S_EXIT);                               /* S_BEXIT */
  lua_getfield(L, S_CTX, "pack_results");                 /* S_PACK */
  lua_getfield(L, S_CTX, "unpack");                       /* S_UNPACK */
  lua_settop(L, S_NSLOTS);

  /* Leading arguments, in mpire's order. */
  int k = 0;
  lua_getfield(L, S_CTX, "pass_id");
  int pass_id = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (pass_id) { lua_getfield(L, S_CTX, "wid"); lua_replace(L, S_LEAD1 + k++); }
  lua_getfield(L, S_CTX, "has_shared");
  int has_shared = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (has_shared) { lua_getfield(L, S_CTX, "shared"); lua_replace(L, S_LEAD1 + k++); }
  lua_getfield(L, S_CTX, "use_state");
  int use_state = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (use_state) { lua_pushvalue(L, S_STATE); lua_replace(L, S_LEAD1 + k++); }
  w.nlead = k;
  lua_getfield(L, S_CTX, "lifespan");
  w.lifespan = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
  lua_pop(L, 1);
  lua_getfield(L, S_CTX, "idle_timeout");
  w.idle_s = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
  lua_pop(L, 1);
  lua_getfield(L, S_CTX, "job");
  w.born_job = (uint64_t)lua_tonumber(L, -1);
  lua_pop(L, 1);

  /* os.exit must not run the parent's exit handlers. */
  lua_getglobal(L, "os");
  if (lua_istable(L, -1)) {
    lua_pushcfunction(L, w_os_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_pop(L, 1);

  fp_worker_io *io = w.io;
  /* The pool's after_fork_child hook, before worker_init; its error is
   * reported like worker_init's, its message naming the hook and the
   * error's `hook` field saying which (the parent's phase). */
  lua_getfield(L, S_CTX, "after_fork_child");
  if (lua_isfunction(L, -1)) {
    w_phase(&w, FP_PH_INIT);
    lua_getfield(L, S_CTX, "wid");
    int st = lua_pcall(L, 1, 0, S_MSGH);
    if (st == 0) w_check_fds(&w);
    if (st != 0 && lua_istable(L, -1)) {
      lua_getfield(L, -1, "message");
      lua_pushfstring(L, "in after_fork_child: %s", lua_tostring(L, -1));
      lua_setfield(L, -3, "message");
      lua_pop(L, 1);
      lua_pushliteral(L, "after_fork_child");
      lua_setfield(L, -2, "hook");
    }
    if (st != 0) w_init_failed(&w);
  } else {
    lua_pop(L, 1);
  }
  if (!lua_isnil(L, S_INIT)) {
    w_phase(&w, FP_PH_INIT);
    lua_pushvalue(L, S_INIT);
    int n = w_push_lead(&w);
    uint64_t t0 = fp_now_ns();
    int st = lua_pcall(L, n, 0, S_MSGH);
    atomic_store(&io->st->init_ns, fp_now_ns() - t0);
    w_check_fds(&w);
    if (st == 0 && w.fds_lost) {
      /* Retiring would only start another worker that does the same. */
      lua_createtable(L, 0, 1);
      lua_pushliteral(L, "worker_init closed or replaced forkpool's file descriptors "
                         "(see the close_fds option)");
      lua_setfield(L, -2, "message");
      st = 1;
    }
    if (st != 0) w_init_failed(&w);
  }
  w_phase(&w, FP_PH_IDLE);
  atomic_store(&io->st->ready_ns, fp_now_ns());
  w_send2(&w, FP_M_READY, NULL, 0, NULL, 0);

  uint64_t idle_since = fp_now_ns();
  int trimmed = 0;  /* the lanes were trimmed since the last message */
  for (;;) {
    uint32_t type;
    const unsigned char *p;
    size_t len;
    int rc = fp_lane_peek(&io->tasks, &type, &p, &len);
    if (rc == FP_OK) {
      /* Insights: time spent waiting for work. */
      uint64_t now = fp_now_ns();
      atomic_fetch_add(&io->st->wait_ns, now - idle_since);
      trimmed = 0;
    }
    if (rc == FP_EEMPTY) {
      /* Going idle: let the worker's own output out now, not at exit. */
      fflush(NULL);
      int wait_ms = FP_WORKER_WAIT_MS;
      if (w.idle_s > 0) {
        /* idle_timeout: idle that long, leave by itself (worker_exit runs;
         * the parent collects the exit at its next call, and gives back a
         * chunk sent meanwhile). */
        double left = w.idle_s - (double)(fp_now_ns() - idle_since) / 1e9;
        if (left <= 0) w_finish(&w, FP_BYE_STOP);
        if (left * 1000 < wait_ms) wait_ms = (int)(left * 1000) + 1;
      }
      if (fp_lane_wait_data(&io->tasks, wait_ms) == FP_ETIMEOUT) {
        w_check_parent(&w);
        /* A second without work: the lanes' big areas give their memory
         * back (up to FP_LANE_BIG_KEEP each, on both sides), once per idle
         * spell; a result still unread keeps its area until the next. */
        if (!trimmed)
          trimmed = fp_lane_trim_consumer(&io->tasks) &
                    fp_lane_trim_producer(&io->results);
      }
      continue;
    }
    if (rc != FP_OK) w_exit_now(FP_EXIT_CORRUPT); /* the parent wrote garbage */
    switch (type) {
    case FP_M_CHUNK:
      w_chunk(&w, p, len);
      idle_since = fp_now_ns();
      /* Results delivered; a planned exit gives back what it held. */
      if (w.fds_lost) w_finish(&w, FP_BYE_LIFESPAN);
      break;
    case FP_M_SETUP: w_setup(&w, p, len); idle_since = fp_now_ns(); break;
    case FP_M_STOP:
      w_release_task(io);
      w_finish(&w, FP_BYE_STOP);
    default: w_exit_now(FP_EXIT_CORRUPT);
    }
  }
}

void fp_worker_main(lua_State *L, int ctx_idx, fp_worker_io *io) {
  /* A fresh thread: its stack starts empty, so tracebacks show only the
   * worker's frames.  Anchor it (and the context) in the registry. */
  ctx_idx = ctx_idx < 0 ? lua_gettop(L) + ctx_idx + 1 : ctx_idx;
  lua_pushlightuserdata(L, (void *)&fp_worker_main);
  lua_pushvalue(L, ctx_idx);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_State *L1 = lua_newthread(L);
  luaL_ref(L, LUA_REGISTRYINDEX);
  boot b = {.io = io};
  int st = lua_cpcall(L1, w_body, &b);
  /* w_body only returns through an error outside any task (out of memory,
   * or a bug): report it on stderr and leave without touching the parent's
   * frames. */
  if (st != 0) {
    const char *msg = lua_tostring(L1, -1);
    fprintf(stderr, "forkpool worker %d: %s\n", (int)getpid(), msg ? msg : "(error)");
  }
  w_exit_now(FP_EXIT_INTERNAL);
}
