/*
 * fp_luajit.h - the one place the engine includes the Lua headers from, and
 * the check that they are LuaJIT 2.1's.
 *
 * Why the check: forkpool.core uses LuaJIT's API (luaL_traceback,
 * luaL_setfuncs, luaL_loadbufferx) and runs inside the `luajit` executable,
 * which exports that API itself.  PUC Lua 5.1's headers declare none of
 * those (gcc then warns about implicit declarations and the module fails to
 * load), and Lua 5.2+ headers describe another ABI.  Debian's LuaRocks picks
 * those headers by default, so the mistake is common: stop the build here
 * with the fix instead.
 */
#ifndef FP_LUAJIT_H
#define FP_LUAJIT_H

#if defined(__has_include)
#if !__has_include(<luajit.h>)
#error "forkpool must be compiled against LuaJIT 2.1's headers, and luajit.h is not on the include path (these Lua headers are another Lua's). Fix: build with LUA_INCDIR=/usr/include/luajit-2.1 (Debian package libluajit-5.1-dev; `pkg-config --variable=includedir luajit` prints the path), e.g. `make install`, or see the README's Install section for the luarocks config lines."
#endif
#endif

#include <luajit.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#if !defined(LUAJIT_VERSION_NUM)
#error "forkpool: luajit.h does not define LUAJIT_VERSION_NUM: not LuaJIT's headers. Build with LUA_INCDIR=/usr/include/luajit-2.1."
#elif LUAJIT_VERSION_NUM < 20100
#error "forkpool needs LuaJIT 2.1 or later (these headers are LuaJIT 2.0). Build with LuaJIT 2.1's headers (LUA_INCDIR=/usr/include/luajit-2.1 on Debian)."
#endif
#if LUA_VERSION_NUM != 501
#error "forkpool: lua.h is not LuaJIT's (LUA_VERSION_NUM is not 501): another Lua's headers come first on the include path. Build with LUA_INCDIR=/usr/include/luajit-2.1 only."
#endif

#endif
