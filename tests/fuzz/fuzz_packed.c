/*
 * fuzz_packed.c - libFuzzer target for the parent's handling of packed
 * result bodies (f64, f64a, sbuf): fp_packed_check (raw doubles; sbuf
 * bodies through the string.buffer parser in its check-only mode) and
 * fp_packed_decode_sbuf (the same parser, decoding).
 *
 * Input: u32 count (taken modulo 4096), then the body.  Properties (an
 * abort() is a finding, like any sanitizer report):
 *  - neither mode reads outside the body;
 *  - a string.buffer body the parser accepts decodes with LuaJIT's own
 *    decoder without an error, to a table (nothing it lets through makes
 *    that decoder complain: the parser's subset is string.buffer's);
 *  - fp_packed_decode_sbuf leaves the stack balanced whatever the bytes,
 *    gives the check's verdict (and reason) exactly, and on success stores
 *    the same count results as LuaJIT's decoder (t[at + i - 1] for a base
 *    index at far from 1);
 *
 *   make fuzz FUZZ_SECONDS=60
 */
#include "fp_packed.h"
#include "../c/fp_lua_same.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static fp_buf body, scratch; /* reused; reachable, so never a leak */

static const char setup[] =
  "local buf = require('string.buffer')\n"
  FP_LUA_SAME_FN
  "return function(s, mine, at, n)\n"
  "  local t = buf.decode(s)\n"
  "  if type(t) ~= 'table' then error('not a table') end\n"
  "  for i = 1, n do\n"
  "    if not same(t[i], mine[at + i - 1]) then error('decoders differ at ' .. i) end\n"
  "  end\n"
  "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!L) {
    L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_dostring(L, setup) != 0) abort();
  }
  if (size < 4) return 0;
  uint32_t count;
  memcpy(&count, data, 4);
  count %= 4096;
  data += 4;
  size -= 4;
  const char *why = NULL, *dwhy = NULL;
  /* An exact-size heap copy, so ASan sees any read past the end. */
  unsigned char *p = malloc(size ? size : 1);
  if (!p) return 0;
  if (size) memcpy(p, data, size);
  int rc = fp_packed_check(p, size, count, &scratch, &why);
  if (rc != FP_OK && rc != FP_ECORRUPT) abort();
  if (rc == FP_ECORRUPT && !why) abort();
  /* the parent's decoder, on the original bytes */
  const int64_t at = 1000001;
  lua_newtable(L);
  int mine = lua_gettop(L);
  int drc = fp_packed_decode_sbuf(L, mine, at, count, data, size, &dwhy);
  if (lua_gettop(L) != mine) abort();
  if (drc != FP_OK && drc != FP_ECORRUPT) abort();
  int sbuf = size >= 8 && !memcmp(p, "fp.sbuf\0", 8);
  /* One parser: the decoder's verdict is the check's (the decoder refuses
   * every other tag). */
  if (sbuf ? drc != rc : drc != FP_ECORRUPT) abort();
  if (sbuf && rc != FP_OK && strcmp(why, dwhy) != 0) abort();
  if (rc == FP_OK && sbuf) {
    lua_pushvalue(L, 1);
    lua_pushlstring(L, (const char *)p + 8, size - 8);
    lua_pushvalue(L, mine);
    lua_pushnumber(L, (lua_Number)at);
    lua_pushnumber(L, count);
    if (lua_pcall(L, 4, 0, 0) != 0) abort();
  }
  lua_settop(L, 1);
  /* fp_packed_copy: the same, from "shared" bytes. */
  if (fp_packed_copy(&body, data, size, count, &scratch, &why) != rc) abort();
  free(p);
  return 0;
}
