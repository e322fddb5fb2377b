/*
 * tests/host/test_embed.c - the C API of include/forkpool.h, linked
 * against build/libforkpool.a the way a host links it (tools/test-host.sh
 * builds and runs it).  Each test uses a fresh lua_State in this process.
 * Ends with "N passed, N failed".
 */
#include "forkpool.h"
#include "../c/fp_test.h"

#include <lauxlib.h>
#include <lualib.h>

/* A state with the standard libraries, no Lua path and no C path: only
 * what the library registers can be found. */
static lua_State *fresh(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  (void)luaL_dostring(L, "package.path, package.cpath = '', ''");
  return L;
}

/* Runs code; returns its first result as a string (or the error), in buf. */
static const char *run(lua_State *L, const char *code, char *buf, size_t n) {
  if (luaL_dostring(L, code) != 0) {
    snprintf(buf, n, "error: %s", lua_tostring(L, -1));
  } else {
    const char *s = lua_tostring(L, -1);
    snprintf(buf, n, "%s", s ? s : "(not a string)");
  }
  lua_settop(L, 0);
  return buf;
}

/* forkpool_preload, then require: one module table, a working map, the
 * embedded chunk names, forkpool.core from the library. */
FP_TEST(preload_then_require) {
  lua_State *L = fresh();
  char b[512];
  forkpool_preload(L);
  FP_CHECK_STR(run(L, "local fp = require 'forkpool'\n"
                      "assert(fp == require 'forkpool')\n"
                      "local p = fp.new{ n_jobs = 2 }\n"
                      "local r = p:map(function(x) return x * 2 end, { 1, 2, 3 })\n"
                      "p:close()\n"
                      "return r[1] .. ',' .. r[2] .. ',' .. r[3] .. ',' .. r.n", b, sizeof b),
               "2,4,6,3");
  FP_CHECK_STR(run(L, "return require('forkpool')._VERSION", b, sizeof b), "forkpool " FORKPOOL_VERSION);
  FP_CHECK_STR(run(L, "return debug.getinfo(require('forkpool').new, 'S').source", b, sizeof b),
               "@forkpool/pool.lua");
  FP_CHECK_STR(run(L, "return type(package.loaded['forkpool.core'].new)", b, sizeof b), "function");
  /* luaopen_forkpool after require: the same table. */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "forkpool");
  lua_call(L, 1, 1);
  FP_CHECK_EQ_INT(luaopen_forkpool(L), 1);
  FP_CHECK_EQ_INT(lua_gettop(L), 2);
  FP_CHECK(lua_rawequal(L, -1, -2));
  lua_close(L);
}

/* Every embedded module loads (cjson, which forkpool.jsontext requires,
 * comes from the system's C path when it is installed). */
FP_TEST(every_module_loads) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  char b[1024];
  forkpool_preload(L);
  FP_CHECK_STR(run(L, "local n, bad = 0, {}\n"
                      "local has_cjson = pcall(require, 'cjson')\n"
                      "for name in pairs(package.preload) do\n"
                      "  if name:match('^forkpool') then\n"
                      "    local ok, err = pcall(require, name)\n"
                      "    if ok or (not has_cjson and tostring(err):match(\"module 'cjson' not found\")) then\n"
                      "      n = n + 1\n"
                      "    else bad[#bad + 1] = name .. ': ' .. tostring(err) end\n"
                      "  end\n"
                      "end\n"
                      "return #bad == 0 and (n > 20 and 'ok' or 'only ' .. n) or table.concat(bad, '; ')",
                   b, sizeof b),
               "ok");
  lua_close(L);
}

/* luaopen_forkpool alone, called from C: pushes the module and stores it
 * in package.loaded, so require returns the same. */
FP_TEST(luaopen_from_c) {
  lua_State *L = fresh();
  char b[256];
  FP_CHECK_EQ_INT(luaopen_forkpool(L), 1);
  FP_CHECK_EQ_INT(lua_gettop(L), 1);
  FP_CHECK(lua_istable(L, -1));
  lua_setglobal(L, "FP");
  FP_CHECK_STR(run(L, "return tostring(FP == require 'forkpool' and type(FP.new) == 'function')", b, sizeof b),
               "true");
  lua_close(L);
}

/* A host that registers luaopen_forkpool itself as package.preload.forkpool
 * (the usual way for a C module linked in): require must not find a loop. */
FP_TEST(luaopen_as_preload) {
  lua_State *L = fresh();
  char b[256];
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_forkpool);
  lua_setfield(L, -2, "forkpool");
  lua_settop(L, 0);
  FP_CHECK_STR(run(L, "local fp = require 'forkpool'\n"
                      "assert(fp == require 'forkpool' and fp == package.loaded.forkpool)\n"
                      "return type(fp.shared_array) .. ' ' .. type(require('forkpool.pool').Pool)",
                   b, sizeof b),
               "function table");
  lua_close(L);
}

/* Errors keep readable chunk names: a task error's message names the
 * caller's chunk, an argument error is raised at the caller. */
FP_TEST(errors_read_well) {
  lua_State *L = fresh();
  char b[512];
  forkpool_preload(L);
  FP_CHECK_STR(run(L, "local fp = require 'forkpool'\n"
                      "local ok, err = pcall(fp.new, { n_jobs = 'x' })\n"
                      "return tostring(err)", b, sizeof b),
               "bad option 'n_jobs' to 'new' (positive integer expected, got string)");
  lua_close(L);
}

static int preload_protected(lua_State *L) {
  forkpool_preload(L);
  return 0;
}

/* Without the package library: a Lua error that names the fix, not a crash. */
FP_TEST(no_package_library) {
  lua_State *L = luaL_newstate();
  lua_pushcfunction(L, luaopen_base);
  lua_call(L, 0, 0);
  lua_pushcfunction(L, preload_protected);
  FP_CHECK(lua_pcall(L, 0, 0, 0) != 0);
  const char *msg = lua_tostring(L, -1);
  FP_CHECK(msg && strstr(msg, "the package library is not open"));
  lua_close(L);
}

int main(void) {
  FP_RUN(preload_then_require);
  FP_RUN(every_module_loads);
  FP_RUN(luaopen_from_c);
  FP_RUN(luaopen_as_preload);
  FP_RUN(errors_read_well);
  FP_RUN(no_package_library);
  return fp_test_summary();
}
