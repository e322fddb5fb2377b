/*
 * fuzz_shptr.c - libFuzzer target for SHPTR values (pointers into the shared
 * arena) as the parent decodes them from what a worker sent, with the same
 * check forkpool.cdata.new makes: the address must lie in the arena.
 *
 * Input: u64 address selector, then the rest of the record after the SHPTR
 * tag and address (the type name, STR8/STR32, and whatever follows).  The
 * address is the arena's base plus the selector modulo twice the arena's
 * size (so half the addresses are inside) or, when the selector's top bit
 * is set, the selector itself.  Properties: the decoder never raises, keeps
 * the stack balanced, and a pointer it produced lies in the arena (the value
 * checked is the value stored: it is read once).
 */
#include "fp_codec.h"
#include "fp_shm.h"
#include "fp_wire.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ARENA (1u << 20)
#define S_CNEW 1
#define BASE 1

static const char setup[] =
  "local contains = ...\n"
  "local ffi = require('ffi')\n"
  "local u64p = ffi.typeof('const uint64_t *')\n"
  "return function(kind, tname, addr)\n"
  "  if kind ~= 'shptr' then error('unexpected kind') end\n"
  "  local a = ffi.cast(u64p, ffi.cast('const char *', addr))[0]\n"
  "  if not contains(tonumber(a)) then error('pointer outside the arena') end\n"
  "  return ffi.cast(ffi.typeof(tname), nil)\n"
  "end\n";

static int l_contains(lua_State *L) {
  lua_pushboolean(L, fp_arena_contains((const void *)(uintptr_t)lua_tonumber(L, 1), 1));
  return 1;
}

static lua_State *L;
static uintptr_t base;

static void init(void) {
  void *p;
  if (fp_arena_init(ARENA, 0) != FP_OK || fp_arena_alloc(64, &p) != FP_OK) abort();
  base = (uintptr_t)p;
  L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_loadstring(L, setup)) abort();
  lua_pushcfunction(L, l_contains);
  if (lua_pcall(L, 1, 1, 0)) abort();
  if (lua_gettop(L) != BASE) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const fp_dec_opts dopts = {0, 0, S_CNEW};
  fp_codec_err err;
  if (!L) init();
  if (size < 8) return 0;
  uint64_t sel, addr;
  memcpy(&sel, data, 8);
  addr = (sel >> 63) ? sel : base + sel % (2 * (uint64_t)ARENA);
  unsigned char *rec = malloc(size + 1);
  if (!rec) return 0;
  rec[0] = FP_T_SHPTR;
  memcpy(rec + 1, &addr, 8);
  memcpy(rec + 9, data + 8, size - 8);
  size_t pos = 0;
  int rc = fp_decode_value(L, rec, size + 1, &pos, &dopts, &err);
  if (rc != FP_OK) {
    if (lua_gettop(L) != BASE || pos != 0) abort();
    if (rc != FP_ECORRUPT && rc != FP_EMARSHAL) abort();
  } else {
    if (lua_gettop(L) != BASE + 1 || lua_type(L, -1) != FP_LUA_TCDATA) abort();
    uintptr_t v;
    memcpy(&v, lua_topointer(L, -1), sizeof v);
    if (v != addr || !fp_arena_contains((const void *)v, 1)) abort();
  }
  lua_settop(L, BASE);
  free(rec);
  return 0;
}
