/*
 * fp_embed.h - the Lua modules compiled into the library a host links
 * (make lib).  tools/embed-lua.lua generates the table from
 * every lua/forkpool/NAME.lua at build time (build/gen/fp_lua_modules.c, source
 * text: its header says why not bytecode); engine/fp_embed.c registers the
 * entries in package.preload (forkpool_preload, include/forkpool.h).
 * forkpool.core (the rock's core.so) contains neither file.
 */
#ifndef FP_EMBED_H
#define FP_EMBED_H

#include "fp_common.h"
#include "fp_luajit.h"

FP_HIDDEN_BEGIN

typedef struct {
  const char *name;      /* module name for require: "forkpool", "forkpool.pool" */
  const char *chunkname; /* "@forkpool/pool.lua": how errors and tracebacks name it */
  const char *src;       /* the module's source text */
  size_t len;
} fp_embedded_module;

/* Sorted by name, ended by an entry whose name is NULL. */
extern const fp_embedded_module fp_embedded_modules[];

FP_HIDDEN_END

/* engine/fp_lua.c: the C module, registered as "forkpool.core". */
FP_EXPORT int luaopen_forkpool_core(lua_State *L);

#endif
