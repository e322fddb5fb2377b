/* forkpool.h: the C API for programs that embed LuaJIT (issue 13).
 *
 * A host compiles with -Iinclude -I<LuaJIT headers> and links
 * build/libforkpool.a (or -lforkpool; installed: pkg-config --cflags --libs
 * forkpool) with -lluajit-5.1 -lpthread -lm -ldl, and either
 *   forkpool_preload(L);            after luaL_openlibs(L), then
 *   require "forkpool"              from Lua, with no package.path needed,
 * or
 *   luaopen_forkpool(L);            the module on the stack, as require gives it.
 * README "Embedding" gives the link flags, the rules for hosts with threads
 * and what a host must not do. */
#ifndef FORKPOOL_H
#define FORKPOOL_H

/* LuaJIT's lua.h has no extern "C" of its own (C++ hosts include lua.hpp):
 * included first from C++, it must still declare the C functions. */
#ifdef __cplusplus
extern "C" {
#endif
#include <lua.h>
#ifdef __cplusplus
}
#endif

#define FORKPOOL_VERSION_MAJOR 0
#define FORKPOOL_VERSION_MINOR 1
#define FORKPOOL_VERSION_PATCH 0
#define FORKPOOL_VERSION "0.1.0"

/* The library's build marks these exported (FORKPOOL_EXPORT); everything
 * else in it is hidden. */
#if defined(FORKPOOL_EXPORT)
#define FORKPOOL_API __attribute__((visibility("default")))
#else
#define FORKPOOL_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Pushes the forkpool module and returns 1: the table require "forkpool"
 * returns, stored in package.loaded.forkpool (a module loaded before is
 * returned as it is).  Registers the preloads first (forkpool_preload).
 * A lua_CFunction: call it from C, or register it yourself as
 * package.preload.forkpool.  Raises Lua errors as the lua_* API does. */
FORKPOOL_API int luaopen_forkpool(lua_State *L);

/* Registers "forkpool", every "forkpool.*" Lua module and "forkpool.core" in
 * package.preload, from the sources compiled into the library: require
 * "forkpool" then needs no file and no package.path / package.cpath.
 * Call it after luaL_openlibs (it needs the package library, and raises a
 * Lua error naming the fix without it), once per lua_State. */
FORKPOOL_API void forkpool_preload(lua_State *L);

/* Fork hooks, process-wide, run around every fork forkpool makes (its worker
 * processes) and no other: prepare(ud) in the parent just before fork(),
 * parent(ud) in the parent just after, child(ud) in the new worker just
 * after (before any Lua runs there).  A NULL function is skipped; calling
 * again replaces all three.  Typical use: prepare takes the host's locks
 * that tasks use, parent and child release them, so a worker never starts
 * with a lock that another host thread held at the fork. */
FORKPOOL_API void forkpool_set_fork_hooks(void (*prepare)(void *), void (*parent)(void *),
                                          void (*child)(void *), void *ud);

#ifdef __cplusplus
}
#endif

#endif
