/*
 * bench_codec.c - the codec's speed next to LuaJIT's string.buffer
 * serializer, on the two workloads forkpool cares about: one big array of
 * doubles, and many small records.
 *
 * Not a test (ctest only runs test_*); build and run by hand:
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -Iengine -I/usr/include/luajit-2.1 \
 *     tests/c/bench_codec.c engine/fp_codec.c engine/fp_common.c \
 *     -lluajit-5.1 -lm -o build/bench_codec && build/bench_codec
 *
 * Three ways of calling each side, so that call overhead is visible:
 *  - "string": encode returns a Lua string, decode takes one
 *    (buffer.encode/decode vs fp.enc/fp.dec, C functions called from Lua);
 *  - "buffer": reusable buffers, no string made (buf:reset():encode(v) and
 *    buf:decode() vs fp.enc_buf/fp.dec_buf on one static fp_buf);
 *  - "C loop": fp_encode_value/fp_decode_value called from C, which is how
 *    forkpool itself calls them (string.buffer has no C API, so no match).
 * Times are the best of several runs (os.clock / CLOCK_PROCESS_CPUTIME_ID).
 */
#include "fp_codec.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static fp_buf g_buf;

static void raise_codec(lua_State *L, int rc, const fp_codec_err *err) {
  luaL_error(L, "codec error %d: %s: %s", rc, err->path, err->msg);
}

static int l_enc(lua_State *L) {
  fp_codec_err err;
  g_buf.len = 0;
  int rc = fp_encode_value(L, 1, &g_buf, NULL, "v", &err);
  if (rc) raise_codec(L, rc, &err);
  lua_pushlstring(L, (const char *)g_buf.p, g_buf.len);
  return 1;
}

static int l_dec(lua_State *L) {
  fp_codec_err err;
  size_t n, pos = 0;
  const char *s = luaL_checklstring(L, 1, &n);
  int rc = fp_decode_value(L, (const unsigned char *)s, n, &pos, NULL, &err);
  if (rc) raise_codec(L, rc, &err);
  return 1;
}

static int l_enc_buf(lua_State *L) {
  fp_codec_err err;
  g_buf.len = 0;
  int rc = fp_encode_value(L, 1, &g_buf, NULL, "v", &err);
  if (rc) raise_codec(L, rc, &err);
  return 0;
}

static int l_dec_buf(lua_State *L) {
  fp_codec_err err;
  size_t pos = 0;
  int rc = fp_decode_value(L, g_buf.p, g_buf.len, &pos, NULL, &err);
  if (rc) raise_codec(L, rc, &err);
  return 1;
}

static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* fp.cloop(v, n, mode): n encodes (mode 0), n decodes of one encoding
 * (mode 1) or n encode+decode pairs (mode 2), from C; returns the best
 * seconds of 5 runs. */
static int l_cloop(lua_State *L) {
  fp_codec_err err;
  int n = (int)luaL_checkinteger(L, 2), mode = (int)luaL_checkinteger(L, 3);
  double best = 1e30;
  g_buf.len = 0;
  if (fp_encode_value(L, 1, &g_buf, NULL, "v", &err)) luaL_error(L, "encode");
  for (int r = 0; r < 5; r++) {
    lua_gc(L, LUA_GCCOLLECT, 0);
    double t0 = cpu_now();
    for (int i = 0; i < n; i++) {
      if (mode != 1) {
        g_buf.len = 0;
        if (fp_encode_value(L, 1, &g_buf, NULL, "v", &err)) luaL_error(L, "encode");
      }
      if (mode != 0) {
        size_t pos = 0;
        if (fp_decode_value(L, g_buf.p, g_buf.len, &pos, NULL, &err)) luaL_error(L, "decode");
        lua_pop(L, 1);
      }
    }
    double t = cpu_now() - t0;
    if (t < best) best = t;
  }
  lua_pushnumber(L, best);
  return 1;
}

/* fp.crange(t, n, mode): fp_encode_range of t[1..n] (mode 0) or
 * fp_decode_range of that encoding into a new table (mode 1), from C; the
 * best seconds of 5 runs.  This is how forkpool moves a chunk of items. */
static int l_crange(lua_State *L) {
  fp_codec_err err;
  size_t n = (size_t)luaL_checkinteger(L, 2);
  int mode = (int)luaL_checkinteger(L, 3);
  double best = 1e30;
  g_buf.len = 0;
  if (fp_encode_range(L, 1, 1, n, &g_buf, NULL, "item", 1, &err)) luaL_error(L, "encode");
  for (int r = 0; r < 5; r++) {
    lua_gc(L, LUA_GCCOLLECT, 0);
    double t0 = cpu_now();
    if (mode == 0) {
      g_buf.len = 0;
      if (fp_encode_range(L, 1, 1, n, &g_buf, NULL, "item", 1, &err)) luaL_error(L, "encode");
    } else {
      size_t pos = 0;
      lua_createtable(L, (int)n, 0);
      if (fp_decode_range(L, -1, 1, n, g_buf.p, g_buf.len, &pos, NULL, &err))
        luaL_error(L, "decode");
      lua_pop(L, 1);
    }
    double t = cpu_now() - t0;
    if (t < best) best = t;
  }
  lua_pushnumber(L, best);
  return 1;
}

static const char script[] =
  "local buffer = require('string.buffer')\n"
  "local function best(f, reps)\n"
  "  local b = math.huge\n"
  "  for _ = 1, reps do\n"
  "    collectgarbage(); collectgarbage()\n"
  "    local t0 = os.clock(); f(); local t = os.clock() - t0\n"
  "    if t < b then b = t end\n"
  "  end\n"
  "  return b\n"
  "end\n"
  "local function row(what, sb, fpv)\n"
  "  print(('%-34s %10.2f %10.2f   %5.2fx'):format(what, sb, fpv, sb / fpv))\n"
  "end\n"
  "print(('%-34s %10s %10s   %s'):format('', 'str.buffer', 'forkpool', 'speedup'))\n"
  "\n"
  "-- 1e6 doubles (non-integral, so 9 bytes each in our format)\n"
  "local arr = {}\n"
  "for i = 1, 1e6 do arr[i] = i + 0.5 end\n"
  "local s_sb, s_fp\n"
  "local R = 7\n"
  "print('array of 1e6 doubles, ms:')\n"
  "row('  encode (string)', best(function() s_sb = buffer.encode(arr) end, R) * 1e3,\n"
  "                     best(function() s_fp = fp.enc(arr) end, R) * 1e3)\n"
  "row('  decode (string)', best(function() local _ = buffer.decode(s_sb) end, R) * 1e3,\n"
  "                     best(function() local _ = fp.dec(s_fp) end, R) * 1e3)\n"
  "local sbuf = buffer.new()\n"
  "row('  encode (buffer)', best(function() sbuf:reset(); sbuf:encode(arr) end, R) * 1e3,\n"
  "                     best(function() fp.enc_buf(arr) end, R) * 1e3)\n"
  "row('  decode (buffer)', best(function() sbuf:set(s_sb); local _ = sbuf:decode() end, R) * 1e3,\n"
  "                     best(function() local _ = fp.dec_buf() end, R) * 1e3)\n"
  "local e_sb = best(function() s_sb = buffer.encode(arr) end, R)\n"
  "local d_sb = best(function() local _ = buffer.decode(s_sb) end, R)\n"
  "row('  encode (C loop)', e_sb * 1e3, fp.cloop(arr, 1, 0) * 1e3)\n"
  "row('  decode (C loop)', d_sb * 1e3, fp.cloop(arr, 1, 1) * 1e3)\n"
  "print(('  sizes: string.buffer %d bytes, forkpool %d bytes'):format(#s_sb, #s_fp))\n"
  "print('the same array as forkpool moves it: items by fp_encode_range /')\n"
  "print('fp_decode_range from C, vs string.buffer on the whole table, ms:')\n"
  "row('  encode', e_sb * 1e3, fp.crange(arr, #arr, 0) * 1e3)\n"
  "row('  decode', d_sb * 1e3, fp.crange(arr, #arr, 1) * 1e3)\n"
  "\n"
  "local rec = {id = 1, name = 'x', tags = {'a', 'b'}, score = 1.5}\n"
  "local N = 1e6\n"
  "print('small record {id=1, name=\"x\", tags={\"a\",\"b\"}, score=1.5}, ns per encode+decode:')\n"
  "local enc, dec = buffer.encode, buffer.decode\n"
  "local fenc, fdec, fencb, fdecb = fp.enc, fp.dec, fp.enc_buf, fp.dec_buf\n"
  "local t_sb = best(function() for _ = 1, N do dec(enc(rec)) end end, 5)\n"
  "row('  string', t_sb / N * 1e9,\n"
  "     best(function() for _ = 1, N do fdec(fenc(rec)) end end, 5) / N * 1e9)\n"
  "local rbuf = buffer.new()\n"
  "row('  buffer', best(function() for _ = 1, N do rbuf:reset(); rbuf:encode(rec); rbuf:decode() end end, 5) / N * 1e9,\n"
  "     best(function() for _ = 1, N do fencb(rec); fdecb() end end, 5) / N * 1e9)\n"
  "row('  C loop', t_sb / N * 1e9, fp.cloop(rec, N, 2) / N * 1e9)\n"
  "local s_rec = enc(rec)\n"
  "row('  encode alone (C loop)', best(function() for _ = 1, N do rbuf:reset(); rbuf:encode(rec) end end, 5) / N * 1e9,\n"
  "     fp.cloop(rec, N, 0) / N * 1e9)\n"
  "row('  decode alone (C loop)', best(function() for _ = 1, N do local _ = dec(s_rec) end end, 5) / N * 1e9,\n"
  "     fp.cloop(rec, N, 1) / N * 1e9)\n"
  "print(('  sizes: string.buffer %d bytes, forkpool %d bytes'):format(#enc(rec), #fenc(rec)))\n";

int main(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  static const luaL_Reg fns[] = {{"enc", l_enc},         {"dec", l_dec},
                                 {"enc_buf", l_enc_buf}, {"dec_buf", l_dec_buf},
                                 {"cloop", l_cloop},     {"crange", l_crange},
                                 {NULL, NULL}};
  luaL_register(L, "fp", fns);
  lua_pop(L, 1);
  int rc = luaL_dostring(L, script);
  if (rc) fprintf(stderr, "bench: %s\n", lua_tostring(L, -1));
  lua_close(L);
  fp_buf_free(&g_buf);
  return rc ? 1 : 0;
}
