/*
 * fp_events.c - a pool's poll: reads the workers' result lanes and watches
 * their pidfds, and turns what it finds into events (Lua values: see l_poll
 * in fp_lua.c for the tuples).
 *
 * Invariants:
 *   - nothing in a record is trusted before fp_reply_parse checked its
 *     header against what the parent sent; a record that fails any check
 *     marks its slot corrupt: the process is killed, its lane is never read
 *     again, and only its exit is reported after the "corrupt" event;
 *   - a record is released from its lane only after its event is built (a
 *     Lua error midway leaves it to be read again);
 *   - a worker's exit is reported once its lane is drained (or it is
 *     corrupt), so every result it published arrives before its death;
 *   - slots are served round robin (p->rr), so one busy worker cannot
 *     starve the others' results or deaths.
 */
#include "fp_events.h"
#include "fp_codec.h"
#include "fp_hotmem.h"
#include "fp_packed.h"
#include "fp_proc.h"
#include "fp_sigint.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* How long poll looks at the lanes before it sleeps (see fp_events_poll). */
#define FP_POLL_SPIN_NS 20000

/* ---- names ---- */

static const char *bye_reason(uint32_t r) {
  switch (r) {
  case FP_BYE_STOP: return "stop";
  case FP_BYE_LIFESPAN: return "lifespan";
  case FP_BYE_INIT_FAILED: return "init_failed";
  default: return "unknown";
  }
}

const char *fp_phase_name(uint32_t ph) {
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

/* The event kind of a record whose body is one encoded value, or NULL. */
static const char *value_kind(uint32_t type) {
  switch (type) {
  case FP_M_CHUNK_ERROR: return "chunk_error";
  case FP_M_SETUP_ERROR: return "setup_error";
  case FP_M_INIT_ERROR: return "init_error";
  case FP_M_EXIT_ERROR: return "exit_error";
  case FP_M_EXIT_RESULT: return "exit_result";
  default: return NULL;
  }
}

/* ---- deaths ---- */

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
  lua_pushstring(L, fp_phase_name(atomic_load(&st->phase)));
  lua_setfield(L, -2, "phase");
}

/* The first six fields of an event about worker w that no chunk is part
 * of: kind, wid, job = start = count = index = 0; the caller pushes the
 * value. */
static void push_worker_event(lua_State *L, const char *kind, int w) {
  lua_pushstring(L, kind);
  lua_pushinteger(L, w + 1);
  for (int i = 0; i < 4; i++) lua_pushinteger(L, 0);
}

/* Worker w's process has exited and its lane holds nothing more for us:
 * reap it and push the "exit" event. */
static int report_exit(lua_State *L, fp_pool *p, int w) {
  fp_slot *s = &p->slots[w];
  int status = 0, known = 0;
  pid_t pid = s->pid;
  fp_proc_try_reap(pid, &status, &known);
  fp_slot_forget(s);
  p->rr = (w + 1) % p->n;
  push_worker_event(L, "exit", w);
  push_death(L, p, w, pid, status, known);
  return FP_EVENT_VALUES;
}

/* Worker w wrote something the parent cannot trust: stop reading its lane
 * for good, kill its process (reported as "exit" once reaped) and push the
 * event: "corrupt", wid, message (a printf format and its arguments). */
static int slot_corrupt(lua_State *L, fp_pool *p, int w, const char *fmt, ...) {
  fp_slot *s = &p->slots[w];
  va_list ap;
  s->corrupt = 1;
  if (s->pid > 0) fp_proc_kill(s->pid, SIGKILL);
  push_worker_event(L, "corrupt", w);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  return FP_EVENT_VALUES;
}

/* ---- records ---- */

/* Push helpers[name] (the pool's userdata environment, built by the Lua
 * layer: the codec's cdata helpers, unpack_into). */
static void push_helper(lua_State *L, int pool_idx, const char *name) {
  lua_getfenv(L, pool_idx);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
}

/* The body of a RESULTS record (header h, body from d + pos), by the job's
 * entry in jobs, jobs[h->job]:
 *   a table  the values are stored in it at indexes start .. start+count-1
 *            (a map's results table); pushes true;
 *   true     they go to a fresh array at 1 .. count, which is pushed (calls
 *            consumed a chunk at a time: imap, unordered; indexes far from
 *            1 that come and go would live in a table's hash part and
 *            rehash it over and over);
 *   else     the job is over (stale): the values are dropped; pushes nil.
 * FP_OK, or FP_ECORRUPT with *err set and the stack as it was. */
static int deliver_results(lua_State *L, fp_pool *p, int pool_idx, int jobs_idx,
                           const fp_chunk_hdr *h, const unsigned char *d, size_t len,
                           size_t pos, const fp_dec_opts *o, fp_codec_err *err) {
  int base = lua_gettop(L);
  const char *why = NULL; /* set: a packed body is bad (else err says why) */
  int stale = 0;
  /* Packed bodies (fp_packed.h): raw doubles are copied out of shared
   * memory and checked, and Lua decodes only that copy; string.buffer
   * bodies are decoded in C, straight from the worker's bytes. */
  int packed = (h->flags & FP_CHUNK_PACKED) != 0;
  int sbuf = packed && len - pos >= FP_PACKED_TAG_LEN &&
             memcmp(d + pos, "fp.sbuf\0", FP_PACKED_TAG_LEN) == 0;
  if (packed && !sbuf &&
      fp_packed_copy(&p->dec, d + pos, len - pos, h->count, &p->dec_scratch, &why) != FP_OK)
    goto bad;
  lua_pushnumber(L, (lua_Number)h->job);
  lua_rawget(L, jobs_idx);
  int64_t at = h->start; /* where the chunk's first result goes */
  int fresh = lua_isboolean(L, -1) && lua_toboolean(L, -1);
  /* (a reduced chunk's body is one value, whatever its count) */
  uint32_t nvals = h->index == FP_RESULTS_REDUCED ? 1 : h->count;
  if (fresh) {
    lua_pop(L, 1);
    lua_createtable(L, nvals > INT_MAX ? INT_MAX : (int)nvals, 0);
    at = 1;
  }
  if (!lua_istable(L, -1)) {
    stale = 1;
  } else if (sbuf) {
    if (fp_packed_decode_sbuf(L, lua_gettop(L), at, h->count, d + pos, len - pos, &why) != FP_OK)
      goto bad;
  } else if (packed) {
    /* helpers.unpack_into(results, at, count, addr, len) */
    int t = lua_gettop(L);
    push_helper(L, pool_idx, "unpack_into");
    lua_pushvalue(L, t);
    lua_pushnumber(L, (lua_Number)at);
    lua_pushinteger(L, (lua_Integer)h->count);
    lua_pushnumber(L, (lua_Number)(uintptr_t)p->dec.p);
    lua_pushnumber(L, (lua_Number)p->dec.len);
    /* The arrays made here may be big: their memory is kept mapped for
     * the next results once Lua frees them (fp_hotmem.h). */
    fp_hot_begin(L);
    int prc = lua_pcall(L, 5, 0, 0);
    fp_hot_end(L);
    if (prc != 0) {
      why = lua_isstring(L, -1) ? lua_tostring(L, -1) : "?";
      goto bad;
    }
  } else if (fp_decode_range(L, lua_gettop(L), at, nvals, d, len, &pos, o, err) != FP_OK) {
    goto bad;
  }
  if (stale) {
    lua_settop(L, base);
    lua_pushnil(L);
  } else if (fresh) {
    lua_settop(L, base + 1); /* the array (it took jobs[h->job]'s place) */
  } else {
    lua_settop(L, base);
    lua_pushboolean(L, 1);
  }
  return FP_OK;

bad:
  /* why may live on the stack (a Lua error message): copy it first. */
  if (why) {
    snprintf(err->msg, sizeof err->msg, "bad packed results: %s", why);
    err->path[0] = 0;
  }
  lua_settop(L, base);
  return FP_ECORRUPT;
}

/* Handle one record of worker w's result lane; pushes the event and returns
 * the number of values.  Event: kind, wid, job, start, count, index, value. */
static int handle_record(lua_State *L, fp_pool *p, int pool_idx, int w, int jobs_idx,
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
  push_helper(L, pool_idx, "cdata_new");
  o.cdata_new_idx = lua_gettop(L);
  int base = lua_gettop(L);
  fp_codec_err err;
  int undecodable = 0; /* the body failed to decode: err says why */
  const char *kind;
  switch (type) {
  case FP_M_RESULTS:
    kind = "results";
    /* value: the fresh array, true, or nil (see deliver_results) */
    if (deliver_results(L, p, pool_idx, jobs_idx, &h, d, len, pos, &o, &err) != FP_OK) {
      undecodable = 1;
      goto corrupt;
    }
    break;
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
    kind = value_kind(type);
    if (!kind) goto corrupt;
    if (fp_decode_value(L, d, len, &pos, &o, &err) != FP_OK) {
      undecodable = 1;
      goto corrupt;
    }
    break;
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
  return FP_EVENT_VALUES;

corrupt:
  /* The record stays in the lane: the slot is never read again. */
  lua_settop(L, base);
  if (undecodable)
    return slot_corrupt(L, p, w, "worker %d sent a corrupted record: %s%s%s", w + 1, err.path,
                        err.path[0] ? ": " : "", err.msg);
  return slot_corrupt(L, p, w, "worker %d sent a corrupted record (type %d, %d bytes)", w + 1,
                      (int)type, (int)len);
}

/* ---- the poll loop ---- */

/* Look at every slot once, starting after the last one served.  Returns the
 * number of values pushed (an event), or 0 when there is nothing.  A slot
 * marked corrupt is not read again: only its death is looked at (reading
 * first used to report the same corruption for ever, and the death never). */
static int scan_slots(lua_State *L, fp_pool *p, int pool_idx, int jobs_idx) {
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
      return handle_record(L, p, pool_idx, w, jobs_idx, type, d, len);
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

/* Sleep in poll() on the doorbell and the live slots' pidfds until one is
 * readable or the deadline (0: none) passes.  Returns 1 when something
 * woke us (a doorbell ring is consumed, a readable pidfd marks its slot
 * dead), 0 on timeout, FP_EINTR, or FP_ESYS (errno set). */
static int sleep_until_event(fp_pool *p, uint64_t deadline) {
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
  if (r < 0) return errno == EINTR ? FP_EINTR : FP_ESYS;
  if (r == 0) return 0;
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
  return 1;
}

int fp_events_poll(lua_State *L, fp_pool *p, int pool_idx, int jobs_idx, double timeout) {
  uint64_t deadline = timeout < 0 ? 0 : fp_now_ns() + (uint64_t)(timeout * 1e9);
  for (;;) {
    if (fp_sigint_take((uintptr_t)lua_topointer(L, LUA_REGISTRYINDEX))) {
      lua_pushliteral(L, "interrupted");
      return 1;
    }
    int n = scan_slots(L, p, pool_idx, jobs_idx);
    if (n) return n;
    /* A worker usually answers within microseconds, while sleeping and being
     * woken costs tens of them here: look again for a short while first. */
    if (timeout != 0) {
      uint64_t spin_end = fp_now_ns() + FP_POLL_SPIN_NS;
      while (!n && fp_now_ns() < spin_end) {
        for (int k = 0; k < 16 && !n; k++) n = scan_slots(L, p, pool_idx, jobs_idx);
      }
      if (n) return n;
    }
    /* Announce that we are about to sleep, then look once more: pairs with
     * the fence in the worker's send (fp_worker.c, w_send2). */
    atomic_store(&p->ctl->parent_sleeping, 1);
    atomic_thread_fence(memory_order_seq_cst);
    n = scan_slots(L, p, pool_idx, jobs_idx);
    if (n) {
      atomic_store(&p->ctl->parent_sleeping, 0);
      return n;
    }
    int rc = sleep_until_event(p, deadline);
    if (rc == FP_EINTR) {
      lua_pushliteral(L, "eintr");
      return 1;
    }
    if (rc < 0) return rc;
    if (rc == 0) {
      lua_pushliteral(L, "timeout");
      return 1;
    }
  }
}
