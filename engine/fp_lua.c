/*
 * fp_lua.c - the Lua binding: module forkpool.core, one userdata type (the
 * engine side of a pool, fp_pool.h).  Only binds: each function checks its
 * arguments, calls the engine, and turns its codes into Lua values or
 * errors (the only file that does); poll's events are built in fp_events.c,
 * a pool's processes handled in fp_proc.c, the scheduling policy lives in
 * the Lua layer (lua/forkpool/).
 *
 * Errors: misuse (a bad argument, a closed pool, a dead worker addressed)
 * is raised; what the environment or the data can cause at any time (no
 * memory to map, fork refused, a value that cannot be sent) is returned in
 * one shape, fail_result's.
 *
 * Invariant: methods may only be called by the process that created the
 * pool (owner): a worker holds a copy of the userdata and must never act on
 * it (__gc in a worker does nothing).
 */
#include "fp_codec.h"
#include "fp_events.h"
#include "fp_hotmem.h"
#include "fp_json.h"
#include "fp_pool.h"
#include "fp_proc.h"
#include "fp_sigint.h"
#include "fp_proto.h"
#include "fp_ring.h"
#include "fp_shm.h"
#include "fp_worker.h"
#include "fp_luajit.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define FP_POOL_MT "forkpool.core.pool"

/* Default ring capacity per lane (records above a quarter of it go through
 * the lane's big area). */
#define FP_DEFAULT_RING (1u << 20)

#ifdef FP_TEST_HOOKS
/* Test hook state (core._set_worker_fault): arm only this worker id. */
static int fault_wid;
/* In a worker: its own slot (core._test_lanes), so hostile specs can
 * scribble on its lanes. */
static fp_slot *test_slot;
#endif

/* ---- helpers ---- */

/* An address unique to this Lua state (its registry table), shared by its
 * coroutines: the key of its SIGINT guard and of its pools (fp_pool.vm). */
static uintptr_t state_key(lua_State *L) {
  return (uintptr_t)lua_topointer(L, LUA_REGISTRYINDEX);
}

static fp_pool *check_pool(lua_State *L) {
  fp_pool *p = (fp_pool *)luaL_checkudata(L, 1, FP_POOL_MT);
  /* fp_proc_self(): cleared by every fork (the host's too), so a process
   * the host forked (a daemon, a pre-fork server) is told apart and can
   * make and use pools of its own. */
  if (p->owner != fp_proc_self())
    luaL_error(L, "forkpool: a pool can only be used by the process that created it "
                  "(not from inside a worker or a forked child)");
  if (p->closed) luaL_error(L, "forkpool: attempt to use a closed pool");
  return p;
}

static int check_wid(lua_State *L, fp_pool *p, int arg) {
  lua_Integer w = luaL_checkinteger(L, arg);
  luaL_argcheck(L, w >= 1 && w <= p->n, arg, "worker id out of range");
  return (int)w - 1;
}

/*
 * The one shape of a soft failure, after lauxlib's luaL_fileresult:
 *   nil, [category,] message [, detail]
 * category: NULL, or "marshal" (a value or a record cannot be sent, which
 * the Lua layer reports as a marshal error of the job); detail: the stack
 * index of one more value to return last (0: none), pushed by the caller
 * beforehand (spawn's errno, an encoding error's path).  The message is
 * lua_pushfstring's fmt and arguments.  Returns the number of values.
 */
static int fail_result(lua_State *L, const char *category, int detail, const char *fmt, ...) {
  va_list ap;
  lua_pushnil(L);
  if (category) lua_pushstring(L, category);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  if (detail) lua_pushvalue(L, detail);
  return 2 + (category != NULL) + (detail != 0);
}

/* close_fds (argument arg of core.new): nil/false, true, or a list of fds
 * to keep as well. */
static void opt_close_fds(lua_State *L, fp_pool *p, int arg) {
  if (lua_isnoneornil(L, arg) || (lua_isboolean(L, arg) && !lua_toboolean(L, arg))) return;
  if (!lua_isboolean(L, arg) && !lua_istable(L, arg))
    luaL_error(L, "bad option 'close_fds' to 'new' (boolean or list of fds expected, got %s)",
               luaL_typename(L, arg));
  int n = lua_istable(L, arg) ? (int)lua_objlen(L, arg) : 0;
  /* Room for the engine's 3 as well: a child must not allocate. */
  p->keep_fds = calloc((size_t)n + 3, sizeof *p->keep_fds);
  if (!p->keep_fds) luaL_error(L, "forkpool: out of memory");
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, arg, i);
    lua_Number v = lua_tonumber(L, -1);
    if (!lua_isnumber(L, -1) || v < 0 || v > INT_MAX || v != (lua_Number)(int)v)
      luaL_error(L, "bad option 'close_fds' to 'new' (item %d is not a file descriptor)", i);
    p->keep_fds[p->nkeep_fds++] = (int)v;
    lua_pop(L, 1);
  }
  p->close_fds = 1;
}

/* ---- core.new(n, helpers [, ring_cap [, close_fds]]) ---- */

static int l_new(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 4096, 1, "n_jobs must be in 1..4096");
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer ring = luaL_optinteger(L, 3, FP_DEFAULT_RING);
  luaL_argcheck(L, ring >= 4096 && ring <= ((lua_Integer)1 << 30) && (ring & (ring - 1)) == 0, 3,
                "ring capacity must be a power of two in [4096, 2^30]");

  /* Big result arrays keep their memory mapped between maps (fp_hotmem.h):
   * the wrapper goes on the state that makes pools, once. */
  if (fp_hot_install(L) != FP_OK) return luaL_error(L, "forkpool: out of memory");

  /* Created closed, then opened: an error midway leaves a consistent
   * object that __gc can release. */
  fp_pool *p = (fp_pool *)lua_newuserdata(L, sizeof *p);
  memset(p, 0, sizeof *p);
  p->closed = 1;
  p->doorbell = -1;
  p->bigfd = -1;
  p->owner = fp_proc_self();
  p->vm = state_key(L);
  luaL_getmetatable(L, FP_POOL_MT);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 2);
  lua_setfenv(L, -2);

  p->n = (int)n;
  p->ring_cap = (size_t)ring;
  opt_close_fds(L, p, 4);
  /* The largest record: RAM + swap.  It costs no memory or address space
   * until records use it; it only spaces the lanes' regions in bigfd.
   * Where RLIMIT_FSIZE is finite the regions share it (past it, writes
   * raise SIGXFSZ). */
  p->big_cap = fp_shm_region_size(2 * (size_t)n);
  p->slots = calloc((size_t)n, sizeof *p->slots);
  p->pfds = calloc((size_t)n + 1, sizeof *p->pfds);
  p->pfd_slot = calloc((size_t)n + 1, sizeof *p->pfd_slot);
  if (!p->slots || !p->pfds || !p->pfd_slot) return luaL_error(L, "forkpool: out of memory");
  for (int i = 0; i < p->n; i++) p->slots[i].pidfd = -1;
  void *m;
  if (fp_shm_map(sizeof(fp_ctl), 0, &m) != FP_OK)
    return luaL_error(L, "forkpool: cannot map shared memory: %s", strerror(errno));
  p->ctl = (fp_ctl *)m;
  p->stats_len = (size_t)n * sizeof(fp_wstat);
  if (fp_shm_map(p->stats_len, 0, &m) != FP_OK)
    return luaL_error(L, "forkpool: cannot map shared memory: %s", strerror(errno));
  p->stats = (fp_wstat *)m;
  /* Created and tracked under the registry lock: another thread's fork
   * never copies them untracked into its worker. */
  fp_proc_lock();
  p->doorbell = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  int e = errno;
  if (p->doorbell >= 0) fp_proc_track_fd(p->doorbell);
  fp_proc_unlock();
  if (p->doorbell < 0) return luaL_error(L, "forkpool: eventfd: %s", strerror(e));
  fp_proc_lock();
  p->bigfd = fp_shm_file();
  e = errno;
  if (p->bigfd >= 0) fp_proc_track_fd(p->bigfd);
  fp_proc_unlock();
  if (p->bigfd < 0) return luaL_error(L, "forkpool: cannot create shared memory: %s", strerror(e));
  p->closed = 0;
  /* Registered whole (a fork by another thread walks the registry), and
   * removed by close / __gc.  A pool that failed half-way is never
   * registered: a worker forked meanwhile by another thread keeps its
   * control page and stats mapped (its fds are tracked, so closed there). */
  fp_pools_add(p);
  return 1;
}

/* ---- pool:spawn(wid, ctx) -> pid | nil, message, errno ---- */

/* ctx.cpus: the CPUs to pin the worker to (ids checked by the Lua layer).
 * Returns whether there is such a list. */
static int check_cpus(lua_State *L, int ctx_idx, cpu_set_t *cpus) {
  int pin = 0;
  CPU_ZERO(cpus);
  lua_getfield(L, ctx_idx, "cpus");
  if (lua_istable(L, -1)) {
    pin = 1;
    for (int i = 1; i <= (int)lua_objlen(L, -1); i++) {
      lua_rawgeti(L, -1, i);
      int id = (int)lua_tointeger(L, -1);
      if (id >= 0 && id < CPU_SETSIZE) CPU_SET(id, cpus);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return pin;
}

/* In the new worker (never returns): finish its setup, then the worker
 * loop.  Nothing here may raise: the Lua frames below are the parent's. */
static _Noreturn void run_worker(lua_State *L, fp_pool *p, int w, pid_t parent, const cpu_set_t *pin) {
  fp_slot *s = &p->slots[w];
  if (fp_pool_child_setup(p, w, parent, pin) != FP_OK) _exit(FP_EXIT_ORPHANED);
#ifdef FP_TEST_HOOKS
  if (fault_wid && fault_wid != w + 1) fp_worker_set_fault(0, 0, 0);
  test_slot = s;
#endif
  fp_worker_io io;
  memset(&io, 0, sizeof io);
  io.tasks = s->tasks;
  io.results = s->results;
  io.st = &p->stats[w];
  io.ctl = p->ctl;
  io.doorbell = p->doorbell;
  io.parent = parent;
  fp_worker_main(L, 3, &io);
}

static int l_spawn(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  if (p->slots[w].pid > 0) return luaL_error(L, "forkpool: worker %d is still running", w + 1);
  if (fp_pool_slot_open(p, w) != FP_OK) {
    int e = errno;
    lua_pushinteger(L, e);
    return fail_result(L, NULL, lua_gettop(L), "cannot map shared memory for worker %d: %s",
                       w + 1, strerror(e));
  }
  cpu_set_t cpus;
  const cpu_set_t *pin = check_cpus(L, 3, &cpus) ? &cpus : NULL;
  pid_t parent = fp_proc_self(), pid;
  if (fp_pool_fork(p, w, pin, &pid) != FP_OK) {
    int e = errno;
    lua_pushinteger(L, e);
    return fail_result(L, NULL, lua_gettop(L), "cannot start worker %d: fork: %s", w + 1,
                       strerror(e));
  }
  if (pid == 0) run_worker(L, p, w, parent, pin);
  lua_pushinteger(L, pid);
  return 1;
}

/* ---- sending ---- */

/* After an encode failure: nil, "marshal", message, path (nil when the
 * failure is not about one value, e.g. out of memory). */
static int push_marshal(lua_State *L, int rc, const fp_codec_err *err) {
  if (rc == FP_EMARSHAL) {
    lua_pushstring(L, err->path);
    return fail_result(L, "marshal", lua_gettop(L), "%s: %s", err->path, err->msg);
  }
  lua_pushnil(L);
  return fail_result(L, "marshal", lua_gettop(L), "%s", fp_strerror(rc));
}

/* The codec's options for values sent to a worker: functions by value,
 * modules by name through the module map at modmap_idx (if a table), cdata
 * through the pool's helpers (its userdata environment). */
static void enc_opts(lua_State *L, int pool_idx, int modmap_idx, fp_enc_opts *o) {
  o->flags = FP_ENC_FUNCTIONS;
  o->modmap_idx = lua_istable(L, modmap_idx) ? modmap_idx : 0;
  lua_getfenv(L, pool_idx);
  lua_getfield(L, -1, "cdata_kind");
  lua_remove(L, -2);
  o->cdata_idx = lua_gettop(L);
}

/* Returns true, or false when the lane is full now, or nil, "marshal",
 * message. */
static int send_record(lua_State *L, fp_pool *p, int w, uint32_t type,
                       const void *a, size_t alen, const void *b, size_t blen) {
  fp_slot *s = &p->slots[w];
  if (s->pid <= 0) return luaL_error(L, "forkpool: worker %d is not running", w + 1);
  /* Room to remember a chunk before it goes. */
  if (type == FP_M_CHUNK && fp_sentq_reserve(&s->sent) != FP_OK)
    return luaL_error(L, "forkpool: out of memory");
  int wake = 0;
  int rc = fp_lane_try_send2(&s->tasks, type, a, alen, b, blen, &wake);
  if (rc == FP_OK) {
    if (type == FP_M_CHUNK) fp_sentq_push(&s->sent, a);
    if (wake) fp_lane_wake_consumer(&s->tasks);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == FP_EFULL) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (rc == FP_E2BIG)
    return fail_result(L, "marshal", 0, "record of %f bytes is too large to send",
                       (double)(alen + blen));
  if (rc == FP_ECORRUPT) {
    /* The worker scribbled on its task lane's shared header: it gets
     * nothing more and is killed (poll reports its exit). */
    s->corrupt = 1;
    fp_proc_kill(s->pid, SIGKILL);
    return fail_result(L, "marshal", 0, "cannot send to worker %d: it corrupted its task "
                                        "lane's shared header (the worker was killed)", w + 1);
  }
  return fail_result(L, "marshal", 0, "cannot send to worker %d: %s", w + 1, fp_strerror(rc));
}

/* pool:encode(value [, modmap]) -> string | nil, "marshal", message, path:
 * the wire encoding of a value as it would be shipped to a worker
 * (functions by value, modules by name).  The Lua layer encodes a job's
 * function once and compares the bytes with what each worker already has. */
static int l_encode(lua_State *L) {
  fp_pool *p = check_pool(L);
  luaL_checkany(L, 2);
  fp_enc_opts o;
  fp_codec_err err;
  enc_opts(L, 1, 3, &o);
  p->enc.len = 0;
  int rc = fp_encode_value(L, 2, &p->enc, &o, "", &err);
  if (rc != FP_OK) return push_marshal(L, rc, &err);
  lua_pushlstring(L, (const char *)p->enc.p, p->enc.len);
  return 1;
}

/* pool:send_setup(wid, id, drop, bytes): install the encoded {fn=, exit=, opts=}
 * (from pool:encode) in worker wid under id, forgetting id drop (0: none).
 * Returns true, or false when the lane is full now. */
static int l_send_setup(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  fp_setup_hdr sh;
  sh.id = (uint64_t)luaL_checknumber(L, 3);
  sh.drop = (uint64_t)luaL_checknumber(L, 4);
  size_t len;
  const char *bytes = luaL_checklstring(L, 5, &len);
  return send_record(L, p, w, FP_M_SETUP, &sh, sizeof sh, bytes, len);
}

/* The arguments both chunk senders share: (pool, wid, job, fn, start,
 * count). */
static void check_chunk_args(lua_State *L, fp_chunk_hdr *h) {
  memset(h, 0, sizeof *h);
  h->job = (uint64_t)luaL_checknumber(L, 3);
  h->fn = (uint64_t)luaL_checknumber(L, 4);
  h->start = (int64_t)luaL_checknumber(L, 5);
  h->count = (uint32_t)luaL_checkinteger(L, 6);
}

/* pool:send_chunk(wid, job, fn, start, count [, items [, modmap [,
 * first]]]): run function fn (see fp_chunk_hdr) over items
 * start..start+count-1 of job.  items nil means the worker has them in
 * memory (it was forked during this job); otherwise items[first ..
 * first+count-1] are sent (first defaults to start). */
static int l_send_chunk(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  fp_chunk_hdr h;
  check_chunk_args(L, &h);
  p->enc.len = 0;
  if (lua_isnoneornil(L, 7)) {
    h.flags |= FP_CHUNK_INHERITED;
  } else {
    luaL_checktype(L, 7, LUA_TTABLE);
    int64_t first = (int64_t)luaL_optnumber(L, 9, (lua_Number)h.start);
    fp_enc_opts o;
    fp_codec_err err;
    enc_opts(L, 1, 8, &o);
    int rc = fp_encode_range(L, 7, first, h.count, &p->enc, &o, "item", h.start, &err);
    if (rc != FP_OK) return push_marshal(L, rc, &err);
  }
  return send_record(L, p, w, FP_M_CHUNK, &h, sizeof h, p->enc.p, p->enc.len);
}

/* pool:send_chunk_packed(wid, job, fn, start, count, addr, len):
 * like send_chunk, the items being one string.buffer encoding of an array
 * of scalars at addr (a number), len bytes (forkpool.pack.items). */
static int l_send_chunk_packed(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  fp_chunk_hdr h;
  check_chunk_args(L, &h);
  h.flags |= FP_CHUNK_PACKED;
  const void *body = (const void *)(uintptr_t)luaL_checknumber(L, 7);
  size_t blen = (size_t)luaL_checknumber(L, 8);
  return send_record(L, p, w, FP_M_CHUNK, &h, sizeof h, body, blen);
}

/* pool:send_chunk_lines(wid, job, fn, start, count, text): like
 * send_chunk, the items being the count lines of the string text (each
 * ending in "\n" but perhaps the last; forkpool.lines).  The worker cuts
 * them and checks that there are exactly count. */
static int l_send_chunk_lines(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  fp_chunk_hdr h;
  check_chunk_args(L, &h);
  h.flags |= FP_CHUNK_LINES;
  size_t blen;
  const char *body = luaL_checklstring(L, 7, &blen);
  return send_record(L, p, w, FP_M_CHUNK, &h, sizeof h, body, blen);
}

/* pool:send_stop(wid) */
static int l_send_stop(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  return send_record(L, p, w, FP_M_STOP, NULL, 0, NULL, 0);
}

/* pool:cancel(wid, job): the worker stops job's current chunk before its
 * next item and answers its queued chunks of that job with CANCELLED. */
static int l_cancel(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  atomic_store(&p->stats[w].cancel_job, (uint64_t)luaL_checknumber(L, 3));
  return 0;
}

/* ---- receiving ---- */

/*
 * pool:poll(jobs, timeout) -> kind, wid, job, start, count, index, value
 *   jobs: table job id -> where its results go: a table (decoded in place
 *         at the items' indexes) or true (each chunk's results as a fresh
 *         array, the event's value); RESULTS of other jobs are dropped
 *   timeout: seconds (negative: no limit)
 * Every event about a worker has the same seven fields (job, start, count
 * and index are 0 where no chunk is concerned); built in fp_events.c:
 *   kind             value
 *   "results"        true (decoded into jobs[job]), the fresh array, or nil
 *                    (job unknown: dropped)
 *   "chunk_error"    the chunk failed: {kind=, message=, ...}, kind the forkpool
 *                    error kind ("task": traceback=, value=; "marshal": path=);
 *                    index: the item
 *   "setup_error"    {message=}: the job's function could not be loaded
 *   "cancelled"      nil: the chunk was not run (its job was cancelled)
 *   "init_error", "exit_error", "exit_result"   the decoded value
 *   "ready"          nil: worker_init finished
 *   "bye"            the reason it leaves: "stop", "lifespan", "init_failed"
 *   "exit"           {pid=, signal=, signo= | exit_code= | status_unknown=,
 *                    index=, job=, phase=}: the process is gone and reaped
 *   "corrupt"        a message: the worker was killed, its lane is not read again
 * and, with no other field:
 *   "timeout"        nothing arrived in time
 *   "interrupted"    SIGINT arrived while the guard was armed
 *   "eintr"          a signal interrupted the wait (the caller decides)
 */
static int l_poll(lua_State *L) {
  fp_pool *p = check_pool(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  double timeout = luaL_optnumber(L, 3, -1);
  lua_settop(L, 3);
  int n = fp_events_poll(L, p, 1, 2, timeout);
  if (n < 0) return luaL_error(L, "forkpool: poll: %s", strerror(errno));
  return n;
}

/* ---- process control ---- */

/* pool:kill(wid, signo): send a signal to a live worker (SIGKILL: to its
 * process group, its background children too). */
static int l_kill(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  int sig = (int)luaL_optinteger(L, 3, SIGKILL);
  if (p->slots[w].pid > 0) fp_proc_kill(p->slots[w].pid, sig);
  return 0;
}

/* pool:sigint_guard(on): while on, SIGINT only wakes poll, which then
 * returns "interrupted" (the previous handler is restored when off).
 * Returns whether the guard is armed (false when the host ignores SIGINT). */
static int l_sigint_guard(lua_State *L) {
  fp_pool *p = check_pool(L);
  if (lua_toboolean(L, 2)) {
    lua_pushboolean(L, fp_sigint_arm(state_key(L), p->doorbell));
  } else {
    fp_sigint_disarm(state_key(L));
    lua_pushboolean(L, 0);
  }
  return 1;
}

/* pool:worker_status(wid) -> {phase=, index=, items_done=, phase_since=,
 * item_since=} (times in seconds on the core.now() clock; 0 when unset) */
static int l_worker_status(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  fp_wstat *st = &p->stats[w];
  lua_createtable(L, 0, 5);
  lua_pushnumber(L, (lua_Number)atomic_load(&st->phase_ns) * 1e-9);
  lua_setfield(L, -2, "phase_since");
  lua_pushnumber(L, (lua_Number)atomic_load(&st->item_ns) * 1e-9);
  lua_setfield(L, -2, "item_since");
  lua_pushstring(L, fp_phase_name(atomic_load(&st->phase)));
  lua_setfield(L, -2, "phase");
  lua_pushnumber(L, (lua_Number)atomic_load(&st->cur_index));
  lua_setfield(L, -2, "index");
  lua_pushnumber(L, (lua_Number)atomic_load(&st->items_done));
  lua_setfield(L, -2, "items_done");
  lua_pushnumber(L, (lua_Number)atomic_load(&st->cur_job));
  lua_setfield(L, -2, "job");
  return 1;
}

/* pool:worker_work(wid) -> seconds the process in slot wid has spent
 * running chunks (its runner's calls, wall time: st->work_ns), without
 * making a table (forkpool.chunking reads it per chunk). */
static int l_worker_work(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  lua_pushnumber(L, (double)atomic_load(&p->stats[w].work_ns) * 1e-9);
  return 1;
}

/* pool:worker_insights(wid) -> {start_up=, init=, waiting=, working=,
 * exit=, tasks=, slow = {{index=, job=, duration=}, ...}} (seconds) for the
 * process now or last in slot wid. */
static int l_worker_insights(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  fp_wstat *st = &p->stats[w];
  uint64_t start = atomic_load(&st->start_ns), ready = atomic_load(&st->ready_ns);
  uint64_t init = atomic_load(&st->init_ns);
  lua_createtable(L, 0, 7);
  double up = ready > start ? (double)(ready - start - (init < ready - start ? init : 0)) * 1e-9 : 0;
  lua_pushnumber(L, up);
  lua_setfield(L, -2, "start_up");
  lua_pushnumber(L, (double)init * 1e-9);
  lua_setfield(L, -2, "init");
  lua_pushnumber(L, (double)atomic_load(&st->wait_ns) * 1e-9);
  lua_setfield(L, -2, "waiting");
  lua_pushnumber(L, (double)atomic_load(&st->work_ns) * 1e-9);
  lua_setfield(L, -2, "working");
  lua_pushnumber(L, (double)atomic_load(&st->exit_ns) * 1e-9);
  lua_setfield(L, -2, "exit");
  lua_pushnumber(L, (lua_Number)atomic_load(&st->items_done));
  lua_setfield(L, -2, "tasks");
  lua_createtable(L, 5, 0);
  for (int i = 0; i < 5; i++) {
    int64_t idx = atomic_load(&st->slow[i].index);
    if (!idx) break;
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, (lua_Number)idx);
    lua_setfield(L, -2, "index");
    lua_pushnumber(L, (lua_Number)atomic_load(&st->slow[i].job));
    lua_setfield(L, -2, "job");
    lua_pushnumber(L, (double)atomic_load(&st->slow[i].dur_ns) * 1e-9);
    lua_setfield(L, -2, "duration");
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "slow");
  return 1;
}

/* pool:close(): kill and reap everything now.  Idempotent. */
static int l_close(lua_State *L) {
  fp_pool *p = (fp_pool *)luaL_checkudata(L, 1, FP_POOL_MT);
  /* Out of the registry first, whoever collects it: a process the host
   * forked holds its parent's pools in its copy of the list, and must not
   * keep pointers to userdata its own GC frees. */
  fp_pools_remove(p);
  if (p->owner != fp_proc_self()) return 0; /* a worker's copy: not ours */
  if (!p->closed || p->slots) {
    fp_pool_release(p);
    fp_hot_flush(L); /* kept result memory goes back with the pool */
  }
  free(p->keep_fds); /* l_new may fail before anything fp_pool_release frees */
  p->keep_fds = NULL;
  return 0;
}

static int l_tostring(lua_State *L) {
  fp_pool *p = (fp_pool *)luaL_checkudata(L, 1, FP_POOL_MT);
  if (p->closed) lua_pushliteral(L, "forkpool.core (closed)");
  else lua_pushfstring(L, "forkpool.core (%d workers) %p", p->n, (void *)p);
  return 1;
}

/* core.shared_alloc(bytes) -> address (a number) | nil, message: a zeroed
 * block of the shared arena (see fp_shm.h). */
static int l_shared_alloc(lua_State *L) {
  lua_Number n = luaL_checknumber(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 9007199254740992.0, 1, "positive size expected");
  void *p;
  int rc = fp_arena_alloc((size_t)n, &p);
  if (rc == FP_ESYS)
    return fail_result(L, NULL, 0, "%s",
                       "shared arrays can only be made by the process that loaded forkpool");
  if (rc != FP_OK)
    return fail_result(L, NULL, 0, "out of shared memory (the arena holds %f MiB; set "
                                   "FORKPOOL_SHARED_MEMORY before loading forkpool for more)",
                       (double)fp_arena_size() / 1048576.0);
  lua_pushnumber(L, (lua_Number)(uintptr_t)p);
  return 1;
}

/* core.shared_free(address): give a block back (no-op in workers). */
static int l_shared_free(lua_State *L) {
  fp_arena_free((void *)(uintptr_t)luaL_checknumber(L, 1));
  return 0;
}

/* core.shared_contains(address [, len]) -> whether it lies in the arena. */
static int l_shared_contains(lua_State *L) {
  uintptr_t a = (uintptr_t)luaL_checknumber(L, 1);
  size_t len = (size_t)luaL_optnumber(L, 2, 1);
  lua_pushboolean(L, fp_arena_contains((const void *)a, len));
  return 1;
}

/* core.shared_size() -> the arena's size in bytes (fixed when forkpool.core
 * was loaded). */
static int l_shared_size(lua_State *L) {
  lua_pushnumber(L, (lua_Number)fp_arena_size());
  return 1;
}

/* core.now() -> seconds on the monotonic clock the workers stamp with. */
/* core.self_pid() -> this process's pid, from fp_proc_self's cache (every
 * public call checks its pool's owner: getpid() would be a system call). */
static int l_self_pid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)fp_proc_self());
  return 1;
}

/* core.cfunction(f) -> a light userdata naming f's C function (equal for
 * every closure of one C function), or nil when f is not a C function:
 * forkpool.lines tells the iterators of io.lines from other functions. */
static int l_cfunction(lua_State *L) {
  lua_CFunction f = lua_tocfunction(L, 1);
  if (!f) return 0;
  lua_pushlightuserdata(L, (void *)(uintptr_t)f);
  return 1;
}

/* core.hot_held() -> bytes of freed result arrays kept mapped (fp_hotmem.h) */
static int l_hot_held(lua_State *L) {
  lua_pushnumber(L, (lua_Number)fp_hot_held(L));
  return 1;
}

/* core.hot_table(narray, nhash) -> a new table whose array part, if big,
 * comes from (and goes back to) the memory kept for results: a map's
 * results table (fp_hotmem.h). */
static int l_hot_table(lua_State *L) {
  lua_Integer na = luaL_checkinteger(L, 1), nh = luaL_optinteger(L, 2, 0);
  luaL_argcheck(L, na >= 0 && na <= INT_MAX, 1, "size out of range");
  luaL_argcheck(L, nh >= 0 && nh <= INT_MAX, 2, "size out of range");
  fp_hot_begin(L);
  /* (Out of memory here skips fp_hot_end: later big tables are then kept
   * too, up to FP_HOT_CAP, still never one in use.) */
  lua_createtable(L, (int)na, (int)nh);
  fp_hot_end(L);
  return 1;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)fp_now_ns() * 1e-9);
  return 1;
}

#ifdef FP_TEST_HOOKS
/* Fault injection for the specs: only in builds made with -DFP_TEST_HOOKS
 * (the Makefile's development build), never in a rock. */

/* core._fail_fork_after(n): test hook, the n-th next fork fails (EAGAIN). */
static int l_fail_fork_after(lua_State *L) {
  fp_proc_fail_fork_after((int)luaL_checkinteger(L, 1));
  return 0;
}

/* core._test_lanes() -> {results_hdr=, results_ring=, results_cap=, tasks_hdr=} | nil:
 * test hook; in a worker, the addresses (numbers) of its result lane's
 * shared header and ring, so a task can scribble on them (hostile_spec). */
static int l_test_lanes(lua_State *L) {
  if (!test_slot || !test_slot->results.h) return 0;
  lua_createtable(L, 0, 4);
  lua_pushnumber(L, (lua_Number)(uintptr_t)test_slot->results.h);
  lua_setfield(L, -2, "results_hdr");
  lua_pushnumber(L, (lua_Number)(uintptr_t)test_slot->results.ring);
  lua_setfield(L, -2, "results_ring");
  lua_pushnumber(L, (lua_Number)test_slot->results.cap);
  lua_setfield(L, -2, "results_cap");
  lua_pushnumber(L, (lua_Number)(uintptr_t)test_slot->tasks.h);
  lua_setfield(L, -2, "tasks_hdr");
  return 1;
}

/* core._set_worker_fault(phase, signo [, after [, wid]]): test hook; workers
 * forked from now on (only worker wid, if given) raise signo the after-th
 * time they enter phase ("worker_init", "decode", "task", "encode",
 * "worker_exit").  signo 0 turns it off. */
static int l_set_worker_fault(lua_State *L) {
  static const char *const names[] = {"start", "worker_init", "idle", "decode",
                                      "task", "encode", "worker_exit", NULL};
  int ph = luaL_checkoption(L, 1, NULL, names);
  int sig = (int)luaL_checkinteger(L, 2);
  int after = (int)luaL_optinteger(L, 3, 1);
  fault_wid = (int)luaL_optinteger(L, 4, 0);
  fp_worker_set_fault((uint32_t)ph, sig, after);
  return 0;
}
#endif

/* ---- core.json_encode (forkpool map's JSON writer, engine/fp_json.c) ----
 * One closure per Lua state (a module load), whose upvalue is a userdata
 * holding the output buffer and the encoder's scratch space: reused between
 * calls (no allocation per record once warm), never shared between states
 * (so states on other threads have their own).  The encoder runs no Lua
 * code, so a call cannot re-enter it. */
#define FP_JSON_MT "forkpool.core.json"
/* Above this the buffer is released after the call instead of kept. */
#define FP_JSON_KEEP (1u << 20)

typedef struct json_state {
  fp_buf out;
  fp_json_scratch scr;
} json_state;

static int json_state_gc(lua_State *L) {
  json_state *j = (json_state *)luaL_checkudata(L, 1, FP_JSON_MT);
  fp_buf_free(&j->out);
  fp_json_scratch_free(&j->scr);
  return 0;
}

/* core.json_encode(v) -> text, or nil, kind, message, path: kind "utf8"
 * (a string or key is not UTF-8) or "encode" (anything else JSON cannot
 * hold); message is "PATH: what" (PATH like $.tags[3]).  Raises only when
 * memory runs out. */
static int l_json_encode(lua_State *L) {
  json_state *j = (json_state *)lua_touserdata(L, lua_upvalueindex(1));
  fp_json_err err;
  if (lua_gettop(L) == 0) lua_pushnil(L);
  j->out.len = 0;
  int rc = fp_json_encode(L, 1, &j->out, &j->scr, &err);
  if (rc == FP_ENOMEM) return luaL_error(L, "not enough memory");
  if (rc != FP_OK) {
    lua_pushnil(L);
    lua_pushstring(L, err.kind);
    lua_pushfstring(L, "%s: %s", err.path, err.msg);
    lua_pushstring(L, err.path);
    return 4;
  }
  lua_pushlstring(L, (const char *)j->out.p, j->out.len);
  if (j->out.cap > FP_JSON_KEEP) fp_buf_free(&j->out);
  if (j->scr.keys.cap > FP_JSON_KEEP || j->scr.cap > FP_JSON_KEEP / 32)
    fp_json_scratch_free(&j->scr);
  return 1;
}

static void push_json_encode(lua_State *L) {
  json_state *j = (json_state *)lua_newuserdata(L, sizeof *j);
  memset(j, 0, sizeof *j);
  if (luaL_newmetatable(L, FP_JSON_MT)) {
    lua_pushcfunction(L, json_state_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_pushcclosure(L, l_json_encode, 1);
}

/* forkpool.core._exit(code): leave the process now (tests, worker helpers). */
static int l__exit(lua_State *L) {
  int code = (int)luaL_optinteger(L, 1, 0);
  fflush(NULL);
  _exit(code);
}

static const luaL_Reg pool_methods[] = {
  {"spawn", l_spawn},           {"send_setup", l_send_setup},
  {"encode", l_encode},           {"send_chunk_packed", l_send_chunk_packed},
  {"send_chunk", l_send_chunk}, {"send_stop", l_send_stop},
  {"send_chunk_lines", l_send_chunk_lines},
  {"cancel", l_cancel},         {"poll", l_poll},
  {"kill", l_kill},             {"worker_status", l_worker_status},
  {"sigint_guard", l_sigint_guard}, {"worker_insights", l_worker_insights},
  {"worker_work", l_worker_work},
  {"close", l_close},           {NULL, NULL},
};

static const luaL_Reg funcs[] = {
  {"new", l_new},
  {"now", l_now},
  {"hot_held", l_hot_held},
  {"hot_table", l_hot_table},
  {"self_pid", l_self_pid},
  {"cfunction", l_cfunction},
  {"shared_alloc", l_shared_alloc},
  {"shared_free", l_shared_free},
  {"shared_contains", l_shared_contains},
  {"shared_size", l_shared_size},
  {"_exit", l__exit},
#ifdef FP_TEST_HOOKS
  {"_fail_fork_after", l_fail_fork_after},
  {"_set_worker_fault", l_set_worker_fault},
  {"_test_lanes", l_test_lanes},
#endif
  {NULL, NULL},
};

FP_EXPORT int luaopen_forkpool_core(lua_State *L);
FP_EXPORT int luaopen_forkpool_core(lua_State *L) {
  /* The arena must exist before any worker is forked (fp_shm.h): its size
   * is fixed now, from FORKPOOL_SHARED_MEMORY (bytes, or with a K/M/G/T
   * suffix; 0: no arena) or by default fp_arena_default_size(). */
  const char *env = getenv("FORKPOOL_SHARED_MEMORY");
  if (env && *env) {
    size_t size;
    if (fp_shm_parse_size(env, &size) != FP_OK)
      return luaL_error(L, "forkpool: FORKPOOL_SHARED_MEMORY must be a size in bytes, "
                           "optionally with a K, M, G or T suffix (got '%s')", env);
    if (fp_arena_init(size, 0) != FP_OK)
      return luaL_error(L, "forkpool: cannot reserve the shared arena of %s bytes "
                           "(FORKPOOL_SHARED_MEMORY): %s", env, strerror(errno));
  } else if (fp_arena_init(fp_arena_default_size(), 1) != FP_OK) {
    return luaL_error(L, "forkpool: cannot reserve the shared arena: %s", strerror(errno));
  }
  if (luaL_newmetatable(L, FP_POOL_MT)) {
    lua_newtable(L);
    luaL_setfuncs(L, pool_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  luaL_setfuncs(L, funcs, 0);
  push_json_encode(L);
  lua_setfield(L, -2, "json_encode");
  lua_pushinteger(L, SIGKILL);
  lua_setfield(L, -2, "SIGKILL");
  lua_pushinteger(L, SIGCONT);
  lua_setfield(L, -2, "SIGCONT");
  return 1;
}
