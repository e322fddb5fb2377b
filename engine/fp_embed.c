/*
 * fp_embed.c - the C API a host program uses (include/forkpool.h):
 * forkpool_preload puts every forkpool module into package.preload, from
 * sources compiled into the library (fp_embed.h), and luaopen_forkpool
 * returns the module as require "forkpool" does.  Only the library built
 * by `make lib` contains this file; the rock's forkpool/core.so does not
 * (it must export luaopen_* only, and it finds the Lua files on
 * package.path).
 *
 * The modules are found through package.preload, the first searcher of
 * require, so a host needs no package.path, no package.cpath and no files
 * beside its binary; and forkpool's own requires ("forkpool.pool", ...)
 * resolve the same way.  Nothing in lua/forkpool/ looks for its files by
 * path at run time (the worker processes are forks of the host and
 * inherit the loaded modules).
 */
#ifndef FORKPOOL_EXPORT
#define FORKPOOL_EXPORT 1 /* the library's build passes it; exported either way */
#endif
#include "forkpool.h"
#include "fp_embed.h"

#include <string.h>

/* package.preload[name] = loader: require(name) calls loader(name).  The
 * upvalue is the module's entry in fp_embedded_modules. */
static int embed_loader(lua_State *L) {
  const fp_embedded_module *m = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbuffer(L, m->src, m->len, m->chunkname) != 0)
    return luaL_error(L, "error loading module '%s' from forkpool's embedded sources:\n\t%s",
                      m->name, lua_tostring(L, -1));
  /* As require's file loader does: the chunk gets the module's name. */
  lua_pushstring(L, m->name);
  lua_call(L, 1, 1);
  return 1;
}

/* Pushes package.loaded (index -2 on return) and package.preload (-1).
 * Both are found through the registry, so a host that removed the global
 * `package` from its sandbox still gets them; a state without the package
 * library gets an error naming the fix. */
static void push_loaded_and_preload(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "package");
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "preload");
      if (lua_istable(L, -1)) {
        lua_remove(L, -2); /* package */
        return;
      }
    }
  }
  luaL_error(L, "forkpool: the package library is not open in this lua_State "
                "(call luaL_openlibs, or luaopen_package, before forkpool_preload)");
}

void forkpool_preload(lua_State *L) {
  luaL_checkstack(L, 4, "forkpool_preload");
  push_loaded_and_preload(L);
  for (const fp_embedded_module *m = fp_embedded_modules; m->name; m++) {
    lua_pushlightuserdata(L, (void *)m);
    lua_pushcclosure(L, embed_loader, 1);
    lua_setfield(L, -2, m->name);
  }
  lua_pushcfunction(L, luaopen_forkpool_core);
  lua_setfield(L, -2, "forkpool.core");
  lua_pop(L, 2);
}

/* Not require "forkpool" itself: a host may register luaopen_forkpool as
 * package.preload.forkpool, and require would then find its own loading
 * in progress ("loop or previous error loading module").  So the module is
 * loaded here, and stored in package.loaded, so that a later require
 * returns this same table (one Pool class, one set of modules). */
int luaopen_forkpool(lua_State *L) {
  forkpool_preload(L);
  int top = lua_gettop(L);
  push_loaded_and_preload(L);              /* top+1 loaded, top+2 preload */
  lua_getfield(L, top + 1, "forkpool");    /* top+3 */
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_getfield(L, top + 2, "forkpool"); /* embed_loader */
    lua_pushliteral(L, "forkpool");
    lua_call(L, 1, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, top + 1, "forkpool");
  }
  /* Exactly one value pushed, also when called directly from C. */
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
  return 1;
}
