/*
 * fp_hotmem.c - the allocator wrapper of fp_hotmem.h.
 *
 * Invariants of fp_hot (one per Lua state, reached as the allocator's ud):
 *  - every pointer in live[] and kept[] was returned by orig_f and not yet
 *    given back to it; size is what orig_f was asked for, and what Lua
 *    believes (a kept block is reused only for a request of that exact
 *    size);
 *  - live[] holds the big blocks handed to Lua during a decode and not yet
 *    freed; kept[] the ones Lua freed since, unused; no pointer is in both;
 *  - held = the sum of kept[].size <= FP_HOT_CAP.
 * A state is used by one thread at a time, so no lock.
 */
#include "fp_hotmem.h"

#include "fp_common.h"

#include <lauxlib.h>
#include <stdlib.h>

#define HOT_LIVE 64 /* big blocks tracked while Lua holds them */
#define HOT_KEPT 32 /* freed big blocks kept */

typedef struct hot_blk {
  void *p;
  size_t size;
} hot_blk;

typedef struct fp_hot {
  lua_Alloc orig_f;
  void *orig_ud;
  int depth; /* > 0: inside fp_hot_begin / fp_hot_end */
  int nlive, nkept;
  size_t held;
  hot_blk live[HOT_LIVE];
  hot_blk kept[HOT_KEPT];
} fp_hot;

static const char hot_key = 0; /* registry key of the anchor userdata */

static int find(const hot_blk *b, int n, const void *p) {
  for (int i = 0; i < n; i++)
    if (b[i].p == p) return i;
  return -1;
}

static void drop(hot_blk *b, int *n, int i) { b[i] = b[--*n]; }

/* A kept block of exactly nsize bytes, or -1.  Exact, so that Lua's idea
 * of every block's size is always its true size: the original allocator
 * can then take any block back at any time (hot_gc) with the right size,
 * whatever allocator the host gave the state. */
static int exact_fit(const fp_hot *h, size_t nsize) {
  for (int i = 0; i < h->nkept; i++)
    if (h->kept[i].size == nsize) return i;
  return -1;
}

static void *hot_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  fp_hot *h = ud;
  if (ptr && osize >= FP_HOT_MIN) {
    int i = find(h->live, h->nlive, ptr);
    if (i >= 0) {
      hot_blk b = h->live[i];
      drop(h->live, &h->nlive, i);
      if (nsize == 0 && h->nkept < HOT_KEPT && h->held + b.size <= FP_HOT_CAP) {
        h->kept[h->nkept++] = b;
        h->held += b.size;
        return NULL;
      }
      /* Freed past the cap, or resized: an ordinary block from now on. */
    }
  }
  if (!ptr && h->depth > 0 && nsize >= FP_HOT_MIN) {
    int k = exact_fit(h, nsize);
    hot_blk b = {NULL, nsize};
    if (k >= 0) {
      b = h->kept[k];
      drop(h->kept, &h->nkept, k);
      h->held -= b.size;
    } else {
      b.p = h->orig_f(h->orig_ud, NULL, osize, nsize);
      if (!b.p) return NULL;
    }
    if (h->nlive < HOT_LIVE) h->live[h->nlive++] = b;
    return b.p;
  }
  return h->orig_f(h->orig_ud, ptr, osize, nsize);
}

static fp_hot *hot_of(lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  return f == hot_alloc ? ud : NULL;
}

void fp_hot_flush(lua_State *L) {
  fp_hot *h = hot_of(L);
  if (!h) return;
  for (int i = 0; i < h->nkept; i++) h->orig_f(h->orig_ud, h->kept[i].p, h->kept[i].size, 0);
  h->nkept = 0;
  h->held = 0;
}

/* The anchor's __gc: lua_close runs it before freeing the state's memory.
 * The kept blocks go back and the original allocator comes back (blocks
 * Lua still holds have their true size, so it frees them itself), and
 * LuaJIT's close path finds its own allocator again (it destroys its arena
 * only then). */
static int hot_gc(lua_State *L) {
  fp_hot *h = hot_of(L);
  if (!h) return 0;
  fp_hot_flush(L);
  lua_setallocf(L, h->orig_f, h->orig_ud);
  free(h);
  return 0;
}

int fp_hot_install(lua_State *L) {
  if (hot_of(L)) return FP_OK;
  fp_hot *h = calloc(1, sizeof *h);
  if (!h) return FP_ENOMEM;
  h->orig_f = lua_getallocf(L, &h->orig_ud);
  lua_pushlightuserdata(L, (void *)&hot_key);
  lua_newuserdata(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, hot_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_setallocf(L, hot_alloc, h);
  return FP_OK;
}

void fp_hot_begin(lua_State *L) {
  fp_hot *h = hot_of(L);
  if (h) h->depth++;
}

void fp_hot_end(lua_State *L) {
  fp_hot *h = hot_of(L);
  if (h && h->depth > 0) h->depth--;
}

size_t fp_hot_held(lua_State *L) {
  fp_hot *h = hot_of(L);
  return h ? h->held : 0;
}
