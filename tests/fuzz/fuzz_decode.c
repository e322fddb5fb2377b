/*
 * fuzz_decode.c - libFuzzer target for the value decoder, as the parent runs
 * it on what workers send: FUNC records refused (no FP_DEC_FUNCTIONS), a
 * require and a cdata constructor present.
 *
 * Each input is decoded value after value into one persistent lua_State
 * until the bytes run out or a record is rejected.  Properties checked (an
 * abort() is a finding, like any sanitizer report):
 *  - the stack is at its base after a failure, base + 1 after a success;
 *  - a value that decoded encodes again (or is refused as too deep: the
 *    encoder may meet shared tables in another order than the wire had
 *    them), and that encoding decodes completely.
 *
 * The require only knows a few fake modules, so corrupted module names never
 * make it search the file system or run code.
 *
 *   make fuzz FUZZ_SECONDS=60        (seeds: tests/fuzz/corpus, written by
 *                                     FP_WRITE_CORPUS=dir build/ctest/test_codec)
 */
#include "fp_codec.h"
#include "fp_wire.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Stack slots of the persistent state. */
#define S_REQUIRE 1
#define S_CNEW 2
#define S_CKIND 3
#define BASE 3

static const char setup[] =
  "local ffi = require('ffi')\n"
  "local i64, u64 = ffi.typeof('int64_t'), ffi.typeof('uint64_t')\n"
  "local mods = {['fake.mod'] = {f = {}, x = 1}, _G = {print = {'p'}},\n"
  "              m = {1, 2, k = 'v'}, ['a.b'] = 'not a table'}\n"
  "local function req(name)\n"
  "  local m = mods[name]\n"
  "  if m == nil then error('no module ' .. name, 0) end\n"
  "  return m\n"
  "end\n"
  "local function cnew(k) if k == 'i64' then return i64() end return u64() end\n"
  "local function ckind(v)\n"
  "  if ffi.istype(i64, v) then return 'i64' end\n"
  "  if ffi.istype(u64, v) then return 'u64' end\n"
  "  return 'other'\n"
  "end\n"
  "return req, cnew, ckind\n";

static lua_State *L;
static fp_buf reenc; /* reused between inputs; reachable, so never a leak */

static void init(void) {
  L = luaL_newstate();
  if (!L) abort();
  luaL_openlibs(L);
  if (luaL_loadstring(L, setup) || lua_pcall(L, 0, 3, 0)) {
    fprintf(stderr, "fuzz setup: %s\n", lua_tostring(L, -1));
    abort();
  }
  if (lua_gettop(L) != BASE) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const fp_dec_opts dopts = {0, S_REQUIRE, S_CNEW};
  static const fp_enc_opts eopts = {0, 0, S_CKIND};
  fp_codec_err err;
  if (!L) init();
  size_t pos = 0;
  while (pos < size) {
    size_t before = pos;
    int rc = fp_decode_value(L, data, size, &pos, &dopts, &err);
    if (rc != FP_OK) {
      if (lua_gettop(L) != BASE || pos != before) abort();
      if (rc != FP_ECORRUPT && rc != FP_EMARSHAL) abort();
      break;
    }
    if (lua_gettop(L) != BASE + 1 || pos <= before || pos > size) abort();
    reenc.len = 0;
    rc = fp_encode_value(L, BASE + 1, &reenc, &eopts, "v", &err);
    if (lua_gettop(L) != BASE + 1) abort();
    if (rc == FP_OK) {
      size_t p2 = 0;
      if (fp_decode_value(L, reenc.p, reenc.len, &p2, &dopts, &err) != FP_OK ||
          p2 != reenc.len)
        abort();
    } else if (rc != FP_EMARSHAL || strncmp(err.msg, "too deep", 8) != 0) {
      abort();
    }
    lua_settop(L, BASE);
  }
  lua_settop(L, BASE);
  return 0;
}
