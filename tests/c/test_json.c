/*
 * test_json.c - unit tests of the JSON encoder (engine/fp_json.c).
 *
 * Values are written in Lua (enc("expr")), encoded, and the text (or the
 * error as "ERR kind path: msg") compared with what the rules at the top of
 * fp_json.c say.  Every call is checked to leave the Lua stack at its height
 * and, on error, the output buffer at its length.  Numbers are also checked
 * against a reference made from printf + strtod in the C locale, over many
 * random doubles, and in two non-C locales (de_DE: ",", ps_AF: the two-byte
 * U+066B) when they exist or can be made with localedef (LOCPATH, a temp dir).
 */
#include "fp_json.h"
#include "fp_test.h"

#include <lauxlib.h>
#include <locale.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static lua_State *L;
static fp_buf out;
static fp_json_scratch scr;
static char res[1 << 17];

static const char prelude[] =
  "ffi = require('ffi')\n"
  "cjson = require('cjson')\n";

/* Encode the value of the Lua expression src; returns the text or
 * "ERR kind path: msg" (a static buffer). */
static const char *enc(const char *src) {
  char code[4096];
  snprintf(code, sizeof code, "return %s", src);
  if (luaL_loadstring(L, code) || lua_pcall(L, 0, 1, 0)) {
    snprintf(res, sizeof res, "LUA %s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return res;
  }
  int top = lua_gettop(L);
  out.len = 0;
  fp_buf_append(&out, "XY", 2); /* not at 0: appends, and is restored */
  fp_json_err err;
  int rc = fp_json_encode(L, -1, &out, &scr, &err);
  if (lua_gettop(L) != top) snprintf(res, sizeof res, "STACK %d vs %d", lua_gettop(L), top);
  else if (rc == FP_OK) {
    size_t n = out.len - 2 < sizeof res - 1 ? out.len - 2 : sizeof res - 1;
    memcpy(res, out.p + 2, n);
    res[n] = '\0';
  } else if (out.len != 2) snprintf(res, sizeof res, "LEN %zu", out.len);
  else snprintf(res, sizeof res, "ERR %s %s: %s", err.kind, err.path, err.msg);
  lua_pop(L, 1);
  return res;
}

/* Run Lua code (setting globals for later enc calls). */
static void lua(const char *code) {
  if (luaL_dostring(L, code)) {
    fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    abort();
  }
}

/* The number rule, written the obvious way (C locale). */
static void ref_number(double v, char *o) {
  if (fabs(v) < 9007199254740992.0 && v == trunc(v)) {
    if (v == 0) strcpy(o, signbit(v) ? "-0" : "0");
    else snprintf(o, 40, "%.0f", v);
    return;
  }
  for (int p = 15; p <= 17; p++) {
    snprintf(o, 40, "%.*g", p, v);
    if (strtod(o, NULL) == v) return;
  }
}

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t next_rand(void) { /* xorshift64* */
  rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
  return rng * 2685821657736338717ULL;
}

FP_TEST(number_edges) {
  FP_CHECK_STR(enc("0.1 + 0.2"), "0.30000000000000004");
  FP_CHECK_STR(enc("1e300"), "1e+300");
  FP_CHECK_STR(enc("5e-324"), "4.94065645841247e-324");
  FP_CHECK_STR(enc("2^53"), "9007199254740992");
  FP_CHECK_STR(enc("2^53 + 2"), "9007199254740994");
  FP_CHECK_STR(enc("2^53 - 1"), "9007199254740991");
  FP_CHECK_STR(enc("-(2^53 - 1)"), "-9007199254740991");
  FP_CHECK_STR(enc("1e21"), "1e+21");
  FP_CHECK_STR(enc("1e16"), "1e+16");
  FP_CHECK_STR(enc("-0.0"), "-0");
  FP_CHECK_STR(enc("0"), "0");
  FP_CHECK_STR(enc("1/3"), "0.3333333333333333");
  FP_CHECK_STR(enc("-1/3"), "-0.3333333333333333");
  FP_CHECK_STR(enc("100"), "100");
  FP_CHECK_STR(enc("1e15"), "1000000000000000");
  FP_CHECK_STR(enc("1.5"), "1.5");
  FP_CHECK_STR(enc("-2.25"), "-2.25");
  FP_CHECK_STR(enc("0.1"), "0.1");
  FP_CHECK_STR(enc("0.0001"), "0.0001");
  FP_CHECK_STR(enc("0.00001"), "1e-05");
  FP_CHECK_STR(enc("1.5e-7"), "1.5e-07");
  FP_CHECK_STR(enc("123456789012345.6"), "123456789012345.6");
  FP_CHECK_STR(enc("1e15 + 0.5"), "1000000000000000.5");
  FP_CHECK_STR(enc("1.7976931348623157e308"), "1.7976931348623157e+308");
  FP_CHECK_STR(enc("2.2250738585072014e-308"), "2.2250738585072014e-308");
  FP_CHECK_STR(enc("0/0"), "ERR encode $: NaN is not JSON");
  FP_CHECK_STR(enc("1/0"), "ERR encode $: inf is not JSON");
  FP_CHECK_STR(enc("{x = {-1/0}}"), "ERR encode $.x[1]: -inf is not JSON");
}

/* fp_json_number (fast path and printf path) equals the reference. */
FP_TEST(number_random) {
  char a[FP_JSON_NUM_MAX], b[64];
  int bad = 0;
  for (int i = 0; i < 300000 && bad < 5; i++) {
    double v;
    uint64_t r = next_rand();
    switch (i % 4) {
    case 0: memcpy(&v, &r, 8); break;                        /* any bits */
    case 1: v = (double)(int64_t)(r % 2000000001) / 1e3; break; /* short decimals */
    case 2: v = (double)(r >> 11) * 0x1p-53 * pow(10, (int)(next_rand() % 40) - 20); break;
    default: v = (double)(int64_t)(r >> 20) * pow(10, -(int)(next_rand() % 23)); break;
    }
    if (!isfinite(v)) continue;
    fp_json_number(v, a);
    ref_number(v, b);
    if (strcmp(a, b) != 0) {
      bad++;
      fprintf(stderr, "  %.17g: %s vs reference %s\n", v, a, b);
    }
    if (strtod(a, NULL) != v && !(v == 0)) {
      bad++;
      fprintf(stderr, "  %.17g: %s does not read back\n", v, a);
    }
  }
  FP_CHECK_EQ_INT(bad, 0);
}

/* Make the locale src.UTF-8 in dir with localedef (before any setlocale
 * asks for it under LOCPATH: glibc remembers a failed lookup). */
static void make_locale(const char *src, const char *dir) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "localedef -i %s -f UTF-8 %s/%s.UTF-8 >/dev/null 2>&1",
           src, dir, src);
  /* (localedef exits with 1 after mere warnings: setlocale tells) */
  if (system(cmd) == -1) return;
}

/* A locale whose decimal point is not "." changes nothing. */
FP_TEST(number_locale) {
  char dir[] = "/tmp/fp_json_locale.XXXXXX";
  if (!mkdtemp(dir)) { FP_CHECK(0); return; }
  static const struct { const char *name, *src; } locs[] = {
    {"de_DE.UTF-8", "de_DE"}, {"ps_AF.UTF-8", "ps_AF"}};
  int tested = 0;
  for (size_t k = 0; k < sizeof locs / sizeof locs[0]; k++)
    make_locale(locs[k].src, dir);
  setenv("LOCPATH", dir, 1);
  for (size_t k = 0; k < sizeof locs / sizeof locs[0]; k++) {
    if (!setlocale(LC_NUMERIC, locs[k].name)) {
      fprintf(stderr, "  (locale %s not available: not tested)\n", locs[k].name);
      continue;
    }
    char probe[32];
    snprintf(probe, sizeof probe, "%.1f", 0.5);
    FP_CHECK(strcmp(probe, "0.5") != 0); /* the locale is in effect */
    tested++;
    FP_CHECK_STR(enc("0.1 + 0.2"), "0.30000000000000004");
    FP_CHECK_STR(enc("1/3"), "0.3333333333333333");
    FP_CHECK_STR(enc("1.5"), "1.5");
    FP_CHECK_STR(enc("5e-324"), "4.94065645841247e-324");
    FP_CHECK_STR(enc("{[0.5] = 1, [1e300] = 2}"), "{\"0.5\":1,\"1e+300\":2}");
    char a[FP_JSON_NUM_MAX], b[64];
    for (int i = 0; i < 20000; i++) {
      double v;
      uint64_t r = next_rand();
      memcpy(&v, &r, 8);
      if (!isfinite(v)) continue;
      fp_json_number(v, a);
      setlocale(LC_NUMERIC, "C");
      ref_number(v, b);
      setlocale(LC_NUMERIC, locs[k].name);
      if (strcmp(a, b)) { FP_CHECK_STR(a, b); break; }
    }
  }
  setlocale(LC_NUMERIC, "C");
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) FP_CHECK(0);
  fprintf(stderr, "  (%d non-C locale(s) tested)\n", tested);
}

FP_TEST(key_order) {
  FP_CHECK_STR(enc("{b = 1, a = 2, c = 3}"), "{\"a\":2,\"b\":1,\"c\":3}");
  /* bytewise, shorter first on a common prefix, UTF-8 after ASCII */
  FP_CHECK_STR(enc("{ab = 1, a = 2, B = 3, ['a b'] = 4, ['\\u{e9}'] = 5, ['~'] = 6}"),
               "{\"B\":3,\"a\":2,\"a b\":4,\"ab\":1,\"~\":6,\"\xc3\xa9\":5}");
  /* number keys are written as strings and sorted by that text */
  FP_CHECK_STR(enc("{[10] = 'a', [9] = 'b', x = 1, [1.5] = 'c', [-1] = 'd'}"),
               "{\"-1\":\"d\",\"1.5\":\"c\",\"10\":\"a\",\"9\":\"b\",\"x\":1}");
  /* same text from a number and a string: the number key first */
  FP_CHECK_STR(enc("{['1'] = 's', [1] = 'n', [2] = 'm'}"), "{\"1\":\"n\",\"1\":\"s\",\"2\":\"m\"}");
  FP_CHECK_STR(enc("{[1] = 'n', ['1'] = 's'}"), "{\"1\":\"n\",\"1\":\"s\"}");
  /* insertion order (and so pairs order) does not matter */
  lua("local ks = {} for i = 1, 300 do ks[i] = 'k' .. (i * 7919 % 1000) end\n"
      "t1, t2 = {}, {}\n"
      "for i = 1, 300 do t1[ks[i]] = i end\n"
      "for i = 300, 1, -1 do t2[ks[i]] = i end\n"
      "s1, s2 = {}, {}\n"
      "for i = 1, 20 do s1['x' .. i] = i end\n"
      "for i = 20, 1, -1 do s2['x' .. i] = i end\n"
      "for i = 1, 200 do s2['y' .. i] = true; s2['y' .. i] = nil end\n");
  char a[1 << 15];
  snprintf(a, sizeof a, "%s", enc("t1"));
  FP_CHECK_STR(a, enc("t2"));
  FP_CHECK(strncmp(a, "{\"k", 3) == 0);
  snprintf(a, sizeof a, "%s", enc("s1"));
  FP_CHECK_STR(a, enc("s2"));
  FP_CHECK(strncmp(a, "{\"x1\":1,\"x10\":10,\"x11\":11,", 25) == 0);
  /* a key of another type */
  FP_CHECK_STR(enc("{a = {[true] = 1}}"),
               "ERR encode $.a: a table key is a boolean (keys must be strings or numbers)");
  FP_CHECK_STR(enc("{[{}] = 1}"),
               "ERR encode $: a table key is a table (keys must be strings or numbers)");
  FP_CHECK_STR(enc("{[1/0] = 1, x = 1}"), "ERR encode $: a key is inf (not JSON)");
}

FP_TEST(arrays) {
  FP_CHECK_STR(enc("{}"), "{}");
  FP_CHECK_STR(enc("{{}, {{}}}"), "[{},[{}]]");
  FP_CHECK_STR(enc("{1, 2, 3}"), "[1,2,3]");
  FP_CHECK_STR(enc("{1, nil, 3}"), "[1,null,3]");
  FP_CHECK_STR(enc("{[3] = 'c', [1] = 'a'}"), "[\"a\",null,\"c\"]");
  FP_CHECK_STR(enc("{[2] = 'b'}"), "[null,\"b\"]");
  FP_CHECK_STR(enc("{[10] = 1}"), "[null,null,null,null,null,null,null,null,null,1]");
  FP_CHECK_STR(enc("{[11] = 1}"), "ERR encode $: excessively sparse array");
  FP_CHECK_STR(enc("{1, 2, 3, 4, 5, 6, [12] = 1}"), "[1,2,3,4,5,6,null,null,null,null,null,1]");
  FP_CHECK_STR(enc("{1, 2, 3, 4, 5, [13] = 1}"), "ERR encode $: excessively sparse array");
  FP_CHECK_STR(enc("{a = {1, [2^53] = 2}}"), "ERR encode $.a: excessively sparse array");
  FP_CHECK_STR(enc("{1, 2, x = 3}"), "{\"1\":1,\"2\":2,\"x\":3}");
  FP_CHECK_STR(enc("{[0] = 1, 2}"), "{\"0\":1,\"1\":2}");
  FP_CHECK_STR(enc("{[1.5] = 1, 2}"), "{\"1\":2,\"1.5\":1}");
  /* a table built out of order (keys in the hash part) */
  lua("h = {} for i = 40, 1, -1 do h[i] = i end\n"
      "big = {} for i = 1, 5000 do big[i] = i % 7 end\n"
      "bigh = {} for i = 3000, 1, -1 do bigh[i] = 1 end bigh[2000] = nil\n");
  const char *s = enc("h");
  FP_CHECK(strncmp(s, "[1,2,3,", 7) == 0);
  FP_CHECK(strcmp(s + strlen(s) - 4, ",40]") == 0);
  s = enc("big");
  FP_CHECK(strncmp(s, "[1,2,3,4,5,6,0,1,", 17) == 0);
  FP_CHECK_EQ_INT(strlen(s), 2 + 5000 * 2 - 1);
  s = enc("bigh");
  FP_CHECK(strstr(s, ",1,null,1,") != NULL);
  FP_CHECK_STR(enc("{1, {2, {3, print}}}"), "ERR encode $[2][2][2]: a function is not JSON");
  lua("bige = {} for i = 1, 600 do bige[i] = i end bige[577] = print");
  FP_CHECK_STR(enc("bige"), "ERR encode $[577]: a function is not JSON");
}

FP_TEST(strings) {
  FP_CHECK_STR(enc("'a/b'"), "\"a/b\"");
  FP_CHECK_STR(enc("'q\"b\\\\s'"), "\"q\\\"b\\\\s\"");
  FP_CHECK_STR(enc("'\\b\\f\\n\\r\\t'"), "\"\\b\\f\\n\\r\\t\"");
  FP_CHECK_STR(enc("'\\0\\1\\31\\127 '"), "\"\\u0000\\u0001\\u001f\x7f \"");
  FP_CHECK_STR(enc("'\\9\\11\\27'"), "\"\\t\\u000b\\u001b\"");
  /* every byte below 0x80, in one string (the 8-byte path and the tail) */
  lua("local t = {} for c = 0, 127 do t[#t + 1] = string.char(c) end all = table.concat(t)");
  const char *s = enc("all");
  static const char head[] = "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007"
                             "\\b\\t\\n\\u000b\\f\\r\\u000e";
  FP_CHECK(strncmp(s, head, sizeof head - 1) == 0);
  FP_CHECK(strstr(s, " !\\\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\\\]^_`abcdefghijklmnopqrstuvwxyz{|}~\x7f\"") != NULL);
  /* long strings cross the writer's chunks */
  lua("long = string.rep('\\n', 10000) .. string.rep('ab\\226\\130\\172', 3000)");
  s = enc("long");
  FP_CHECK_EQ_INT(strlen(s), 2 + 20000 + 3000 * 5);
  FP_CHECK_STR(enc("{['a\\nb'] = 1}"), "{\"a\\nb\":1}");
}

FP_TEST(utf8) {
  /* boundaries that are valid */
  FP_CHECK_STR(enc("'\\127\\194\\128\\223\\191'"), "\"\x7f\xc2\x80\xdf\xbf\"");
  FP_CHECK_STR(enc("'\\224\\160\\128\\237\\159\\191\\238\\128\\128\\239\\191\\191'"),
               "\"\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\"");
  FP_CHECK_STR(enc("'\\240\\144\\128\\128\\244\\143\\191\\191'"),
               "\"\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"");
  /* invalid: overlong, surrogate, > U+10FFFF, never-valid bytes,
   * continuation alone, truncated */
  FP_CHECK_STR(enc("'ab\\192\\128'"), "ERR utf8 $: invalid UTF-8 at byte 3 of the string");
  FP_CHECK_STR(enc("'\\193\\191'"), "ERR utf8 $: invalid UTF-8 at byte 1 of the string");
  FP_CHECK_STR(enc("'x\\224\\159\\191'"), "ERR utf8 $: invalid UTF-8 at byte 2 of the string");
  FP_CHECK_STR(enc("'\\237\\160\\128'"), "ERR utf8 $: invalid UTF-8 at byte 1 of the string");
  FP_CHECK_STR(enc("'\\240\\143\\191\\191'"), "ERR utf8 $: invalid UTF-8 at byte 1 of the string");
  FP_CHECK_STR(enc("'\\244\\144\\128\\128'"), "ERR utf8 $: invalid UTF-8 at byte 1 of the string");
  FP_CHECK_STR(enc("'\\245\\128\\128\\128'"), "ERR utf8 $: invalid UTF-8 at byte 1 of the string");
  FP_CHECK_STR(enc("'\\255'"), "ERR utf8 $: invalid UTF-8 at byte 1 of the string");
  FP_CHECK_STR(enc("'abcdefghij\\128'"), "ERR utf8 $: invalid UTF-8 at byte 11 of the string");
  FP_CHECK_STR(enc("'\\226\\130'"), "ERR utf8 $: invalid UTF-8 at byte 1 of the string");
  FP_CHECK_STR(enc("'\\226\\130x'"), "ERR utf8 $: invalid UTF-8 at byte 1 of the string");
  FP_CHECK_STR(enc("'\\194'"), "ERR utf8 $: invalid UTF-8 at byte 1 of the string");
  FP_CHECK_STR(enc("{tags = {'a', 'b', '\\200'}}"),
               "ERR utf8 $.tags[3]: invalid UTF-8 at byte 1 of the string");
  FP_CHECK_STR(enc("{['a b'] = {x = '\\255'}}"),
               "ERR utf8 $[\"a b\"].x: invalid UTF-8 at byte 1 of the string");
  FP_CHECK_STR(enc("{a = {['k\\255'] = 1}}"),
               "ERR utf8 $.a[\"k?\"]: invalid UTF-8 at byte 2 of the key");
  FP_CHECK_STR(enc("{[2.5] = {'\\255'}}"), "ERR utf8 $[2.5][1]: invalid UTF-8 at byte 1 of the string");
  /* past the first chunk of a long string */
  lua("longbad = string.rep('a', 5000) .. '\\255'");
  FP_CHECK_STR(enc("longbad"), "ERR utf8 $: invalid UTF-8 at byte 5001 of the string");
  /* every (first, second) byte pair's verdict agrees with the rule: the
   * first byte, the second, then as many 0x80 as the first byte asks for */
  int bad = 0;
  for (int b0 = 0x80; b0 <= 0xff; b0++)
    for (int b1 = 0; b1 <= 0xff; b1++) {
      char src[64];
      const char *tail = b0 >= 0xf0 ? "\\128\\128" : b0 >= 0xe0 ? "\\128" : "";
      snprintf(src, sizeof src, "'\\%d\\%d%s'", b0, b1, tail);
      const char *r = enc(src);
      int lo = 0x80, hi = 0xbf;
      if (b0 == 0xe0) lo = 0xa0;
      if (b0 == 0xed) hi = 0x9f;
      if (b0 == 0xf0) lo = 0x90;
      if (b0 == 0xf4) hi = 0x8f;
      int ok = b0 >= 0xc2 && b0 <= 0xf4 && b1 >= lo && b1 <= hi;
      if (ok != (strncmp(r, "ERR", 3) != 0)) {
        if (bad++ < 3) fprintf(stderr, "  %02x %02x: %s\n", b0, b1, r);
      }
    }
  FP_CHECK_EQ_INT(bad, 0);
}

FP_TEST(other_values) {
  FP_CHECK_STR(enc("true"), "true");
  FP_CHECK_STR(enc("{f = false}"), "{\"f\":false}");
  FP_CHECK_STR(enc("nil"), "null");
  FP_CHECK_STR(enc("cjson.null"), "null");
  FP_CHECK_STR(enc("{a = cjson.null}"), "{\"a\":null}");
  FP_CHECK_STR(enc("{f = print}"), "ERR encode $.f: a function is not JSON");
  FP_CHECK_STR(enc("{c = coroutine.create(print)}"), "ERR encode $.c: a thread is not JSON");
  FP_CHECK_STR(enc("{u = io.stdout}"), "ERR encode $.u: a userdata is not JSON");
  FP_CHECK_STR(enc("{n = ffi.new('int64_t', 1)}"), "ERR encode $.n: a cdata is not JSON");
  FP_CHECK_STR(enc("{p = ffi.cast('void *', 1)}"), "ERR encode $.p: a cdata is not JSON");
  lua("lud = nil");
  /* metatables are ignored: no __index, __pairs, __len, __tostring */
  FP_CHECK_STR(enc("setmetatable({a = 1}, {__index = function() return 9 end, "
                   "__pairs = error, __len = error, __tostring = error, "
                   "__newindex = error})"), "{\"a\":1}");
  FP_CHECK_STR(enc("setmetatable({}, {__index = {1, 2, 3}})"), "{}");
  FP_CHECK_STR(enc("{['/path with spaces'] = 1, [\"q\\\"\"] = {1, print}}"),
               "ERR encode $[\"q\\\"\"][2]: a function is not JSON");
}

FP_TEST(depth) {
  lua("function nest(n) local t = {} local r = t for i = 2, n do t.a = {} t = t.a end return r end\n"
      "function nestarr(n) local t = {} local r = t for i = 2, n do t[1] = {} t = t[1] end return r end\n"
      "function nestbig(n) local r = {} local t = r for i = 2, n do\n"
      "  for k = 1, 300 do t['k' .. k] = k end t.a = {} t = t.a end return r end\n");
  const char *s = enc("nest(1000)");
  FP_CHECK(strncmp(s, "{\"a\":{\"a\":", 10) == 0);
  s = enc("nest(1001)");
  FP_CHECK(strncmp(s, "ERR encode $...", 15) == 0);
  FP_CHECK(strstr(s, ".a.a: tables nested deeper than 1000 (a cycle?)") != NULL);
  s = enc("nestarr(1000)");
  FP_CHECK(strncmp(s, "[[[[", 4) == 0);
  FP_CHECK(strncmp(enc("nestarr(1001)"), "ERR encode", 10) == 0);
  /* wide levels all the way down: the stack budget's big-table path */
  s = enc("nestbig(1000)");
  FP_CHECK(strncmp(s, "{\"a\":{\"a\":", 10) == 0);
  FP_CHECK(strncmp(enc("nestbig(1001)"), "ERR encode", 10) == 0);
  lua("cyc = {x = 1} cyc.self = cyc");
  FP_CHECK(strstr(enc("cyc"), "tables nested deeper than 1000") != NULL);
  lua("cyca = {} cyca[1] = cyca");
  FP_CHECK(strstr(enc("cyca"), "[1][1]: tables nested deeper than 1000") != NULL);
}

FP_TEST(big_objects) {
  lua("bo = {} for i = 1, 2000 do bo['k' .. i] = {i, tostring(i)} end bo[7] = 'seven'\n"
      "bo2 = {} for i = 2000, 1, -1 do bo2['k' .. i] = {i, tostring(i)} end bo2[7] = 'seven'\n"
      "bobad = {} for i = 1, 500 do bobad['k' .. i] = i end bobad.k250 = {1, 0/0}\n");
  static char a[1 << 17];
  snprintf(a, sizeof a, "%s", enc("bo"));
  FP_CHECK(strncmp(a, "{\"7\":\"seven\",\"k1\":[1,\"1\"],\"k10\":[10,\"10\"],\"k100\":", 48) == 0);
  FP_CHECK(strcmp(a, enc("bo2")) == 0);
  FP_CHECK_STR(enc("bobad"), "ERR encode $.k250[2]: NaN is not JSON");
  /* a weak table may lose entries to a collection during the call: the
   * text is still JSON of the entries seen (no stale entry is used) */
  lua("collectgarbage('setpause', 1)\n"
      "weak = setmetatable({}, {__mode = 'v'})\n"
      "for i = 1, 3000 do weak['k' .. i] = (i % 2 == 0) and {} or i end");
  for (int r = 0; r < 20; r++) {
    const char *w = enc("weak");
    FP_CHECK(w[0] == '{' && w[strlen(w) - 1] == '}');
  }
  lua("collectgarbage('setpause', 200)");
}

FP_TEST(small_record) {
  FP_CHECK_STR(enc("{id = 123, name = 'abc', tags = {'a', 'b', 'c'}, score = 1.5, ok = true}"),
               "{\"id\":123,\"name\":\"abc\",\"ok\":true,\"score\":1.5,\"tags\":[\"a\",\"b\",\"c\"]}");
}

int main(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  lua(prelude);
  FP_RUN(number_edges);
  FP_RUN(number_random);
  FP_RUN(number_locale);
  FP_RUN(key_order);
  FP_RUN(arrays);
  FP_RUN(strings);
  FP_RUN(utf8);
  FP_RUN(other_values);
  FP_RUN(depth);
  FP_RUN(big_objects);
  FP_RUN(small_record);
  lua_close(L);
  fp_buf_free(&out);
  fp_json_scratch_free(&scr);
  return fp_test_summary();
}
