/*
 * test_packed.c - packed result bodies: every body forkpool.pack's packer
 * makes (string.buffer encodings of results, made here by LuaJIT itself)
 * passes; malformed ones, and bodies whose counts do not add up, are
 * refused; NaNs in f64 copies are made canonical.  Every sbuf body goes
 * through the parser in both its modes (fp_packed_copy checking a copy,
 * fp_packed_decode_sbuf decoding): same verdict, and what the decoder
 * stores is what LuaJIT's own decoder makes of the bytes.
 */
#include "fp_packed.h"
#include "fp_lua_same.h"
#include "fp_test.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <string.h>

static lua_State *L;
static fp_buf body, scratch;
static const char *last_why = ""; /* check_sbuf's reason for a refusal */

/* An sbuf body s of len bytes (tag included), checked and decoded: both
 * verdicts must agree, and an accepted body must decode as string.buffer
 * decodes it.  Returns the verdict. */
static int check_sbuf(const char *s, size_t len, uint32_t count, const char *what) {
  const char *why = NULL, *dwhy = NULL;
  int rc = fp_packed_copy(&body, (const unsigned char *)s, len, count, &scratch, &why);
  /* The parent's decoder agrees: same verdict (and reason), and
   * t[at + i - 1] equal to what string.buffer decodes. */
  lua_newtable(L);
  int top = lua_gettop(L);
  int drc = fp_packed_decode_sbuf(L, top, 100, count, (const unsigned char *)s, len, &dwhy);
  FP_CHECK_EQ_INT(lua_gettop(L), top);
  FP_CHECK_EQ_INT(drc, rc);
  if (rc != FP_OK) {
    FP_CHECK_STR(why, dwhy);
    last_why = why ? why : "";
  }
  if (drc == FP_OK) {
    lua_getglobal(L, "fp_same");
    lua_pushlstring(L, s + 8, len - 8);
    lua_pushvalue(L, top);
    lua_pushinteger(L, (lua_Integer)count);
    if (lua_pcall(L, 3, 1, 0) != 0 || !lua_toboolean(L, -1)) {
      fprintf(stderr, "  decoders differ on %s\n", what);
      FP_CHECK(0);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return rc;
}

/* The body of results made by Lua expression expr (a table), packed as
 * pack_table does: the tag, then string.buffer's encoding. */
static int check_lua(const char *expr, uint32_t count) {
  char code[4096];
  snprintf(code, sizeof code,
           "local t = (%s) return 'fp.sbuf\\0' .. require('string.buffer').encode(t)", expr);
  if (luaL_dostring(L, code) != 0) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    return -100;
  }
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  int rc = check_sbuf(s, len, count, expr);
  lua_pop(L, 1);
  return rc;
}

/* Whether LuaJIT's string.buffer decodes body s (tag included). */
static int luajit_decodes(const char *s, size_t len) {
  lua_getglobal(L, "fp_decodes");
  lua_pushlstring(L, s + 8, len - 8);
  if (lua_pcall(L, 1, 1, 0) != 0) return -1;
  int ok = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return ok;
}

static int check_raw(const char *bytes, size_t len, uint32_t count) {
  const char *why = NULL;
  return fp_packed_copy(&body, (const unsigned char *)bytes, len, count, &scratch, &why);
}

FP_TEST(test_sbuf_accepts_what_the_packer_makes) {
  FP_CHECK_EQ_INT(check_lua("{1, 2.5, -3}", 3), FP_OK);
  FP_CHECK_EQ_INT(check_lua("{}", 0), FP_OK);
  FP_CHECK_EQ_INT(check_lua("{}", 7), FP_OK);              /* all nil */
  FP_CHECK_EQ_INT(check_lua("{'a', true, false, nil, 1e300}", 5), FP_OK);
  FP_CHECK_EQ_INT(check_lua("{1, nil, nil, nil, nil, 'x'}", 6), FP_OK);
  FP_CHECK_EQ_INT(check_lua("{0/0, 1/0, -0.0}", 3), FP_OK);
  /* integer keys in the hash part */
  FP_CHECK_EQ_INT(check_lua("(function() local t = {} for i = 1, 40 do t[i] = i end "
                            "t[1000] = 'far' return t end)()", 1000), FP_OK);
  FP_CHECK_EQ_INT(check_lua("(function() local t = {} for i = 50, 1, -1 do t[i] = i end "
                            "return t end)()", 50), FP_OK);
  /* flat arrays of scalars, including ones with a hash part */
  FP_CHECK_EQ_INT(check_lua("{{1, 2, 3}, {'a', 'b'}, {}}", 3), FP_OK);
  FP_CHECK_EQ_INT(check_lua("{(function() local t = {} for i = 30, 1, -1 do t[i] = i end "
                            "return t end)(), {true}}", 2), FP_OK);
  FP_CHECK_EQ_INT(check_lua("{string.rep('x', 100000), string.rep('y', 300)}", 2), FP_OK);
}

FP_TEST(test_sbuf_refuses) {
  /* more results than the chunk has */
  FP_CHECK_EQ_INT(check_lua("{1, 2, 3}", 2), FP_ECORRUPT);
  FP_CHECK_EQ_INT(check_lua("{[10] = 1}", 9), FP_ECORRUPT);
  /* kinds the packer never makes */
  FP_CHECK_EQ_INT(check_lua("{{{1}}}", 1), FP_ECORRUPT);
  FP_CHECK_EQ_INT(check_lua("{{x = 1}}", 1), FP_ECORRUPT);
  FP_CHECK_EQ_INT(check_lua("{x = 1}", 1), FP_ECORRUPT);
  FP_CHECK_EQ_INT(check_lua("{[0] = 1, 2}", 1), FP_ECORRUPT);
  FP_CHECK_EQ_INT(check_lua("{1.5}", 1), FP_OK);
  FP_CHECK_EQ_INT(check_lua("{[1.5] = 1}", 2), FP_ECORRUPT);
  FP_CHECK_EQ_INT(check_lua("{require('ffi').new('int64_t', 1)}", 1), FP_ECORRUPT);
  FP_CHECK_EQ_INT(check_lua("{{1, nil, 3}}", 1), FP_ECORRUPT);
  /* hand-made */
#define RAW(s, n) check_sbuf("fp.sbuf\0" s, 8 + sizeof(s) - 1, n, #s)
  FP_CHECK_EQ_INT(RAW("", 1), FP_ECORRUPT);
  FP_CHECK_EQ_INT(RAW("\x0c\xff\xff\xff\xff\x7f", 1), FP_ECORRUPT);  /* narray 2^31-1 */
  FP_CHECK_EQ_INT(RAW("\x0d\x01\xff\xff\xff\xff\x7f", 1), FP_ECORRUPT);
  FP_CHECK_EQ_INT(RAW("\x0c\x02\x25" "abc", 1), FP_ECORRUPT);         /* string past the end */
  FP_CHECK_EQ_INT(RAW("\x0c\x02\x01\x01", 1), FP_ECORRUPT);           /* trailing bytes */
  FP_CHECK_EQ_INT(RAW("\x0c\x02\x03", 1), FP_ECORRUPT);               /* NULL */
  FP_CHECK_EQ_INT(RAW("\x0e\x00\x0c\x02\x01", 1), FP_ECORRUPT);       /* metatable dict */
  FP_CHECK_EQ_INT(RAW("\x09\x02\x06\x01\x00\x00\x00\x01\x06\x01\x00\x00\x00\x01", 1),
                  FP_ECORRUPT);                                       /* key 1 twice */
  FP_CHECK_EQ_INT(RAW("\x09\x01\x06\x01\x00\x00\x00\x01", 1), FP_OK);  /* key 1 once */
  /* A key twice where two would fit: string.buffer refuses it ("duplicate
   * table key"), and so does the parser, in both modes, at either level. */
#define DUP_TOP "\x09\x02\x06\x01\x00\x00\x00\x01\x06\x01\x00\x00\x00\x02"
#define DUP_FLAT "\x0c\x02\x09\x02\x06\x01\x00\x00\x00\x02\x06\x01\x00\x00\x00\x01"
  FP_CHECK_EQ_INT(RAW(DUP_TOP, 2), FP_ECORRUPT);
  FP_CHECK(strstr(last_why, "twice") != NULL);
  FP_CHECK_EQ_INT(luajit_decodes("fp.sbuf\0" DUP_TOP, 8 + sizeof DUP_TOP - 1), 0);
  FP_CHECK_EQ_INT(RAW(DUP_FLAT, 1), FP_ECORRUPT);
  FP_CHECK(strstr(last_why, "twice") != NULL);
  FP_CHECK_EQ_INT(luajit_decodes("fp.sbuf\0" DUP_FLAT, 8 + sizeof DUP_FLAT - 1), 0);
  /* the same bodies with distinct keys pass */
  FP_CHECK_EQ_INT(RAW("\x09\x02\x06\x02\x00\x00\x00\x01\x06\x01\x00\x00\x00\x02", 2),
                  FP_OK);
  FP_CHECK_EQ_INT(RAW("\x0c\x02\x09\x02\x06\x02\x00\x00\x00\x02\x06\x01\x00\x00\x00\x01",
                      1), FP_OK);
  FP_CHECK_EQ_INT(RAW("\x0c\x02\x01", 1), FP_OK);
  FP_CHECK_EQ_INT(check_raw("fp.nope\0", 8, 0), FP_ECORRUPT);
  FP_CHECK_EQ_INT(check_raw("fp", 2, 0), FP_ECORRUPT);
}

FP_TEST(test_f64) {
  double d[4] = {0, 1, 2, 3};
  uint64_t nan = UINT64_C(0xfffa000000000001);
  memcpy(d, "fp.f64\0\0", 8);
  memcpy(&d[2], &nan, 8);
  FP_CHECK_EQ_INT(check_raw((const char *)d, sizeof d, 3), FP_OK);
  uint64_t got;
  memcpy(&got, body.p + 16, 8);
  FP_CHECK(got == UINT64_C(0xfff8000000000000));
  FP_CHECK_EQ_INT(check_raw((const char *)d, sizeof d, 2), FP_ECORRUPT);
  FP_CHECK_EQ_INT(check_raw((const char *)d, sizeof d - 4, 3), FP_ECORRUPT);
  /* f64a: 2 results, lengths 2 and 1 */
  double a[7] = {0, 2, 2, 1.5, 2.5, 1, 7};
  memcpy(a, "fp.f64a\0", 8);
  FP_CHECK_EQ_INT(check_raw((const char *)a, sizeof a, 2), FP_OK);
  FP_CHECK_EQ_INT(check_raw((const char *)a, sizeof a, 3), FP_ECORRUPT);
  a[2] = 3;
  FP_CHECK_EQ_INT(check_raw((const char *)a, sizeof a, 2), FP_ECORRUPT);
  a[2] = 1e300;
  FP_CHECK_EQ_INT(check_raw((const char *)a, sizeof a, 2), FP_ECORRUPT);
  a[2] = -1;
  FP_CHECK_EQ_INT(check_raw((const char *)a, sizeof a, 2), FP_ECORRUPT);
  a[2] = 0.5;
  FP_CHECK_EQ_INT(check_raw((const char *)a, sizeof a, 2), FP_ECORRUPT);
  a[2] = 1;  /* lengths 1 and 1: one double left over */
  FP_CHECK_EQ_INT(check_raw((const char *)a, sizeof a, 2), FP_ECORRUPT);
}

int main(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_dostring(L,
        "local buf = require('string.buffer')\n"
        FP_LUA_SAME_FN
        "function fp_decodes(s) return (pcall(buf.decode, s)) end\n"
        "function fp_same(s, mine, n)\n"
        "  local t = buf.decode(s)\n"
        "  for i = 1, n do if not same(t[i], mine[100 + i - 1]) then return false end end\n"
        "  for k in pairs(mine) do if k < 100 or k >= 100 + n then return false end end\n"
        "  return true\n"
        "end\n") != 0)
    return 1;
  FP_RUN(test_sbuf_accepts_what_the_packer_makes);
  FP_RUN(test_sbuf_refuses);
  FP_RUN(test_f64);
  lua_close(L);
  fp_buf_free(&body);
  fp_buf_free(&scratch);
  return fp_test_summary();
}
