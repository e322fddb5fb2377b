/*
 * fuzz_json.c - libFuzzer target for the JSON encoder (engine/fp_json.c).
 *
 * The input bytes are a small program that builds a Lua value (build(), in
 * Lua below): nils, booleans, any double (NaN, inf, -0, denormals), short
 * decimals, strings of arbitrary bytes (invalid UTF-8 included) or of
 * ASCII/escapes, arrays with holes, objects with string/number/boolean/table
 * keys, cjson.null, functions, coroutines, shared references and cycles,
 * and chains of nested tables around the depth limit.  The same program
 * also builds the value a second time, inserting every table's keys in the
 * opposite order (so pairs() visits them in another order).  Properties (an
 * abort() is a finding, like any sanitizer report):
 *  - the encoder fails exactly when the value breaks a rule (model(), an
 *    independent reading of the rules), with a kind the rules allow;
 *  - on success: the text is valid UTF-8; every object's keys are in
 *    bytewise order (checked in C on the unescaped keys); the second build
 *    gives the same bytes; lua-cjson decodes the text to the model's value
 *    (numbers exact, -0 included; null for holes and cjson.null; a number
 *    key as its text, and of two equal key texts the string key's value, as
 *    the string key is written last);
 *  - the stack is balanced, and the output buffer's length is restored on
 *    error.
 *
 *   make fuzz FUZZ=fuzz_json FUZZ_SECONDS=60
 */
#include "fp_json.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static fp_buf out;
static fp_json_scratch scr;

/* core.json_encode's shape, for the Lua side (the model needs the number
 * text of number keys). */
static int l_enc(lua_State *Ls) {
  fp_json_err err;
  fp_buf b = {0};
  lua_settop(Ls, 1);
  int rc = fp_json_encode(Ls, 1, &b, &scr, &err);
  if (rc == FP_ENOMEM) abort();
  if (rc) {
    fp_buf_free(&b);
    lua_pushnil(Ls);
    lua_pushstring(Ls, err.kind);
    return 2;
  }
  lua_pushlstring(Ls, (const char *)b.p, b.len);
  fp_buf_free(&b);
  return 1;
}

static const char setup[] =
  "local cjson = require('cjson')\n"
  "local enc = ...\n"
  /* The JIT stays off in this state: with it on, LuaJIT 2.1 (Debian's
   * beta3 snapshot) gave the builder + model below different verdicts for
   * the same input about once in 60000 runs, in pure Lua with no forkpool
   * code loaded (checked with a luajit script running them twice per
   * input: 2 differences in 133k runs with the JIT, 0 in 111k without).
   * The target tests the C encoder; its reference must be deterministic. */
  "jit.off()\n"
  "local byte, char, sub = string.byte, string.char, string.sub\n"
  "local function utf8ok(s)\n"
  "  local i, n = 1, #s\n"
  "  while i <= n do\n"
  "    local c = byte(s, i)\n"
  "    local len, lo, hi\n"
  "    if c < 0x80 then len = 1\n"
  "    elseif c >= 0xC2 and c <= 0xDF then len, lo, hi = 2, 0x80, 0xBF\n"
  "    elseif c >= 0xE0 and c <= 0xEF then len = 3\n"
  "      lo = c == 0xE0 and 0xA0 or 0x80; hi = c == 0xED and 0x9F or 0xBF\n"
  "    elseif c >= 0xF0 and c <= 0xF4 then len = 4\n"
  "      lo = c == 0xF0 and 0x90 or 0x80; hi = c == 0xF4 and 0x8F or 0xBF\n"
  "    else return false end\n"
  "    if len > 1 then\n"
  "      if i + len - 1 > n then return false end\n"
  "      local c1 = byte(s, i + 1)\n"
  "      if c1 < lo or c1 > hi then return false end\n"
  "      for k = 2, len - 1 do local ck = byte(s, i + k)\n"
  "        if ck < 0x80 or ck > 0xBF then return false end end\n"
  "    end\n"
  "    i = i + len\n"
  "  end\n"
  "  return true\n"
  "end\n"
  /* build(s) -> value, value with keys inserted in reverse */
  "local function build(s)\n"
  "  local pos, nodes, tables, shared, chained = 1, 0, {}, 0, false\n"
  "  local function b() local c = byte(s, pos) or 0; pos = pos + 1; return c end\n"
  "  local function rd(n) local x = sub(s, pos, pos + n - 1); pos = pos + n; return x end\n"
  "  local function f64()\n"
  /* any double from 8 bytes, by arithmetic (reading a NaN with a payload
   * through the FFI can give LuaJIT a value that is not a number at all) */
  "    local x = rd(8); if #x < 8 then return 0 end\n"
  "    local m = 0\n"
  "    for k = 1, 6 do m = m * 256 + byte(x, k) end\n"
  "    local b7, b8 = byte(x, 7), byte(x, 8)\n"
  "    m = m * 16 + b7 % 16\n"
  "    local e = (b8 % 128) * 16 + math.floor(b7 / 16)\n"
  "    local d\n"
  "    if e == 2047 then d = m == 0 and 1/0 or 0/0\n"
  "    elseif e == 0 then d = math.ldexp(m, -1074)\n"
  "    else d = math.ldexp(m + 2^52, e - 1075) end\n"
  "    if b8 >= 128 then d = -d end\n"
  "    return d\n"
  "  end\n"
  "  local ascii = { 'a', 'b', 'z', 'A', ' ', '/', '\"', '\\\\', '\\n', '\\t', '\\0', '\\31',\n"
  "    '\\127', '\\195\\169', '\\226\\130\\172', '\\240\\159\\152\\128', 'key', '1', '10', '-0', '1.5' }\n"
  "  local value\n"
  "  local function key()\n"
  "    local c = b() % 8\n"
  "    if c <= 2 then return ascii[b() % #ascii + 1] .. (c == 2 and ascii[b() % #ascii + 1] or '') end\n"
  "    if c == 3 then return rd(b() % 6) end\n"
  "    if c == 4 then return b() % 20 end\n"
  "    if c == 5 then return (b() - 128) / 4 end\n"
  "    if c == 6 then local x = f64(); if x ~= x then x = 0.5 end; return x end\n"
  "    if b() % 2 == 0 then return true end\n"
  "    return {}\n"
  "  end\n"
  "  function value(depth)\n"
  "    nodes = nodes + 1\n"
  "    if pos > #s or nodes > 300 then return b() % 2 == 0 and 1 or 'x' end\n"
  "    local c = b() % 16\n"
  "    if c == 0 then return nil\n"
  "    elseif c == 1 then return b() % 2 == 0\n"
  "    elseif c == 2 then return f64()\n"
  "    elseif c == 3 then return (b() - 128) * 10 ^ ((b() % 40) - 20)\n"
  "    elseif c == 4 then return rd(b() % 12)\n"
  "    elseif c == 5 then local t = {} for k = 1, b() % 6 do t[k] = ascii[b() % #ascii + 1] end return table.concat(t)\n"
  "    elseif c == 6 or c == 7 then\n"
  "      local t, n, gaps = {}, b() % 14, b() % 4 == 0\n"
  "      tables[#tables + 1] = t\n"
  "      local i = 0\n"
  "      for _ = 1, n do i = i + (gaps and (b() % 4) or 1); t[i] = value(depth + 1) end\n"
  "      if b() % 8 == 0 then t[b() % 40 + 1] = value(depth + 1) end\n"
  "      return t\n"
  "    elseif c == 8 or c == 9 then\n"
  "      local t = {}\n"
  "      tables[#tables + 1] = t\n"
  "      for _ = 1, b() % 10 do\n"
  "        local k = key()\n"
  "        local v = value(depth + 1)\n"
  "        t[k] = v\n"
  "      end\n"
  "      return t\n"
  "    elseif c == 10 then return cjson.null\n"
  "    elseif c == 11 then local k = b() % 16\n"
  "      if k == 0 then return print elseif k == 1 then return coroutine.create(print) end\n"
  "      return b()\n"
  "    elseif c == 12 then\n"
  "      if #tables > 0 and shared < 3 and b() % 4 == 0 then\n"
  "        shared = shared + 1; return tables[b() % #tables + 1] end\n"
  "      return 2 ^ 53 + (b() - 128)\n"
  "    elseif c == 13 and not chained then\n"
  "      chained = true -- (one chain: rev() recurses through it)\n"
  "      local n = 990 + b() % 20\n"
  "      local r = {} local t = r\n"
  "      local arr = b() % 2 == 0\n"
  "      for _ = 2, n do local u = {} if arr then t[1] = u else t.a = u end t = u end\n"
  "      t[1] = value(depth + n)\n"
  "      return r\n"
  "    elseif c == 14 then local t = {} for k = 1, 200 + b() do t['k' .. k] = k end return t\n"
  "    end\n"
  "    return -0.0\n"
  "  end\n"
  "  local v = value(0)\n"
  "  local copies = {}\n"
  "  local function rev(x)\n"
  "    if type(x) ~= 'table' then return x end\n"
  "    if copies[x] then return copies[x] end\n"
  "    local y = {}\n"
  "    copies[x] = y\n"
  "    local ks = {}\n"
  "    for k in pairs(x) do ks[#ks + 1] = k end\n"
  "    for i = #ks, 1, -1 do local k = ks[i]; y[rev(k)] = rev(x[k]) end\n"
  "    return y\n"
  "  end\n"
  "  return v, rev(v)\n"
  "end\n"
  /* model(v) -> the value cjson should decode, or nil and a set of kinds */
  "local NULL = cjson.null\n"
  "local m2\n"
  "local function model(v)\n"
  "  local kinds = {}\n"
  "  local onpath = {}\n"
  "  local function m(x, depth)\n"
  "    local t = type(x)\n"
  "    if t == 'nil' then return NULL end\n"
  "    if t == 'boolean' then return x end\n"
  "    if t == 'number' then\n"
  "      if x ~= x or x == 1/0 or x == -1/0 then kinds.encode = true end\n"
  "      return x\n"
  "    end\n"
  "    if t == 'string' then if not utf8ok(x) then kinds.utf8 = true end return x end\n"
  "    if t == 'userdata' and x == NULL then return NULL end\n"
  "    if t ~= 'table' then kinds.encode = true return nil end\n"
  "    if depth >= 1000 or onpath[x] then kinds.encode = true return nil end\n"
  "    onpath[x] = true\n"
  "    local r = m2(x, depth)\n"
  "    onpath[x] = nil\n"
  "    return r\n"
  "  end\n"
  "  function m2(x, depth)\n"
  "    local n, max, arr = 0, 0, true\n"
  "    for k in next, x do\n"
  "      n = n + 1\n"
  "      if type(k) == 'number' and k >= 1 and math.floor(k) == k then\n"
  "        if k > max then max = k end\n"
  "      else arr = false end\n"
  "    end\n"
  "    if n == 0 then return {} end\n"
  "    local r = {}\n"
  "    if arr then\n"
  "      if max > 10 and max > 2 * n then kinds.encode = true return nil end\n"
  "      for i = 1, max do r[i] = m(x[i], depth + 1) end\n"
  "      return r\n"
  "    end\n"
  "    local strs = {}\n"
  "    for k, y in next, x do\n"
  "      local tk = type(k)\n"
  "      if tk == 'number' then\n"
  "        if k == 1/0 or k == -1/0 then kinds.encode = true\n"
  "        else r[enc(k)] = m(y, depth + 1) end\n"
  "      elseif tk == 'string' then\n"
  "        if not utf8ok(k) then kinds.utf8 = true end\n"
  "        strs[k] = m(y, depth + 1)\n"
  "      else kinds.encode = true end\n"
  "    end\n"
  "    for k, y in next, strs do r[k] = y end\n"
  "    return r\n"
  "  end\n"
  "  local r = m(v, 0)\n"
  "  if next(kinds) then return nil, kinds end\n"
  "  return r\n"
  "end\n"
  "local function same(a, b)\n"
  "  if type(a) ~= type(b) then return false end\n"
  "  if type(a) == 'number' then\n"
  "    if a == 0 and b == 0 then return 1 / a == 1 / b end\n"
  "    return a == b\n"
  "  end\n"
  "  if type(a) ~= 'table' then return a == b end\n"
  "  for k, x in next, a do if not same(x, b[k]) then return false end end\n"
  "  for k in next, b do if a[k] == nil then return false end end\n"
  "  return true\n"
  "end\n"
  "local dec = cjson.new()\n"
  "return function(s)\n"
  "  local v, w = build(s)\n"
  "  local want, kinds = model(v)\n"
  "  return v, w, kinds or false, function(text)\n"
  "    local ok, got = pcall(dec.decode, text)\n"
  "    if not ok then error('cjson cannot decode: ' .. tostring(got)) end\n"
  "    if not same(want, got) then\n"
  "      local d = {}\n"
  "      local function dump(x) if type(x) ~= 'table' then return tostring(x) .. ':' .. type(x) end\n"
  "        local o = {} for k, y in next, x do o[#o + 1] = string.format('%q', tostring(k)) .. '(' .. type(k) .. ')=' .. dump(y) end\n"
  "        return '{' .. table.concat(o, ',') .. '}' end\n"
  "      error('decoded value differs: want ' .. dump(want) .. ' got ' .. dump(got))\n"
  "    end\n"
  "  end\n"
  "end\n";

/* Independent UTF-8 check of the output (RFC 3629, by code point). */
static int utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i], len, cp;
    if (c < 0x80) { i++; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return 0;
    if (i + len > n) return 0;
    for (unsigned k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += len;
  }
  return 1;
}

/* Key order: scan the text (the encoder's own output, so well formed) and
 * check each object's unescaped keys are in bytewise order (equal keys
 * allowed: a number and a string key with the same text). */
typedef struct { const unsigned char *p, *end; } scan;

static size_t unescape(scan *sc, unsigned char *o, size_t cap) {
  size_t n = 0;
  sc->p++; /* opening quote */
  while (*sc->p != '"') {
    unsigned char c = *sc->p++;
    if (c == '\\') {
      unsigned char e = *sc->p++;
      switch (e) {
      case 'b': c = 8; break;
      case 'f': c = 12; break;
      case 'n': c = 10; break;
      case 'r': c = 13; break;
      case 't': c = 9; break;
      case 'u': c = (unsigned char)strtol((const char[]){(char)sc->p[2], (char)sc->p[3], 0}, NULL, 16);
        sc->p += 4; break;
      default: c = e; break;
      }
    }
    if (n < cap) o[n] = c;
    n++;
  }
  sc->p++;
  return n;
}

static void check_value(scan *sc);

/* Unescape the key whose opening quote is at q into o (cap bytes). */
static size_t key_at(const unsigned char *q, unsigned char *o, size_t cap) {
  scan t = {q, NULL};
  size_t n = unescape(&t, o, cap);
  if (n > cap) abort(); /* (the fuzzer's keys are short) */
  return n;
}

static void check_object(scan *sc) {
  const unsigned char *prev = NULL; /* the previous key's opening quote */
  sc->p++; /* { */
  while (*sc->p != '}') {
    if (*sc->p == ',') sc->p++;
    const unsigned char *q = sc->p;
    unescape(sc, NULL, 0);
    if (prev) {
      static unsigned char a[1024], b[1024]; /* (used only here, not across calls) */
      size_t na = key_at(prev, a, sizeof a), nb = key_at(q, b, sizeof b);
      int c = memcmp(a, b, na < nb ? na : nb);
      if (c > 0 || (c == 0 && na > nb)) abort();
    }
    prev = q;
    if (*sc->p != ':') abort();
    sc->p++;
    check_value(sc);
  }
  sc->p++;
}

static void check_value(scan *sc) {
  unsigned char c = *sc->p;
  if (c == '{') check_object(sc);
  else if (c == '[') {
    sc->p++;
    while (*sc->p != ']') {
      if (*sc->p == ',') sc->p++;
      check_value(sc);
    }
    sc->p++;
  } else if (c == '"') {
    unescape(sc, NULL, 0);
  } else {
    while (sc->p < sc->end && *sc->p != ',' && *sc->p != ']' && *sc->p != '}') sc->p++;
  }
}

/* lua-cjson mallocs its buffers outside the Lua heap, where LeakSanitizer
 * cannot see the state's references to them: close the state at exit. */
static void close_state(void) {
  lua_close(L);
  fp_buf_free(&out);
  fp_json_scratch_free(&scr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!L) {
    atexit(close_state);
    L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_loadstring(L, setup) != 0) abort();
    lua_pushcfunction(L, l_enc);
    if (lua_pcall(L, 1, 1, 0) != 0) abort();
  }
  lua_settop(L, 1);
  if (!lua_checkstack(L, 20)) abort();
  lua_pushvalue(L, 1);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 4, 0) != 0) abort(); /* 2 v, 3 w, 4 kinds|false, 5 check */
  int top = lua_gettop(L);
  fp_json_err err;
  out.len = 0;
  if (fp_buf_append(&out, "#", 1)) abort();
  int rc = fp_json_encode(L, 2, &out, &scr, &err);
  if (lua_gettop(L) != top) abort();
  if (rc == FP_ENOMEM) abort();
  int should_fail = lua_toboolean(L, 4);
  if (rc != FP_OK) {
    if (!should_fail) abort();
    if (out.len != 1) abort();
    lua_getfield(L, 4, err.kind);
    if (!lua_toboolean(L, -1)) abort(); /* a kind the value has */
    if (err.path[0] != '$' || !err.msg[0]) abort();
    lua_settop(L, 1);
    return 0;
  }
  if (should_fail) {
    lua_pushnil(L);
    while (lua_next(L, 4)) { fprintf(stderr, "model: %s\n", lua_tostring(L, -2)); lua_pop(L, 1); }
    fprintf(stderr, "encoder: %.*s\n", (int)(out.len < 2000 ? out.len : 2000), (const char *)out.p);
    abort();
  }
  const unsigned char *text = out.p + 1;
  size_t n = out.len - 1;
  if (!utf8_valid(text, n)) abort();
  scan sc = {text, text + n};
  check_value(&sc);
  if (sc.p != sc.end) abort();
  /* the reversed build: the same bytes */
  fp_buf again = {0};
  if (fp_json_encode(L, 3, &again, &scr, &err) != FP_OK) abort();
  if (again.len != n || memcmp(again.p, text, n) != 0) abort();
  fp_buf_free(&again);
  lua_pushvalue(L, 5);
  lua_pushlstring(L, (const char *)text, n);
  if (lua_pcall(L, 1, 0, 0) != 0) {
    fprintf(stderr, "%s\n%.*s\n", lua_tostring(L, -1), (int)(n < 2000 ? n : 2000), text);
    abort();
  }
  lua_settop(L, 1);
  return 0;
}
