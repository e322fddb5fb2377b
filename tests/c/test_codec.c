/*
 * test_codec.c - unit tests of the value codec (engine/fp_codec.c).
 *
 * Each test builds its own LuaJIT state (new_state) whose bottom four stack
 * slots hold the helpers the codec options point at; every codec call is
 * checked to leave the stack at the height it found (plus one value after a
 * successful decode).  Values are written in Lua, round-tripped through
 * encode + decode, and compared in Lua with deepeq (NaN-, -0.0- and
 * cycle-aware).
 *
 * FP_WRITE_CORPUS=dir ./test_codec also writes the fuzzer's seed corpus
 * (valid encodings of varied values) into dir.
 */
#include "fp_codec.h"
#include "fp_test.h"
#include "fp_wire.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Stack slots set up by new_state(). */
#define S_CKIND 1   /* cdata_kind(v) -> "i64" | "u64" | ctype name */
#define S_CNEW 2    /* cdata_new(kind) -> fresh boxed integer */
#define S_REQUIRE 3 /* require */
#define S_MODMAP 4  /* modmap table (value -> "mod" | "mod\0field") */
#define BASE 4

static const char prelude[] =
  "local ffi = require('ffi')\n"
  "local i64, u64 = ffi.typeof('int64_t'), ffi.typeof('uint64_t')\n"
  "ffi.cdef('struct fp_test_pt { int x; };')\n"
  "function cdata_kind(v)\n"
  "  if ffi.istype(i64, v) then return 'i64' end\n"
  "  if ffi.istype(u64, v) then return 'u64' end\n"
  "  return (tostring(ffi.typeof(v)):match('^ctype<(.*)>$'))\n"
  "end\n"
  "function cdata_new(k) if k == 'i64' then return i64() end return u64() end\n"
  "modmap = {}\n"
  "local function numeq(a, b)\n"
  "  if a ~= a then return b ~= b end\n"
  "  if a == 0 and b == 0 then return 1/a == 1/b end\n"
  "  return a == b\n"
  "end\n"
  /* Structural equality; m/r map a's tables to b's both ways, so shared
   * references and cycles must have the same shape on both sides.  Entries
   * with table/function keys are only counted (tests check them by hand). */
  "function deepeq(a, b, m, r)\n"
  "  m = m or {}; r = r or {}\n"
  "  local ta, tb = type(a), type(b)\n"
  "  if ta ~= tb then return false, 'type '..ta..' vs '..tb end\n"
  "  if ta == 'number' then return numeq(a, b), tostring(a)..' vs '..tostring(b) end\n"
  "  if ta == 'cdata' then return ffi.istype(ffi.typeof(a), b) and a == b, 'cdata' end\n"
  "  if ta ~= 'table' and ta ~= 'function' then return a == b, ta..' differs' end\n"
  "  if m[a] ~= nil or r[b] ~= nil then return m[a] == b, 'identity' end\n"
  "  m[a] = b; r[b] = a\n"
  "  if ta == 'function' then return true end\n"
  "  local na, nb = 0, 0\n"
  "  for k, v in pairs(a) do\n"
  "    na = na + 1\n"
  "    local tk = type(k)\n"
  "    if tk ~= 'table' and tk ~= 'function' then\n"
  "      local ok, why = deepeq(v, b[k], m, r)\n"
  "      if not ok then return false, tostring(k)..': '..tostring(why) end\n"
  "    end\n"
  "  end\n"
  "  for _ in pairs(b) do nb = nb + 1 end\n"
  "  if na ~= nb then return false, 'key count '..na..' vs '..nb end\n"
  "  return true\n"
  "end\n"
  /* A require that only looks in package.loaded (for corrupted input: never
   * search the file system for random names). */
  "function loaded_only(name)\n"
  "  local m = package.loaded[name]\n"
  "  if m == nil then error(\"module '\"..name..\"' not loaded\", 0) end\n"
  "  return m\n"
  "end\n";

static lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_dostring(L, prelude)) {
    fprintf(stderr, "prelude: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_getglobal(L, "cdata_kind");
  lua_getglobal(L, "cdata_new");
  lua_getglobal(L, "require");
  lua_getglobal(L, "modmap");
  return L;
}

static fp_enc_opts eopts(unsigned flags) {
  fp_enc_opts o = {flags, S_MODMAP, S_CKIND};
  return o;
}

static fp_dec_opts dopts(unsigned flags) {
  fp_dec_opts o = {flags, S_REQUIRE, S_CNEW};
  return o;
}

/* Run a chunk and leave exactly one result on the stack (nil on error). */
static int run(lua_State *L, const char *code) {
  int top = lua_gettop(L);
  if (luaL_loadstring(L, code) || lua_pcall(L, 0, 1, 0)) {
    fprintf(stderr, "  lua error: %s\n", lua_tostring(L, -1));
    lua_settop(L, top);
    lua_pushnil(L);
    return 0;
  }
  return 1;
}

/* Run a chunk returning (ok, why); print why when not ok. */
static int truthy(lua_State *L, const char *code) {
  int top = lua_gettop(L);
  if (luaL_loadstring(L, code) || lua_pcall(L, 0, 2, 0)) {
    fprintf(stderr, "  lua error: %s\n", lua_tostring(L, -1));
    lua_settop(L, top);
    return 0;
  }
  int ok = lua_toboolean(L, -2);
  if (!ok) fprintf(stderr, "  not true: %s (%s)\n", code,
                   lua_isstring(L, -1) ? lua_tostring(L, -1) : "-");
  lua_settop(L, top);
  return ok;
}

/* Encode the value on top, decode it and push the copy.  Checks stack
 * balance, that the decoder consumed exactly the encoding, and returns the
 * first failing code (nothing pushed then). */
static int rt(lua_State *L, unsigned ef, unsigned df) {
  fp_buf b = {0};
  fp_codec_err err;
  fp_enc_opts eo = eopts(ef);
  fp_dec_opts d = dopts(df);
  int top = lua_gettop(L);
  int rc = fp_encode_value(L, -1, &b, &eo, "result", &err);
  FP_CHECK_EQ_INT(lua_gettop(L), top);
  if (rc) {
    fprintf(stderr, "  encode: %s: %s\n", err.path, err.msg);
    fp_buf_free(&b);
    return rc;
  }
  size_t pos = 0;
  rc = fp_decode_value(L, b.p, b.len, &pos, &d, &err);
  if (rc) {
    fprintf(stderr, "  decode: %s\n", err.msg);
    FP_CHECK_EQ_INT(lua_gettop(L), top);
  } else {
    FP_CHECK_EQ_INT(lua_gettop(L), top + 1);
    FP_CHECK_EQ_INT(pos, b.len);
  }
  fp_buf_free(&b);
  return rc;
}

/* orig = <expr>; got = decode(encode(orig)); deepeq(orig, got). */
static int rt_expr(lua_State *L, const char *expr, unsigned ef, unsigned df) {
  char code[4096];
  snprintf(code, sizeof code, "return %s", expr);
  if (!run(L, code)) return 0;
  lua_pushvalue(L, -1);
  lua_setglobal(L, "orig");
  int rc = rt(L, ef, df);
  if (rc) {
    fprintf(stderr, "  for %.200s\n", expr);
    lua_pop(L, 1);
    return 0;
  }
  lua_setglobal(L, "got");
  lua_pop(L, 1);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  int ok = truthy(L, "return deepeq(orig, got)");
  if (!ok) fprintf(stderr, "  for %.200s\n", expr);
  return ok;
}

/* Encode <expr>, expecting failure: code, path and message; out->len and the
 * bytes already in the buffer must be untouched. */
static void expect_enc_err(lua_State *L, const char *expr, unsigned ef,
                           int want_rc, const char *want_path,
                           const char *want_msg) {
  char code[2048];
  snprintf(code, sizeof code, "return %s", expr);
  FP_CHECK(run(L, code));
  fp_buf b = {0};
  FP_CHECK_EQ_INT(fp_buf_append(&b, "PREFIX", 6), FP_OK);
  fp_codec_err err;
  fp_enc_opts eo = eopts(ef);
  int top = lua_gettop(L);
  int rc = fp_encode_value(L, top, &b, &eo, "result", &err);
  FP_CHECK_EQ_INT(rc, want_rc);
  FP_CHECK_EQ_INT(lua_gettop(L), top);
  FP_CHECK_EQ_INT(b.len, 6);
  FP_CHECK(memcmp(b.p, "PREFIX", 6) == 0);
  if (rc) {
    FP_CHECK_STR(err.path, want_path);
    FP_CHECK_STR(err.msg, want_msg);
  }
  fp_buf_free(&b);
  lua_settop(L, top - 1);
}

/* Decode p[0..n) as one value; on success pop it.  Checks stack balance. */
static int dec_bytes(lua_State *L, const unsigned char *p, size_t n,
                     unsigned df, fp_codec_err *err) {
  fp_dec_opts d = dopts(df);
  int top = lua_gettop(L);
  size_t pos = 0;
  int rc = fp_decode_value(L, p, n, &pos, &d, err);
  if (rc == FP_OK) {
    FP_CHECK_EQ_INT(lua_gettop(L), top + 1);
    FP_CHECK_EQ_INT(pos, n);
    lua_pop(L, 1);
  } else {
    FP_CHECK_EQ_INT(lua_gettop(L), top);
    FP_CHECK_EQ_INT(pos, 0);
  }
  return rc;
}

/* Encode <expr> (must succeed) into b. */
static void enc_expr(lua_State *L, const char *expr, unsigned ef, fp_buf *b) {
  char code[2048];
  snprintf(code, sizeof code, "return %s", expr);
  FP_CHECK(run(L, code));
  fp_codec_err err;
  fp_enc_opts eo = eopts(ef);
  int rc = fp_encode_value(L, -1, b, &eo, "result", &err);
  if (rc) fprintf(stderr, "  encode %s: %s: %s\n", expr, err.path, err.msg);
  FP_CHECK_EQ_INT(rc, FP_OK);
  lua_pop(L, 1);
}

static size_t w32(unsigned char *w, uint32_t v) {
  memcpy(w, &v, 4);
  return 4;
}

static uint64_t dbits(double d) {
  uint64_t u;
  memcpy(&u, &d, 8);
  return u;
}

/* ======================================================================== */

FP_TEST(test_scalars_roundtrip) {
  lua_State *L = new_state();
  static const char *const exprs[] = {
    "nil", "true", "false", "0", "1", "-1", "2147483647", "-2147483648",
    "2147483648", "-2147483649", "1.5", "-0.0", "0/0", "1/0", "-1/0",
    "1e308", "4.9e-324", "2^53", "-2^63", "''", "'x'", "'a\\0b'",
  };
  for (size_t i = 0; i < sizeof exprs / sizeof exprs[0]; i++)
    FP_CHECK(rt_expr(L, exprs[i], 0, 0));
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

/* Tag choice and exact bits: INT32 only for integral int32 values other
 * than -0.0; everything else as raw IEEE bits. */
FP_TEST(test_number_encoding) {
  lua_State *L = new_state();
  struct { double d; unsigned tag; } cases[] = {
    {0.0, FP_T_INT32}, {5.0, FP_T_INT32}, {-1.0, FP_T_INT32},
    {2147483647.0, FP_T_INT32}, {-2147483648.0, FP_T_INT32},
    {-0.0, FP_T_DOUBLE}, {2147483648.0, FP_T_DOUBLE}, {-2147483649.0, FP_T_DOUBLE},
    {0.5, FP_T_DOUBLE}, {INFINITY, FP_T_DOUBLE}, {-INFINITY, FP_T_DOUBLE},
    {NAN, FP_T_DOUBLE}, {1e300, FP_T_DOUBLE}, {5e-324, FP_T_DOUBLE},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fp_buf b = {0};
    fp_codec_err err;
    lua_pushnumber(L, cases[i].d);
    double pushed = lua_tonumber(L, -1); /* LuaJIT may canonicalize a NaN */
    FP_CHECK_EQ_INT(fp_encode_value(L, -1, &b, NULL, "result", &err), FP_OK);
    FP_CHECK_EQ_INT(b.len, cases[i].tag == FP_T_INT32 ? 5 : 9);
    FP_CHECK_EQ_INT(b.p[0], cases[i].tag);
    if (cases[i].tag == FP_T_INT32) {
      int32_t v;
      memcpy(&v, b.p + 1, 4);
      FP_CHECK_EQ_INT(v, (int32_t)cases[i].d);
    } else {
      uint64_t u;
      memcpy(&u, b.p + 1, 8);
      FP_CHECK(u == dbits(pushed));
    }
    size_t pos = 0;
    FP_CHECK_EQ_INT(fp_decode_value(L, b.p, b.len, &pos, NULL, &err), FP_OK);
    FP_CHECK(dbits(lua_tonumber(L, -1)) == dbits(pushed));
    lua_pop(L, 2);
    fp_buf_free(&b);
  }
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

FP_TEST(test_strings) {
  lua_State *L = new_state();
  size_t lens[] = {0, 1, 3, 255, 256, 257, 1000, 65535, 65536, 70001, 300000};
  char *src = malloc(300000);
  for (size_t i = 0; i < 300000; i++) src[i] = (char)(i * 7 % 251); /* NULs too */
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    size_t n = lens[i];
    fp_buf b = {0};
    fp_codec_err err;
    lua_pushlstring(L, src, n);
    FP_CHECK_EQ_INT(fp_encode_value(L, -1, &b, NULL, "result", &err), FP_OK);
    FP_CHECK_EQ_INT(b.p[0], n < 256 ? FP_T_STR8 : FP_T_STR32);
    FP_CHECK_EQ_INT(b.len, n + (n < 256 ? 2 : 5));
    size_t pos = 0, got_n = 0;
    FP_CHECK_EQ_INT(fp_decode_value(L, b.p, b.len, &pos, NULL, &err), FP_OK);
    const char *s = lua_tolstring(L, -1, &got_n);
    FP_CHECK_EQ_INT(got_n, n);
    FP_CHECK(s && memcmp(s, src, n) == 0);
    lua_pop(L, 2);
    fp_buf_free(&b);
  }
  free(src);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

FP_TEST(test_tables_and_holes) {
  lua_State *L = new_state();
  FP_CHECK(rt_expr(L, "{}", 0, 0));
  FP_CHECK(rt_expr(L, "{1, 2, 3, 'x', true, false, 1.5}", 0, 0));
  FP_CHECK(rt_expr(L, "{a = 1, b = 'two', c = {d = {e = {}}}}", 0, 0));
  FP_CHECK(rt_expr(L, "{1, 2, 3, x = 1, y = {4, 5, z = 6}}", 0, 0));
  /* Holes inside the array part are sent as NIL and stay holes. */
  FP_CHECK(rt_expr(L, "(function() local t = {1, 2, 3, 4, 5}; t[2] = nil; t[4] = nil; return t end)()", 0, 0));
  FP_CHECK(truthy(L, "return got[1] == 1 and got[2] == nil and got[3] == 3 and got[4] == nil and got[5] == 5"));
  /* Array items living in the hash part, inserted in reverse order. */
  FP_CHECK(rt_expr(L, "(function() local t = {}; for i = 20, 1, -1 do t[i] = i * 2 end; return t end)()", 0, 0));
  /* Array items mixed with hash keys inserted in between. */
  FP_CHECK(rt_expr(L, "(function() local t = {}; t[1] = 1; t.x = 'x'; t[3] = 3; t[2] = 2; t[0] = 0; t[-5] = 5; t[4] = {}; return t end)()", 0, 0));
  /* t[0] with a real array part: slot 0 comes first in LuaJIT's traversal. */
  FP_CHECK(rt_expr(L, "(function() local t = {10, 20, 30, 40}; t[0] = 'zero'; t.k = 'v'; return t end)()", 0, 0));
  /* Big array of doubles and ints, and a table with a large hash part. */
  FP_CHECK(rt_expr(L, "(function() local t = {}; for i = 1, 100000 do t[i] = i % 3 == 0 and i or i + 0.25 end; return t end)()", 0, 0));
  FP_CHECK(rt_expr(L, "(function() local t = {}; for i = 1, 5000 do t['k' .. i] = i; t[-i] = i; t[i + 0.5] = 'h' end; return t end)()", 0, 0));
  /* Wire layout of an array with a hole (LuaJIT says #t == 4 here):
   * TABLE narr=4 nhash=0, 1, NIL, 3, 4. */
  FP_CHECK(truthy(L, "local t = {1, 2, 3, 4}; t[2] = nil; return #t == 4"));
  fp_buf b = {0};
  enc_expr(L, "(function() local t = {1, 2, 3, 4}; t[2] = nil; return t end)()", 0, &b);
  static const unsigned char want[] = {FP_T_TABLE, 4, 0, 0, 0, 0, 0, 0, 0,
                                       FP_T_INT32, 1, 0, 0, 0, FP_T_NIL,
                                       FP_T_INT32, 3, 0, 0, 0,
                                       FP_T_INT32, 4, 0, 0, 0};
  FP_CHECK_EQ_INT(b.len, sizeof want);
  FP_CHECK(b.len == sizeof want && memcmp(b.p, want, sizeof want) == 0);
  fp_buf_free(&b);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

/* Random tables: random integer keys around the array range, holes, string
 * and float keys, nested tables; insertion order random too. */
FP_TEST(test_random_tables) {
  lua_State *L = new_state();
  FP_CHECK(run(L,
    "math.randomseed(12345)\n"
    "function rtable(depth)\n"
    "  local t = {}\n"
    "  local n = math.random(0, 40)\n"
    "  for _ = 1, n do\n"
    "    local r = math.random(1, 10)\n"
    "    local k\n"
    "    if r <= 5 then k = math.random(-3, 30)\n"
    "    elseif r <= 7 then k = 'k' .. math.random(1, 20)\n"
    "    elseif r == 8 then k = math.random() * 10\n"
    "    elseif r == 9 then k = math.random(1, 2) == 1\n"
    "    else k = 2^math.random(31, 60) end\n"
    "    local v\n"
    "    local s = math.random(1, 6)\n"
    "    if s == 1 and depth < 4 then v = rtable(depth + 1)\n"
    "    elseif s == 2 then v = ('s'):rep(math.random(0, 300))\n"
    "    elseif s == 3 then v = math.random(-1e6, 1e6)\n"
    "    elseif s == 4 then v = math.random() end\n"
    "    t[k] = v\n"
    "  end\n"
    "  for _ = 1, math.random(0, 5) do t[math.random(1, 30)] = nil end\n"
    "  return t\n"
    "end\n"));
  lua_pop(L, 1);
  for (int i = 0; i < 300; i++) {
    if (!rt_expr(L, "rtable(1)", 0, 0)) {
      FP_CHECK(0);
      break;
    }
  }
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

FP_TEST(test_keys_of_every_kind) {
  lua_State *L = new_state();
  FP_CHECK(rt_expr(L,
    "(function() local k = {}\n"
    " local t = {10, 20, 30, x = 1, ['a b'] = 2, [1.5] = 3, [0] = 4, [-1] = 5,\n"
    "   [true] = 6, [false] = 7, [2^40] = 8, [1e300] = 9, [-0.5] = 10, [''] = 11,\n"
    "   ['\\0'] = 12, [1/0] = 13, [-1/0] = 14}\n"
    " t[k] = 'table key'; t.kref = k; t[{1, 2}] = 'anon'\n"
    " return t end)()", FP_ENC_FUNCTIONS, FP_DEC_FUNCTIONS));
  FP_CHECK(truthy(L, "return got[got.kref] == 'table key'"));
  FP_CHECK(truthy(L,
    "local n = 0; for k, v in pairs(got) do if type(k) == 'table' and v == 'anon' then\n"
    "  n = n + 1; if k[1] ~= 1 or k[2] ~= 2 then return false end end end\n"
    "return n == 1"));
  /* A function key (and the same function as a value) */
  FP_CHECK(rt_expr(L, "(function() local f = function() return 'f!' end; return {[f] = 1, fn = f} end)()",
                   FP_ENC_FUNCTIONS, FP_DEC_FUNCTIONS));
  FP_CHECK(truthy(L, "return got[got.fn] == 1 and got.fn() == 'f!'"));
  /* A table that is its own key, and its own value */
  FP_CHECK(rt_expr(L, "(function() local t = {}; t[t] = t; return t end)()", 0, 0));
  FP_CHECK(truthy(L, "return got[got] == got"));
  /* Light userdata as key and value */
  lua_createtable(L, 0, 2);
  lua_pushlightuserdata(L, (void *)(uintptr_t)0x1234);
  lua_pushstring(L, "lud");
  lua_rawset(L, -3);
  lua_pushlightuserdata(L, (void *)(uintptr_t)0x7fff12345678);
  lua_setfield(L, -2, "p");
  FP_CHECK_EQ_INT(rt(L, 0, 0), FP_OK);
  lua_pushlightuserdata(L, (void *)(uintptr_t)0x1234);
  lua_rawget(L, -2);
  FP_CHECK_STR(lua_tostring(L, -1), "lud");
  lua_getfield(L, -2, "p");
  FP_CHECK(lua_touserdata(L, -1) == (void *)(uintptr_t)0x7fff12345678);
  lua_settop(L, BASE);
  lua_close(L);
}

FP_TEST(test_shared_refs_and_cycles) {
  lua_State *L = new_state();
  FP_CHECK(rt_expr(L, "(function() local a = {1}; return {x = a, y = a, z = {a, a}} end)()", 0, 0));
  FP_CHECK(truthy(L, "return got.x == got.y and got.z[1] == got.x and got.z[2] == got.x and got.x[1] == 1"));
  FP_CHECK(rt_expr(L, "(function() local t = {}; t.self = t; t[1] = t; return t end)()", 0, 0));
  FP_CHECK(truthy(L, "return got.self == got and got[1] == got"));
  FP_CHECK(rt_expr(L, "(function() local a, b = {}, {}; a.b = b; b.a = a; return {a, b} end)()", 0, 0));
  FP_CHECK(truthy(L, "return got[1].b == got[2] and got[2].a == got[1]"));
  /* More tables than the encoder/decoder track without a Lua table. */
  FP_CHECK(rt_expr(L,
    "(function() local s = {}; for i = 1, 50 do s[i] = {i} end\n"
    " local t = {s = s, again = {}}; for i = 1, 50 do t.again[i] = s[51 - i] end\n"
    " t.last = t; return t end)()", 0, 0));
  FP_CHECK(truthy(L,
    "for i = 1, 50 do if got.again[i] ~= got.s[51 - i] or got.s[i][1] ~= i then return false end end\n"
    "return got.last == got"));
  /* Exact ids: root = 0, a = 1; the second a is REF 1. */
  fp_buf b = {0};
  enc_expr(L, "(function() local a = {}; return {a, a} end)()", 0, &b);
  static const unsigned char want[] = {
    FP_T_TABLE, 2, 0, 0, 0, 0, 0, 0, 0,
    FP_T_TABLE, 0, 0, 0, 0, 0, 0, 0, 0,
    FP_T_REF, 1, 0, 0, 0};
  FP_CHECK(b.len == sizeof want && memcmp(b.p, want, sizeof want) == 0);
  fp_buf_free(&b);
  /* Identity is per top-level value: two encodes give two copies. */
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

FP_TEST(test_functions) {
  lua_State *L = new_state();
  const unsigned F = FP_ENC_FUNCTIONS, D = FP_DEC_FUNCTIONS;
  /* Closure counter: upvalue sent by value, keeps counting after decode. */
  FP_CHECK(rt_expr(L, "(function() local n = 5; local f = function() n = n + 1; return n end; f(); return f end)()", F, D));
  FP_CHECK(truthy(L, "return got() == 7 and got() == 8 and orig() == 7"));
  /* Recursive local function: its upvalue is a REF to itself. */
  FP_CHECK(rt_expr(L, "(function() local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end; return fib end)()", F, D));
  FP_CHECK(truthy(L, "return got(15) == 610"));
  /* Two closures sharing a table upvalue: the table stays shared. */
  FP_CHECK(rt_expr(L,
    "(function() local cfg = {k = 3}; local function a() return cfg.k end\n"
    " local function b() cfg.k = cfg.k + 1 end; return {a = a, b = b, cfg = cfg} end)()", F, D));
  FP_CHECK(truthy(L, "got.b(); return got.a() == 4 and got.cfg.k == 4 and orig.cfg.k == 3"));
  /* Globals resolve in the receiver; functions with no upvalues. */
  FP_CHECK(rt_expr(L, "function(x) return math.floor(x) + select('#', 1, 2) end", F, D));
  FP_CHECK(truthy(L, "return got(2.5) == 4"));
  /* Upvalues of every kind, and a nested closure factory. */
  FP_CHECK(rt_expr(L,
    "(function() local s, n, t, b = 'str', 1.5, {1, {2}}, true\n"
    " local function mk(k) return function() return k, s, n, t, b end end\n"
    " return {mk = mk, one = mk(1)} end)()", F, D));
  FP_CHECK(truthy(L,
    "local k, s, n, t, b = got.one(); local k2 = got.mk(9)()\n"
    "return k == 1 and s == 'str' and n == 1.5 and t[2][1] == 2 and b == true and k2 == 9"));
  /* Without FP_DEC_FUNCTIONS the record is refused. */
  fp_buf buf = {0};
  fp_codec_err err;
  enc_expr(L, "function() end", F, &buf);
  FP_CHECK_EQ_INT(dec_bytes(L, buf.p, buf.len, 0, &err), FP_ECORRUPT);
  FP_CHECK(strstr(err.msg, "function record not allowed") != NULL);
  FP_CHECK_EQ_INT(dec_bytes(L, buf.p, buf.len, D, &err), FP_OK);
  fp_buf_free(&buf);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

FP_TEST(test_modmap) {
  lua_State *L = new_state();
  FP_CHECK(run(L,
    "package.loaded['fake.mod'] = {name = 'fake', f = function() return 42 end, sub = {}}\n"
    "local m = package.loaded['fake.mod']\n"
    "modmap[m] = 'fake.mod'; modmap[m.f] = 'fake.mod\\0f'; modmap[m.sub] = 'fake.mod\\0sub'\n"
    "modmap[print] = '_G\\0print'; modmap[io.stdout] = 'io\\0stdout'; modmap[string] = 'string'\n"));
  lua_pop(L, 1);
  /* Functions flag off: modmap entries are consulted before refusing. */
  FP_CHECK(rt_expr(L,
    "{m = package.loaded['fake.mod'], f = package.loaded['fake.mod'].f, sub = package.loaded['fake.mod'].sub,\n"
    " p = print, out = io.stdout, s = string, again = package.loaded['fake.mod']}", 0, 0));
  FP_CHECK(truthy(L,
    "local m = package.loaded['fake.mod']\n"
    "return got.m == m and got.again == m and got.f == m.f and got.f() == 42 and got.sub == m.sub\n"
    "  and got.p == print and got.out == io.stdout and got.s == string"));
  /* Exact bytes of a MODREF and a MODFIELD. */
  fp_buf b = {0};
  enc_expr(L, "package.loaded['fake.mod']", 0, &b);
  static const unsigned char want1[] = {FP_T_MODREF, FP_T_STR8, 8, 'f', 'a', 'k', 'e', '.', 'm', 'o', 'd'};
  FP_CHECK(b.len == sizeof want1 && memcmp(b.p, want1, sizeof want1) == 0);
  b.len = 0;
  enc_expr(L, "print", 0, &b);
  static const unsigned char want2[] = {FP_T_MODFIELD, FP_T_STR8, 2, '_', 'G', FP_T_STR8, 5, 'p', 'r', 'i', 'n', 't'};
  FP_CHECK(b.len == sizeof want2 && memcmp(b.p, want2, sizeof want2) == 0);
  fp_codec_err err;
  /* Decoder failures: unknown module, missing field, non-table module,
   * no require function. */
  FP_CHECK(run(L, "local n = {}; modmap[n] = 'nope.mod'; return n"));
  lua_setglobal(L, "nope");
  FP_CHECK(run(L, "local x = {}; modmap[x] = 'fake.mod\\0gone'; return x"));
  lua_setglobal(L, "gone");
  FP_CHECK(run(L, "package.loaded.strmod = 'I am a string'; local y = {}; modmap[y] = 'strmod\\0x'; return y"));
  lua_setglobal(L, "notab");
  b.len = 0;
  enc_expr(L, "nope", 0, &b);
  FP_CHECK_EQ_INT(dec_bytes(L, b.p, b.len, 0, &err), FP_EMARSHAL);
  FP_CHECK(strncmp(err.msg, "cannot load module 'nope.mod': ", 31) == 0);
  fp_dec_opts noreq = {0, 0, S_CNEW};
  size_t pos = 0;
  FP_CHECK_EQ_INT(fp_decode_value(L, b.p, b.len, &pos, &noreq, &err), FP_ECORRUPT);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  b.len = 0;
  enc_expr(L, "{1, gone}", 0, &b);
  FP_CHECK_EQ_INT(dec_bytes(L, b.p, b.len, 0, &err), FP_EMARSHAL);
  FP_CHECK(strncmp(err.msg, "module 'fake.mod' has no field 'gone'", 37) == 0);
  b.len = 0;
  enc_expr(L, "notab", 0, &b);
  FP_CHECK_EQ_INT(dec_bytes(L, b.p, b.len, 0, &err), FP_EMARSHAL);
  FP_CHECK(strncmp(err.msg, "module 'strmod' is not a table", 30) == 0);
  fp_buf_free(&b);
  /* A C function in the modmap goes even with functions off; one that is
   * not in the modmap does not. */
  expect_enc_err(L, "{tostring}", 0, FP_EMARSHAL, "result[1]", "cannot send C function");
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

FP_TEST(test_cdata) {
  lua_State *L = new_state();
  FP_CHECK(rt_expr(L,
    "{ffi = nil, a = -9223372036854775807LL - 1, b = 0xffffffffffffffffULL, c = 5LL, d = 0ULL,\n"
    " e = require('ffi').new('int64_t', -12345)}", 0, 0));
  FP_CHECK(truthy(L,
    "local ffi = require('ffi')\n"
    "return ffi.istype('int64_t', got.a) and ffi.istype('uint64_t', got.b) and got.a == orig.a\n"
    "  and got.b == 0xffffffffffffffffULL and tostring(got.e) == '-12345LL'"));
  fp_buf b = {0};
  enc_expr(L, "-2LL", 0, &b);
  FP_CHECK_EQ_INT(b.len, 9);
  FP_CHECK_EQ_INT(b.p[0], FP_T_INT64);
  int64_t v;
  memcpy(&v, b.p + 1, 8);
  FP_CHECK_EQ_INT(v, -2);
  /* Decoding without a constructor is corrupt input. */
  fp_codec_err err;
  fp_dec_opts nocd = {0, S_REQUIRE, 0};
  size_t pos = 0;
  FP_CHECK_EQ_INT(fp_decode_value(L, b.p, b.len, &pos, &nocd, &err), FP_ECORRUPT);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  fp_buf_free(&b);
  /* Other cdata is refused with its type name; no helper, no cdata. */
  expect_enc_err(L, "{p = require('ffi').new('struct fp_test_pt')}", 0, FP_EMARSHAL,
                 "result.p", "cannot send cdata<struct fp_test_pt>");
  FP_CHECK(run(L, "return {v = 1LL}"));
  fp_enc_opts nohelper = {0, S_MODMAP, 0};
  b.len = 0;
  FP_CHECK_EQ_INT(fp_encode_value(L, -1, &b, &nohelper, "item", &err), FP_EMARSHAL);
  FP_CHECK_STR(err.path, "item.v");
  FP_CHECK_STR(err.msg, "cannot send cdata");
  /* A helper that raises. */
  FP_CHECK(run(L, "return function() error('boom', 0) end"));
  fp_enc_opts badhelper = {0, S_MODMAP, lua_gettop(L)};
  FP_CHECK_EQ_INT(fp_encode_value(L, -2, &b, &badhelper, "item", &err), FP_EMARSHAL);
  FP_CHECK_STR(err.msg, "cannot send cdata (type check failed: boom)");
  FP_CHECK_EQ_INT(b.len, 0);
  fp_buf_free(&b);
  lua_settop(L, BASE);
  lua_close(L);
}

FP_TEST(test_error_paths) {
  lua_State *L = new_state();
  const unsigned F = FP_ENC_FUNCTIONS;
  expect_enc_err(L, "{1, 2, {handle = io.stdout}}", 0, FP_EMARSHAL,
                 "result[3].handle", "cannot send userdata");
  expect_enc_err(L, "io.stdout", 0, FP_EMARSHAL, "result", "cannot send userdata");
  expect_enc_err(L, "{co = coroutine.create(function() end)}", F, FP_EMARSHAL,
                 "result.co", "cannot send coroutine");
  expect_enc_err(L, "{fns = {print}}", F, FP_EMARSHAL, "result.fns[1]", "cannot send C function");
  expect_enc_err(L, "{handler = function() end}", 0, FP_EMARSHAL,
                 "result.handler", "cannot send function");
  expect_enc_err(L, "{['a b'] = {{x = io.stdout}}}", 0, FP_EMARSHAL,
                 "result[\"a b\"][1].x", "cannot send userdata");
  expect_enc_err(L, "{[1.5] = io.stdout}", 0, FP_EMARSHAL, "result[1.5]", "cannot send userdata");
  expect_enc_err(L, "{[-7] = io.stdout}", 0, FP_EMARSHAL, "result[-7]", "cannot send userdata");
  expect_enc_err(L, "{[true] = io.stdout}", 0, FP_EMARSHAL, "result[true]", "cannot send userdata");
  expect_enc_err(L, "{[{}] = io.stdout}", 0, FP_EMARSHAL, "result[table]", "cannot send userdata");
  expect_enc_err(L, "{['say \"hi\"\\n'] = io.stdout}", 0, FP_EMARSHAL,
                 "result[\"say \\\"hi\\\"?\"]", "cannot send userdata");
  /* Keys that cannot be sent: the path says <key>, then the key's inside. */
  expect_enc_err(L, "{x = {[io.stdout] = 1}}", 0, FP_EMARSHAL, "result.x<key>", "cannot send userdata");
  expect_enc_err(L, "{[{h = io.stdout}] = 1}", 0, FP_EMARSHAL, "result<key>.h", "cannot send userdata");
  /* Upvalues: <upvalue 'name'> after the function's path. */
  expect_enc_err(L, "(function() local cfg = {items = {1, io.stdout}}; return {fn = function() return cfg end} end)()",
                 F, FP_EMARSHAL, "result.fn<upvalue 'cfg'>.items[2]", "cannot send userdata");
  /* An array item fetched out of order (after t[0]) keeps its index. */
  expect_enc_err(L, "(function() local t = {1, 2, 3}; t[0] = 0; t[2] = io.stdout; return t end)()", 0,
                 FP_EMARSHAL, "result[2]", "cannot send userdata");
  /* Long paths keep the root and the innermost segments. */
  FP_CHECK(run(L, "local t = {x = io.stdout}; for i = 1, 100 do t = {long_field_name = t} end; return t"));
  fp_buf b = {0};
  fp_codec_err err;
  FP_CHECK_EQ_INT(fp_encode_value(L, -1, &b, NULL, "result", &err), FP_EMARSHAL);
  FP_CHECK(strncmp(err.path, "result...", 9) == 0);
  size_t pl = strlen(err.path);
  FP_CHECK(pl > 20 && strcmp(err.path + pl - 2, ".x") == 0);
  FP_CHECK_EQ_INT(b.len, 0);
  lua_pop(L, 1);
  fp_buf_free(&b);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

FP_TEST(test_too_deep) {
  lua_State *L = new_state();
  /* 1000 nested tables go, 1001 do not. */
  FP_CHECK(rt_expr(L, "(function() local t = {}; local c = t; for i = 1, 999 do c[1] = {}; c = c[1] end; return t end)()", 0, 0));
  FP_CHECK(run(L, "local t = {}; local c = t; for i = 1, 1000 do c[1] = {}; c = c[1] end; return t"));
  fp_buf b = {0};
  fp_codec_err err;
  FP_CHECK_EQ_INT(fp_encode_value(L, -1, &b, NULL, "result", &err), FP_EMARSHAL);
  FP_CHECK_STR(err.msg, "too deep (more than 1000 levels)");
  FP_CHECK(strncmp(err.path, "result...[1][1]", 15) == 0);
  FP_CHECK_EQ_INT(b.len, 0);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE + 1);
  /* A self-referencing table is not deep: it is a REF. */
  lua_pop(L, 1);
  FP_CHECK(rt_expr(L, "(function() local t = {}; t[1] = t; return t end)()", 0, 0));
  /* Deep through functions' upvalues too. */
  FP_CHECK(run(L, "local f = function() end; for i = 1, 1000 do local g = f; f = function() return g end end; return f"));
  fp_enc_opts eo = eopts(FP_ENC_FUNCTIONS);
  FP_CHECK_EQ_INT(fp_encode_value(L, -1, &b, &eo, "result", &err), FP_EMARSHAL);
  FP_CHECK_STR(err.msg, "too deep (more than 1000 levels)");
  lua_pop(L, 1);
  /* The Lua stack running out fails cleanly as well. */
  FP_CHECK(lua_checkstack(L, 7200));
  for (int i = 0; i < 7200; i++) lua_pushnil(L);
  FP_CHECK(run(L, "local t = {}; local c = t; for i = 1, 900 do c[1] = {}; c = c[1] end; return t"));
  int top = lua_gettop(L);
  FP_CHECK_EQ_INT(fp_encode_value(L, -1, &b, NULL, "result", &err), FP_EMARSHAL);
  FP_CHECK_STR(err.msg, "too deep (Lua stack exhausted)");
  FP_CHECK_EQ_INT(lua_gettop(L), top);
  FP_CHECK_EQ_INT(b.len, 0);
  lua_settop(L, BASE);
  fp_buf_free(&b);

  /* Decoder: hand-made chains of TABLE narr=1 ... NIL. */
  for (int levels = 999; levels <= 1002; levels++) {
    size_t n = (size_t)levels * 9 + 1;
    unsigned char *p = malloc(n);
    for (int i = 0; i < levels; i++) {
      p[i * 9] = FP_T_TABLE;
      w32(p + i * 9 + 1, 1);
      w32(p + i * 9 + 5, 0);
    }
    p[n - 1] = FP_T_NIL;
    int rc = dec_bytes(L, p, n, 0, &err);
    if (levels <= FP_CODEC_MAX_DEPTH) {
      FP_CHECK_EQ_INT(rc, FP_OK);
    } else {
      FP_CHECK_EQ_INT(rc, FP_ECORRUPT);
      FP_CHECK(strncmp(err.msg, "too deep (more than 1000 levels)", 32) == 0);
    }
    if (levels == 1000) { /* and with the Lua stack nearly full */
      for (int i = 0; i < 7200; i++) lua_pushnil(L);
      FP_CHECK_EQ_INT(dec_bytes(L, p, n, 0, &err), FP_ECORRUPT);
      FP_CHECK(strncmp(err.msg, "too deep (Lua stack exhausted)", 30) == 0);
      lua_settop(L, BASE);
    }
    free(p);
  }
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

FP_TEST(test_stack_and_buffer_balance) {
  lua_State *L = new_state();
  fp_buf b = {0};
  fp_codec_err err;
  fp_enc_opts eo = eopts(FP_ENC_FUNCTIONS);
  FP_CHECK_EQ_INT(fp_buf_append(&b, "HEAD", 4), FP_OK);
  /* Successes append and keep the stack; values at negative indexes. */
  FP_CHECK(run(L, "return {1, {2}, x = 'y'}"));
  FP_CHECK(run(L, "return 'second'"));
  FP_CHECK_EQ_INT(fp_encode_value(L, -2, &b, &eo, "a", &err), FP_OK);
  FP_CHECK_EQ_INT(fp_encode_value(L, -1, &b, &eo, "b", &err), FP_OK);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE + 2);
  size_t okl = b.len;
  /* A failure in the middle of a big value restores len and stack. */
  FP_CHECK(run(L, "local t = {}; for i = 1, 1000 do t[i] = {i, 'x'} end; t[999][2] = io.stdout; return t"));
  FP_CHECK_EQ_INT(fp_encode_value(L, -1, &b, &eo, "big", &err), FP_EMARSHAL);
  FP_CHECK_STR(err.path, "big[999][2]");
  FP_CHECK_EQ_INT(b.len, okl);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE + 3);
  /* Decode both good values back from after the HEAD. */
  size_t pos = 4;
  FP_CHECK_EQ_INT(fp_decode_value(L, b.p, b.len, &pos, NULL, &err), FP_OK);
  FP_CHECK_EQ_INT(fp_decode_value(L, b.p, b.len, &pos, NULL, &err), FP_OK);
  FP_CHECK_EQ_INT(pos, b.len);
  FP_CHECK_STR(lua_tostring(L, -1), "second");
  FP_CHECK_EQ_INT(lua_gettop(L), BASE + 5);
  /* Decoding at the end: truncated, pos unchanged, nothing pushed. */
  FP_CHECK_EQ_INT(fp_decode_value(L, b.p, b.len, &pos, NULL, &err), FP_ECORRUPT);
  FP_CHECK_EQ_INT(pos, b.len);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE + 5);
  fp_buf_free(&b);
  lua_settop(L, BASE);
  lua_close(L);
}

FP_TEST(test_ranges) {
  lua_State *L = new_state();
  fp_buf b = {0};
  fp_codec_err err;
  fp_enc_opts eo = eopts(0);
  fp_dec_opts dd = dopts(0);
  FP_CHECK(run(L, "local t = {10, 20, 30, 40, {5}}; t[3] = nil; return t"));
  FP_CHECK_EQ_INT(fp_encode_range(L, -1, 2, 4, &b, &eo, "item", 1, &err), FP_OK);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE + 1);
  lua_newtable(L);
  size_t pos = 0;
  FP_CHECK_EQ_INT(fp_decode_range(L, -1, 5, 4, b.p, b.len, &pos, &dd, &err), FP_OK);
  FP_CHECK_EQ_INT(pos, b.len);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE + 2);
  lua_setglobal(L, "got");
  FP_CHECK(truthy(L, "return got[5] == 20 and got[6] == nil and got[7] == 40 and got[8][1] == 5 and next(got, 8) == nil"));
  /* Identity is per element: the same table in two items is copied twice. */
  lua_pop(L, 1);
  FP_CHECK(run(L, "local s = {}; return {s, s}"));
  b.len = 0;
  FP_CHECK_EQ_INT(fp_encode_range(L, -1, 1, 2, &b, &eo, "item", 1, &err), FP_OK);
  FP_CHECK_EQ_INT(b.len, 18);
  lua_pop(L, 1);
  /* Error labels: root[label_base + k]; len restored to the range start. */
  FP_CHECK(run(L, "return {1, 2, {h = io.stdout}}"));
  FP_CHECK_EQ_INT(fp_buf_append(&b, "X", 1), FP_OK);
  size_t len0 = b.len;
  FP_CHECK_EQ_INT(fp_encode_range(L, -1, 1, 3, &b, &eo, "result", 41, &err), FP_EMARSHAL);
  FP_CHECK_STR(err.path, "result[43].h");
  FP_CHECK_STR(err.msg, "cannot send userdata");
  FP_CHECK_EQ_INT(b.len, len0);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE + 1);
  lua_pop(L, 1);
  /* Indexes beyond int range. */
  FP_CHECK(run(L, "return {[2^40] = 'far', [2^40 + 1] = 'farther'}"));
  b.len = 0;
  FP_CHECK_EQ_INT(fp_encode_range(L, -1, (int64_t)1 << 40, 2, &b, &eo, "item", 1, &err), FP_OK);
  lua_newtable(L);
  pos = 0;
  FP_CHECK_EQ_INT(fp_decode_range(L, -1, ((int64_t)1 << 40) + 10, 2, b.p, b.len, &pos, &dd, &err), FP_OK);
  lua_setglobal(L, "got");
  FP_CHECK(truthy(L, "return got[2^40 + 10] == 'far' and got[2^40 + 11] == 'farther'"));
  /* A decode error in the middle keeps what was stored before it: three
   * values asked for, two present. */
  lua_newtable(L);
  pos = 0;
  FP_CHECK_EQ_INT(fp_decode_range(L, -1, 1, 3, b.p, b.len, &pos, &dd, &err), FP_ECORRUPT);
  FP_CHECK_EQ_INT(pos, b.len);
  lua_setglobal(L, "got");
  FP_CHECK(truthy(L, "return got[1] == 'far' and got[2] == 'farther' and got[3] == nil"));
  fp_buf_free(&b);
  lua_settop(L, BASE);
  lua_close(L);
}

/* Every strict prefix of a range encoding fails in fp_decode_range (whose
 * scalar fast path must check lengths like the general decoder does). */
FP_TEST(test_range_truncation) {
  lua_State *L = new_state();
  fp_buf b = {0};
  fp_codec_err err;
  fp_enc_opts eo = eopts(0);
  fp_dec_opts dd = dopts(0);
  FP_CHECK(run(L, "return {1.5, 7, 'str', nil, {1, x = 2}, true, 2^40, ('y'):rep(300), false, -0.0}"));
  FP_CHECK_EQ_INT(fp_encode_range(L, -1, 1, 10, &b, &eo, "item", 1, &err), FP_OK);
  for (size_t cut = 0; cut < b.len; cut++) {
    unsigned char *copy = malloc(cut ? cut : 1);
    memcpy(copy, b.p, cut);
    lua_newtable(L);
    size_t pos = 0;
    int rc = fp_decode_range(L, -1, 1, 10, copy, cut, &pos, &dd, &err);
    FP_CHECK_EQ_INT(rc, FP_ECORRUPT);
    FP_CHECK(pos <= cut);
    FP_CHECK_EQ_INT(lua_gettop(L), BASE + 2);
    lua_pop(L, 1);
    free(copy);
  }
  lua_newtable(L);
  size_t pos = 0;
  FP_CHECK_EQ_INT(fp_decode_range(L, -1, 1, 10, b.p, b.len, &pos, &dd, &err), FP_OK);
  FP_CHECK_EQ_INT(pos, b.len);
  lua_setglobal(L, "got");
  lua_setglobal(L, "orig");
  FP_CHECK(truthy(L, "return deepeq(orig, got)"));
  fp_buf_free(&b);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

/* Hand-made malformed records, each rejected with FP_ECORRUPT. */
FP_TEST(test_decoder_validation) {
  lua_State *L = new_state();
  fp_codec_err err;
  unsigned char p[512];
  size_t n;
  const unsigned D = FP_DEC_FUNCTIONS;

  p[0] = 0xFF;
  FP_CHECK_EQ_INT(dec_bytes(L, p, 1, D, &err), FP_ECORRUPT);
  FP_CHECK(strncmp(err.msg, "unknown tag 0xff", 16) == 0);
  p[0] = FP_T__COUNT;
  FP_CHECK_EQ_INT(dec_bytes(L, p, 1, D, &err), FP_ECORRUPT);
  FP_CHECK_EQ_INT(dec_bytes(L, p, 0, D, &err), FP_ECORRUPT); /* empty input */
  FP_CHECK(strncmp(err.msg, "truncated record", 16) == 0);

  /* Table sizes the remaining bytes cannot hold. */
  n = 0; p[n++] = FP_T_TABLE; n += w32(p + n, 4); n += w32(p + n, 0);
  p[n++] = FP_T_NIL; p[n++] = FP_T_NIL; p[n++] = FP_T_NIL;
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);
  FP_CHECK(strncmp(err.msg, "table sizes exceed the record", 29) == 0);
  n = 0; p[n++] = FP_T_TABLE; n += w32(p + n, 0); n += w32(p + n, 2);
  p[n++] = FP_T_TRUE; p[n++] = FP_T_TRUE; p[n++] = FP_T_TRUE;
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);
  n = 0; p[n++] = FP_T_TABLE; n += w32(p + n, 0xFFFFFFFFu); n += w32(p + n, 0xFFFFFFFFu);
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);
  /* ... and exactly enough is fine: narr=3 with three NILs. */
  n = 0; p[n++] = FP_T_TABLE; n += w32(p + n, 3); n += w32(p + n, 0);
  p[n++] = FP_T_NIL; p[n++] = FP_T_NIL; p[n++] = FP_T_NIL;
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_OK);

  /* REF: out of range at top level, forward, self reference ok. */
  n = 0; p[n++] = FP_T_REF; n += w32(p + n, 0);
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);
  n = 0; p[n++] = FP_T_TABLE; n += w32(p + n, 1); n += w32(p + n, 0);
  p[n++] = FP_T_REF; n += w32(p + n, 1);
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);
  FP_CHECK(strncmp(err.msg, "reference to an unknown", 23) == 0);
  w32(p + n - 4, 0);
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_OK);

  /* nil and NaN keys. */
  n = 0; p[n++] = FP_T_TABLE; n += w32(p + n, 0); n += w32(p + n, 1);
  p[n++] = FP_T_NIL; p[n++] = FP_T_TRUE;
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);
  FP_CHECK(strncmp(err.msg, "nil table key", 13) == 0);
  n = 0; p[n++] = FP_T_TABLE; n += w32(p + n, 0); n += w32(p + n, 1);
  p[n++] = FP_T_DOUBLE; { double nan = NAN; memcpy(p + n, &nan, 8); n += 8; }
  p[n++] = FP_T_TRUE;
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);
  FP_CHECK(strncmp(err.msg, "NaN table key", 13) == 0);

  /* Strings longer than the record. */
  n = 0; p[n++] = FP_T_STR32; n += w32(p + n, 1000); memcpy(p + n, "abc", 3); n += 3;
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);
  n = 0; p[n++] = FP_T_STR8; p[n++] = 4; memcpy(p + n, "abc", 3); n += 3;
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);

  /* FUNC: text chunk instead of bytecode; wrong upvalue count; not allowed. */
  const char *src = "return 1";
  n = 0; p[n++] = FP_T_FUNC; n += w32(p + n, (uint32_t)strlen(src));
  memcpy(p + n, src, strlen(src)); n += strlen(src); p[n++] = 0;
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);
  FP_CHECK(strncmp(err.msg, "function record is not LuaJIT bytecode", 38) == 0);
  FP_CHECK(run(L, "local up = 1; return string.dump(function() return up end)"));
  size_t bcn;
  const char *bc = lua_tolstring(L, -1, &bcn);
  FP_CHECK(bcn + 16 < sizeof p);
  n = 0; p[n++] = FP_T_FUNC; n += w32(p + n, (uint32_t)bcn);
  memcpy(p + n, bc, bcn); n += bcn;
  lua_pop(L, 1);
  p[n] = 0; /* claims no upvalues */
  FP_CHECK_EQ_INT(dec_bytes(L, p, n + 1, D, &err), FP_ECORRUPT);
  FP_CHECK(strncmp(err.msg, "function record has the wrong number", 36) == 0);
  p[n] = 1; p[n + 1] = FP_T_INT32; w32(p + n + 2, 77);
  FP_CHECK_EQ_INT(dec_bytes(L, p, n + 6, D, &err), FP_OK);
  FP_CHECK_EQ_INT(dec_bytes(L, p, n + 6, 0, &err), FP_ECORRUPT);
  FP_CHECK_EQ_INT(dec_bytes(L, p, n + 5, D, &err), FP_ECORRUPT); /* truncated upvalue */

  /* MODREF with a non-string name; without require. */
  n = 0; p[n++] = FP_T_MODREF; p[n++] = FP_T_TRUE;
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);
  FP_CHECK(strncmp(err.msg, "module reference without a string name", 38) == 0);

  /* Light userdata that no user-space pointer can be. */
  n = 0; p[n++] = FP_T_LIGHTUD; { uint64_t v = (uint64_t)1 << 60; memcpy(p + n, &v, 8); n += 8; }
  FP_CHECK_EQ_INT(dec_bytes(L, p, n, D, &err), FP_ECORRUPT);

  /* One value, then more bytes: pos stops after the first. */
  p[0] = FP_T_TRUE; p[1] = FP_T_FALSE;
  size_t pos = 0;
  fp_dec_opts dd = dopts(0);
  FP_CHECK_EQ_INT(fp_decode_value(L, p, 2, &pos, &dd, &err), FP_OK);
  FP_CHECK_EQ_INT(pos, 1);
  FP_CHECK(lua_toboolean(L, -1));
  lua_pop(L, 1);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

/* Some valid encodings, used by the truncation and bit-flip tests and as
 * the fuzzer's seeds.  Functions last (only decoded with the flag). */
static const char *const sample_exprs[] = {
  "nil", "true", "false", "42", "-0.0", "0/0", "1/0", "-2147483649", "3.25",
  "'hello'", "('x\\0y'):rep(100)",
  "{}",
  "{1, 2, 3, 'four', 5.5, true}",
  "{id = 1, name = 'x', tags = {'a', 'b'}, score = 1.5}",
  "(function() local t = {1, 2, 3, 4}; t[2] = nil; t.k = {}; t[0] = 0; t[1.5] = 'h' return t end)()",
  "(function() local a = {1}; return {x = a, y = a, z = {a, a}} end)()",
  "(function() local t = {}; t.self = t; t[t] = true; return t end)()",
  "(function() local s = {}; for i = 1, 20 do s[i] = {i} end; for i = 1, 20 do s[40 + i] = s[21 - i] end; return s end)()",
  "{a = 5LL, b = 0xffffffffffffffffULL, c = -1LL}",
  "{m = package.loaded['fake.mod'], f = package.loaded['fake.mod'].f, p = print}",
  "(function() local t = {}; local c = t; for i = 1, 60 do c.n = {i}; c = c.n end; return t end)()",
  "{[true] = false, [false] = true, [2^40] = 'big', [-3] = -3, ['a b'] = 'c d'}",
  "(function() local n = 0; return function() n = n + 1; return n end end)()",
  "(function() local function fib(n) if n < 2 then return n end return fib(n-1) + fib(n-2) end; return {fib = fib} end)()",
};
#define N_SAMPLES (sizeof sample_exprs / sizeof sample_exprs[0])
#define N_SAMPLE_FUNCS 2

static void setup_fake_module(lua_State *L) {
  FP_CHECK(run(L,
    "package.loaded['fake.mod'] = package.loaded['fake.mod'] or {f = function() return 1 end}\n"
    "local m = package.loaded['fake.mod']\n"
    "modmap[m] = 'fake.mod'; modmap[m.f] = 'fake.mod\\0f'; modmap[print] = '_G\\0print'\n"));
  lua_pop(L, 1);
}

/* Every strict prefix of a valid encoding is FP_ECORRUPT (or, for MODREF
 * records whose name got cut, never a crash), the full one decodes. */
FP_TEST(test_truncation) {
  lua_State *L = new_state();
  setup_fake_module(L);
  fp_codec_err err;
  for (size_t s = 0; s < N_SAMPLES; s++) {
    fp_buf b = {0};
    int fn = s >= N_SAMPLES - N_SAMPLE_FUNCS;
    enc_expr(L, sample_exprs[s], fn ? FP_ENC_FUNCTIONS : 0, &b);
    unsigned df = fn ? FP_DEC_FUNCTIONS : 0;
    for (size_t cut = 0; cut < b.len; cut++) {
      /* A private copy of the prefix so ASan catches any read past it. */
      unsigned char *copy = malloc(cut ? cut : 1);
      memcpy(copy, b.p, cut);
      int rc = dec_bytes(L, copy, cut, df, &err);
      if (rc != FP_ECORRUPT) {
        fprintf(stderr, "  %s: prefix %zu of %zu gave %d\n", sample_exprs[s], cut, b.len, rc);
        FP_CHECK(0);
      }
      free(copy);
    }
    FP_CHECK_EQ_INT(dec_bytes(L, b.p, b.len, df, &err), FP_OK);
    fp_buf_free(&b);
  }
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

/* Random byte changes: any result but a crash; the stack stays balanced. */
FP_TEST(test_random_flips) {
  lua_State *L = new_state();
  setup_fake_module(L);
  lua_getglobal(L, "loaded_only"); /* never search the file system */
  lua_replace(L, S_REQUIRE);
  fp_codec_err err;
  unsigned seed = 7;
  int outcomes[3] = {0, 0, 0};
  fp_dec_opts dd = dopts(0);
  for (size_t s = 0; s < N_SAMPLES - N_SAMPLE_FUNCS; s++) {
    fp_buf b = {0};
    enc_expr(L, sample_exprs[s], 0, &b);
    unsigned char *copy = malloc(b.len);
    for (int round = 0; round < 400; round++) {
      memcpy(copy, b.p, b.len);
      int flips = 1 + (int)(rand_r(&seed) % 4);
      for (int f = 0; f < flips; f++) {
        size_t at = (size_t)rand_r(&seed) % b.len;
        copy[at] = (round & 1) ? (unsigned char)rand_r(&seed)
                               : (unsigned char)(copy[at] ^ (1u << (rand_r(&seed) % 8)));
      }
      /* The value may now end early: pos <= len, stack one higher. */
      size_t pos = 0;
      int rc = fp_decode_value(L, copy, b.len, &pos, &dd, &err);
      FP_CHECK_EQ_INT(lua_gettop(L), BASE + (rc == FP_OK));
      FP_CHECK(rc == FP_OK ? pos <= b.len : pos == 0);
      lua_settop(L, BASE);
      if (rc == FP_OK) {
        outcomes[0]++;
      } else if (rc == FP_ECORRUPT) {
        outcomes[1]++;
      } else {
        FP_CHECK_EQ_INT(rc, FP_EMARSHAL); /* a name got changed */
        outcomes[2]++;
      }
    }
    free(copy);
    fp_buf_free(&b);
  }
  FP_CHECK(outcomes[0] > 0 && outcomes[1] > 0);
  FP_CHECK_EQ_INT(lua_gettop(L), BASE);
  lua_close(L);
}

/* Write the samples as the fuzzer's seed corpus. */
static int write_corpus(const char *dir) {
  lua_State *L = new_state();
  setup_fake_module(L);
  int written = 0;
  for (size_t s = 0; s < N_SAMPLES; s++) {
    fp_buf b = {0};
    int fn = s >= N_SAMPLES - N_SAMPLE_FUNCS;
    enc_expr(L, sample_exprs[s], fn ? FP_ENC_FUNCTIONS : 0, &b);
    if (s + 1 < N_SAMPLES) /* several values in a row, as the fuzzer loops */
      enc_expr(L, s % 2 ? "{1, 'two'}" : "-7", 0, &b);
    char path[4096];
    snprintf(path, sizeof path, "%s/seed-%02zu", dir, s);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b.p, 1, b.len, f) != b.len) {
      fprintf(stderr, "cannot write %s\n", path);
      if (f) fclose(f);
      fp_buf_free(&b);
      lua_close(L);
      return 1;
    }
    fclose(f);
    written++;
    fp_buf_free(&b);
  }
  lua_close(L);
  /* Two hand-made ones Lua cannot produce: a light userdata, and a chain of
   * exactly FP_CODEC_MAX_DEPTH tables. */
  unsigned char lud[9] = {FP_T_LIGHTUD};
  uint64_t ptr = 0x7f0012345678u;
  memcpy(lud + 1, &ptr, 8);
  size_t deep_n = (size_t)FP_CODEC_MAX_DEPTH * 9 + 1;
  unsigned char *deep = malloc(deep_n);
  for (int i = 0; i < FP_CODEC_MAX_DEPTH; i++) {
    deep[i * 9] = FP_T_TABLE;
    w32(deep + i * 9 + 1, 1);
    w32(deep + i * 9 + 5, 0);
  }
  deep[deep_n - 1] = FP_T_TRUE;
  const struct { const char *name; const unsigned char *p; size_t n; } extra[] = {
    {"seed-lightud", lud, sizeof lud}, {"seed-deep", deep, deep_n}};
  for (size_t i = 0; i < 2; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, extra[i].name);
    FILE *f = fopen(path, "wb");
    int bad = !f || fwrite(extra[i].p, 1, extra[i].n, f) != extra[i].n;
    if (f) fclose(f);
    if (bad) {
      fprintf(stderr, "cannot write %s\n", path);
      free(deep);
      return 1;
    }
    written++;
  }
  free(deep);
  printf("wrote %d seeds to %s\n", written, dir);
  return 0;
}

int main(void) {
  const char *corpus = getenv("FP_WRITE_CORPUS");
  if (corpus) return write_corpus(corpus);
  FP_RUN(test_scalars_roundtrip);
  FP_RUN(test_number_encoding);
  FP_RUN(test_strings);
  FP_RUN(test_tables_and_holes);
  FP_RUN(test_random_tables);
  FP_RUN(test_keys_of_every_kind);
  FP_RUN(test_shared_refs_and_cycles);
  FP_RUN(test_functions);
  FP_RUN(test_modmap);
  FP_RUN(test_cdata);
  FP_RUN(test_error_paths);
  FP_RUN(test_too_deep);
  FP_RUN(test_stack_and_buffer_balance);
  FP_RUN(test_ranges);
  FP_RUN(test_range_truncation);
  FP_RUN(test_decoder_validation);
  FP_RUN(test_truncation);
  FP_RUN(test_random_flips);
  return fp_test_summary();
}
