/*
 * fuzz_packed.c - libFuzzer target for fp_packed_check, the parent's check
 * of packed result bodies (f64, f64a, sbuf) before Lua decodes them.
 *
 * Input: u32 count (taken modulo 4096), then the body.  Properties (an
 * abort() is a finding, like any sanitizer report):
 *  - the check never reads outside the body;
 *  - a string.buffer body it accepts decodes with LuaJIT's own decoder
 *    without an error, to a table (nothing the checker lets through makes
 *    the decoder complain, so nothing malformed reaches it).
 *
 *   make fuzz FUZZ_SECONDS=60
 */
#include "fp_packed.h"

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
  "return function(s)\n"
  "  local t = buf.decode(s)\n"
  "  if type(t) ~= 'table' then error('not a table') end\n"
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
  const char *why = NULL;
  /* An exact-size heap copy, so ASan sees any read past the end. */
  unsigned char *p = malloc(size ? size : 1);
  if (!p) return 0;
  if (size) memcpy(p, data, size);
  int rc = fp_packed_check(p, size, count, &scratch, &why);
  if (rc != FP_OK && rc != FP_ECORRUPT) abort();
  if (rc == FP_ECORRUPT && !why) abort();
  if (rc == FP_OK && size >= 8 && !memcmp(p, "fp.sbuf\0", 8)) {
    lua_pushvalue(L, -1);
    lua_pushlstring(L, (const char *)p + 8, size - 8);
    if (lua_pcall(L, 1, 0, 0) != 0) abort();
  }
  /* fp_packed_copy: the same, from "shared" bytes. */
  if (fp_packed_copy(&body, data, size, count, &scratch, &why) != rc) abort();
  free(p);
  return 0;
}
