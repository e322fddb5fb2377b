/*
 * host.h - the harness of the host tests (tests/host/test_*.c): programs
 * that embed LuaJIT the way a game engine or server does, with threads of
 * their own, and use forkpool from it.  The engine and the binding are
 * compiled into the test program (the Makefile's host rules), the binding
 * registered in package.preload["forkpool.core"] and the Lua modules found
 * through package.path from the source tree (run from the repository's
 * root, as `make ctest` does).
 *
 * Checks count like tests/c/fp_test.h (whose FP_TEST/FP_RUN/summary these
 * tests use), from the main thread only: worker threads hand their
 * results back through their own structs.  Every test program sets an
 * alarm at start, so a hang kills it (no summary line: counted as failed).
 */
#ifndef FP_HOST_H
#define FP_HOST_H

#include "fp_test.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int luaopen_forkpool_core(lua_State *L);

/* A fresh Lua state that can require "forkpool". */
static lua_State *host_state(void) {
  lua_State *L = luaL_newstate();
  if (!L) return NULL;
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_forkpool_core);
  lua_setfield(L, -2, "forkpool.core");
  lua_pop(L, 1);
  lua_pushliteral(L, "lua/?.lua;lua/?/init.lua;");
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  return L;
}

/* Run a chunk of Lua.  Returns 1 when it ran without error; its first
 * result (tostring'd) is copied to out (when out is not NULL), or on error
 * the error message is, and printed on stderr with `who`. */
static int host_run(lua_State *L, const char *who, const char *code, char *out, size_t outlen) {
  int top = lua_gettop(L);
  int st = luaL_loadstring(L, code);
  if (st == 0) st = lua_pcall(L, 0, 1, 0);
  const char *s = NULL;
  if (lua_gettop(L) > top) {
    lua_getglobal(L, "tostring");
    lua_pushvalue(L, -2);
    lua_call(L, 1, 1);
    s = lua_tostring(L, -1);
  }
  if (out && outlen) {
    snprintf(out, outlen, "%s", s ? s : "");
  }
  if (st != 0) fprintf(stderr, "  %s: Lua error: %s\n", who, s ? s : "?");
  lua_settop(L, top);
  return st == 0;
}

static double host_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
