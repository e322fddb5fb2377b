/* fp_lua_same.h: the Lua oracle two packed-codec tests share
 * (tests/c/test_packed.c and tests/fuzz/fuzz_packed.c): the source of a
 * local function same(a, b), deep equality of two decoded values where NaN
 * equals NaN, to be put in front of the chunk that compares forkpool's
 * decoder with LuaJIT's string.buffer decoder. */
#ifndef FP_LUA_SAME_H
#define FP_LUA_SAME_H

#define FP_LUA_SAME_FN                                                      \
  "local function same(a, b)\n"                                             \
  "  if a ~= a then return b ~= b end\n"                                    \
  "  if type(a) ~= 'table' then return a == b end\n"                        \
  "  if type(b) ~= 'table' then return false end\n"                         \
  "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n" \
  "  for k in pairs(b) do if a[k] == nil then return false end end\n"       \
  "  return true\n"                                                         \
  "end\n"

#endif
