/*
 * test_hotmem.c - unit tests of the allocator wrapper that keeps big result
 * arrays mapped (engine/fp_hotmem.c).
 *
 * Each test runs a Lua state made with a recording allocator: it knows
 * every live block and its size, counts the calls that pass a size other
 * than the block's true one (fp_hotmem must never do that: a host's
 * allocator may rely on it), and after lua_close finds no block left.
 */
#include "fp_common.h"
#include "fp_hotmem.h"
#include "fp_test.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#define REC_SLOTS (1 << 20)

typedef struct rec {
  void **p;
  size_t *size;
  long live, mismatches, big_allocs;
} rec;

static rec R;

static size_t slot_of(const void *p) {
  size_t h = ((size_t)(uintptr_t)p >> 4) * 0x9e3779b97f4a7c15u;
  return h & (REC_SLOTS - 1);
}

static void rec_add(void *p, size_t size) {
  size_t i = slot_of(p);
  while (R.p[i]) i = (i + 1) & (REC_SLOTS - 1);
  R.p[i] = p;
  R.size[i] = size;
  R.live++;
}

/* Removes p; returns its recorded size (0: unknown block). */
static size_t rec_take(void *p) {
  size_t i = slot_of(p);
  while (R.p[i] && R.p[i] != p) i = (i + 1) & (REC_SLOTS - 1);
  if (!R.p[i]) return 0;
  size_t size = R.size[i];
  /* Delete with backward shift so probe chains stay whole. */
  size_t j = i;
  for (;;) {
    j = (j + 1) & (REC_SLOTS - 1);
    if (!R.p[j]) break;
    size_t k = slot_of(R.p[j]);
    if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
      R.p[i] = R.p[j];
      R.size[i] = R.size[j];
      i = j;
    }
  }
  R.p[i] = NULL;
  R.live--;
  return size;
}

static void *rec_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (ptr) {
    size_t size = rec_take(ptr);
    if (size != osize) R.mismatches++;
  }
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  void *np = realloc(ptr, nsize);
  if (!np) return NULL;
  if (nsize >= FP_HOT_MIN) R.big_allocs++;
  rec_add(np, nsize);
  return np;
}

static lua_State *L;

static void open_state(void) {
  R.p = calloc(REC_SLOTS, sizeof *R.p);
  R.size = calloc(REC_SLOTS, sizeof *R.size);
  R.live = R.mismatches = R.big_allocs = 0;
  L = lua_newstate(rec_alloc, NULL);
  luaL_openlibs(L);
}

static void close_state(void) {
  lua_close(L);
  FP_CHECK_EQ_INT(R.live, 0);
  FP_CHECK_EQ_INT(R.mismatches, 0);
  free(R.p);
  free(R.size);
}

/* A table with an array part of n slots, made inside a decode when hot,
 * left on the stack. */
static void new_array(int n, int hot) {
  if (hot) fp_hot_begin(L);
  lua_createtable(L, n, 0);
  if (hot) fp_hot_end(L);
  for (int i = 1; i <= n; i++) {
    lua_pushnumber(L, i);
    lua_rawseti(L, -2, i);
  }
}

static void full_gc(void) { lua_gc(L, LUA_GCCOLLECT, 0); }

FP_TEST(freed_array_is_kept_and_reused) {
  open_state();
  FP_CHECK_EQ_INT(fp_hot_install(L), FP_OK);
  FP_CHECK_EQ_INT(fp_hot_install(L), FP_OK); /* twice: one wrapper */
  new_array(100000, 1);
  long before = R.big_allocs;
  lua_pop(L, 1);
  full_gc();
  FP_CHECK(fp_hot_held(L) >= 100000 * 8);
  new_array(100000, 1); /* same size: served from the kept block */
  FP_CHECK_EQ_INT(R.big_allocs, before);
  FP_CHECK_EQ_INT(fp_hot_held(L), 0);
  lua_rawgeti(L, -1, 100000);
  FP_CHECK_EQ_INT(lua_tointeger(L, -1), 100000);
  lua_pop(L, 2);
  close_state();
}

FP_TEST(other_sizes_and_other_code_are_untouched) {
  open_state();
  fp_hot_install(L);
  new_array(100000, 1);
  lua_pop(L, 1);
  full_gc();
  size_t held = fp_hot_held(L);
  FP_CHECK(held > 0);
  long before = R.big_allocs;
  new_array(120000, 1); /* another size: a fresh block, the kept one stays */
  FP_CHECK_EQ_INT(R.big_allocs, before + 1);
  FP_CHECK_EQ_INT(fp_hot_held(L), held);
  new_array(100000, 0); /* outside a decode: never from the kept blocks */
  FP_CHECK_EQ_INT(R.big_allocs, before + 2);
  FP_CHECK_EQ_INT(fp_hot_held(L), held);
  lua_pop(L, 1);
  full_gc(); /* freed outside-decode array: not kept */
  FP_CHECK_EQ_INT(fp_hot_held(L), held);
  lua_pop(L, 1);
  close_state();
}

FP_TEST(live_arrays_are_never_handed_out) {
  open_state();
  fp_hot_install(L);
  new_array(100000, 1);
  new_array(100000, 1); /* the first is alive: a block of its own */
  lua_rawgeti(L, -2, 5);
  FP_CHECK_EQ_INT(lua_tointeger(L, -1), 5);
  lua_pushnumber(L, -1);
  lua_rawseti(L, -3, 5); /* writing the second leaves the first alone */
  lua_rawgeti(L, -3, 5);
  FP_CHECK_EQ_INT(lua_tointeger(L, -1), 5);
  lua_pop(L, 4);
  close_state();
}

FP_TEST(resized_array_goes_back_with_its_true_size) {
  open_state();
  fp_hot_install(L);
  new_array(100000, 1);
  lua_pushnumber(L, 1);
  lua_rawseti(L, -2, 100001); /* grows the array part: a realloc */
  lua_pop(L, 1);
  full_gc();
  FP_CHECK_EQ_INT(fp_hot_held(L), 0); /* resized: an ordinary block now */
  close_state();
}

FP_TEST(held_bytes_stay_under_the_cap_and_flush_gives_back) {
  open_state();
  fp_hot_install(L);
  int n = (int)(FP_HOT_CAP / 8 / 8) + 1; /* each array just over CAP/8 */
  for (int i = 0; i < 12; i++) new_array(n, 1);
  lua_settop(L, 0);
  full_gc();
  FP_CHECK(fp_hot_held(L) <= FP_HOT_CAP);
  FP_CHECK(fp_hot_held(L) >= FP_HOT_CAP / 2);
  long live = R.live;
  fp_hot_flush(L);
  FP_CHECK_EQ_INT(fp_hot_held(L), 0);
  FP_CHECK(R.live < live);
  close_state();
}

FP_TEST(close_with_kept_and_live_blocks) {
  open_state();
  fp_hot_install(L);
  new_array(100000, 1);
  new_array(50000, 1);
  lua_pop(L, 1);
  full_gc(); /* one kept, one still held by Lua at lua_close */
  FP_CHECK(fp_hot_held(L) > 0);
  close_state(); /* no block left, every size right */
}

FP_TEST(not_installed_does_nothing) {
  open_state();
  fp_hot_begin(L);
  lua_createtable(L, 100000, 0);
  fp_hot_end(L);
  lua_pop(L, 1);
  full_gc();
  FP_CHECK_EQ_INT(fp_hot_held(L), 0);
  fp_hot_flush(L);
  close_state();
}

int main(void) {
  FP_RUN(freed_array_is_kept_and_reused);
  FP_RUN(other_sizes_and_other_code_are_untouched);
  FP_RUN(live_arrays_are_never_handed_out);
  FP_RUN(resized_array_goes_back_with_its_true_size);
  FP_RUN(held_bytes_stay_under_the_cap_and_flush_gives_back);
  FP_RUN(close_with_kept_and_live_blocks);
  FP_RUN(not_installed_does_nothing);
  return fp_test_summary();
}
