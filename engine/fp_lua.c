/*
 * fp_lua.c - the Lua binding: module forkpool.core, one userdata type (the
 * engine side of a pool).  The only file that turns engine error codes into
 * Lua errors; the scheduling policy lives in lua/forkpool/init.lua.
 *
 * A core pool owns, in the parent:
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
 * Invariant: a slot with pid != 0 has a live or not-yet-reaped process and
 * an open pidfd; its lanes are mapped.  Methods may only be called by the
 * process that created the pool (owner): a worker holds a copy of the
 * userdata and must never act on it (__gc in a worker does nothing).
 */
#include "fp_codec.h"
#include "fp_packed.h"
#include "fp_reply.h"
#include "fp_proc.h"
#include "fp_proto.h"
#include "fp_ring.h"
#include "fp_shm.h"
#include "fp_worker.h"
#include "fp_luajit.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define FP_POOL_MT "forkpool.core.pool"

/* How long poll looks at the lanes before it sleeps (see l_poll). */
#define FP_POLL_SPIN_NS 20000

/* Default ring capacity per lane (records above a quarter of it go through
 * the lane's big area). */
#define FP_DEFAULT_RING (1u << 20)

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

typedef struct fp_pool {
  pid_t owner;
  int closed;
  int n;
  fp_ctl *ctl;
  fp_wstat *stats;
  size_t stats_len;
  int doorbell;
  fp_slot *slots;
  struct pollfd *pfds;
  int *pfd_slot;
  fp_buf enc;
  size_t ring_cap, big_cap;  /* big_cap: also the stride of the regions */
  int bigfd;
  int rr;
  fp_buf dec, dec_scratch;  /* private copies of packed result bodies (fp_packed.h) */
  struct fp_pool *next_live; /* the registry of live pools (live_pools) */
  int close_fds;             /* close_fds option: close inherited fds in workers */
  int *keep_fds, nkeep_fds;  /* ... but these (the option's list) */
} fp_pool;

/* ---- the registry of this process's live pools ----
 *
 * A worker is forked with every mapping of its process: without this, a
 * worker of pool B would keep pool A's lanes, control page and stats mapped
 * (A's memory outlives A:close() while B lives, and B's workers could write
 * into A's lanes).  The child unmaps every pool but its own (pools_forget),
 * and the last pool closed closes the lifeline (fp_proc.c). */
static fp_pool *live_pools;

static void pools_add(fp_pool *p) {
  p->next_live = live_pools;
  live_pools = p;
}

static void pools_remove(fp_pool *p) {
  for (fp_pool **pp = &live_pools; *pp; pp = &(*pp)->next_live) {
    if (*pp == p) {
      *pp = p->next_live;
      p->next_live = NULL;
      break;
    }
  }
  if (!live_pools) fp_proc_lifeline_close();
}

#ifdef FP_TEST_HOOKS
/* Test hook state (core._set_worker_fault): arm only this worker id. */
static int fault_wid;
/* In a worker: its own slot (core._test_lanes), so hostile specs can
 * scribble on its lanes. */
static fp_slot *test_slot;
#endif

/* ---- helpers ---- */

static fp_pool *check_pool(lua_State *L) {
  fp_pool *p = (fp_pool *)luaL_checkudata(L, 1, FP_POOL_MT);
  /* getpid(), not fp_proc_self(): that cache is refreshed only in forkpool's
   * own children, and a process the host forked (a daemon, a pre-fork
   * server) must be able to make and use pools of its own. */
  if (p->owner != getpid())
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

/* Push the pool's helpers table (its userdata environment). */
static void push_helpers(lua_State *L, int pool_idx) {
  lua_getfenv(L, pool_idx);
}

static void slot_forget(fp_slot *s) {
  if (s->pidfd >= 0) {
    fp_proc_untrack_fd(s->pidfd);
    close(s->pidfd);
  }
  s->pidfd = -1;
  s->pid = 0;
  s->dead = 0;
  s->corrupt = 0;
  fp_sentq_clear(&s->sent);
}

/* Unmap a slot's lanes.  discard: also give their big areas' memory back
 * (the owner, once the slot's process is gone; never a worker, for which
 * the other slots' lanes are live). */
static void slot_unmap(fp_slot *s, int discard) {
  if (discard) {
    fp_lane_discard_big(&s->tasks);
    fp_lane_discard_big(&s->results);
  }
  fp_lane_destroy(&s->tasks);
  fp_lane_destroy(&s->results);
}

/* In a fresh worker of pool keep: unmap every other pool's shared memory
 * (their fds are closed with the fd registry) and forget the registry: the
 * pools are not this process's. */
static void pools_forget(fp_pool *keep) {
  for (fp_pool *q = live_pools; q; q = q->next_live) {
    if (q == keep) continue;
    if (q->slots)
      for (int i = 0; i < q->n; i++) slot_unmap(&q->slots[i], 0);
    fp_shm_unmap(q->ctl, sizeof(fp_ctl));
    q->ctl = NULL;
    fp_shm_unmap(q->stats, q->stats_len);
    q->stats = NULL;
    q->owner = 0;
    q->closed = 1;
  }
  live_pools = NULL;
}

/* Kill and reap every live worker, unmap and close everything.  Idempotent;
 * safe on a half-built pool. */
static void pool_release(fp_pool *p) {
  if (p->slots) {
    for (int i = 0; i < p->n; i++) {
      fp_slot *s = &p->slots[i];
      if (s->pid > 0) {
        fp_proc_kill(s->pid, SIGKILL);
        /* SIGKILL cannot be caught: the wait is short; bounded anyway. */
        if (s->pidfd >= 0) fp_proc_wait_exit(s->pidfd, 5000);
        int st, known;
        fp_proc_try_reap(s->pid, &st, &known);
      }
      slot_forget(s);
      slot_unmap(s, 1);
      fp_sentq_free(&s->sent);
    }
    free(p->slots);
    p->slots = NULL;
  }
  free(p->pfds);
  p->pfds = NULL;
  free(p->pfd_slot);
  p->pfd_slot = NULL;
  if (p->doorbell >= 0) {
    fp_proc_untrack_fd(p->doorbell);
    close(p->doorbell);
    p->doorbell = -1;
  }
  if (p->bigfd >= 0) {
    fp_proc_untrack_fd(p->bigfd);
    close(p->bigfd);
    p->bigfd = -1;
  }
  fp_shm_unmap(p->ctl, sizeof(fp_ctl));
  p->ctl = NULL;
  fp_shm_unmap(p->stats, p->stats_len);
  p->stats = NULL;
  fp_buf_free(&p->enc);
  fp_buf_free(&p->dec);
  fp_buf_free(&p->dec_scratch);
  free(p->keep_fds);
  p->keep_fds = NULL;
  p->nkeep_fds = 0;
  p->closed = 1;
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

  /* Created closed, then opened: an error midway leaves a consistent
   * object that __gc can release. */
  fp_pool *p = (fp_pool *)lua_newuserdata(L, sizeof *p);
  memset(p, 0, sizeof *p);
  p->closed = 1;
  p->doorbell = -1;
  p->bigfd = -1;
  p->owner = getpid();
  luaL_getmetatable(L, FP_POOL_MT);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 2);
  lua_setfenv(L, -2);
  pools_add(p); /* removed by close / __gc, however far l_new got */

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
  p->doorbell = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (p->doorbell < 0)
    return luaL_error(L, "forkpool: eventfd: %s", strerror(errno));
  fp_proc_track_fd(p->doorbell);
  p->bigfd = fp_shm_file();
  if (p->bigfd < 0)
    return luaL_error(L, "forkpool: cannot create shared memory: %s", strerror(errno));
  fp_proc_track_fd(p->bigfd);
  p->closed = 0;
  return 1;
}

/* ---- pool:spawn(wid, ctx) -> pid | nil, message, errno ---- */

static int l_spawn(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  fp_slot *s = &p->slots[w];
  if (s->pid > 0) return luaL_error(L, "forkpool: worker %d is still running", w + 1);
  slot_unmap(s, 1);
  uint64_t region = (uint64_t)p->big_cap * 2 * (uint64_t)w;
  if (fp_lane_create_at(&s->tasks, p->ring_cap, p->big_cap, p->bigfd, region) != FP_OK ||
      fp_lane_create_at(&s->results, p->ring_cap, p->big_cap, p->bigfd,
                        region + p->big_cap) != FP_OK) {
    int e = errno;
    slot_unmap(s, 0);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot map shared memory for worker %d: %s", w + 1, strerror(e));
    lua_pushinteger(L, e);
    return 3;
  }
  memset(&p->stats[w], 0, sizeof p->stats[w]);
  atomic_store(&p->stats[w].exit_code, -1);
  atomic_store(&p->stats[w].start_ns, fp_now_ns());
  /* cpu_ids: the CPUs to pin this worker to (ids checked by the Lua layer). */
  cpu_set_t cpus;
  int pin = 0;
  CPU_ZERO(&cpus);
  lua_getfield(L, 3, "cpus");
  if (lua_istable(L, -1)) {
    pin = 1;
    for (int i = 1; i <= (int)lua_objlen(L, -1); i++) {
      lua_rawgeti(L, -1, i);
      int id = (int)lua_tointeger(L, -1);
      if (id >= 0 && id < CPU_SETSIZE) CPU_SET(id, &cpus);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  /* Buffered output would otherwise be copied into the child and printed
   * twice. */
  fflush(NULL);
  pid_t parent = getpid(), pid;
  int pidfd;
  if (fp_proc_fork(&pid, &pidfd) != FP_OK) {
    int e = errno;
    slot_unmap(s, 0);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot start worker %d: fork: %s", w + 1, strerror(e));
    lua_pushinteger(L, e);
    return 3;
  }
  if (pid == 0) {
    /* Child: drop other workers' lanes; of forkpool's fds keep only our
     * pool's doorbell and big-area file. */
    for (int i = 0; i < p->n; i++)
      if (i != w) slot_unmap(&p->slots[i], 0);
    pools_forget(p);
    int keep[2] = {p->doorbell, p->bigfd};
    fp_proc_close_tracked_except(keep, 2);
    if (p->close_fds) {
      /* The option: nothing inherited from the host but 0-2, the listed
       * fds and the engine's own (keep_fds has room for those 3). */
      int k = p->nkeep_fds;
      p->keep_fds[k++] = p->doorbell;
      p->keep_fds[k++] = p->bigfd;
      p->keep_fds[k++] = fp_proc_lifeline_fd();
      fp_proc_close_fds_except(p->keep_fds, k);
    }
    fp_proc_child_init(parent);
    fp_proc_child_last_words(&p->stats[w].fatal_signal);
#ifdef FP_TEST_HOOKS
    if (fault_wid && fault_wid != w + 1) fp_worker_set_fault(0, 0, 0);
    test_slot = s;
#endif
    if (pin) sched_setaffinity(0, sizeof cpus, &cpus);
    fp_worker_io io;
    memset(&io, 0, sizeof io);
    io.tasks = s->tasks;
    io.results = s->results;
    io.st = &p->stats[w];
    io.ctl = p->ctl;
    io.doorbell = p->doorbell;
    io.parent = parent;
    p->owner = 0; /* this copy of the pool is not ours to drive */
    fp_worker_main(L, 3, &io);
  }
  /* Pin from this side too, so the worker is pinned by the time spawn
   * returns, whatever the scheduler ran first (the child's own call alone
   * left a window in which worker_pids() showed an unpinned worker). */
  if (pin) sched_setaffinity(pid, sizeof cpus, &cpus);
  s->pid = pid;
  s->pidfd = pidfd;
  s->dead = 0;
  lua_pushinteger(L, pid);
  return 1;
}

/* ---- sending ---- */

/* After an encode failure, push nil, "marshal", message, path. */
static int push_marshal(lua_State *L, int rc, const fp_codec_err *err) {
  lua_pushnil(L);
  lua_pushliteral(L, "marshal");
  if (rc == FP_EMARSHAL) {
    lua_pushfstring(L, "%s: %s", err->path, err->msg);
    lua_pushstring(L, err->path);
  } else {
    lua_pushstring(L, fp_strerror(rc));
    lua_pushnil(L);
  }
  return 4;
}

static void enc_opts(lua_State *L, int pool_idx, int modmap_idx, fp_enc_opts *o) {
  o->flags = FP_ENC_FUNCTIONS;
  o->modmap_idx = lua_istable(L, modmap_idx) ? modmap_idx : 0;
  push_helpers(L, pool_idx);
  lua_getfield(L, -1, "cdata_kind");
  lua_remove(L, -2);
  o->cdata_idx = lua_gettop(L);
}

/* Returns true, or false when the lane is full now, or nil + error. */
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
  if (rc == FP_ECORRUPT) {
    /* The worker scribbled on its task lane's shared header: it gets
     * nothing more and is killed (poll reports its exit). */
    s->corrupt = 1;
    fp_proc_kill(s->pid, SIGKILL);
  }
  lua_pushnil(L);
  lua_pushliteral(L, "marshal");
  if (rc == FP_E2BIG)
    lua_pushfstring(L, "record of %f bytes is too large to send", (double)(alen + blen));
  else if (rc == FP_ECORRUPT)
    lua_pushfstring(L, "cannot send to worker %d: it corrupted its task lane's shared header "
                       "(the worker was killed)", w + 1);
  else
    lua_pushfstring(L, "cannot send to worker %d: %s", w + 1, fp_strerror(rc));
  return 3;
}

/* pool:encode(value [, modmap]) -> string | nil, "marshal", message, path:
 * the wire encoding of a value as it would be shipped to a worker
 * (functions by value, modules by name).  The scheduler encodes a job's
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

/* pool:send_setup(wid, id, drop, bytes): install the encoded {fn=, exit=}
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

/* pool:send_chunk(wid, job, fn, start, count [, items [, modmap [, flags
 * [, first]]]]): run function fn (see fp_chunk_hdr) over items
 * start..start+count-1 of job.  items nil means the worker has them in
 * memory (it was forked during this job); otherwise items[first ..
 * first+count-1] are sent (first defaults to start).  flags: a string with
 * "t" (timed: stamp each item's start, a task_timeout is set) and/or "s"
 * (star: each item is an array of arguments). */
/* The arguments both chunk senders share: (pool, wid, job, fn, start,
 * count), and the flags string at flags_arg ("t" timed, "s" star). */
static void check_chunk_args(lua_State *L, fp_chunk_hdr *h, int flags_arg) {
  memset(h, 0, sizeof *h);
  h->job = (uint64_t)luaL_checknumber(L, 3);
  h->fn = (uint64_t)luaL_checknumber(L, 4);
  h->start = (int64_t)luaL_checknumber(L, 5);
  h->count = (uint32_t)luaL_checkinteger(L, 6);
  const char *fl = luaL_optstring(L, flags_arg, "");
  if (strchr(fl, 't')) h->flags |= FP_CHUNK_TIMED;
  if (strchr(fl, 's')) h->flags |= FP_CHUNK_STAR;
}

static int l_send_chunk(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  fp_chunk_hdr h;
  check_chunk_args(L, &h, 9);
  p->enc.len = 0;
  if (lua_isnoneornil(L, 7)) {
    h.flags |= FP_CHUNK_INHERITED;
  } else {
    luaL_checktype(L, 7, LUA_TTABLE);
    int64_t first = (int64_t)luaL_optnumber(L, 10, (lua_Number)h.start);
    fp_enc_opts o;
    fp_codec_err err;
    enc_opts(L, 1, 8, &o);
    int rc = fp_encode_range(L, 7, first, h.count, &p->enc, &o, "item", h.start, &err);
    if (rc != FP_OK) return push_marshal(L, rc, &err);
  }
  return send_record(L, p, w, FP_M_CHUNK, &h, sizeof h, p->enc.p, p->enc.len);
}

/* pool:send_chunk_packed(wid, job, fn, start, count, addr, len [, flags]):
 * like send_chunk, the items being one string.buffer encoding of an array
 * of scalars at addr (a number), len bytes (forkpool.worker.pack). */
static int l_send_chunk_packed(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  fp_chunk_hdr h;
  check_chunk_args(L, &h, 9);
  h.flags |= FP_CHUNK_PACKED;
  const void *body = (const void *)(uintptr_t)luaL_checknumber(L, 7);
  size_t blen = (size_t)luaL_checknumber(L, 8);
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

static const char *bye_reason(uint32_t r) {
  switch (r) {
  case FP_BYE_STOP: return "stop";
  case FP_BYE_LIFESPAN: return "lifespan";
  case FP_BYE_INIT_FAILED: return "init_failed";
  default: return "unknown";
  }
}

static const char *phase_name(uint32_t ph) {
  switch (ph) {
  case FP_PH_START: return "start";
  case FP_PH_INIT: return "worker_init";
  case FP_PH_IDLE: return "idle";
  case FP_PH_DECODE: return "decode";
  case FP_PH_TASK: return "task";
  case FP_PH_ENCODE: return "encode";
  case FP_PH_EXIT: return "worker_exit";
  default: return "unknown";
  }
}

/* Push a table describing how a dead worker ended. */
static void push_death(lua_State *L, fp_pool *p, int w, pid_t pid, int status, int known) {
  fp_wstat *st = &p->stats[w];
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, pid);
  lua_setfield(L, -2, "pid");
  if (!known) {
    /* The host reaped it: fall back on the worker's last words. */
    int sig = atomic_load(&st->fatal_signal), code = atomic_load(&st->exit_code);
    if (sig > 0) {
      status = sig; /* the wait status of "killed by sig" */
      known = 1;
    } else if (code >= 0) {
      status = (code & 0xff) << 8;
      known = 1;
    }
  }
  if (!known) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "status_unknown");
  } else if (WIFSIGNALED(status)) {
    lua_pushstring(L, fp_proc_signame(WTERMSIG(status)));
    lua_setfield(L, -2, "signal");
    lua_pushinteger(L, WTERMSIG(status));
    lua_setfield(L, -2, "signo");
  } else if (WIFEXITED(status)) {
    lua_pushinteger(L, WEXITSTATUS(status));
    lua_setfield(L, -2, "exit_code");
  }
  int64_t cur = atomic_load(&st->cur_index);
  if (cur > 0) {
    lua_pushnumber(L, (lua_Number)cur);
    lua_setfield(L, -2, "index");
    lua_pushnumber(L, (lua_Number)atomic_load(&st->cur_job));
    lua_setfield(L, -2, "job");
  }
  lua_pushstring(L, phase_name(atomic_load(&st->phase)));
  lua_setfield(L, -2, "phase");
}

/* Worker w wrote something the parent cannot trust: stop reading its lane
 * for good, kill its process (reported as "exit" once reaped) and push the
 * event: "corrupt", wid, message (a printf format and its arguments). */
static int slot_corrupt(lua_State *L, fp_pool *p, int w, const char *fmt, ...) {
  fp_slot *s = &p->slots[w];
  va_list ap;
  s->corrupt = 1;
  if (s->pid > 0) fp_proc_kill(s->pid, SIGKILL);
  lua_pushliteral(L, "corrupt");
  lua_pushinteger(L, w + 1);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  return 3;
}

/* Handle one record of worker w's result lane; pushes the event and returns
 * the number of values.  Event: kind, wid, job, start, count, index, value. */
static int handle_record(lua_State *L, fp_pool *p, int w, int jobs_idx,
                         uint32_t type, const unsigned char *d, size_t len) {
  fp_slot *s = &p->slots[w];
  fp_chunk_hdr h;
  size_t pos;
  const char *why;
  /* The header, checked against what we sent (fp_reply.h): nothing after
   * this trusts a count we did not choose. */
  if (fp_reply_parse(&s->sent, type, d, len, &h, &pos, &why) != FP_OK)
    return slot_corrupt(L, p, w, "worker %d sent a corrupted record (type %d, %d bytes): %s",
                        w + 1, (int)type, (int)len, why);
  fp_dec_opts o = {.flags = 0, .require_idx = 0, .cdata_new_idx = 0};
  push_helpers(L, 1);
  lua_getfield(L, -1, "cdata_new");
  lua_remove(L, -2);
  o.cdata_new_idx = lua_gettop(L);
  int base = lua_gettop(L);
  fp_codec_err err;
  const char *kind;
  int stale = 0;
  switch (type) {
  case FP_M_RESULTS: {
    kind = "results";
    /* Packed bodies (fp_packed.h): raw doubles are copied out of shared
     * memory and checked, and Lua decodes only that copy; string.buffer
     * bodies are decoded in C, straight from the worker's bytes. */
    int sbuf = (h.flags & FP_CHUNK_PACKED) && len - pos >= FP_PACKED_TAG_LEN &&
               memcmp(d + pos, "fp.sbuf\0", FP_PACKED_TAG_LEN) == 0;
    if ((h.flags & FP_CHUNK_PACKED) && !sbuf) {
      int rc = fp_packed_copy(&p->dec, d + pos, len - pos, h.count, &p->dec_scratch, &why);
      if (rc != FP_OK) {
        snprintf(err.msg, sizeof err.msg, "bad packed results: %s", why);
        err.path[0] = 0;
        goto corrupt_err;
      }
    }
    lua_pushnumber(L, (lua_Number)h.job);
    lua_rawget(L, jobs_idx);
    int64_t at = h.start; /* where the chunk's first result goes */
    if (lua_istable(L, -1)) {
      /* A stage marked per_chunk (jobs consumed a chunk at a time: imap,
       * unordered) gets each chunk's results as a fresh array stored at
       * stage[start]: indexes far from 1 that come and go would otherwise
       * live in the stage's hash part and rehash it over and over. */
      lua_getfield(L, -1, "per_chunk");
      int per_chunk = lua_toboolean(L, -1);
      lua_pop(L, 1);
      if (per_chunk) {
        lua_createtable(L, h.count > INT_MAX ? INT_MAX : (int)h.count, 0);
        lua_pushnumber(L, (lua_Number)h.start);
        lua_pushvalue(L, -2);
        lua_rawset(L, -4);
        lua_remove(L, -2);
        at = 1;
      }
    }
    if (lua_istable(L, -1) && sbuf) {
      int rc = fp_packed_decode_sbuf(L, lua_gettop(L), at, h.count, d + pos, len - pos, &why);
      if (rc != FP_OK) {
        snprintf(err.msg, sizeof err.msg, "bad packed results: %s", why);
        err.path[0] = 0;
        goto corrupt_err;
      }
    } else if (lua_istable(L, -1) && (h.flags & FP_CHUNK_PACKED)) {
      /* helpers.unpack_into(results, at, count, addr, len) */
      int t = lua_gettop(L);
      push_helpers(L, 1);
      lua_getfield(L, -1, "unpack_into");
      lua_remove(L, -2);
      lua_pushvalue(L, t);
      lua_pushnumber(L, (lua_Number)at);
      lua_pushinteger(L, (lua_Integer)h.count);
      lua_pushnumber(L, (lua_Number)(uintptr_t)p->dec.p);
      lua_pushnumber(L, (lua_Number)p->dec.len);
      if (lua_pcall(L, 5, 0, 0) != 0) {
        snprintf(err.msg, sizeof err.msg, "bad packed results: %s",
                 lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
        err.path[0] = 0;
        goto corrupt_err;
      }
    } else if (lua_istable(L, -1)) {
      int rc = fp_decode_range(L, lua_gettop(L), at, h.count, d, len, &pos, &o, &err);
      if (rc != FP_OK) goto corrupt_err;
    } else {
      stale = 1;
    }
    lua_settop(L, base);
    lua_pushboolean(L, stale); /* value: whether the job was unknown */
    break;
  }
  case FP_M_TASK_ERROR: kind = "task_error"; goto with_value;
  case FP_M_MARSHAL_ERROR: kind = "marshal_error"; goto with_value;
  case FP_M_SETUP_ERROR: kind = "setup_error"; goto with_value;
  case FP_M_INIT_ERROR: kind = "init_error"; goto with_value;
  case FP_M_EXIT_ERROR: kind = "exit_error"; goto with_value;
  case FP_M_EXIT_RESULT: kind = "exit_result"; goto with_value;
  with_value: {
    int rc = fp_decode_value(L, d, len, &pos, &o, &err);
    if (rc != FP_OK) goto corrupt_err;
    break;
  }
  case FP_M_CANCELLED:
    kind = "cancelled";
    lua_pushnil(L);
    break;
  case FP_M_READY:
    kind = "ready";
    lua_pushnil(L);
    break;
  case FP_M_BYE: {
    fp_bye b;
    if (len < sizeof b) goto corrupt;
    memcpy(&b, d, sizeof b);
    kind = "bye";
    lua_pushstring(L, bye_reason(b.reason));
    break;
  }
  default:
    goto corrupt;
  }
  if (fp_lane_release(&s->results)) fp_lane_wake_producer(&s->results);
  /* value is on top; build the event under it */
  lua_pushstring(L, kind);
  lua_pushinteger(L, w + 1);
  lua_pushnumber(L, (lua_Number)h.job);
  lua_pushnumber(L, (lua_Number)h.start);
  lua_pushinteger(L, (lua_Integer)h.count);
  lua_pushnumber(L, (lua_Number)h.index);
  lua_pushvalue(L, base + 1);
  return 7;

corrupt_err:
  lua_settop(L, base);
  return slot_corrupt(L, p, w, "worker %d sent a corrupted record: %s%s%s", w + 1, err.path,
                      err.path[0] ? ": " : "", err.msg);
corrupt:
  return slot_corrupt(L, p, w, "worker %d sent a corrupted record (type %d, %d bytes)", w + 1,
                      (int)type, (int)len);
}

/* Worker w's process has exited and its lane holds nothing more for us:
 * reap it and push the "exit" event. */
static int report_exit(lua_State *L, fp_pool *p, int w) {
  fp_slot *s = &p->slots[w];
  int status = 0, known = 0;
  pid_t pid = s->pid;
  fp_proc_try_reap(pid, &status, &known);
  slot_forget(s);
  p->rr = (w + 1) % p->n;
  lua_pushliteral(L, "exit");
  lua_pushinteger(L, w + 1);
  push_death(L, p, w, pid, status, known);
  return 3;
}

/* Look at every slot once, starting after the last one served.  Returns the
 * number of values pushed (an event), or 0 when there is nothing.  A slot
 * marked corrupt is not read again: only its death is looked at (reading
 * first used to report the same corruption for ever, and the death never). */
static int scan_slots(lua_State *L, fp_pool *p, int jobs_idx) {
  for (int k = 0; k < p->n; k++) {
    int w = (p->rr + k) % p->n;
    fp_slot *s = &p->slots[w];
    if (!s->results.h) continue;
    if (s->corrupt) {
      if (s->dead && s->pid > 0) return report_exit(L, p, w);
      continue;
    }
    uint32_t type;
    const unsigned char *d;
    size_t len;
    int rc = fp_lane_peek(&s->results, &type, &d, &len);
    if (rc == FP_OK) {
      p->rr = (w + 1) % p->n;
      return handle_record(L, p, w, jobs_idx, type, d, len);
    }
    if (rc == FP_ECORRUPT || rc == FP_ENOMEM) {
      p->rr = (w + 1) % p->n;
      if (rc == FP_ECORRUPT)
        return slot_corrupt(L, p, w, "worker %d wrote a corrupted result lane header", w + 1);
      return slot_corrupt(L, p, w, "cannot map a large record from worker %d: %s", w + 1,
                          strerror(errno));
    }
    /* Its lane is drained: everything it published has been delivered. */
    if (s->dead && s->pid > 0) return report_exit(L, p, w);
  }
  return 0;
}

/*
 * pool:poll(jobs, timeout) -> event
 *   jobs: table job id -> results table (RESULTS of other jobs are dropped)
 *   timeout: seconds (negative: no limit)
 * Events (kind, wid, ...):
 *   "results", wid, job, start, count, 0, stale
 *   "task_error"|"marshal_error"|"setup_error", wid, job, start, count, index, err
 *   "cancelled", wid, job, start, count
 *   "init_error"|"exit_error"|"exit_result", wid, 0, 0, 0, 0, value
 *   "ready", wid                worker_init finished
 *   "bye", wid, 0, 0, 0, 0, reason
 *   "exit", wid, {pid=, signal=|exit_code=|status_unknown=, index=, job=, phase=}
 *   "corrupt", wid, message
 *   "timeout"            nothing arrived in time
 *   "interrupted"        SIGINT arrived while the guard was armed
 *   "eintr"              a signal interrupted the wait (the caller decides)
 */
static int l_poll(lua_State *L) {
  fp_pool *p = check_pool(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  double timeout = luaL_optnumber(L, 3, -1);
  uint64_t deadline = timeout < 0 ? 0 : fp_now_ns() + (uint64_t)(timeout * 1e9);
  lua_settop(L, 3);
  for (;;) {
    if (fp_proc_sigint_take()) {
      lua_pushliteral(L, "interrupted");
      return 1;
    }
    int n = scan_slots(L, p, 2);
    if (n) return n;
    /* A worker usually answers within microseconds, while sleeping and being
     * woken costs tens of them here: look again for a short while first. */
    if (timeout != 0) {
      uint64_t spin_end = fp_now_ns() + FP_POLL_SPIN_NS;
      while (!n && fp_now_ns() < spin_end) {
        for (int k = 0; k < 16 && !n; k++) n = scan_slots(L, p, 2);
      }
      if (n) return n;
    }
    /* Announce that we are about to sleep, then look once more: pairs with
     * the fence in the worker's send (fp_worker.c, w_send2). */
    atomic_store(&p->ctl->parent_sleeping, 1);
    atomic_thread_fence(memory_order_seq_cst);
    n = scan_slots(L, p, 2);
    if (n) {
      atomic_store(&p->ctl->parent_sleeping, 0);
      return n;
    }
    int nfds = 0;
    p->pfds[nfds].fd = p->doorbell;
    p->pfds[nfds].events = POLLIN;
    p->pfd_slot[nfds++] = -1;
    for (int w = 0; w < p->n; w++) {
      fp_slot *s = &p->slots[w];
      if (s->pid > 0 && !s->dead) {
        p->pfds[nfds].fd = s->pidfd;
        p->pfds[nfds].events = POLLIN;
        p->pfd_slot[nfds++] = w;
      }
    }
    int ms = -1;
    if (deadline) {
      uint64_t now = fp_now_ns();
      ms = now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
    }
    int r = poll(p->pfds, (nfds_t)nfds, ms);
    atomic_store(&p->ctl->parent_sleeping, 0);
    if (r < 0) {
      if (errno == EINTR) {
        lua_pushliteral(L, "eintr");
        return 1;
      }
      return luaL_error(L, "forkpool: poll: %s", strerror(errno));
    }
    if (r == 0) {
      lua_pushliteral(L, "timeout");
      return 1;
    }
    for (int i = 0; i < nfds; i++) {
      if (!p->pfds[i].revents) continue;
      if (p->pfd_slot[i] < 0) {
        uint64_t v;
        ssize_t rd = read(p->doorbell, &v, sizeof v);
        (void)rd;
      } else {
        p->slots[p->pfd_slot[i]].dead = 1;
      }
    }
  }
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

/* pool:wait_exit(wid, timeout) -> true when the worker's process has exited
 * (it is reported by poll as "exit" later), false on timeout. */
static int l_wait_exit(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  double t = luaL_checknumber(L, 3);
  fp_slot *s = &p->slots[w];
  if (s->pid <= 0 || s->dead) {
    lua_pushboolean(L, 1);
    return 1;
  }
  uint64_t deadline = fp_now_ns() + (uint64_t)(t * 1e9);
  for (;;) {
    uint64_t now = fp_now_ns();
    int ms = now >= deadline ? 0 : (int)((deadline - now) / 1000000);
    int rc = fp_proc_wait_exit(s->pidfd, ms);
    if (rc == FP_OK) { s->dead = 1; lua_pushboolean(L, 1); return 1; }
    if (rc == FP_ETIMEOUT) { lua_pushboolean(L, 0); return 1; }
    if (rc != FP_EINTR) return luaL_error(L, "forkpool: poll: %s", strerror(errno));
  }
}

/* pool:pid(wid) -> pid or nil */
static int l_pid(lua_State *L) {
  fp_pool *p = check_pool(L);
  int w = check_wid(L, p, 2);
  if (p->slots[w].pid > 0) lua_pushinteger(L, p->slots[w].pid);
  else lua_pushnil(L);
  return 1;
}

/* pool:sigint_guard(on): while on, SIGINT only wakes poll, which then
 * returns "interrupted" (the previous handler is restored when off).
 * Returns whether the guard is armed (false when the host ignores SIGINT). */
static int l_sigint_guard(lua_State *L) {
  fp_pool *p = check_pool(L);
  if (lua_toboolean(L, 2)) {
    lua_pushboolean(L, fp_proc_sigint_arm(p->doorbell));
  } else {
    fp_proc_sigint_disarm();
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
  lua_pushstring(L, phase_name(atomic_load(&st->phase)));
  lua_setfield(L, -2, "phase");
  lua_pushnumber(L, (lua_Number)atomic_load(&st->cur_index));
  lua_setfield(L, -2, "index");
  lua_pushnumber(L, (lua_Number)atomic_load(&st->items_done));
  lua_setfield(L, -2, "items_done");
  lua_pushnumber(L, (lua_Number)atomic_load(&st->cur_job));
  lua_setfield(L, -2, "job");
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
  pools_remove(p);
  if (p->owner != getpid()) return 0; /* a worker's copy: not ours */
  if (!p->closed || p->slots) pool_release(p);
  free(p->keep_fds); /* l_new may fail before anything pool_release frees */
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
  if (rc != FP_OK) {
    lua_pushnil(L);
    if (rc == FP_ESYS)
      lua_pushstring(L, "shared arrays can only be made by the process that loaded forkpool");
    else
      lua_pushfstring(L, "out of shared memory (the arena holds %f MiB; set FORKPOOL_SHARED_MEMORY "
                         "before loading forkpool for more)", (double)fp_arena_size() / 1048576.0);
    return 2;
  }
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
  {"cancel", l_cancel},         {"poll", l_poll},
  {"kill", l_kill},             {"wait_exit", l_wait_exit},
  {"pid", l_pid},               {"worker_status", l_worker_status},
  {"sigint_guard", l_sigint_guard}, {"worker_insights", l_worker_insights},
  {"close", l_close},           {NULL, NULL},
};

static const luaL_Reg funcs[] = {
  {"new", l_new},
  {"now", l_now},
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
  lua_pushinteger(L, SIGKILL);
  lua_setfield(L, -2, "SIGKILL");
  lua_pushinteger(L, SIGTERM);
  lua_setfield(L, -2, "SIGTERM");
  lua_pushinteger(L, SIGCONT);
  lua_setfield(L, -2, "SIGCONT");
  return 1;
}
